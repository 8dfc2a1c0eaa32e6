"""Knowledge-base versions in the database: seed, publish, restore and load them; apply drafts to
the YAML files; diff two versions; and the check run before a publish. No web code here."""
from __future__ import annotations

import difflib
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import TypeAdapter
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.audit import record
from app.db.models import KbDraft, KbVersion
from intents.normalize import question_key
from knowledge.loader import (PARAMETERS_FILE, KnowledgeBase, KnowledgeError, Problem, content_hash, load_files,
                              read_folder)
from knowledge.schema import Entry, Parameter, Regime
from knowledge.writer import CONVERSATION_FILE, render_file

log = structlog.get_logger(__name__)

SYSTEM = "system"  # the actor of what the service does by itself (the first version, at start-up)
SOURCES = ("files", "console", "restore")
# Fields of an entry as drafts and files hold them (the loader adds where it was read from).
ENTRY_FIELDS = ("id", "kind", "regime", "questions_vi", "questions_en", "keywords", "answer_vi", "answer_en",
                "legal_basis", "checked", "related")


# --- Loading --------------------------------------------------------------------------------------


def load(files: Mapping[str, str | bytes], today: date | None = None) -> KnowledgeBase:
    """Validate file texts exactly as the bot loads them (the matcher's notion of "same question")."""
    return load_files(files, today, question_key=question_key)


def folder_files(folder: Path) -> tuple[dict[str, str], KnowledgeBase]:
    """A folder's YAML files as texts, validated (KnowledgeError lists every problem)."""
    if not Path(folder).is_dir():
        raise KnowledgeError([Problem(str(folder), 0, "knowledge directory not found")])
    raw = read_folder(folder)
    kb = load_files(raw, question_key=question_key, where=str(folder))
    return {name: data.decode("utf-8") for name, data in raw.items()}, kb


def latest(db: Session) -> KbVersion | None:
    """The live version: the latest one published."""
    return db.scalar(select(KbVersion).order_by(KbVersion.id.desc()).limit(1))


def latest_id(db: Session) -> int | None:
    return db.scalar(select(func.max(KbVersion.id)))


def previous(db: Session, version: KbVersion) -> KbVersion | None:
    return db.scalar(select(KbVersion).where(KbVersion.id < version.id).order_by(KbVersion.id.desc()).limit(1))


def _lock_versions(db: Session) -> None:
    """Serialise publishers on PostgreSQL (two processes seeding or publishing at once would both
    read the same live version); SQLite serialises writers by itself."""
    if db.get_bind().dialect.name == "postgresql":
        db.execute(text("LOCK TABLE kb_versions IN SHARE ROW EXCLUSIVE MODE"))


def add_version(db: Session, files: Mapping[str, str], source: str, actor: str, note: str | None = None,
                report: dict[str, Any] | None = None, kb: KnowledgeBase | None = None) -> KbVersion:
    """Store a new live version (validated first unless its loaded `kb` is given)."""
    assert source in SOURCES
    kb = kb or load(files)
    row = KbVersion(version=kb.version, files=dict(sorted(files.items())), source=source, created_by=actor,
                    note=note or None, report=report)
    db.add(row)
    db.flush()
    return row


def startup_version(db: Session, folder: Path, follow_files: bool = True,
                    known: KnowledgeBase | None = None) -> tuple[KbVersion, KnowledgeBase | None]:
    """The version to serve at start-up. An empty table gets the folder's files as version 1.
    While the live version is still one the system took from the files (nobody has published
    since), changed files are taken as a new version too, so editing the YAML and restarting
    keeps working; once staff (or `vssbot kb publish`) have published, the files only warn.
    `known`: the folder's files already loaded (saves validating them twice). Returns the live
    version, and its knowledge base when it was loaded here."""
    _lock_versions(db)
    live = latest(db)
    disk = read_folder(folder) if Path(folder).is_dir() else {}
    disk_hash = content_hash(disk) if disk else None
    follows = live is not None and follow_files and live.source == "files" and live.created_by == SYSTEM
    if live is None or (follows and disk and disk_hash != live.version):
        if not disk:
            raise KnowledgeError([Problem(str(folder), 0, "knowledge directory not found or empty")])
        kb = known if known is not None and known.version == disk_hash else None
        kb = kb or load_files(disk, question_key=question_key, where=str(folder))
        files = {name: data.decode("utf-8") for name, data in disk.items()}
        note = "knowledge files at first start" if live is None else "knowledge files changed on disk"
        row = add_version(db, files, "files", SYSTEM, note, kb=kb)
        record(db, SYSTEM, "kb.publish", f"kb_version:{row.id}", {"version": live.version if live else None},
               {"version": row.version, "id": row.id, "source": "files", "note": note})
        db.commit()
        log.info("kb.version_from_files", id=row.id, version=row.version, folder=str(folder))
        return row, kb
    if disk_hash is not None and disk_hash != live.version:
        log.warning("kb.files_differ", live_id=live.id, live_version=live.version, files_version=disk_hash,
                    hint="the database's live version is served; `vssbot kb publish` publishes the files")
    db.commit()
    return live, None


