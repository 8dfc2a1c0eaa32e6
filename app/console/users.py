"""Console: the start page, staff accounts, the audit log and the settings (admin), one's own password."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import make_url, select

from app.console.accounts import AccountError, active_admins, create_user, update_user
from app.console.deps import Admin, AdminAction, DbSession, ServicesDep, Viewer, ViewerAction, client_ip, render
from app.console.security import ROLES, verify_password
from app.db.models import AuditLog, StaffUser
from app.services import Services

router = APIRouter()
AUDIT_PAGE = 100


@router.get("/admin", include_in_schema=False)
def start(staff: Viewer) -> Response:
    return RedirectResponse("/admin/review" if staff.can("editor") else "/admin/dashboard", status_code=303)


@router.get("/admin/users", response_class=HTMLResponse, include_in_schema=False)
def users_page(request: Request, staff: Admin, db: DbSession, flash: str | None = None,
               error: str | None = None) -> Response:
    users = db.scalars(select(StaffUser).order_by(StaffUser.username)).all()
    return render(request, "console/users.html", {"users": users, "roles": ROLES, "flash": flash or error,
                                                  "flash_kind": "error" if error else "ok"})


@router.post("/admin/users", include_in_schema=False)
def users_create(
    request: Request, staff: AdminAction, db: DbSession,
    username: Annotated[str, Form()], role: Annotated[str, Form()], password: Annotated[str, Form()],
) -> Response:
    try:
        create_user(db, username, role, password, staff.username, client_ip(request))
    except AccountError as exc:
        return users_page(request, staff, db, error=str(exc))
    db.commit()
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/admin/users/{user_id}", include_in_schema=False)
def users_update(
    request: Request, user_id: int, staff: AdminAction, db: DbSession,
    role: Annotated[str | None, Form()] = None, active: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
) -> Response:
    user = db.get(StaffUser, user_id)
    if user is None:
        raise HTTPException(404, "no such account")
    want_active = None if active is None else active == "1"
    losing_admin = user.role == "admin" and user.active and (
        (role is not None and role != "admin") or want_active is False)
    if losing_admin and active_admins(db) <= 1:
        return users_page(request, staff, db, error="Cần giữ ít nhất một quản trị viên / at least one admin must remain")
    try:
        update_user(db, user, staff.username, role=role or None, active=want_active, password=password or None,
                    ip=client_ip(request))
    except AccountError as exc:
        return users_page(request, staff, db, error=str(exc))
    db.commit()
    return RedirectResponse("/admin/users", status_code=303)


@router.get("/admin/audit", response_class=HTMLResponse, include_in_schema=False)
def audit_page(request: Request, staff: Admin, db: DbSession, action: str = "", actor: str = "",
               page: int = 0) -> Response:
    q = select(AuditLog).order_by(AuditLog.id.desc())
    if action:
        q = q.where(AuditLog.action.startswith(action))
    if actor:
        q = q.where(AuditLog.actor == actor)
    rows = db.scalars(q.offset(max(page, 0) * AUDIT_PAGE).limit(AUDIT_PAGE + 1)).all()
    return render(request, "console/audit.html", {
        "rows": rows[:AUDIT_PAGE], "more": len(rows) > AUDIT_PAGE, "page": page, "action": action, "actor": actor})


SECRET_WORDS = ("secret", "token", "key", "password")


def _setting_rows(svc: Services) -> list[tuple[str, str, str]]:
    """(environment variable, value, description) of every setting; secrets only as set / not set,
    and a database URL without its password."""
    settings = svc.settings
    rows = []
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if any(word in name for word in SECRET_WORDS):
            shown = "••• (set)" if value else "(not set)"
        elif name == "database_url":
            shown = make_url(str(value)).render_as_string(hide_password=True)
        else:
            shown = "" if value is None else str(value)
        rows.append((f"VSSBOT_{name.upper()}", shown, field.description or ""))
    return rows


@router.get("/admin/settings", response_class=HTMLResponse, include_in_schema=False)
def settings_page(request: Request, staff: Admin, svc: ServicesDep) -> Response:
    """The settings this process runs with (read-only: they come from the environment)."""
    return render(request, "console/settings.html", {"rows": _setting_rows(svc), "kb_version": svc.bot.kb.version})


@router.get("/admin/account", response_class=HTMLResponse, include_in_schema=False)
def account_page(request: Request, staff: Viewer, flash: str | None = None, error: str | None = None) -> Response:
    return render(request, "console/account.html", {"flash": flash or error, "flash_kind": "error" if error else "ok"})


@router.post("/admin/account", include_in_schema=False)
def account_password(
    request: Request, staff: ViewerAction, db: DbSession,
    current: Annotated[str, Form()], password: Annotated[str, Form()],
) -> Response:
    user = db.get(StaffUser, staff.id)
    assert user is not None
    if not verify_password(user.password_hash, current):
        return account_page(request, staff, error="Mật khẩu hiện tại không đúng / the current password is wrong")
    try:
        update_user(db, user, staff.username, password=password, ip=client_ip(request))
    except AccountError as exc:
        return account_page(request, staff, error=str(exc))
    db.commit()
    return RedirectResponse("/admin/login", status_code=303)
