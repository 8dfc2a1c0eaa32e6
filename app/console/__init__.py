"""The staff console under /admin: login, review queue, knowledge base, conversations, dashboard."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.console import auth, conversations, dashboard, kb, review, users
from app.console.deps import LANG_COOKIE, LoginRequired, console_lang, render

ROUTERS = (auth.router, review.router, kb.router, conversations.router, dashboard.router, users.router)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/admin/api/") or "application/json" in request.headers.get("accept", "")


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

    @app.middleware("http")
    async def _remember_language(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.url.path.startswith("/admin") and "lang" in request.query_params:
            response.set_cookie(LANG_COOKIE, console_lang(request), max_age=365 * 86400, samesite="lax")
        return response


__all__ = ["install", "HTTPException"]