def version_kb(row: KbVersion) -> KnowledgeBase:
    """Load a stored version (validated as at any load)."""
    return load_files(row.files, question_key=question_key, where=f"version #{row.id}")


# --- Drafts → files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One draft as the file writer sees it: the whole new value, or None to delete."""

    kind: str  # entry | parameter
    key: str
    data: dict[str, Any] | None


def changes_of(drafts: Iterable[KbDraft]) -> list[Change]:
    return [Change(d.kind, d.key, dict(d.data) if d.data is not None else None) for d in drafts]


def entry_of(data: Mapping[str, Any]) -> Entry:
    return Entry.model_validate({k: v for k, v in data.items() if k in ENTRY_FIELDS})


def entry_dict(entry: Entry) -> dict[str, Any]:
    data = entry.model_dump(mode="json", include=set(ENTRY_FIELDS))
    return {k: data.get(k) for k in ENTRY_FIELDS}


REGIME_LINE = re.compile(r"^regime:\s*['\"]?([a-z_]+)", re.MULTILINE)


def file_regime(text_: str) -> Regime | None:
    m = REGIME_LINE.search(text_)
    return Regime(m.group(1)) if m and m.group(1) in Regime.__members__ else None


def target_file(entry: Entry) -> str:
    """Where a new (or moved) entry goes: its regime's file, or the conversation file."""
    if entry.regime is not None:
        return f"{entry.regime.value}.yaml"
    return CONVERSATION_FILE


def entry_block(entry: Entry) -> str:
    """The entry as the writer lays it out inside a file's `entries:` list (the file says the
    regime, so the block does not)."""
    lines = render_file(None, [entry]).splitlines()
    return "\n".join(lines[lines.index("entries:") + 1:]).rstrip("\n") + "\n"


def _yaml_value(value: str) -> str:
    """A scalar as a plain YAML value when it reads back unchanged, else double-quoted."""
    plain = value.strip() == value and value and "#" not in value and not value.startswith(("'", '"', "{", "["))
    if plain:
        try:
            if yaml.safe_load(f"k: {value}") == {"k": value}:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parameter_block(p: Parameter) -> str:
    """A parameter in the layout of parameters.yaml (one flow mapping a dated value)."""
    lines = [f"  - id: {p.id}", f"    name_vi: {_yaml_value(p.name_vi)}", f"    name_en: {_yaml_value(p.name_en)}",
             f"    unit: {p.unit}", "    values:"]
    for v in sorted(p.values, key=lambda v: v.effective_from):
        lines.append(f"      - {{value: {_number(v.value)}, effective_from: {v.effective_from.isoformat()}, "
                     f"source: {json.dumps(v.source, ensure_ascii=False)}}}")
    return "\n".join(lines) + "\n"


def _spans(text_: str, key: str) -> list[tuple[str, int, int]]:
    """(id, first line, line after the last) of each item of the top-level list `key`; the
    blank lines and comments after an item belong to what follows, so they stay."""
    root = yaml.compose(text_)
    lines = text_.splitlines()
    seq = None
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.SequenceNode):
                seq = v
    if seq is None:
        return []
    starts: list[tuple[str, int]] = []
    for item in seq.value:
        item_id = ""
        if isinstance(item, yaml.MappingNode):
            for k, v in item.value:
                if isinstance(k, yaml.ScalarNode) and k.value == "id" and isinstance(v, yaml.ScalarNode):
                    item_id = v.value
        starts.append((item_id, item.start_mark.line))
    out = []
    for i, (item_id, start) in enumerate(starts):
        end = starts[i + 1][1] if i + 1 < len(starts) else max(seq.end_mark.line, start + 1)
        end = min(end, len(lines))
        while end > start + 1 and _separator(lines[end - 1]):
            end -= 1
        out.append((item_id, start, end))
    return out


