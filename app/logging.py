"""Structured logging to stderr (stdout stays clean for `vssbot ask --jsonl`), personal numbers masked."""
from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from app.privacy import mask_pii

_PLAIN = (int, float, bool, type(None))


# Our own identifiers (hex, numbers): never a citizen's, and masking their digits would break the
# correlation they exist for.
ID_KEYS = frozenset({"request_id", "message_id", "outbox_id", "conversation_id", "inbound_id", "reply_id",
                     "timestamp", "kb_version", "version"})


def _mask_value(value: Any) -> Any:
    """A log value with personal numbers masked, however deep they sit."""
    if isinstance(value, str):
        return mask_pii(value)
    if isinstance(value, _PLAIN):
        return value  # numbers stay numbers: an int is an id, a count or a time, never a typed message
    if isinstance(value, dict):
        return {k: _mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask_value(v) for v in value]
    # anything else (an exception, a model) is rendered with repr: replace it only if that leaks
    shown = repr(value)
    masked = mask_pii(shown)
    return value if masked == shown else masked


def mask_event(_logger: Any, _method: str, event_dict: structlog.types.EventDict) -> structlog.types.EventDict:
    """structlog processor: mask personal numbers and e-mails in every value of the event."""
    return {key: value if key in ID_KEYS else _mask_value(value) for key, value in event_dict.items()}


class MaskFilter(logging.Filter):
    """For stdlib loggers (uvicorn, SQLAlchemy, alembic): mask the formatted message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: let logging report it as usual
            return True
        record.msg, record.args = mask_pii(message), None
        if record.exc_info and not record.exc_text:
            # the formatter reuses exc_text, so the traceback (and its exception message) is masked too
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_pii(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_pii(record.stack_info)
        return True


class _CurrentStderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was set up (a test's
    captured stream, closed after it, must not become every later log line's destination)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def setup_logging(level: str = "INFO", json: bool = False, stream: TextIO | None = None) -> None:
    stream = stream or _CurrentStderr()  # type: ignore[assignment]
    logging.basicConfig(stream=stream, level=level.upper(), format="%(message)s", force=True)
    for handler in logging.getLogger().handlers:
        # on the handler, not the logger: records propagated from child loggers pass handler filters only
        handler.addFilter(MaskFilter())
    # httpx logs every request URL at INFO, and the Graph API takes the page token in the query
    # string: never let a token reach the logs.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False) if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # a traceback as text before masking: exception messages quote what people wrote
            structlog.processors.format_exc_info,
            mask_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
