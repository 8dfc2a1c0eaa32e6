"""Write entries back to the YAML files, one file a regime, in the layout people edit by hand."""
from __future__ import annotations

from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from knowledge.schema import REGIME_NAMES, Entry, Regime

FIELD_ORDER = ["id", "kind", "questions_vi", "questions_en", "keywords", "answer_vi", "answer_en",
               "legal_basis", "checked", "related"]
CONVERSATION_FILE = "conversation.yaml"


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # list items indented under their key, as the hand-written files have them
        return super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _entry_dict(e: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELD_ORDER:
        value = getattr(e, name)
        if name == "kind" and value == "faq":
            continue
        if value in (None, []) and name not in ("related",):
            continue
        if name == "related" and e.kind != "faq" and not value:
            continue
        if isinstance(value, str) and name.startswith("answer"):
            value = value.rstrip() + "\n"
        out[name] = value.isoformat() if isinstance(value, date) else value
    return out


def file_for(e: Entry) -> str:
    if e.source_file:
        return e.source_file
    return f"{e.regime.value}.yaml" if e.regime else CONVERSATION_FILE


def render_file(regime: Regime | None, entries: list[Entry]) -> str:
    if regime is None:
        head = "# Conversational intents: small talk, requests for a person, out-of-scope topics.\n"
        body: dict[str, Any] = {"entries": [_entry_dict(e) for e in entries]}
    else:
        vi, en = REGIME_NAMES[regime].vi, REGIME_NAMES[regime].en
        head = f"# {vi} — {en}. One entry per question people ask; see knowledge/README.md.\n"
        body = {"regime": regime.value, "entries": [_entry_dict(e) for e in entries]}
    text = yaml.dump(body, Dumper=_Dumper, allow_unicode=True, sort_keys=False, width=4096, indent=2)
    return head + _unquote_dates(text)


def _unquote_dates(text: str) -> str:
    """Dates were dumped as quoted ISO strings: unquote them so they read back as dates."""
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("checked: '") and stripped.endswith("'"):
            line = line.replace("'", "")
        if line.startswith("  - id: ") and lines and lines[-1] != "entries:":
            lines.append("")  # a blank line between entries
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_entries(entries: list[Entry], folder: Path) -> list[Path]:
    """Rewrite every entry file under `folder` from `entries` (parameters.yaml is untouched)."""
    groups: dict[str, list[Entry]] = defaultdict(list)
    for e in entries:
        groups[file_for(e)].append(e)
    written = []
    for name, group in sorted(groups.items()):
        regime = group[0].regime if name != CONVERSATION_FILE else None
        path = folder / name
        path.write_text(render_file(regime, group), encoding="utf-8")
        written.append(path)
    return written
