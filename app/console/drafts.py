"""Unpublished knowledge-base changes (drafts): one row per changed entry or parameter, holding
its whole new value. The review queue and the knowledge-base editor both write here; publishing
(app/console/kb.py) applies them to the live knowledge base and clears them."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import KbDraft, utcnow
from intents.normalize import question_key
from knowledge.loader import KnowledgeBase
from knowledge.schema import Entry

# Fields of an entry as the YAML files and drafts hold them (not where it was read from).
ENTRY_FIELDS = ("id", "kind", "regime", "questions_vi", "questions_en", "keywords", "answer_vi", "answer_en",
                "legal_basis", "checked", "related")


class DraftError(ValueError):
    """A draft change that cannot be made; the message says why, for the staff member."""


def entry_data(entry: Entry) -> dict[str, Any]:
    """An entry as a JSON-able dict (what a draft stores)."""
    data = entry.model_dump(mode="json", include=set(ENTRY_FIELDS))
    return {k: data.get(k) for k in ENTRY_FIELDS}


def draft_of(db: Session, kind: str, key: str) -> KbDraft | None:
    return db.scalar(select(KbDraft).where(KbDraft.kind == kind, KbDraft.key == key))


def current_entry(db: Session, kb: KnowledgeBase, entry_id: str) -> dict[str, Any] | None:
    """The entry as it will be published: its draft if it has one, else the live entry
    (None if it does not exist or a draft deletes it)."""
    draft = draft_of(db, "entry", entry_id)
    if draft is not None:
        return dict(draft.data) if draft.data is not None else None
    entry = kb.by_id.get(entry_id)
    return entry_data(entry) if entry else None


def save_entry(db: Session, data: dict[str, Any], actor: str, base_version: str | None = None) -> KbDraft:
    """Store the whole new value of an entry as a draft (validated against the schema first)."""
    try:
        Entry.model_validate({k: v for k, v in data.items() if k in ENTRY_FIELDS})
    except Exception as exc:  # noqa: BLE001 - pydantic's message is what the editor needs
        raise DraftError(str(exc)) from exc
    return _save(db, "entry", data["id"], data, actor, base_version)


def delete_entry(db: Session, entry_id: str, actor: str, base_version: str | None = None) -> KbDraft:
    return _save(db, "entry", entry_id, None, actor, base_version)


def save_parameter(db: Session, data: dict[str, Any], actor: str, base_version: str | None = None) -> KbDraft:
    return _save(db, "parameter", data["id"], data, actor, base_version)


def _save(db: Session, kind: str, key: str, data: dict[str, Any] | None, actor: str,
          base_version: str | None) -> KbDraft:
    draft = draft_of(db, kind, key)
    if draft is None:
        draft = KbDraft(kind=kind, key=key, base_version=base_version, updated_by=actor)
        db.add(draft)
    draft.data, draft.updated_by, draft.updated_at = data, actor, utcnow()
    db.flush()
    return draft


def add_phrasing(db: Session, kb: KnowledgeBase, entry_id: str, text: str, lang: str, actor: str) -> bool:
    """Add `text` as a question of the entry (Vietnamese or English list), as a draft.
    False if the entry already has that question (as the matcher normalises it)."""
    data = current_entry(db, kb, entry_id)
    if data is None:
        raise DraftError(f"no entry {entry_id!r}")
    text = " ".join(text.split())
    if not text:
        raise DraftError("the phrasing is empty")
    field = "questions_en" if lang == "en" else "questions_vi"
    existing = list(data.get(field) or [])
    if any(question_key(q, lang) == question_key(text, lang) for q in existing):
        return False
    data[field] = existing + [text]
    save_entry(db, data, actor, kb.version)
    return True


def pending(db: Session) -> list[KbDraft]:
    return list(db.scalars(select(KbDraft).order_by(KbDraft.updated_at)))