def _separator(line: str) -> bool:
    stripped = line.strip()
    indent = len(line) - len(line.lstrip(" "))
    return not stripped or (stripped.startswith("#") and indent < 6)


def _splice(text_: str, key: str, replace: Mapping[str, str], remove: set[str], append: list[str]) -> str:
    """The file with some items of list `key` replaced by new blocks, some removed, new ones appended."""
    lines = text_.splitlines(keepends=True)
    for item_id, start, end in reversed(_spans(text_, key)):
        if item_id in remove:
            # take the blank lines after it too, so no double gap is left
            while end < len(lines) and not lines[end].strip():
                end += 1
            lines[start:end] = []
        elif item_id in replace:
            lines[start:end] = [replace[item_id]]
    out = "".join(lines)
    if append:
        out = out.rstrip("\n") + "\n" + "".join("\n" + block for block in append)
    return out


def _expected(text_: str, key: str, replace: Mapping[str, str], remove: set[str], append: list[str],
              head: str) -> list[Any]:
    """What the list `key` must read as after a splice (to check the splice against)."""
    items = (yaml.safe_load(text_) or {}).get(key) or []
    out = []
    for item in items:
        item_id = item.get("id") if isinstance(item, dict) else None
        if item_id in remove:
            continue
        out.append(yaml.safe_load(head + replace[item_id])[key][0] if item_id in replace else item)
    out.extend(yaml.safe_load(head + block)[key][0] for block in append)
    return out


def _items_of(text_: str, key: str) -> list[Any]:
    try:
        return (yaml.safe_load(text_) or {}).get(key) or []
    except yaml.YAMLError:
        return [None]


def apply_changes(files: Mapping[str, str], kb: KnowledgeBase, changes: Iterable[Change]) -> dict[str, str]:
    """The files of the would-be version: the live files with each change's entry or parameter
    replaced (deleted, or added), only the touched items rewritten so the diff shows just them.
    A draft that does not fit the schema raises KnowledgeError naming the draft."""
    out = dict(files)
    problems: list[Problem] = []
    replace: dict[str, dict[str, Entry]] = {}
    remove: dict[str, set[str]] = {}
    append: dict[str, list[Entry]] = {}
    params: dict[str, Parameter | None] = {}
    for ch in changes:
        if ch.kind == "parameter":
            try:
                params[ch.key] = Parameter.model_validate(ch.data) if ch.data is not None else None
            except ValueError as exc:
                problems.append(Problem(f"draft {ch.key}", 0, f"parameter {ch.key}: {exc}"))
            continue
        live = kb.by_id.get(ch.key)
        if ch.data is None:
            if live is not None:
                remove.setdefault(live.source_file, set()).add(ch.key)
            continue
        try:
            entry = entry_of(ch.data)
        except ValueError as exc:
            problems.append(Problem(f"draft {ch.key}", 0, f"entry {ch.key}: {exc}"))
            continue
        stays = live is not None and live.source_file in out and file_regime(out[live.source_file]) == entry.regime
        if live is not None and stays:
            replace.setdefault(live.source_file, {})[entry.id] = entry
            continue
        if live is not None:
            remove.setdefault(live.source_file, set()).add(ch.key)
        append.setdefault(target_file(entry), []).append(entry)
    if problems:
        raise KnowledgeError(problems)
    for name in sorted(set(replace) | set(remove) | set(append)):
        out_text = _apply_entries(out.get(name), name, kb, replace.get(name, {}), remove.get(name, set()),
                                  append.get(name, []))
        if out_text is None:
            out.pop(name, None)
        else:
            out[name] = out_text
    if params:
        out[PARAMETERS_FILE] = _apply_parameters(out.get(PARAMETERS_FILE), kb, params)
    return out


