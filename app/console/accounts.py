"""Staff accounts: create, change role, set password, disable (used by the CLI and the console)."""
from __future__ import annotations

import re

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.console.security import ROLES, hash_password, password_problem
from app.audit import record
from app.db.models import StaffSession, StaffUser

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")


class AccountError(ValueError):
    """A request the account rules refuse; the message says why, for the person who asked."""


def _check(username: str, role: str | None, password: str | None) -> None:
    if not USERNAME.match(username):
        raise AccountError("the username must be 2-64 lowercase letters, digits, '.', '_' or '-'")
    if role is not None and role not in ROLES:
        raise AccountError(f"the role must be one of {', '.join(ROLES)}")
    if password is not None and (problem := password_problem(password)):
        raise AccountError(problem)


def create_user(db: Session, username: str, role: str, password: str, actor: str, ip: str | None = None) -> StaffUser:
    username = username.strip().lower()
    _check(username, role, password)
    if db.scalar(select(StaffUser).where(StaffUser.username == username)) is not None:
        raise AccountError(f"the username {username!r} is taken")
    user = StaffUser(username=username, role=role, password_hash=hash_password(password), active=True)
    db.add(user)
    record(db, actor, "user.create", username, after={"role": role}, ip=ip)
    db.flush()
    return user


def update_user(db: Session, user: StaffUser, actor: str, role: str | None = None, active: bool | None = None,
                password: str | None = None, ip: str | None = None) -> None:
    """Change what is given; a disabled account or a new password ends the account's sessions."""
    _check(user.username, role, password)
    before = {"role": user.role, "active": user.active}
    if role is not None:
        user.role = role
    if active is not None:
        user.active = active
    if password is not None:
        user.password_hash = hash_password(password)
    if password is not None or active is False:
        db.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
    after = {"role": user.role, "active": user.active} | ({"password": "changed"} if password else {})
    record(db, actor, "user.update", user.username, before, after, ip)


def active_admins(db: Session) -> int:
    return len(db.scalars(select(StaffUser).where(StaffUser.role == "admin", StaffUser.active.is_(True))).all())
