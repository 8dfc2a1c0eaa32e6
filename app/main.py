"""The FastAPI application: public API, chat page, health."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.types import Receive, Scope, Send
import structlog

from app.api.guards import install as install_guards
from app.api.public import router as public_router
from app.api.webhooks import answer_delivery, is_delivery
from app.api.webhooks import router as webhook_router
from app.console import install as install_console
from app.logging import setup_logging
from app.observability import RequestContextMiddleware
from app.observability import router as observability_router
from app.services import Services, build_services, freeze_heap
from app.settings import Settings, get_settings

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
log = structlog.get_logger(__name__)


async def poll_kb(services: Services, stop: asyncio.Event) -> None:
    """Every few seconds, serve the latest published knowledge base if another process (or the
    command line) published one, so that several `vssbot serve` processes converge."""
    interval = services.settings.kb_poll_seconds
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval)
        except TimeoutError:
            pass
        if stop.is_set():
            return
        try:
            await asyncio.to_thread(services.sync_kb)  # loading and indexing take a second: off the loop
        except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the poll
            log.warning("kb.poll_failed", error=f"{type(exc).__name__}: {exc}")


class VssbotApp(FastAPI):
    """FastAPI, but webhook deliveries (POST /webhooks/messenger|zalo) skip the middleware stack
    and routing: their handler does its own request id, metrics and errors (app/api/webhooks.py)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_delivery(scope):
            scope["app"] = self
            await answer_delivery(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        svc = app.state.services = services or build_services(settings)
        if owned:
            freeze_heap()
        stop = asyncio.Event()
        answers = svc.settings.serve_answers  # false: `vssbot worker` processes answer and send
        sends = answers and svc.dispatcher is not None and bool(svc.dispatcher.senders)
        task = asyncio.create_task(svc.dispatcher.run(stop)) if sends else None
        if svc.dispatcher is not None:
            svc.inbox.on_processed = svc.dispatcher.wake.set
        inbox = asyncio.create_task(svc.inbox.run(stop, answer=answers))
        poller = asyncio.create_task(poll_kb(svc, stop)) if svc.settings.kb_poll_seconds > 0 else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                svc.dispatcher.wake.set()
                await task
            if poller is not None:
                await poller
            await inbox
            if owned:
                svc.close()

    app = VssbotApp(title="vssbot", version="0.1.0", lifespan=lifespan)
    app.include_router(public_router)
    app.include_router(webhook_router)
    install_console(app)
    install_guards(app, settings)  # body limit, strict JSON, generic 500: inside the request-id middleware
    app.include_router(observability_router)  # /metrics, /readyz
    # added last, so outermost: the request id is bound before any other middleware or handler runs
    app.add_middleware(RequestContextMiddleware)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "chat.html", {})

    return app


def app_factory() -> FastAPI:
    """For `uvicorn app.main:app_factory --factory`."""
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_json)
    return create_app(settings)
