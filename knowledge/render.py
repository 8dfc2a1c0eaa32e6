"""Fill an answer's `{parameter}` placeholders with the value in force, formatted for its language.

`{base_salary}` is the value in force today, `{base_salary*2}` a multiple of it (several factors
multiply), `{base_salary:from}` the date that value took effect.
"""
from __future__ import annotations

import re
from datetime import date

from knowledge.schema import PLACEHOLDER, Parameter


def format_amount(amount: float, lang: str) -> str:
    """2530000 → "2.530.000 đồng" in Vietnamese, "2,530,000 VND" in English."""
    whole = round(amount)
    grouped = f"{whole:,}"
    if lang == "vi":
        return grouped.replace(",", ".") + " đồng"
    return grouped + " VND"


def format_date(day: date, lang: str) -> str:
    return day.strftime("%d/%m/%Y") if lang == "vi" else day.strftime("%d %B %Y").lstrip("0")


def unknown_placeholders(text: str, params: dict[str, Parameter]) -> list[str]:
    return sorted({m.group(1) for m in PLACEHOLDER.finditer(text) if m.group(1) not in params})


def render_answer(text: str, params: dict[str, Parameter], lang: str, today: date) -> str:
    def fill(m: re.Match[str]) -> str:
        param = params.get(m.group(1))
        if param is None:
            return m.group(0)
        current = param.value_on(today)
        if current is None:
            return m.group(0)
        if m.group(3) == "from":
            return format_date(current.effective_from, lang)
        amount = current.value
        for factor in filter(None, m.group(2).split("*")):
            amount *= float(factor)
        return format_amount(amount, lang)

    return PLACEHOLDER.sub(fill, text)
