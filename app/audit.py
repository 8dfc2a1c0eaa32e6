"""The audit log: one row for every change staff or an operator made (who, what, when, before, after)."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.db.models import AuditLog


def record(db: Session, actor: str, action: str, target: str | None = None, before: Any = None,
           after: Any = None, ip: str | None = None) -> None:
    """Add the row to the caller's transaction: the change and its record land together or not at all."""
    db.add(AuditLog(actor=actor, action=action, target=target, before=before, after=after, ip=ip))
