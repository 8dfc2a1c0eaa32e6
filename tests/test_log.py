"""The conversation log on SQLite and PostgreSQL: what is stored, retries, feedback."""
from __future__ import annotations

from sqlalchemy import func, select

from app.db.models import Conversation, Feedback, Message, Person
from app.services import Services
from webhooks.base import InboundEvent


def test_a_message_and_its_reply_are_stored_with_the_decision(services: Services) -> None:
    handled = services.pipeline.handle(InboundEvent(channel="web", user_id="u1", text="trợ cấp thất nghiệp được bao nhiêu"))
    assert handled is not None
    with services.sessions() as s:
        inbound = s.get(Message, handled.inbound_id)
        reply = s.get(Message, handled.reply_id)
        assert inbound is not None and reply is not None
        assert (inbound.direction, inbound.channel, inbound.text) == ("in", "web", "trợ cấp thất nghiệp được bao nhiêu")
        assert reply.direction == "out" and reply.reply_to_id == inbound.id
        assert reply.kind == handled.reply.kind == "faq"
        assert reply.entry_id == handled.reply.intent_id and reply.regime == "unemployment"
        assert services.bot.matcher.config.answer_confidence <= (reply.confidence or 0) <= 1
        assert reply.kb_version == services.bot.kb.version
        assert reply.latency_ms is not None and reply.latency_ms >= 0
        assert reply.candidates and reply.candidates[0]["intent_id"] == reply.entry_id
        assert reply.text == handled.reply.text
        person = s.scalar(select(Person).where(Person.external_id == "u1"))
        assert person is not None and person.channel == "web" and person.lang == "vi"


def test_one_person_keeps_one_conversation(services: Services) -> None:
    for text in ("chào ad", "nghỉ ốm được mấy ngày", "cảm ơn"):
        services.pipeline.handle(InboundEvent(channel="web", user_id="u2", text=text))
    services.pipeline.handle(InboundEvent(channel="web", user_id="u3", text="hi"))
    with services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Person)) == 2
        convs = s.scalars(select(Conversation).join(Person).where(Person.external_id == "u2")).all()
        assert len(convs) == 1
        assert s.scalar(select(func.count()).select_from(Message).where(Message.conversation_id == convs[0].id)) == 6


def test_a_retried_platform_event_is_answered_once(services: Services) -> None:
    event = InboundEvent(channel="messenger", user_id="psid-1", text="rút bhxh 1 lần", event_id="m_abc")
    assert services.pipeline.handle(event) is not None
    assert services.pipeline.handle(event) is None
    with services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Message)) == 2


def test_feedback_is_recorded_and_replaced(services: Services) -> None:
    handled = services.pipeline.handle(InboundEvent(channel="web", user_id="u4", text="nghỉ thai sản mấy tháng"))
    assert handled is not None
    assert services.pipeline.feedback(handled.reply_id, False, "chưa rõ")
    assert services.pipeline.feedback(handled.reply_id, True)
    assert not services.pipeline.feedback(handled.inbound_id, True)  # not a bot reply
    assert not services.pipeline.feedback("no-such-id", True)
    with services.sessions() as s:
        rows = s.scalars(select(Feedback)).all()
        assert [(f.message_id, f.helpful, f.comment) for f in rows] == [(handled.reply_id, True, None)]


def test_control_characters_and_huge_messages_are_stored_safely(services: Services) -> None:
    garbage = "\x00\x01bảo\x02 hiểm\x7f" + "x" * 20000
    handled = services.pipeline.handle(InboundEvent(channel="web", user_id="u5", text=garbage))
    assert handled is not None
    with services.sessions() as s:
        stored = s.get(Message, handled.inbound_id)
        assert stored is not None
        assert "\x00" not in stored.text and stored.text.startswith("bảo hiểm")
        assert len(stored.text) <= 10000


def test_migrations_leave_the_database_at_head(services: Services) -> None:
    from alembic.script import ScriptDirectory

    from app.db.session import alembic_config, current_revision

    head = ScriptDirectory.from_config(alembic_config(services.settings.database_url)).get_current_head()
    assert head is not None and current_revision(services.engine) == head


def test_first_messages_of_a_new_person_at_the_same_moment_are_both_kept(services) -> None:  # type: ignore[no-untyped-def]
    """Two different first messages of one new person, stored concurrently: both are kept and
    answered (the loser of the race on the person's row retries), none is taken for a retry."""
    import threading

    from sqlalchemy import func, select

    from app.db.models import Message, Person
    from webhooks.base import InboundEvent

    barrier = threading.Barrier(2)
    results: list[object] = []

    def send(i: int) -> None:
        barrier.wait()
        results.append(services.pipeline.handle(InboundEvent(
            channel="messenger", user_id="racer", text=f"nghỉ thai sản mấy tháng {i}", event_id=f"race-{i}")))

    for _ in range(3):
        results.clear()
        with services.sessions() as db, db.begin():
            db.query(Person).filter(Person.external_id == "racer").delete()
        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r is not None for r in results)
        with services.sessions() as db:
            assert db.scalar(select(func.count()).select_from(Person).where(Person.external_id == "racer")) == 1
            assert db.scalar(select(func.count()).select_from(Message).where(Message.direction == "in",
                                                                              Message.external_id.like("race-%"))) == 2
            db.query(Message).filter(Message.external_id.like("race-%")).delete(synchronize_session=False)
            db.commit()
