"""Pydantic models of the knowledge base: entries, dated parameters, and the loaded whole."""
from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

# A chat answer should fit a phone screen or two; longer means split the entry.
MAX_ANSWER_CHARS = 900
ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{1,79}$"


class Regime(StrEnum):
    """The ten topics of ../shared/domain/regimes.md."""

    sickness = "sickness"
    maternity = "maternity"
    work_injury = "work_injury"
    survivor = "survivor"
    old_age = "old_age"
    unemployment = "unemployment"
    health_insurance = "health_insurance"
    certificate_of_coverage = "certificate_of_coverage"
    voluntary = "voluntary"
    general = "general"


class RegimeName(NamedTuple):
    vi: str
    en: str
    short_vi: str  # for a button (at most 20 characters)
    short_en: str


REGIME_NAMES: dict[Regime, RegimeName] = {
    Regime.sickness: RegimeName("Chế độ ốm đau", "Sickness", "Ốm đau", "Sickness"),
    Regime.maternity: RegimeName("Chế độ thai sản", "Maternity", "Thai sản", "Maternity"),
    Regime.work_injury: RegimeName("Tai nạn lao động, bệnh nghề nghiệp", "Work injury and occupational disease",
                                   "TNLĐ, bệnh NN", "Work injury"),
    Regime.survivor: RegimeName("Chế độ tử tuất", "Survivor's benefits", "Tử tuất", "Survivors"),
    Regime.old_age: RegimeName("Chế độ hưu trí", "Old-age pension", "Hưu trí, rút 1 lần", "Pension"),
    Regime.unemployment: RegimeName("Bảo hiểm thất nghiệp", "Unemployment insurance", "Thất nghiệp", "Unemployment"),
    Regime.health_insurance: RegimeName("Bảo hiểm y tế", "Health insurance", "Bảo hiểm y tế", "Health insurance"),
    Regime.certificate_of_coverage: RegimeName("Hiệp định BHXH, người nước ngoài", "Certificate of coverage",
                                               "Người nước ngoài", "Foreign workers"),
    Regime.voluntary: RegimeName("BHXH tự nguyện", "Voluntary social insurance", "BHXH tự nguyện", "Voluntary SI"),
    Regime.general: RegimeName("Thông tin chung", "General matters", "Thông tin chung", "General"),
}

# faq: an answer about a regime. The others are conversational intents that carry no regime:
# smalltalk (greeting, thanks, goodbye), handover (asks for a person), out_of_scope (a topic
# the bot declines politely, with a pointer to whoever handles it).
EntryKind = Literal["faq", "smalltalk", "handover", "out_of_scope"]


class Entry(BaseModel):
    """One knowledge-base entry: how people ask, what the bot answers, and why."""

    # a bare `- 2026` in a YAML list is a number: read it as the text it was meant to be
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    id: str = Field(pattern=ID_PATTERN)
    kind: EntryKind = "faq"
    regime: Regime | None = None
    questions_vi: list[str] = Field(min_length=1)
    questions_en: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    answer_vi: str = Field(min_length=1)
    answer_en: str | None = None
    legal_basis: str | None = None
    checked: date | None = None
    related: list[str] = Field(default_factory=list)
    # Where the entry was read from, for error messages and the console.
    source_file: str = ""
    source_line: int = 0

    @field_validator("questions_vi", "questions_en", "keywords")
    @classmethod
    def _no_blank_phrasings(cls, v: list[str]) -> list[str]:
        cleaned = [q.strip() for q in v]
        if any(not q for q in cleaned):
            raise ValueError("blank phrasing")
        return cleaned

    @field_validator("answer_vi", "answer_en")
    @classmethod
    def _strip_answer(cls, v: str | None) -> str | None:
        return v.strip() if v is not None else None

    @property
    def question_vi(self) -> str:
        """The canonical Vietnamese question, shown as a clarify option."""
        return self.questions_vi[0]

    @property
    def question_en(self) -> str:
        return self.questions_en[0] if self.questions_en else self.questions_vi[0]


class ParameterValue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    value: float
    effective_from: date
    source: str


class Parameter(BaseModel):
    """A dated amount (base salary, regional minimum wage...) that answers compute from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name_vi: str
    name_en: str
    unit: Literal["VND/month", "VND", "VND/person/month"] = "VND/month"
    values: list[ParameterValue] = Field(min_length=1)

    def value_on(self, day: date) -> ParameterValue | None:
        """The value in force on `day` (the latest that started on or before it)."""
        current = [v for v in self.values if v.effective_from <= day]
        return max(current, key=lambda v: v.effective_from) if current else None


PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)((?:\*[0-9]+(?:\.[0-9]+)?)*)(?::(from))?\}")
