"""Score the bot on a labelled question set: right, clarified, soft, miss or wrong per question.

The verdicts are those of ../shared/checks/eval_ask.py, so that the project's own floors and the
acceptance check measure the same thing: a *wrong* reply is a confident answer (faq) that is not
right (another regime, an answer to an out-of-scope question, or one that lacks the facts).
"""
from __future__ import annotations

import json
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.bot import Bot, Reply

RANK = {"right": 0, "clarified": 1, "soft": 2, "miss": 3, "wrong": 4}


def _norm(s: str) -> str:
    return unicodedata.normalize("NFC", s or "").casefold()


def regimes_of(case: dict[str, Any]) -> list[str]:
    r = case.get("regime")
    return r if isinstance(r, list) else [r]


def judge(case: dict[str, Any], reply: dict[str, Any]) -> str:
    expects = case["expect"] if isinstance(case["expect"], list) else [case["expect"]]
    return min((_judge_one(case, e, reply) for e in expects), key=RANK.__getitem__)


def _judge_one(case: dict[str, Any], expect: str, reply: dict[str, Any]) -> str:
    kind = reply.get("kind")
    if any(p in reply.get("answer", "") for p in case.get("pii", [])):
        return "wrong"
    if expect == "faq":
        if kind == "faq":
            if reply.get("regime") not in regimes_of(case):
                return "wrong"
            answer = _norm(reply.get("answer", ""))
            for group in case.get("facts", []):
                if not any(_norm(alt) in answer for alt in group):
                    return "wrong"
            return "right"
        if kind == "clarify":
            offered = {s.get("regime") for s in reply.get("suggestions", [])}
            return "clarified" if offered & set(regimes_of(case)) else "miss"
        return "miss"
    if expect == "fallback":
        return {"fallback": "right", "clarify": "soft", "faq": "wrong"}.get(kind or "", "miss")
    return "right" if kind == expect else ("wrong" if kind == "faq" else "miss")


def load_cases(paths: list[Path]) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in paths:
        files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
        for f in files:
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        cases.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{f}:{n}: bad JSON: {exc.msg}") from exc
    return cases


def label_of(case: dict[str, Any]) -> str:
    first = case["expect"][0] if isinstance(case["expect"], list) else case["expect"]
    return regimes_of(case)[0] if first == "faq" else first


def predicted_label(reply: dict[str, Any]) -> str:
    if reply.get("kind") == "faq":
        return reply.get("regime") or "?"
    return str(reply.get("kind"))


@dataclass
class Report:
    verdicts: list[str] = field(default_factory=list)
    by_style: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    by_label: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)

    def share(self, what: str = "right", vs: list[str] | None = None) -> float:
        vs = self.verdicts if vs is None else vs
        return sum(v == what for v in vs) / max(1, len(vs))

    def summary(self) -> str:
        return (
            f"cases={len(self.verdicts)} right={self.share():.3f} wrong={self.share('wrong'):.3f} "
            f"clarified={self.share('clarified'):.3f} miss={self.share('miss'):.3f}"
        )

    def render(self, show_misses: bool = True) -> str:
        lines: list[str] = []
        if show_misses:
            for verdict, case, reply in self.misses:
                lines.append(
                    f"{verdict:9} {case.get('id', '-')} {case['text'][:70]!r} -> {reply.get('kind')}"
                    f" {reply.get('intent_id')} conf={reply.get('confidence')}"
                )
            lines.append("")
        lines.append("by style:  " + "  ".join(f"{k}={self.share('right', v):.2f}({len(v)})" for k, v in sorted(self.by_style.items())))
        lines.append("by label:  " + "  ".join(f"{k}={self.share('right', v):.2f}({len(v)})" for k, v in sorted(self.by_label.items())))
        labels = sorted({a for a, _ in self.confusion} | {b for _, b in self.confusion})
        short = {lab: lab[:6] for lab in labels}
        lines.append("\nconfusion (rows: expected, columns: answered):")
        lines.append(" " * 24 + " ".join(f"{short[b]:>6}" for b in labels))
        for a in labels:
            row = [self.confusion.get((a, b), 0) for b in labels]
            if any(row):
                lines.append(f"{a:>23} " + " ".join(f"{n or '.':>6}" for n in row))
        lines.append("\n" + self.summary())
        return "\n".join(lines)


def evaluate(cases: list[dict[str, Any]], replies: list[dict[str, Any]]) -> Report:
    report = Report()
    for case, reply in zip(cases, replies, strict=True):
        v = judge(case, reply)
        report.verdicts.append(v)
        report.by_style[case.get("style", "-")].append(v)
        report.by_label[label_of(case)].append(v)
        report.confusion[(label_of(case), predicted_label(reply))] += 1
        if v != "right":
            report.misses.append((v, case, reply))
    return report


def reply_record(r: Reply) -> dict[str, Any]:
    """A reply as the judge reads it, and as `vssbot ask --jsonl` prints it (less the message id)."""
    return {
        "kind": r.kind, "intent_id": r.intent_id, "regime": r.regime, "confidence": r.confidence,
        "answer": r.text,
        "suggestions": [{"intent_id": s.intent_id, "question": s.question, "regime": s.regime} for s in r.suggestions],
    }


def evaluate_bot(bot: Bot, cases: list[dict[str, Any]]) -> Report:
    """Ask the bot every case (in the case's language if it names one) and judge the replies."""
    return evaluate(cases, [reply_record(bot.reply(case["text"], case.get("lang"))) for case in cases])