def _apply_entries(current: str | None, name: str, kb: KnowledgeBase, replace: dict[str, Entry], remove: set[str],
                   new: list[Entry]) -> str | None:
    """One entry file after the changes (None: no entry is left, so the file goes)."""
    if current is None:
        return render_file(new[0].regime if name != CONVERSATION_FILE else None, new)
    regime = file_regime(current) if name != CONVERSATION_FILE else None
    blocks = {i: entry_block(e) for i, e in replace.items()}
    added = [entry_block(e) for e in new]
    head = f"regime: {regime.value}\nentries:\n" if regime else "entries:\n"
    result = _splice(current, "entries", blocks, remove, added)
    items = _items_of(result, "entries")
    if not items:
        return None
    if items != _expected(current, "entries", blocks, remove, added, head):
        # a layout the splice does not understand: write the whole file from the entries instead
        keep = [replace.get(e.id, e) for e in kb.entries if e.source_file == name and e.id not in remove]
        return render_file(regime, keep + new)
    return result


def _apply_parameters(current: str | None, kb: KnowledgeBase, params: dict[str, Parameter | None]) -> str:
    current = current if current is not None else "parameters:\n"
    replace = {pid: parameter_block(p) for pid, p in params.items() if p is not None and pid in kb.parameters}
    remove = {pid for pid, p in params.items() if p is None}
    new = [parameter_block(p) for pid, p in params.items() if p is not None and pid not in kb.parameters]
    result = _splice(current, "parameters", replace, remove, new)
    if _items_of(result, "parameters") == _expected(current, "parameters", replace, remove, new, "parameters:\n"):
        return result
    merged = {**kb.parameters, **{pid: p for pid, p in params.items() if p is not None}}
    comments = "".join(line for line in current.splitlines(keepends=True) if line.startswith("#"))
    return comments + "parameters:\n" + "".join(parameter_block(p) for pid, p in merged.items() if pid not in remove)


def block_of(change: Change, kb: KnowledgeBase) -> tuple[str, str]:
    """(live, draft) texts of one change, laid out as in the files: what its diff compares."""
    if change.kind == "parameter":
        live_p = kb.parameters.get(change.key)
        before = parameter_block(live_p) if live_p else ""
        try:
            after = parameter_block(Parameter.model_validate(change.data)) if change.data is not None else ""
        except ValueError as exc:
            after = f"# {exc}\n"
        return before, after
    live_e = kb.by_id.get(change.key)
    before = _with_regime(entry_block(live_e), live_e.regime) if live_e else ""
    if change.data is None:
        return before, ""
    try:
        entry = entry_of(change.data)
    except ValueError as exc:
        return before, f"# {exc}\n"
    return before, _with_regime(entry_block(entry), entry.regime)


def _with_regime(block: str, regime: Regime | None) -> str:
    # in the files the regime is the file's; a diff of one entry shows it as a first line
    return f"  # regime: {regime.value if regime else '-'}\n" + block


# --- Comparing versions ---------------------------------------------------------------------------


@dataclass
class FileDiff:
    name: str
    lines: list[str]
    added: int
    removed: int


def diff_files(old: Mapping[str, str], new: Mapping[str, str], context: int = 3) -> list[FileDiff]:
    """A unified diff per file that differs (added and removed files too)."""
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, ""), new.get(name, "")
        if a == b:
            continue
        lines = [line.rstrip("\n") for line in difflib.unified_diff(
            a.splitlines(keepends=True), b.splitlines(keepends=True),
            fromfile=f"a/{name}" if name in old else "/dev/null", tofile=f"b/{name}" if name in new else "/dev/null",
            n=context)]
        added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
        removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
        out.append(FileDiff(name, lines, added, removed))
    return out


def text_diff(before: str, after: str, name: str = "") -> list[str]:
    return [line.rstrip("\n") for line in difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=f"live {name}".strip(), tofile=f"draft {name}".strip(), n=50)]


def changed_ids(old: KnowledgeBase, new: KnowledgeBase) -> dict[str, list[str]]:
    """Entry and parameter ids whose content differs between two knowledge bases."""
    old_e = {e.id: entry_dict(e) for e in old.entries}
    new_e = {e.id: entry_dict(e) for e in new.entries}
    entries = sorted(i for i in set(old_e) | set(new_e) if old_e.get(i) != new_e.get(i))
    params = sorted(i for i in set(old.parameters) | set(new.parameters) if old.parameters.get(i) != new.parameters.get(i))
    return {"entries": entries, "parameters": params}


