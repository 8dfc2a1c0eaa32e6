"""Leave-one-out self-test of the bundled knowledge base, and `vssbot kb lint` being clean."""
from __future__ import annotations

from app.bot import Bot
from app.lint import lint, summary, typed_amounts
from intents.selftest import leave_one_out, rate

MIN_LEAVE_ONE_OUT = 0.95


def test_each_held_out_phrasing_still_finds_its_entry(bot: Bot) -> None:
    held = leave_one_out(bot.matcher)
    assert len(held) >= 6 * len(bot.kb.faq_entries())
    print("\n" + summary(held))
    misses = [f"{h.entry_id}: {h.phrasing!r} -> {h.found_id}" for h in held if not h.ok]
    assert rate(held) >= MIN_LEAVE_ONE_OUT, "\n".join(misses)


def test_lint_is_clean(bot: Bot) -> None:
    findings, _ = lint(bot.kb, bot.matcher)
    assert not findings, "\n".join(map(str, findings))


def test_typed_amounts_are_found_outside_worked_examples() -> None:
    assert typed_amounts("Mức hưởng là 2.530.000 đồng.") == ["2.530.000"]
    assert typed_amounts("Hiện là 5 triệu đồng mỗi tháng.") == ["5 triệu"]
    assert typed_amounts("Mức hưởng là {base_salary*2}. Ví dụ: lương 10.000.000 đồng thì được 7.500.000 đồng.") == []
    assert typed_amounts("For example, a salary of 10,000,000 VND gives 7,500,000 VND.") == []
    assert typed_amounts("Tỷ lệ 75%, 30 ngày, 1900 9068.") == []
