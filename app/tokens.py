"""Zalo's tokens in the database: the access token (about 25 hours) and the single-use refresh
token. A refresh is single-flight across processes (a lease row in channel_tokens), and the new
refresh token is committed before the new access token is used, so a crash cannot lose it."""
from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import httpx
import structlog
from sqlalchemy import or_, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import ChannelToken, as_utc, utcnow
from app.settings import Settings
from webhooks import zalo
from webhooks.base import OutboundMessage, SendResult

log = structlog.get_logger(__name__)
CHANNEL = "zalo"
REFRESH_BEFORE = timedelta(minutes=30)
LEASE = timedelta(seconds=30)


class ZaloTokens:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings):
        self.sessions = sessions
        self.settings = settings
        self._lock = asyncio.Lock()

    def seed(self) -> None:
        """First start: the tokens from the settings become the stored ones."""
        with self.sessions() as session, session.begin():
            if session.get(ChannelToken, CHANNEL) is None:
                session.add(ChannelToken(channel=CHANNEL, access_token=self.settings.zalo_access_token,
                                         refresh_token=self.settings.zalo_refresh_token))

    def current(self) -> ChannelToken | None:
        with self.sessions() as session:
            row = session.get(ChannelToken, CHANNEL)
            if row is not None:
                session.expunge(row)
            return row

    async def access_token(self, client: httpx.AsyncClient) -> str:
        row = await asyncio.to_thread(self.current)
        if row is None or not row.access_token:
            return await self.refresh(client, None)
        expires = as_utc(row.expires_at) if row.expires_at else None
        if expires is not None and expires - utcnow() < REFRESH_BEFORE:
            return await self.refresh(client, row.access_token)
        return row.access_token

    def _take_lease(self) -> bool:
        now = utcnow()
        with self.sessions() as session, session.begin():
            result = session.execute(
                update(ChannelToken)
                .where(ChannelToken.channel == CHANNEL,
                       or_(ChannelToken.refreshing_until.is_(None), ChannelToken.refreshing_until < now))
                .values(refreshing_until=now + LEASE)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def _save(self, access: str, refresh: str, expires_in: int) -> None:
        with self.sessions() as session, session.begin():
            row = session.get(ChannelToken, CHANNEL)
            assert row is not None
            row.access_token, row.refresh_token = access, refresh
            row.expires_at = utcnow() + timedelta(seconds=expires_in)
            row.refreshing_until, row.last_error, row.updated_at = None, None, utcnow()

    def _release(self, error: str | None) -> None:
        """Give the lease back, recording why (None: nothing went wrong, there was nothing to do)."""
        with self.sessions() as session, session.begin():
            row = session.get(ChannelToken, CHANNEL)
            if row is not None:
                row.refreshing_until, row.updated_at = None, utcnow()
                if error is not None:
                    row.last_error = error

    async def refresh(self, client: httpx.AsyncClient, stale: str | None) -> str:
        """A fresh access token: refreshed here, or by another process that holds the lease."""
        async with self._lock:
            row = await asyncio.to_thread(self.current)
            if row is not None and row.access_token and row.access_token != stale:
                return row.access_token  # someone refreshed while we waited
            if not await asyncio.to_thread(self._take_lease):
                for _ in range(60):  # another process is refreshing: wait for its result
                    await asyncio.sleep(0.5)
                    row = await asyncio.to_thread(self.current)
                    if row is not None and row.access_token != stale and not row.refreshing_until:
                        return row.access_token or ""
                raise zalo.ZaloTokenError("another process holds the refresh lease and did not finish")
            # re-read under the lease: another process may have refreshed since we looked, and
            # its refresh consumed the token we read (a refresh token works once)
            row = await asyncio.to_thread(self.current)
            if row is not None and row.access_token and row.access_token != stale:
                await asyncio.to_thread(self._release, None)
                return row.access_token
            refresh_token = row.refresh_token if row else self.settings.zalo_refresh_token
            s = self.settings
            try:
                access, new_refresh, expires_in = await zalo.refresh_access_token(
                    client, s.zalo_oauth_base, s.zalo_app_id or "", s.zalo_app_secret or "", refresh_token or "")
            except Exception as exc:
                await asyncio.to_thread(self._release, f"{type(exc).__name__}: {exc}")
                log.error("zalo_token_refresh_failed", error=str(exc))
                raise
            await asyncio.to_thread(self._save, access, new_refresh, expires_in)
            log.info("zalo_token_refreshed", expires_in=expires_in)
            return access

    async def send(self, client: httpx.AsyncClient, msg: OutboundMessage) -> SendResult:
        """Zalo's sender for the outbox: refresh and retry once when the token has expired."""
        base = self.settings.zalo_api_base
        try:
            token = await self.access_token(client)
        except Exception as exc:  # noqa: BLE001 - recorded on the outbox row, retried later
            return SendResult(ok=False, retryable=True, error=f"token: {exc}")
        result = await zalo.send(client, base, token, msg)
        if result.token_expired:
            try:
                token = await self.refresh(client, token)
            except Exception as exc:  # noqa: BLE001
                return SendResult(ok=False, retryable=True, error=f"token refresh: {exc}", parts_sent=result.parts_sent)
            result = await zalo.send(client, base, token, replace(msg, skip_parts=max(msg.skip_parts, result.parts_sent)))
        return result
