"""The bot's brain without I/O: knowledge base + matcher → a Reply for one message."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from intents.matcher import Decision, Matcher, MatcherConfig
from intents.normalize import question_key
from knowledge.loader import KnowledgeBase, load_knowledge
from knowledge.schema import REGIME_NAMES, Entry, Regime

HOTLINE = "1900 9068"


@dataclass(frozen=True)
class Suggestion:
    intent_id: str
    question: str
    regime: str | None


@dataclass(frozen=True)
class Reply:
    """What the bot says, and why: the decision behind it travels with the text."""

    kind: str
    text: str
    lang: str
    confidence: float
    intent_id: str | None = None
    regime: str | None = None
    suggestions: list[Suggestion] = field(default_factory=list)
    candidates: list[dict[str, object]] = field(default_factory=list)
    kb_version: str = ""


def _topics(lang: str) -> str:
    names = [REGIME_NAMES[r].vi if lang == "vi" else REGIME_NAMES[r].en for r in Regime]
    return ", ".join(names)


def fallback_text(lang: str) -> str:
    if lang == "en":
        return (
            "Sorry, I am not sure I understood. I can answer questions about: "
            f"{_topics('en')}. Please rephrase your question, or type \"talk to staff\" to reach a "
            f"VSS officer. Hotline: {HOTLINE}."
        )
    return (
        "Xin lỗi, mình chưa hiểu rõ câu hỏi của bạn. Mình có thể giải đáp về: "
        f"{_topics('vi')}. Bạn hãy hỏi lại cụ thể hơn, hoặc nhắn \"gặp nhân viên\" để được cán bộ "
        f"BHXH hỗ trợ. Tổng đài: {HOTLINE}."
    )


def empty_text(lang: str) -> str:
    if lang == "en":
        return "Please type your question about social insurance, health insurance or unemployment insurance."
    return "Bạn hãy gõ câu hỏi về bảo hiểm xã hội, bảo hiểm y tế hoặc bảo hiểm thất nghiệp nhé."


def clarify_text(options: list[Entry], lang: str) -> str:
    lines = [f"{i}. {e.question_en if lang == 'en' else e.question_vi}" for i, e in enumerate(options, 1)]
    head = "I am not sure which of these you mean:" if lang == "en" else "Mình chưa chắc bạn muốn hỏi điều nào. Có phải bạn muốn hỏi:"
    tail = "Tap one, or ask again in other words." if lang == "en" else "Bạn chọn một câu, hoặc hỏi lại cụ thể hơn nhé."
    return "\n".join([head, *lines, tail])


class Bot:
    """Holds the loaded knowledge base and its matcher; `reload` swaps both atomically.

    Built from a folder of YAML files (`knowledge_dir`), or from an already loaded knowledge base
    (`kb`: a published version the database holds)."""

    def __init__(self, knowledge_dir: Path | None = None, config: MatcherConfig | None = None,
                 kb: KnowledgeBase | None = None):
        self.knowledge_dir = knowledge_dir
        self.config = config
        self._lock = threading.Lock()
        self.kb, self.matcher = self._build(kb)

    def _build(self, kb: KnowledgeBase | None = None) -> tuple[KnowledgeBase, Matcher]:
        if kb is None:
            kb = load_knowledge(self.knowledge_dir, question_key=question_key)
        return kb, Matcher(kb.entries, self.config)

    def reload(self, kb: KnowledgeBase | None = None) -> str:
        """Switch to `kb` (or re-read the folder): the matcher is built first, then both swapped,
        so a reply in flight keeps the pair it started with."""
        kb, matcher = self._build(kb)
        with self._lock:
            self.kb, self.matcher = kb, matcher
        return kb.version

    def reply(self, text: str, lang: str | None = None, today: date | None = None) -> Reply:
        kb, matcher = self.kb, self.matcher  # one consistent pair even if a reload happens now
        if not text or not text.strip():
            lang = lang or "vi"
            return Reply("fallback", empty_text(lang), lang, 0.0, kb_version=kb.version)
        decision = matcher.decide(text, lang)
        return self.compose(decision, kb, today)

    def chosen(self, entry_id: str, text: str, lang: str | None = None, today: date | None = None) -> Reply:
        """The answer of an entry the person picked from offered options: certain by choice.
        The candidates record the choice, a labelled phrasing for the staff console."""
        kb = self.kb
        entry = kb.by_id.get(entry_id)
        if entry is None:
            return self.reply(text, lang, today)
        lang = lang or self.matcher.language(text)
        regime = entry.regime.value if entry.regime else None
        kind = entry.kind if entry.kind in ("faq", "smalltalk", "handover") else "fallback"
        return Reply(
            kind, kb.answer(entry, lang, today), lang, 1.0, intent_id=entry.id, regime=regime,
            candidates=[{"intent_id": entry.id, "regime": regime, "chosen": True}], kb_version=kb.version,
        )

    def media_only(self, lang: str | None = None) -> Reply:
        lang = lang or "vi"
        text = (
            "Sorry, I can read text messages only. Please type your question (and do not send photos of ID documents)."
            if lang == "en"
            else "Xin lỗi, mình chỉ đọc được tin nhắn chữ. Bạn hãy gõ câu hỏi nhé (và đừng gửi ảnh giấy tờ tùy thân)."
        )
        return Reply("fallback", text, lang, 0.0, kb_version=self.kb.version)

    def command(
        self, command: tuple[str, str], text: str, lang: str | None, reply_id: str,
        feedback: Callable[[str, bool], bool],
    ) -> Reply:
        """The reply to a button: the menu, a topic, an offered option, feedback, a person."""
        name, arg = command
        kb = self.kb
        lang = lang or "vi"
        if name == "CHOOSE":
            return self.chosen(arg, text, lang)
        if name == "MENU":
            overview = kb.by_id.get(f"{arg}.overview")
            if overview is not None:
                return self.chosen(overview.id, text, lang)
        if name == "FEEDBACK":
            verdict, _, message_id = arg.partition(":")
            feedback(message_id, verdict == "up")
            thanks = "Thank you for your feedback!" if lang == "en" else "Cảm ơn bạn đã đánh giá!"
            return Reply("smalltalk", thanks, lang, 1.0, kb_version=kb.version)
        target = "handover.human" if name == "HUMAN" else "smalltalk.greeting"
        if target in kb.by_id:
            return self.chosen(target, text, lang)
        return Reply("fallback", fallback_text(lang), lang, 0.0, kb_version=kb.version)

    def compose(self, d: Decision, kb: KnowledgeBase, today: date | None = None) -> Reply:
        lang = d.lang
        candidates: list[dict[str, object]] = [
            {"intent_id": c.entry.id, "regime": c.entry.regime.value if c.entry.regime else None, "score": round(c.score, 4)}
            for c in d.candidates[:5]
        ]

        def reply(kind: str, text: str, intent_id: str | None = None, regime: str | None = None,
                  suggestions: list[Suggestion] | None = None) -> Reply:
            return Reply(kind, text, lang, d.confidence, intent_id=intent_id, regime=regime,
                         suggestions=suggestions or [], candidates=candidates, kb_version=kb.version)

        if d.kind == "faq" and d.entry is not None:
            regime = d.entry.regime.value if d.entry.regime else None
            return reply("faq", kb.answer(d.entry, lang, today), d.entry.id, regime)
        if d.kind == "clarify":
            suggestions = [
                Suggestion(e.id, e.question_en if lang == "en" else e.question_vi, e.regime.value if e.regime else None)
                for e in d.options
            ]
            return reply("clarify", clarify_text(d.options, lang), suggestions=suggestions)
        if d.entry is not None:  # smalltalk, handover, or a recognised out-of-scope topic
            return reply(d.kind, kb.answer(d.entry, lang, today), d.entry.id)
        return reply("fallback", fallback_text(lang))