# --- Publish and restore ----------------------------------------------------------------------------


class PublishRefused(Exception):
    """A publish or restore that cannot be made; `problems` when validation failed."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass
class Published:
    version: KbVersion
    kb: KnowledgeBase
    before: str | None
    changed: dict[str, list[str]]


def draft_state(db: Session, live_kb: KnowledgeBase | None = None) -> tuple[KbVersion, KnowledgeBase, dict[str, str]]:
    """The live version, its loaded knowledge base, and the files the pending drafts would make.
    Raises KnowledgeError when a draft does not fit the schema."""
    live = latest(db)
    if live is None:
        raise PublishRefused("no live version yet (the service seeds one at start-up)")
    kb = live_kb if live_kb is not None and live_kb.version == live.version else version_kb(live)
    drafts = list(db.scalars(select(KbDraft).order_by(KbDraft.updated_at, KbDraft.id)))
    return live, kb, apply_changes(live.files, kb, changes_of(drafts))


def publish_drafts(db: Session, actor: str, note: str, checked: str | None, report: dict[str, Any] | None,
                   live_kb: KnowledgeBase | None = None) -> Published:
    """Publish the pending drafts as a new version and clear them (the caller commits).
    `checked`: the draft version the check ran on; publishing something else is refused."""
    _lock_versions(db)
    drafts = list(db.scalars(select(KbDraft).order_by(KbDraft.updated_at, KbDraft.id).with_for_update()))
    if not drafts:
        raise PublishRefused("nothing to publish: there is no draft")
    try:
        live, kb, files = draft_state(db, live_kb)
        new_kb = load(files)
    except KnowledgeError as exc:
        raise PublishRefused("the drafts do not validate", exc.problems) from exc
    if checked is not None and new_kb.version != checked:
        raise PublishRefused("the drafts changed after the check: run the check again")
    if new_kb.version == live.version:
        raise PublishRefused("the drafts change nothing in the live version: discard them")
    row = add_version(db, files, "console", actor, note, report, kb=new_kb)
    for d in drafts:
        db.delete(d)
    return Published(row, new_kb, live.version, changed_ids(kb, new_kb))


def restore(db: Session, version_id: int, actor: str, note: str | None = None,
            live_kb: KnowledgeBase | None = None) -> Published:
    """A new version whose files are those of version `version_id` (the caller commits)."""
    _lock_versions(db)
    old = db.get(KbVersion, version_id)
    if old is None:
        raise LookupError(version_id)
    live = latest(db)
    assert live is not None
    if old.version == live.version:
        raise PublishRefused("that version's content is already live")
    try:
        new_kb = version_kb(old)
    except KnowledgeError as exc:
        raise PublishRefused("that version no longer validates", exc.problems) from exc
    kb = live_kb if live_kb is not None and live_kb.version == live.version else version_kb(live)
    row = add_version(db, old.files, "restore", actor, note or f"restore of #{old.id}", kb=new_kb)
    return Published(row, new_kb, live.version, changed_ids(kb, new_kb))


def publish_files(db: Session, files: Mapping[str, str], kb: KnowledgeBase, actor: str, note: str | None) -> Published | None:
    """Publish a folder's files (`vssbot kb publish`); None when they are the live version already."""
    _lock_versions(db)
    live = latest(db)
    if live is not None and live.version == kb.version:
        return None
    old_kb = version_kb(live) if live is not None else None
    row = add_version(db, files, "files", actor, note, kb=kb)
    changed = changed_ids(old_kb, kb) if old_kb is not None else {"entries": [e.id for e in kb.entries], "parameters": []}
    return Published(row, kb, live.version if live else None, changed)


def audit_after(p: Published, note: str | None = None, **extra: Any) -> dict[str, Any]:
    """What the audit log keeps of a publish: the new version and what it changed (not the files)."""
    return {"version": p.version.version, "id": p.version.id, "note": note, **p.changed, **extra}


# --- The check before a publish ---------------------------------------------------------------------


