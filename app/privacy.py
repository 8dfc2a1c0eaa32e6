"""Personal numbers in free text (Decree 13/2023/ND-CP): find them and mask them for display.

Citizens type their citizen ID (12 digits), old ID card (9), social insurance code (10), phone
(10 digits from 0, or +84/84 and 9) and e-mail into chats. The conversation record keeps what was
written; everything shown to staff, exported or logged goes through `mask_pii`.
"""
from __future__ import annotations

import re

# A run of digits, possibly grouped by spaces, dots or dashes (090 123 4567, 0901.234.567), or a
# +84 phone number; the length check below decides whether it is a personal number.
_NUMBER = re.compile(r"(?<![\w+])(?:\+?84[ .-]?)?\d(?:[ .-]?\d){7,13}(?!\w)")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PERSONAL_LENGTHS = {9, 10, 11, 12}  # old ID, SI code or phone, +84 phone (84 + 9), citizen ID


def _mask_number(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = re.sub(r"\D", "", raw)
    if len(digits) not in PERSONAL_LENGTHS:
        return raw  # an amount (1.530.000) or a date run: not a personal number
    if "." in raw and len(digits) <= 10 and not raw.startswith(("0", "+", "84")):
        return raw  # 1.530.000.000 dong: an amount written with thousands separators
    return "•" * (len(digits) - 3) + digits[-3:]


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
