"""What every console route needs: the logged-in staff member and their role, CSRF checking,
the audit log, and page rendering in the staff member's language.

Routes declare what they need with the typed aliases at the bottom:

    def page(staff: Viewer, db: DbSession) -> HTMLResponse            # any logged-in staff
    def action(staff: EditorAction, db: DbSession) -> RedirectResponse  # editor + valid CSRF token
"""
from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from app.console.security import role_allows, token_hash
from app.audit import record
from app.db.models import StaffSession, as_utc, utcnow
from app.privacy import mask_pii
from app.services import Services

SESSION_COOKIE = "vssbot_console"
LANG_COOKIE = "vssbot_console_lang"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
TEMPLATES = Path(__file__).resolve().parent.parent / "templates"

templates = Jinja2Templates(directory=TEMPLATES)
templates.env.filters["mask"] = mask_pii


class LoginRequired(Exception):
    """Raised for an anonymous request: pages redirect to the login page, API calls get 401."""


@dataclass(frozen=True)
class Staff:
    """The logged-in staff member, as routes see them."""

    id: int
    username: str
    role: str
    csrf_token: str
    lang: str

    def can(self, role: str) -> bool:
        return role_allows(self.role, role)


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
    return request.app.state.services


def get_db(request: Request) -> Iterator[Session]:
    """A session for one request; the route commits what it changes (`db.commit()`)."""
    with request.app.state.services.sessions() as session:
        yield session


def console_lang(request: Request) -> str:
    lang = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or "vi"
    return lang if lang in ("vi", "en") else "vi"


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


def current_staff(request: Request, db: Session = Depends(get_db)) -> Staff:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise LoginRequired
    row = db.get(StaffSession, token_hash(token))
    if row is None or as_utc(row.expires_at) < utcnow() or not row.user.active:
        raise LoginRequired
    staff = Staff(row.user.id, row.user.username, row.user.role, row.csrf_token, console_lang(request))
    request.state.staff = staff
    return staff


async def _check_csrf(request: Request, staff: Staff) -> None:
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        sent = str((await request.form()).get(CSRF_FIELD) or "")
    if not sent or not hmac.compare_digest(sent, staff.csrf_token):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


def require(role: str, action: bool = False) -> Any:
    """A dependency: the staff member must have `role`; `action`: also a valid CSRF token."""

    async def dependency(request: Request, staff: Staff = Depends(current_staff)) -> Staff:
        if not staff.can(role):
            raise HTTPException(403, f"this needs the {role} role")
        if action:
            await _check_csrf(request, staff)
        return staff

    return Depends(dependency)


def audit(db: Session, staff: Staff | str, action: str, target: str | None = None, before: Any = None,
          after: Any = None, request: Request | None = None) -> None:
    """Record a change in the audit log (in the caller's transaction: both land or neither)."""
    actor = staff if isinstance(staff, str) else staff.username
    record(db, actor, action, target, before, after, client_ip(request) if request else None)


def tr(lang: str) -> Any:
    """The template helper `_("Vietnamese", "English")`: the text in the page's language."""

    def _(vi: str, en: str) -> str:
        return en if lang == "en" else vi

    return _


def render(request: Request, template: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    """A console page: the template gets `staff`, `_` (translation), `lang`, `csrf_token`, `now`."""
    staff: Staff | None = getattr(request.state, "staff", None)
    lang = staff.lang if staff else console_lang(request)
    ctx = {
        "staff": staff, "_": tr(lang), "lang": lang, "csrf_token": staff.csrf_token if staff else "",
        "csrf_field": CSRF_FIELD, "now": utcnow(), "path": request.url.path,
        "login_next": quote(str(request.url.path)),
    }
    ctx.update(context or {})
    return templates.TemplateResponse(request, template, ctx, status_code=status_code)


def fmt_time(dt: datetime | None) -> str:
    return as_utc(dt).strftime("%Y-%m-%d %H:%M") if dt else ""


def fmt_age(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} d"


templates.env.filters["time"] = fmt_time
templates.env.filters["age"] = fmt_age

DbSession = Annotated[Session, Depends(get_db)]
ServicesDep = Annotated[Services, Depends(get_services)]
Viewer = Annotated[Staff, require("viewer")]
Editor = Annotated[Staff, require("editor")]
Admin = Annotated[Staff, require("admin")]
EditorAction = Annotated[Staff, require("editor", action=True)]
AdminAction = Annotated[Staff, require("admin", action=True)]
ViewerAction = Annotated[Staff, require("viewer", action=True)]  # e.g. change one's own password
