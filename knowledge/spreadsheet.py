"""The knowledge base as a spreadsheet staff can review: entries ↔ CSV rows, and what an
import would change. Columns have Vietnamese headers; lists sit one item a line in a cell."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydantic import ValidationError

from knowledge.schema import Entry

# (header, Entry field) in sheet order
COLUMNS: list[tuple[str, str]] = [
    ("Mã", "id"),
    ("Loại", "kind"),
    ("Chế độ", "regime"),
    ("Câu hỏi tiếng Việt", "questions_vi"),
    ("Câu hỏi tiếng Anh", "questions_en"),
    ("Từ khóa", "keywords"),
    ("Trả lời tiếng Việt", "answer_vi"),
    ("Trả lời tiếng Anh", "answer_en"),
    ("Căn cứ pháp lý", "legal_basis"),
    ("Ngày kiểm tra", "checked"),
    ("Liên quan", "related"),
    ("Tệp", "source_file"),
]
LIST_FIELDS = {"questions_vi", "questions_en", "keywords", "related"}
COMPARED = [f for _, f in COLUMNS if f != "source_file"]


def _cell(entry: Entry, name: str) -> str:
    value = getattr(entry, name)
    if name in LIST_FIELDS:
        return "\n".join(value)
    if value is None:
        return ""
    if isinstance(value, date):
        return value.isoformat()
    return str(getattr(value, "value", value))


def to_csv(entries: list[Entry]) -> str:
    """A CSV text (UTF-8 with BOM when written, so spreadsheet programs read the diacritics)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([h for h, _ in COLUMNS])
    for e in entries:
        writer.writerow([_cell(e, f) for _, f in COLUMNS])
    return out.getvalue()


@dataclass
class SheetProblem:
    row: int  # the spreadsheet's row number (the header is row 1)
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"


def from_csv(text: str) -> tuple[list[Entry], list[SheetProblem]]:
    """Entries read from a sheet exported by `to_csv` (columns found by their header)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        return [], [SheetProblem(1, "the file is empty")]
    index = {h.strip(): i for i, h in enumerate(header)}
    missing = [h for h, f in COLUMNS if h not in index and f in ("id", "questions_vi", "answer_vi")]
    if missing:
        return [], [SheetProblem(1, f"missing column(s): {', '.join(missing)}")]
    entries: list[Entry] = []
    problems: list[SheetProblem] = []
    for n, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue
        fields: dict[str, Any] = {}
        for head, name in COLUMNS:
            if head not in index:
                continue
            raw = row[index[head]] if index[head] < len(row) else ""
            if name in LIST_FIELDS:
                fields[name] = [line.strip() for line in raw.splitlines() if line.strip()]
            elif raw.strip() == "":
                continue
            else:
                fields[name] = raw.strip() if name not in ("answer_vi", "answer_en") else raw.replace("\r\n", "\n").strip()
        fields.setdefault("kind", "faq")
        try:
            entries.append(Entry.model_validate(fields))
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                problems.append(SheetProblem(n, f"{fields.get('id', '?')}: {where}: {err['msg']}"))
    return entries, problems


@dataclass
class Change:
    entry_id: str
    field: str
    before: Any
    after: Any


@dataclass
class Diff:
    added: list[Entry] = field(default_factory=list)
    removed: list[Entry] = field(default_factory=list)  # in the knowledge base, not in the sheet
    changed: list[Change] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed)

    def render(self) -> str:
        lines = [f"+ {e.id} ({e.regime.value if e.regime else e.kind}): {e.question_vi}" for e in self.added]
        for c in self.changed:
            if isinstance(c.before, list) or isinstance(c.after, list):
                before, after = set(c.before or []), set(c.after or [])
                lines.append(f"~ {c.entry_id} {c.field}:")
                lines += [f"    - {x}" for x in c.before or [] if x not in after]
                lines += [f"    + {x}" for x in c.after or [] if x not in before]
            else:
                lines.append(f"~ {c.entry_id} {c.field}:\n    - {c.before!r}\n    + {c.after!r}")
        lines += [f"  (not in the sheet, kept: {e.id})" for e in self.removed]
        return "\n".join(lines) if lines else "no changes"


def diff(current: list[Entry], incoming: list[Entry]) -> Diff:
    by_id = {e.id: e for e in current}
    seen = set()
    d = Diff()
    for new in incoming:
        seen.add(new.id)
        old = by_id.get(new.id)
        if old is None:
            d.added.append(new)
            continue
        for name in COMPARED:
            a, b = getattr(old, name), getattr(new, name)
            if a != b:
                d.changed.append(Change(new.id, name, a, b))
    d.removed = [e for e in current if e.id not in seen]
    return d


def merged(current: list[Entry], incoming: list[Entry]) -> list[Entry]:
    """The knowledge base after an import: sheet rows replace or add entries; entries missing
    from the sheet stay (a sheet may hold one regime only). A row keeps its entry's file."""
    by_id = {e.id: e for e in incoming}
    out = []
    for e in current:
        new = by_id.pop(e.id, None)
        out.append(e if new is None else new.model_copy(update={"source_file": new.source_file or e.source_file}))
    return out + list(by_id.values())
