"""The staff console under /admin: login, review queue, knowledge base, conversations, dashboard."""
from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.console import auth, conversations, dashboard, kb, review, users
from app.console.deps import LANG_COOKIE, LoginRequired, render

ROUTERS = (auth.router, review.router, kb.router, conversations.router, dashboard.router, users.router)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/admin/api/") or "application/json" in request.headers.get("accept", "")


class RememberLanguage:
    """`?lang=en|vi` on a console page sets the language cookie (pure ASGI: no cost elsewhere)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/admin") or b"lang=" not in scope["query_string"]:
            await self.app(scope, receive, send)
            return
        lang = "en" if b"lang=en" in scope["query_string"] else "vi"
        cookie = f"{LANG_COOKIE}={lang}; Max-Age={365 * 86400}; Path=/; SameSite=lax".encode()

        async def with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"set-cookie", cookie))
            await send(message)

        await self.app(scope, receive, with_cookie)


def install(app: FastAPI) -> None:
    """Mount the console's routes and its handling of anonymous and refused requests."""
    for router in ROUTERS:
        app.include_router(router)

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if _wants_json(request) or request.method != "GET":
            return JSONResponse({"detail": "login required"}, status_code=401)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/admin/login?next={quote(target)}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith("/admin") and not _wants_json(request) and exc.status_code in (403, 404, 409, 422):
            return render(request, "console/error.html", {"status": exc.status_code, "message": exc.detail},
                          status_code=exc.status_code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    app.add_middleware(RememberLanguage)

__all__ = ["install", "HTTPException"]
