"""Personal numbers in free text (Decree 13/2023/ND-CP): find them and mask them for display.

Citizens type their citizen ID (12 digits), old ID card (9), social insurance code (10), phone
(10 digits from 0, or +84/84 and 9) and e-mail into chats. What the bot stores of an inbound
message is masked (`TextVault.seal`); the original is kept only when VSSBOT_STORE_ORIGINAL is on,
encrypted with VSSBOT_DATA_KEY (Fernet), and read back by `original_text` (the console's audited
"reveal", the privacy export). Logs go through `mask_pii` too (app/logging.py).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

if TYPE_CHECKING:
    from app.db.models import Message
    from app.settings import Settings

# A run of digits, possibly grouped by spaces, dots or dashes (090 123 4567, 0901.234.567), or a
# +84 phone number; the length check below decides whether it is a personal number.
# A number glued to letters on its left ("sdt0912345678") is still a number; one glued to letters
# on its right is part of a token (the hex of a request id, "eeafc7179037494bbd"): left alone.
_NUMBER = re.compile(r"(?<![\d+])(?:\+?84[ .-]?)?\d(?:[ .-]?\d){7,13}(?!\w)|(?<=\+)\d{9,}(?!\w)")
_GROUP = re.compile(r"\d+")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PERSONAL_LENGTHS = {9, 10, 11, 12}  # old ID, SI code or phone, +84 phone (84 + 9), citizen ID


def _mask_digits(digits: str) -> str:
    return "•" * (len(digits) - 3) + digits[-3:]


def _mask_number(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = re.sub(r"\D", "", raw)
    if len(digits) in PERSONAL_LENGTHS:
        if "." in raw and len(digits) <= 10 and not raw.startswith(("0", "+", "84")):
            return raw  # 1.530.000.000 dong: an amount written with thousands separators
        return _mask_digits(digits)
    # Not one personal number as a whole (a citizen ID followed by " 3 người", an amount): mask
    # each group of digits that is one on its own.
    return _GROUP.sub(lambda g: _mask_digits(g.group(0)) if len(g.group(0)) in PERSONAL_LENGTHS else g.group(0), raw)


def _mask_email(match: re.Match[str]) -> str:
    user, _, domain = match.group(0).partition("@")
    return f"{user[:1]}•••@{domain}"


def mask_pii(text: str | None) -> str:
    """The text with personal numbers and e-mail addresses masked (the last 3 digits stay)."""
    if not text:
        return text or ""
    return _NUMBER.sub(_mask_number, _EMAIL.sub(_mask_email, text))


def has_pii(text: str | None) -> bool:
    return bool(text) and mask_pii(text) != text


# --- At rest: the masked text, and the original encrypted when the operator chose to keep it ------


class PrivacyError(Exception):
    """A privacy setting is wrong, or a stored original cannot be read (no key, wrong key)."""


def new_key() -> str:
    """A fresh key for VSSBOT_DATA_KEY."""
    return Fernet.generate_key().decode()


def _fernet(keys: str) -> MultiFernet:
    """One Fernet key, or several separated by commas: the first encrypts, all decrypt (rotation)."""
    parts = [k.strip() for k in keys.split(",") if k.strip()]
    if not parts:
        raise PrivacyError("VSSBOT_DATA_KEY is empty")
    try:
        return MultiFernet([Fernet(k) for k in parts])
    except ValueError:
        # never echo the key itself into an error message (it ends up in logs)
        raise PrivacyError(
            "VSSBOT_DATA_KEY is not a Fernet key (32 bytes, url-safe base64); make one with `vssbot privacy keygen`"
        ) from None


class TextVault:
    """How inbound text is kept at rest: always masked, plus the original encrypted if asked."""

    def __init__(self, key: str | None = None, store_original: bool = False):
        if store_original and not key:
            raise PrivacyError("VSSBOT_STORE_ORIGINAL is on but VSSBOT_DATA_KEY is not set; "
                               "make a key with `vssbot privacy keygen`")
        self.store_original = store_original
        self._fernet = _fernet(key) if key else None

    @classmethod
    def from_settings(cls, settings: Settings) -> TextVault:
        key = settings.data_key.get_secret_value() if settings.data_key else None
        return cls(key, settings.store_original)

    @property
    def can_decrypt(self) -> bool:
        return self._fernet is not None

    def seal(self, text: str) -> tuple[str, str | None]:
        """(the text to store, the encrypted original or None). The original is kept only when
        asked for and only when masking changed something: otherwise the text is the original."""
        masked = mask_pii(text)
        if not self.store_original or masked == text or self._fernet is None:
            return masked, None
        return masked, self._fernet.encrypt(text.encode()).decode()

    def open(self, token: str) -> str:
        """The original behind an encrypted value; PrivacyError without the right key."""
        if self._fernet is None:
            raise PrivacyError("this message's original is stored encrypted: set VSSBOT_DATA_KEY to read it")
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise PrivacyError("this message's original cannot be decrypted with VSSBOT_DATA_KEY: "
                               "the key is not the one it was stored with (or the value is damaged)") from None


def original_text(message: Message, settings: Settings) -> str:
    """What the person actually wrote: the decrypted original if one is stored, else the stored
    text. Raises PrivacyError (a clear message for staff) when the key is missing or wrong."""
    if not message.text_private:
        return message.text
    key = settings.data_key.get_secret_value() if settings.data_key else None
    return TextVault(key).open(message.text_private)
