"""Per-sender rate limits: one token bucket per sender, in this process's memory.

A sender may send `burst` messages at once, then one every 60/`per_minute` seconds. The buckets
live in the memory of one process: with several `vssbot serve` processes behind a load balancer
each process limits on its own, so a sender whose messages are spread over N processes gets up to
N times the limit. That still turns a flood into a trickle (what matters is the order of
magnitude) without a database round trip on every message; a strict global limit would need a
shared store.
"""
from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from app.bot import Reply
from app.settings import Settings

NOTICE_WINDOW = 60.0  # seconds: a flooding sender is told to slow down at most once in this time
MAX_KEYS = 100_000  # buckets kept; the least recently used go first (an idle bucket is full anyway)

SLOW_DOWN = {
    "vi": "Bạn đang gửi tin nhắn hơi nhanh. Vui lòng đợi một chút rồi nhắn tiếp nhé, mình sẽ trả lời ngay khi có thể.",
    "en": "You are sending messages a little too fast. Please wait a moment before sending more; "
          "I will answer as soon as I can.",
}


@dataclass(frozen=True)
class Decision:
    """What the limiter says to one message."""

    allowed: bool
    retry_after: float = 0.0  # seconds until the sender may send one more
    notify: bool = False  # refused, and this sender has not been told to slow down in the notice window


@dataclass
class _Bucket:
    tokens: float
    updated: float
    noticed: float = -math.inf


class RateLimiter:
    """Token buckets by key: `burst` at once, refilled at `per_minute` a minute; 0 disables."""

    def __init__(self, per_minute: float, burst: int, *, notice_window: float = NOTICE_WINDOW,
                 max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0  # tokens a second
        self.capacity = float(max(1, burst))
        self.notice_window = notice_window
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()  # routes call from the event loop, the CLI or tests from threads

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def hit(self, key: str) -> Decision:
        """Count one message from `key`: allowed, or refused with how long to wait."""
        if not self.enabled:
            return Decision(True)
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(self.capacity, now)
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
                bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return Decision(True)
            notify = now - bucket.noticed >= self.notice_window
            if notify:
                bucket.noticed = now
            return Decision(False, retry_after=(1 - bucket.tokens) / self.rate, notify=notify)

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class RateLimits:
    """The limiters of one application: per sender (channels, ask API) and per client address
    (the public API, whatever session ids a client makes up)."""

    sender: RateLimiter
    address: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        per_address = settings.rate_per_address_minute
        # The address bucket holds half a minute's worth: room for a busy office behind one NAT.
        return cls(RateLimiter(settings.rate_per_minute, settings.rate_burst),
                   RateLimiter(per_address, max(settings.rate_burst, int(per_address // 2))))


def rate_limits(request: Request) -> RateLimits:
    """This process's limiters (made with its services, from its settings)."""
    return request.app.state.services.limits


def client_address(request: Request) -> str:
    """The caller's address (behind a proxy: uvicorn's --forwarded-allow-ips makes it the real one)."""
    return request.client.host if request.client else "unknown"


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, at least 1 (Retry-After takes an integer)."""
    return str(max(1, math.ceil(seconds)))


def slow_down_reply(lang: str) -> Reply:
    """The one polite reply a flooding sender gets in a notice window."""
    lang = lang if lang in SLOW_DOWN else "vi"
    return Reply(kind="ratelimit", text=SLOW_DOWN[lang], lang=lang, confidence=1.0)


def too_fast_detail(seconds: float) -> str:
    """The 429 detail of the public API, in Vietnamese and English."""
    n = retry_after_header(seconds)
    return (f"Bạn đang gửi hơi nhanh, vui lòng đợi khoảng {n} giây rồi thử lại. "
            f"/ You are sending too fast; please wait about {n} seconds and try again.")
