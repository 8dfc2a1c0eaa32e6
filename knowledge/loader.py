"""Read the knowledge-base files into validated entries, with every problem's file and line."""
from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from knowledge.render import render_answer, unknown_placeholders
from knowledge.schema import MAX_ANSWER_CHARS, Entry, Parameter, Regime

CONTENT_DIR = Path(__file__).parent / "content"
PARAMETERS_FILE = "parameters.yaml"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the content, located for the person who will fix it."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class KnowledgeError(Exception):
    """The content has problems; `problems` lists every one of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class KnowledgeBase:
    """Validated entries and parameters, and a version that changes whenever the content does."""

    entries: list[Entry]
    parameters: dict[str, Parameter]
    version: str
    by_id: dict[str, Entry] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {e.id: e for e in self.entries}

    def answer(self, entry: Entry, lang: str, today: date | None = None) -> str:
        """The entry's answer in `lang` ("vi" or "en"), amounts filled in from the parameters."""
        text = entry.answer_en if lang == "en" and entry.answer_en else entry.answer_vi
        used_lang = "en" if lang == "en" and entry.answer_en else "vi"
        return render_answer(text, self.parameters, used_lang, today or date.today())

    def faq_entries(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "faq"]


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that remembers the line of every mapping and of each of its keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        mapping["__lines__"] = {
            k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)
        }
        return mapping


def _strip_lines(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_lines(v) for k, v in obj.items() if k not in ("__line__", "__lines__")}
    if isinstance(obj, list):
        return [_strip_lines(v) for v in obj]
    return obj


def _line_of(raw: dict[str, Any], loc: tuple[Any, ...]) -> int:
    if loc and isinstance(loc[0], str):
        return raw.get("__lines__", {}).get(loc[0], raw.get("__line__", 0))
    return raw.get("__line__", 0)


def _pydantic_problems(rel: str, raw: dict[str, Any], err: ValidationError, what: str) -> list[Problem]:
    out = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        out.append(Problem(rel, _line_of(raw, e["loc"]), f"{what}: {where}: {e['msg']}"))
    return out


