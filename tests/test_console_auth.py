"""Console access: login, roles, CSRF, rate-limited login, sessions, accounts, audit log."""
from __future__ import annotations

import httpx
from sqlalchemy import select

from app.db.models import AuditLog, StaffSession, StaffUser
from tests.conftest import STAFF_PASSWORD, Console, ConsoleClient


def test_anonymous_pages_redirect_to_login_and_api_calls_get_401(console: Console) -> None:
    for path in ("/admin", "/admin/users", "/admin/audit", "/admin/account"):
        r = console.anon.get(path)
        assert r.status_code == 303, path
        assert r.headers["location"].startswith("/admin/login?next=")
    r = console.anon.http.get("/admin/users", headers={"accept": "application/json"})
    assert r.status_code == 401
    assert console.anon.post("/admin/logout").status_code == 401


def test_login_sets_a_safe_cookie_and_wrong_passwords_are_refused(console: Console) -> None:
    c = ConsoleClient(console.url)
    r = c.login("admin", "wrong password!")
    assert r.status_code == 401
    assert "Sai tên đăng nhập hoặc mật khẩu" in r.text
    r = c.login("ADMIN ")  # usernames are case-insensitive and trimmed
    assert r.status_code == 303 and r.headers["location"] == "/admin"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/admin" in cookie
    assert "secure" not in cookie  # plain HTTP on loopback; behind HTTPS the flag is set
    with console.services.sessions() as db:
        row = db.scalars(select(StaffSession)).first()
        assert row is not None and len(row.token_hash) == 64  # only a hash of the cookie is stored
        assert c.http.cookies.get("vssbot_console") not in (row.token_hash, None)
    c.close()


def test_login_redirects_only_inside_the_console(console: Console) -> None:
    c = ConsoleClient(console.url)
    r = c.http.post("/admin/login", data={"username": "viewer", "password": STAFF_PASSWORD, "next": "//evil.example/x"})
    assert r.headers["location"] == "/admin"
    r = c.http.post("/admin/login", data={"username": "viewer", "password": STAFF_PASSWORD, "next": "/admin/dashboard"})
    assert r.headers["location"] == "/admin/dashboard"
    c.close()


def test_failed_logins_are_rate_limited_per_username(console: Console) -> None:
    c = ConsoleClient(console.url)
    for _ in range(5):
        assert c.login("editor", "not the password").status_code == 401
    r = c.login("editor")  # even the right password waits now
    assert r.status_code == 429
    assert ConsoleClient(console.url).login("viewer").status_code == 303  # others are unaffected
    c.close()


def test_roles(console: Console) -> None:
    assert console.admin.get("/admin/users").status_code == 200
    assert console.editor.get("/admin/users").status_code == 403
    assert console.viewer.get("/admin/audit").status_code == 403
    assert console.viewer.get("/admin").headers["location"] == "/admin/dashboard"
    assert console.editor.get("/admin").headers["location"] == "/admin/review"
    r = console.editor.post("/admin/users", {"username": "mallory", "role": "admin", "password": "x" * 12})
    assert r.status_code == 403
    with console.services.sessions() as db:
        assert db.scalar(select(StaffUser).where(StaffUser.username == "mallory")) is None


def test_csrf_is_enforced(console: Console) -> None:
    data = {"username": "newbie", "role": "viewer", "password": "a long password"}
    assert console.admin.post("/admin/users", data, csrf=False).status_code == 403
    assert console.admin.post("/admin/users", {**data, "csrf_token": "forged"}, csrf=False).status_code == 403
    r = console.admin.post("/admin/users", data)
    assert r.status_code == 303
    assert ConsoleClient(console.url).login("newbie", "a long password").status_code == 303


def test_account_changes_are_audited_and_end_sessions(console: Console) -> None:
    with console.services.sessions() as db:
        viewer = db.scalar(select(StaffUser).where(StaffUser.username == "viewer"))
        assert viewer is not None
        viewer_id = viewer.id
    assert console.admin.post(f"/admin/users/{viewer_id}", {"role": "editor"}).status_code == 303
    assert console.admin.post(f"/admin/users/{viewer_id}", {"active": "0"}).status_code == 303
    assert console.viewer.get("/admin/account").status_code == 303  # the disabled account is logged out
    assert ConsoleClient(console.url).login("viewer").status_code == 401
    with console.services.sessions() as db:
        rows = db.scalars(select(AuditLog).where(AuditLog.action == "user.update").order_by(AuditLog.id)).all()
        assert [(r.actor, r.before["role"], r.after["role"], r.after["active"]) for r in rows] == [
            ("admin", "viewer", "editor", True), ("admin", "editor", "editor", False)]
    page = console.admin.get("/admin/audit")
    assert "user.update" in page.text and "auth.login" in page.text


def test_the_last_admin_cannot_be_demoted(console: Console) -> None:
    with console.services.sessions() as db:
        admin_id = db.scalar(select(StaffUser.id).where(StaffUser.username == "admin"))
    r = console.admin.post(f"/admin/users/{admin_id}", {"role": "viewer"})
    assert r.status_code == 200 and "at least one admin" in r.text
    with console.services.sessions() as db:
        assert db.scalar(select(StaffUser.role).where(StaffUser.id == admin_id)) == "admin"


def test_own_password_change_needs_the_current_one(console: Console) -> None:
    r = console.editor.post("/admin/account", {"current": "wrong", "password": "new password 1"})
    assert "không đúng" in r.text
    r = console.editor.post("/admin/account", {"current": STAFF_PASSWORD, "password": "new password 1"})
    assert r.status_code == 303
    assert ConsoleClient(console.url).login("editor", "new password 1").status_code == 303


def test_logout_ends_the_session(console: Console) -> None:
    assert console.viewer.post("/admin/logout").status_code == 303
    assert console.viewer.get("/admin/account").status_code == 303


def test_english_is_available(console: Console) -> None:
    r = console.admin.get("/admin/users?lang=en")
    assert "Staff accounts" in r.text
    assert "Staff accounts" in console.admin.get("/admin/users").text  # remembered in a cookie
    assert "Tài khoản cán bộ" in console.admin.get("/admin/users?lang=vi").text


def test_users_cli_creates_the_first_admin(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import io
    import sys

    from app.cli import main
    from app.settings import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("VSSBOT_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO("a good long password\n"))
        assert main(["users", "create", "--username", "Lan", "--role", "admin", "--password-stdin"]) == 0
        monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
        assert main(["users", "create", "--username", "minh", "--role", "editor", "--password-stdin"]) == 2
        assert main(["users", "set", "--username", "lan", "--disable"]) == 0
    finally:
        get_settings.cache_clear()
    from sqlalchemy import create_engine
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(select(StaffUser.username, StaffUser.role, StaffUser.active)).all()
        actions = conn.execute(select(AuditLog.action, AuditLog.actor)).all()
    engine.dispose()
    assert rows == [("lan", "admin", False)]
    assert [a for a, _ in actions] == ["user.create", "user.update"] and actions[0][1].startswith("cli:")
    assert httpx  # imported for type use in helpers


def test_admins_see_the_settings_without_secrets(console: Console) -> None:
    assert console.editor.get("/admin/settings").status_code == 403
    assert console.anon.get("/admin/settings").status_code == 303
    page = console.admin.get("/admin/settings")
    assert page.status_code == 200
    assert "VSSBOT_HANDOVER_MINUTES" in page.text and "VSSBOT_MESSENGER_APP_SECRET" in page.text
    assert "(not set)" in page.text  # the Messenger secret in this test server
    assert "VSSBOT_DATABASE_URL" in page.text