@dataclass
class EvalFigures:
    cases: int
    right: float
    wrong: float
    clarified: float


@dataclass
class CheckReport:
    """What the check found: validation problems, evaluation and self-test figures, new findings."""

    draft_version: str = ""
    live_version: str = ""
    problems: list[str] = field(default_factory=list)
    eval_note: str | None = None
    eval_live: EvalFigures | None = None
    eval_draft: EvalFigures | None = None
    selftest_live: float | None = None
    selftest_draft: float | None = None
    selftest_phrasings: int = 0
    new_findings: list[str] = field(default_factory=list)
    changed: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckReport:
        """A report read back (from a version row, or the publish form): checked field by field,
        so a malformed one raises ValueError instead of breaking a page later."""
        return TypeAdapter(cls).validate_python(dict(data))


def eval_figures(bot: Any, cases: list[dict[str, Any]]) -> EvalFigures:
    from app.evaluation import evaluate_bot

    report = evaluate_bot(bot, cases)
    return EvalFigures(len(cases), round(report.share(), 4), round(report.share("wrong"), 4),
                       round(report.share("clarified"), 4))


def _eval_cases(eval_dir: Path) -> tuple[list[dict[str, Any]] | None, str | None]:
    from app.evaluation import load_cases

    if not Path(eval_dir).is_dir() or not any(Path(eval_dir).glob("*.jsonl")):
        return None, f"no evaluation set at {eval_dir}: skipped"
    try:
        cases = load_cases([Path(eval_dir)])
    except (OSError, ValueError) as exc:
        return None, f"the evaluation set could not be read: {exc}"
    return (cases, None) if cases else (None, f"the evaluation set at {eval_dir} is empty: skipped")


@dataclass
class _Figures:
    eval: EvalFigures | None
    findings: set[str]
    selftest: float
    phrasings: int


_live_cache: dict[tuple[str, str, float], _Figures] = {}
_live_lock = threading.Lock()


def _figures(bot: Any, cases: list[dict[str, Any]] | None) -> _Figures:
    from app.lint import lint
    from intents.selftest import rate

    findings, held = lint(bot.kb, bot.matcher)
    return _Figures(eval_figures(bot, cases) if cases is not None else None, {str(f) for f in findings}, rate(held), len(held))


def _finding_key(line: str) -> str:
    # "file:line: id: message": the line moves when an entry above it changes, so compare without it
    parts = line.split(": ", 1)
    return parts[1] if len(parts) == 2 else line


def run_check(live_bot: Any, files: Mapping[str, str], eval_dir: Path) -> CheckReport:
    """Validate the would-be files; when they load, measure live and draft bots on the evaluation
    set and the leave-one-out self-test, and list lint findings the draft adds."""
    from app.bot import Bot

    started = time.monotonic()
    live_kb = live_bot.kb
    report = CheckReport(live_version=live_kb.version)
    try:
        draft_kb = load(files)
    except KnowledgeError as exc:
        report.problems = [str(p) for p in exc.problems]
        report.draft_version = content_hash(files)
        report.seconds = round(time.monotonic() - started, 1)
        return report
    report.draft_version = draft_kb.version
    report.changed = changed_ids(live_kb, draft_kb)
    cases, report.eval_note = _eval_cases(eval_dir)
    stamp = max((p.stat().st_mtime for p in Path(eval_dir).glob("*.jsonl")), default=0.0) if cases else 0.0
    key = (live_kb.version, str(eval_dir), stamp)
    with _live_lock:
        live = _live_cache.get(key)
    if live is None:
        live = _figures(live_bot, cases)
        with _live_lock:
            _live_cache.clear()  # only the current live version is worth keeping
            _live_cache[key] = live
    draft = _figures(Bot(kb=draft_kb, config=live_bot.config), cases)
    report.eval_live, report.eval_draft = live.eval, draft.eval
    report.selftest_live, report.selftest_draft = round(live.selftest, 4), round(draft.selftest, 4)
    report.selftest_phrasings = draft.phrasings
    live_keys = {_finding_key(f) for f in live.findings}
    report.new_findings = sorted(f for f in draft.findings if _finding_key(f) not in live_keys)
    report.seconds = round(time.monotonic() - started, 1)
    return report
