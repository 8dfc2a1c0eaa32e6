"""The buttons that go with a reply on a channel, and the commands those buttons send back.

A button's payload is a small command: `CHOOSE:<entry id>` (an offered option), `MENU:<regime>`
(a topic of the menu), `FEEDBACK:up|down:<reply id>`, `HUMAN` (ask for a person) and
`GET_STARTED`. Messenger returns it as a postback or quick-reply payload; Zalo's hidden-query
buttons return it as the text of a user message, so plain text is checked for it as well.
"""
from __future__ import annotations

import re

from app.bot import Reply
from knowledge.schema import REGIME_NAMES
from webhooks.base import InboundEvent, Option

COMMAND = re.compile(r"^(GET_STARTED|HUMAN|MENU|CHOOSE|FEEDBACK)(?::([\w.:-]{1,120}))?$")



def command_of(event: InboundEvent) -> tuple[str, str] | None:
    """The command a button sent, from a postback payload or (Zalo) a message's text."""
    for raw in (event.payload if event.kind == "postback" else None, event.text):
        if raw:
            m = COMMAND.match(raw.strip())
            if m:
                return m.group(1), m.group(2) or ""
    return None


def _human(lang: str) -> Option:
    return Option("Talk to staff" if lang == "en" else "Gặp nhân viên", "HUMAN")


def menu(lang: str) -> list[Option]:
    return [
        Option(name.short_en if lang == "en" else name.short_vi, f"MENU:{regime.value}")
        for regime, name in REGIME_NAMES.items()
    ] + [_human(lang)]


def options_for(reply: Reply, reply_id: str) -> list[Option]:
    """Buttons for a reply: rate an answer, pick an offered option, or the topic menu."""
    lang = reply.lang
    if reply.kind == "faq":
        up, down = ("👍 Helpful", "👎 Not right") if lang == "en" else ("👍 Hữu ích", "👎 Chưa đúng")
        return [Option(up, f"FEEDBACK:up:{reply_id}"), Option(down, f"FEEDBACK:down:{reply_id}"), _human(lang)]
    if reply.kind == "clarify":
        return [Option(s.question, f"CHOOSE:{s.intent_id}") for s in reply.suggestions] + [_human(lang)]
    if reply.kind == "fallback" or reply.intent_id == "smalltalk.greeting":
        return menu(lang)
    return []
