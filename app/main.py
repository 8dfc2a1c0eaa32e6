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

from app.api.public import router as public_router
from app.api.webhooks import router as webhook_router
from app.console import install as install_console
from app.logging import setup_logging
from app.services import Services, build_services
from app.settings import Settings, get_settings

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = services is None
        svc = app.state.services = services or build_services(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(svc.dispatcher.run(stop)) if svc.dispatcher and svc.dispatcher.senders else None
        try:
            yield
        finally:
            stop.set()
            if task is not None:
                svc.dispatcher.wake.set()
                await task
            if owned:
                svc.close()

    app = FastAPI(title="vssbot", version="0.1.0", lifespan=lifespan)
    app.include_router(public_router)
    app.include_router(webhook_router)
    install_console(app)
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
