"""Claiming queue rows (the outbox, the webhook inbox) so that several processes share a queue.

On PostgreSQL the due rows are selected `FOR UPDATE SKIP LOCKED`: concurrent claimers each lock
different rows instead of queueing behind the same first ones. SQLite has no row locks (one
writer at a time, one process): a conditional UPDATE per row, so a row another claim took in
between is not taken twice. Either way the caller's `values` (a lease) are written on the rows,
so a claim whose process died expires and the rows are taken again.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session


def claim_ids(session: Session, model: Any, due: ColumnElement[bool], values: dict[str, Any], limit: int) -> list[int]:
    """Ids of up to `limit` due rows of `model` (oldest first), now carrying `values`."""
    query = select(model.id).where(due).order_by(model.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        claimed = list(session.scalars(query.with_for_update(skip_locked=True)).all())
        if claimed:
            session.execute(update(model).where(model.id.in_(claimed)).values(**values))
        return claimed
    claimed = []
    for row_id in session.scalars(query).all():
        if session.execute(update(model).where(model.id == row_id, due).values(**values)).rowcount == 1:  # type: ignore[attr-defined]
            claimed.append(row_id)
    return claimed