def _read_yaml(raw: bytes, rel: str, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problems.append(Problem(rel, (mark.line + 1) if mark else 0, f"bad YAML: {exc.problem or exc}"))
        return None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(Problem(rel, 0, f"cannot read: {exc}"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(rel, 1, "the file must be a mapping with an `entries:` list"))
        return None
    return data


def _load_parameters(raw_file: bytes, rel: str, problems: list[Problem]) -> dict[str, Parameter]:
    params: dict[str, Parameter] = {}
    data = _read_yaml(raw_file, rel, problems)
    if data is None:
        return params
    for raw in data.get("parameters") or []:
        if not isinstance(raw, dict):
            problems.append(Problem(rel, data.get("__line__", 0), "a parameter must be a mapping"))
            continue
        try:
            p = Parameter.model_validate(_strip_lines(raw))
        except ValidationError as exc:
            problems.extend(_pydantic_problems(rel, raw, exc, f"parameter {raw.get('id', '?')}"))
            continue
        if p.id in params:
            problems.append(Problem(rel, raw["__line__"], f"duplicate parameter id {p.id!r}"))
        params[p.id] = p
    return params


def _load_entries(raw_file: bytes, rel: str, problems: list[Problem]) -> list[Entry]:
    data = _read_yaml(raw_file, rel, problems)
    if data is None:
        return []
    regime = data.get("regime")
    if regime is not None and regime not in Regime.__members__:
        line = data.get("__lines__", {}).get("regime", 1)
        problems.append(Problem(rel, line, f"unknown regime {regime!r} (one of: {', '.join(Regime)})"))
        regime = None
    raw_entries = data.get("entries")
    if not isinstance(raw_entries, list):
        problems.append(Problem(rel, data.get("__line__", 1), "missing `entries:` list"))
        return []
    entries = []
    for raw in raw_entries:
        if not isinstance(raw, dict):
            problems.append(Problem(rel, data.get("__line__", 1), "an entry must be a mapping"))
            continue
        fields = _strip_lines(raw)
        if regime is not None:
            fields.setdefault("regime", regime)
        fields.update(source_file=rel, source_line=raw["__line__"])
        try:
            entries.append(Entry.model_validate(fields))
        except ValidationError as exc:
            problems.extend(_pydantic_problems(rel, raw, exc, f"entry {raw.get('id', '?')}"))
    return entries


def _check_entries(entries: list[Entry], params: dict[str, Parameter], today: date, key_of: QuestionKey) -> list[Problem]:
    problems: list[Problem] = _phrasing_collisions(entries, key_of)
    seen: dict[str, Entry] = {}
    for e in entries:
        where = (e.source_file, e.source_line)
        if e.id in seen:
            first = seen[e.id]
            problems.append(Problem(*where, f"duplicate id {e.id!r} (first at {first.source_file}:{first.source_line})"))
        seen.setdefault(e.id, e)
        if e.kind == "faq":
            if e.regime is None:
                problems.append(Problem(*where, f"entry {e.id}: a faq entry needs a regime"))
            if not e.legal_basis:
                problems.append(Problem(*where, f"entry {e.id}: missing legal_basis"))
            if e.checked is None:
                problems.append(Problem(*where, f"entry {e.id}: missing checked date"))
        elif e.regime is not None:
            problems.append(Problem(*where, f"entry {e.id}: a {e.kind} entry carries no regime"))
        for lang, text in (("vi", e.answer_vi), ("en", e.answer_en)):
            if text is None:
                continue
            missing = unknown_placeholders(text, params)
            if missing:
                problems.append(Problem(*where, f"entry {e.id}: answer_{lang} uses unknown parameter(s) {', '.join(missing)}"))
                continue
            rendered = render_answer(text, params, lang, today)
            if len(rendered) > MAX_ANSWER_CHARS:
                problems.append(Problem(*where, f"entry {e.id}: answer_{lang} is {len(rendered)} characters (at most {MAX_ANSWER_CHARS})"))
    for e in entries:
        for rel_id in e.related:
            if rel_id not in seen:
                problems.append(Problem(e.source_file, e.source_line, f"entry {e.id}: related id {rel_id!r} does not exist"))
    return problems


QuestionKey = Callable[[str, str], str]


def plain_key(text: str, lang: str) -> str:
    """Two questions are "the same" when they differ only in case, spacing and Unicode form."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def _phrasing_collisions(entries: list[Entry], key_of: QuestionKey) -> list[Problem]:
    """The same question (once normalised) in two entries: the matcher could never tell them apart."""
    owner: dict[str, Entry] = {}
    problems = []
    for e in entries:
        for lang, questions in (("vi", e.questions_vi), ("en", e.questions_en)):
            for q in questions:
                key = key_of(q, lang)
                first = owner.setdefault(key, e)
                if first.id != e.id:
                    problems.append(Problem(e.source_file, e.source_line,
                                            f"entry {e.id}: question {q!r} is also a question of {first.id} ({first.source_file}:{first.source_line})"))
    return problems


def read_folder(content_dir: Path) -> dict[str, bytes]:
    """The folder's knowledge files (`*.yaml`), file name -> bytes as stored."""
    return {path.name: path.read_bytes() for path in sorted(Path(content_dir).glob("*.yaml"))}


def content_hash(files: Mapping[str, str | bytes]) -> str:
    """The version of a set of files: it changes whenever any file's name or content does."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + _as_bytes(files[name]))
    return digest.hexdigest()[:12]


def _as_bytes(content: str | bytes) -> bytes:
    return content.encode("utf-8") if isinstance(content, str) else content


def load_knowledge(
    content_dir: Path | None = None, today: date | None = None, question_key: QuestionKey = plain_key
) -> KnowledgeBase:
    """Load and validate every file; raise KnowledgeError listing all problems at once.
    `question_key` says when two questions are the same (the matcher passes its own normaliser)."""
    root = Path(content_dir or CONTENT_DIR)
    if not root.is_dir():
        raise KnowledgeError([Problem(str(root), 0, "knowledge directory not found")])
    return load_files(read_folder(root), today, question_key, where=str(root))


def load_files(
    files: Mapping[str, str | bytes], today: date | None = None, question_key: QuestionKey = plain_key,
    where: str = "knowledge base",
) -> KnowledgeBase:
    """Load and validate file texts held in memory (file name -> YAML), as `load_knowledge` does
    a folder: the same problems and, for the same texts, the same version. `where` names the
    whole in a problem that belongs to no file."""
    problems: list[Problem] = []
    params: dict[str, Parameter] = {}
    entries: list[Entry] = []
    for name in sorted(files):
        raw = _as_bytes(files[name])
        if name == PARAMETERS_FILE:
            params = _load_parameters(raw, name, problems)
        else:
            entries.extend(_load_entries(raw, name, problems))
    if not entries and not problems:
        problems.append(Problem(where, 0, "no entries found"))
    problems.extend(_check_entries(entries, params, today or date.today(), question_key))
    if problems:
        raise KnowledgeError(problems)
    return KnowledgeBase(entries=entries, parameters=params, version=content_hash(files))
