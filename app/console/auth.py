"""Logging in and out of the console, with failed attempts rate-limited per username and address."""
from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.console.deps import (
    SESSION_COOKIE, DbSession, ServicesDep, ViewerAction, audit, client_ip, console_lang, render,
)
from app.console.security import new_token, token_hash, verify_password
from app.db.models import LoginAttempt, StaffSession, StaffUser, utcnow

router = APIRouter()
FAILURE_WINDOW = timedelta(minutes=15)
IP_FACTOR = 4  # an address may fail for several usernames (an office behind one NAT)


def _safe_next(target: str | None) -> str:
    """Only a path inside the console: never an open redirect to another site."""
    if target and target.startswith("/admin") and not target.startswith("//"):
        return target
    return "/admin"


def _too_many_failures(db: Session, username: str, ip: str, limit: int) -> bool:
    since = utcnow() - FAILURE_WINDOW
    by_user = db.scalar(select(func.count()).where(LoginAttempt.username == username, LoginAttempt.at > since)) or 0
    by_ip = db.scalar(select(func.count()).where(LoginAttempt.ip == ip, LoginAttempt.at > since)) or 0
    return by_user >= limit or by_ip >= limit * IP_FACTOR


@router.get("/admin/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, next: str = "/admin") -> Response:  # noqa: A002 - the usual name
    return render(request, "console/login.html", {"next": _safe_next(next)})


@router.post("/admin/login", include_in_schema=False)
def login(
    request: Request, db: DbSession, svc: ServicesDep,
    username: Annotated[str, Form(max_length=64)], password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/admin",  # noqa: A002
) -> Response:
    settings = svc.settings
    ip = client_ip(request)
    username = username.strip().lower()
    lang = console_lang(request)

    def refuse(message: str, status: int) -> Response:
        return render(request, "console/login.html", {"error": message, "next": _safe_next(next), "username": username},
                      status_code=status)

    if _too_many_failures(db, username, ip, settings.login_max_failures):
        return refuse("Bạn đã nhập sai quá nhiều lần. Hãy thử lại sau 15 phút." if lang == "vi"
                      else "Too many failed attempts. Try again in 15 minutes.", 429)
    user = db.scalar(select(StaffUser).where(StaffUser.username == username))
    if not verify_password(user.password_hash if user else None, password) or user is None or not user.active:
        db.add(LoginAttempt(username=username, ip=ip))
        db.commit()
        return refuse("Sai tên đăng nhập hoặc mật khẩu." if lang == "vi" else "Wrong username or password.", 401)
    token = new_token()
    now = utcnow()
    db.execute(delete(StaffSession).where(StaffSession.expires_at < now))
    db.execute(delete(LoginAttempt).where(LoginAttempt.username == username))
    db.add(StaffSession(token_hash=token_hash(token), user_id=user.id, csrf_token=new_token(),
                        expires_at=now + timedelta(hours=settings.console_session_hours)))
    user.last_login_at = now
    audit(db, user.username, "auth.login", target=user.username, request=request)
    db.commit()
    response = RedirectResponse(_safe_next(next), status_code=303)
    secure = settings.cookie_secure if settings.cookie_secure is not None else request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, token, max_age=int(settings.console_session_hours * 3600), httponly=True,
                        samesite="lax", secure=secure, path="/admin")
    return response


@router.post("/admin/logout", include_in_schema=False)
def logout(request: Request, staff: ViewerAction, db: DbSession) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    db.execute(delete(StaffSession).where(StaffSession.token_hash == token_hash(token)))
    audit(db, staff, "auth.logout", target=staff.username, request=request)
    db.commit()
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/admin")
    return response
