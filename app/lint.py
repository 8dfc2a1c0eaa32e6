"""`vssbot kb lint`: what validation cannot see: colliding phrasings, typed amounts, stale or
untranslated entries. Each finding is located as file:line for the person who fixes it."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

from intents.matcher import Matcher
from intents.selftest import HeldOut, leave_one_out, rate
from knowledge.loader import KnowledgeBase
from knowledge.schema import PLACEHOLDER, Entry

STALE_AFTER = timedelta(days=365)
# A money amount typed into an answer: 1.500.000 / 1,500,000 / 2 triệu / 500 nghìn đồng. Amounts
# must come from parameters.yaml so that one dated change updates every answer.
TYPED_AMOUNT = re.compile(
    r"\b\d{1,3}(?:[.,]\d{3}){2,}\b|\b\d+(?:[.,]\d+)?\s*(?:triệu|nghìn|ngàn|million|thousand)\b", re.IGNORECASE
)


@dataclass(frozen=True)
class Finding:
    entry: Entry
    message: str

    def __str__(self) -> str:
        return f"{self.entry.source_file}:{self.entry.source_line}: {self.entry.id}: {self.message}"


# A worked example with a made-up salary ("Ví dụ: lương 10.000.000 đồng...") is not a parameter.
EXAMPLE = re.compile(r"ví dụ|vd:|for example|example:|e\.g\.", re.IGNORECASE)
SENTENCE = re.compile(r"(?<=[.!?:])\s+(?=[A-ZĐÂĂÊÔƠƯ-])|\n+")


def typed_amounts(text: str) -> list[str]:
    found: list[str] = []
    for sentence in SENTENCE.split(PLACEHOLDER.sub(" ", text)):
        if not EXAMPLE.search(sentence):
            found.extend(TYPED_AMOUNT.findall(sentence))
    return found


def lint(kb: KnowledgeBase, matcher: Matcher, today: date | None = None) -> tuple[list[Finding], list[HeldOut]]:
    today = today or date.today()
    findings: list[Finding] = []
    for e in kb.faq_entries():
        if e.checked and today - e.checked > STALE_AFTER:
            findings.append(Finding(e, f"last checked {e.checked.isoformat()}, more than a year ago"))
        if not e.answer_en:
            findings.append(Finding(e, "no English answer"))
        if not e.questions_en:
            findings.append(Finding(e, "no English phrasing"))
        for lang, text in (("vi", e.answer_vi), ("en", e.answer_en or "")):
            for amount in typed_amounts(text):
                findings.append(Finding(e, f"answer_{lang} types the amount {amount!r}: use a parameter"))
    held = leave_one_out(matcher)
    for h in held:
        if not h.ok:
            findings.append(Finding(kb.by_id[h.entry_id], f"phrasing {h.phrasing!r} lands on {h.found_id} when held out"))
    return findings, held


def summary(held: list[HeldOut]) -> str:
    return f"leave-one-out: {sum(h.ok for h in held)}/{len(held)} phrasings find their own entry ({rate(held):.3f})"
