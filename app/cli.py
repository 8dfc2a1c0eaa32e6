"""`vssbot`: serve the bot, talk to it in the terminal, evaluate it, check the knowledge base."""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any, TextIO

from app.logging import setup_logging
from app.settings import Settings, get_settings


def _reply_dict(handled: Any) -> dict[str, Any]:
    r = handled.reply
    if r is None:  # the conversation is with a person: the bot says nothing
        return {"kind": "handover", "intent_id": None, "regime": None, "confidence": 0.0, "answer": "",
                "suggestions": [], "message_id": None}
    from app.evaluation import reply_record

    return {**reply_record(r), "message_id": handled.reply_id}


def _services(settings: Settings):  # type: ignore[no-untyped-def]
    from app.services import build_services

    return build_services(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    from app.settings import sqlite_path

    host, port = args.host or settings.host, args.port or settings.port
    if args.workers > 1:
        if sqlite_path(settings.database_url) is not None or settings.database_url.startswith("sqlite"):
            print("vssbot serve: SQLite is for one process; for --workers > 1 set VSSBOT_DATABASE_URL to a "
                  "PostgreSQL database", file=sys.stderr)
            return 2
        from app.db.session import upgrade

        upgrade(settings.database_url)  # once, before the workers start
        # Each worker process builds its own app from the environment (settings, bot, dispatcher).
        uvicorn.run("app.main:app_factory", factory=True, host=host, port=port, workers=args.workers,
                    log_config=None, access_log=False)
        return 0
    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)
    return 0


def cmd_messenger_setup_profile(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    import httpx

    from app.replies import menu
    from webhooks.messenger import profile_payload

    if not settings.messenger_page_token:
        print("vssbot messenger setup-profile: set VSSBOT_MESSENGER_PAGE_TOKEN first", file=sys.stderr)
        return 2
    greeting = {
        "default": "Xin chào {{user_first_name}}! Trợ lý tự động của BHXH Việt Nam giải đáp về BHXH, BHYT, "
                   "bảo hiểm thất nghiệp. Hotline 1900 9068.",
        "en_US": "Hello {{user_first_name}}! The automatic assistant of Vietnam Social Security answers questions "
                 "on social, health and unemployment insurance. Hotline 1900 9068.",
    }
    body = profile_payload(greeting, {"default": menu("vi"), "en_US": menu("en")})
    if args.dry_run:
        print(json.dumps(body, ensure_ascii=False, indent=2))
        return 0

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(timeout=15) as client:
            return await client.post(f"{settings.messenger_api_base}/me/messenger_profile",
                                     params={"access_token": settings.messenger_page_token}, json=body)

    resp = asyncio.run(post())
    if resp.status_code != 200:
        print(f"vssbot messenger setup-profile: the Graph API answered {resp.status_code}: {resp.text[:300]}", file=sys.stderr)
        return 1
    print("Get Started button, greeting and persistent menu are set")
    return 0


def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    if not services.pipeline.release(args.conversation_id):
        print(f"vssbot release: no conversation {args.conversation_id}", file=sys.stderr)
        return 1
    print(f"conversation {args.conversation_id} is back with the bot")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio
    import signal

    services = _services(settings)
    dispatcher = services.dispatcher
    if dispatcher is None or not dispatcher.senders:
        print("vssbot worker: no channel is configured (see the VSSBOT_MESSENGER_* / VSSBOT_ZALO_* settings)", file=sys.stderr)
        return 1

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from app.services import freeze_heap

        freeze_heap()
        services.inbox.on_processed = dispatcher.wake.set
        # the serving processes store webhook deliveries; any process may answer them
        await asyncio.gather(dispatcher.run(stop), services.inbox.run(stop, write=False))

    asyncio.run(main())
    return 0


def _ask_one(services: Any, text: str, lang: str | None, session: str) -> dict[str, Any]:
    from webhooks.base import InboundEvent

    handled = services.pipeline.handle(InboundEvent(channel="cli", user_id=session, text=text, lang=lang))
    return _reply_dict(handled)


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    if args.jsonl is None and not args.text:
        print("vssbot ask: give a question, or --jsonl FILE|-", file=sys.stderr)
        return 2
    services = _services(settings)
    session = uuid.uuid4().hex
    if args.jsonl is not None:
        stream: TextIO = sys.stdin if args.jsonl == "-" else open(args.jsonl, encoding="utf-8", errors="replace")
        with stream:
            for line in stream:
                if not line.strip():
                    continue
                out = _ask_jsonl_line(services, line, session)
                sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
                sys.stdout.flush()
        return 0
    reply = _ask_one(services, " ".join(args.text), args.lang, session)
    if args.json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    else:
        print(reply["answer"])
        print(f"\n[{reply['kind']} {reply['intent_id'] or ''} confidence={reply['confidence']}]", file=sys.stderr)
    return 0


def _ask_jsonl_line(services: Any, line: str, session: str) -> dict[str, Any]:
    """One request line → one reply object; a bad line gets an error object, never a crash."""
    from app.bot import fallback_text

    try:
        req = json.loads(line)
        if not isinstance(req, dict) or not isinstance(req.get("text"), str):
            raise ValueError('each line must be a JSON object with a "text" string')
        lang = req.get("lang") if req.get("lang") in ("vi", "en") else None
        return _ask_one(services, req["text"], lang, str(req.get("session_id") or session))
    except ValueError as exc:  # JSONDecodeError is a ValueError
        return {
            "kind": "fallback", "intent_id": None, "regime": None, "confidence": 0.0,
            "answer": fallback_text("vi"), "suggestions": [], "message_id": None, "error": str(exc),
        }


def cmd_chat(args: argparse.Namespace, settings: Settings) -> int:
    services = _services(settings)
    session = uuid.uuid4().hex
    print("vssbot — hỏi về BHXH, BHYT, BHTN. Gõ số để chọn gợi ý, '+' / '-' để đánh giá câu trả lời, 'q' để thoát.")
    last: dict[str, Any] | None = None
    while True:
        try:
            text = input("\nBạn: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = text.strip()
        if text.lower() in ("q", "quit", "exit", "thoát"):
            return 0
        if last and text in ("+", "-") and last.get("message_id"):
            services.pipeline.feedback(last["message_id"], text == "+")
            print("Cảm ơn bạn đã đánh giá!")
            continue
        if last and text.isdigit() and last.get("suggestions") and 1 <= int(text) <= len(last["suggestions"]):
            text = last["suggestions"][int(text) - 1]["question"]
        try:
            last = _ask_one(services, text, args.lang, session)
        except Exception as exc:  # noqa: BLE001 - one bad message must not end the chat
            print(f"(lỗi: {type(exc).__name__}; bạn thử lại nhé)")
            continue
        print(f"\nvssbot: {last['answer']}")
        print(f"  [{last['kind']} {last['intent_id'] or ''} {last['confidence']}]")


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from app.bot import Bot
    from app.evaluation import evaluate_bot, load_cases

    bot = Bot(settings.knowledge_dir)
    report = evaluate_bot(bot, load_cases([Path(p) for p in args.files]))
    print(report.render(show_misses=not args.quiet))
    ok = report.share() >= args.min_score and report.share("wrong") <= args.max_wrong
    return 0 if ok else 1


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from app.bot import Bot
    from app.evaluation import load_cases
    from app.tuning import best, grid_search

    bot = Bot(settings.knowledge_dir)
    sets = [load_cases([Path(p)]) for p in args.files]
    current = asdict(bot.matcher.config)
    print(f"tuning on {sum(map(len, sets))} cases in {len(sets)} set(s) (this takes a few minutes)...", file=sys.stderr)
    trials = grid_search(bot, sets)
    top = best(trials, args.max_wrong)
    if not top:
        print(f"no combination keeps wrong <= {args.max_wrong} on every set")
        return 1
    for t in top[: args.show]:
        changed = {k: v for k, v in t.params.items() if current.get(k) != v}
        each = "  ".join(f"{name}: {r:.3f}/{w:.3f}" for name, (r, w) in zip(args.files, t.per_set))
        print(f"right={t.right:.3f} wrong={t.wrong:.3f} clarified={t.clarified:.3f}  [{each}]  {changed or '(the current settings)'}")
    return 0


def cmd_kb_validate(args: argparse.Namespace, settings: Settings) -> int:
    from intents.normalize import question_key
    from knowledge.loader import KnowledgeError, load_knowledge

    folder = Path(args.dir) if args.dir else settings.knowledge_dir
    try:
        kb = load_knowledge(folder, question_key=question_key)
    except KnowledgeError as exc:
        for p in exc.problems:
            print(p)
        print(f"{len(exc.problems)} problem(s) in {folder}", file=sys.stderr)
        return 1
    by_regime: dict[str, int] = {}
    for e in kb.faq_entries():
        by_regime[e.regime.value if e.regime else "-"] = by_regime.get(e.regime.value if e.regime else "-", 0) + 1
    print(f"ok: {len(kb.entries)} entries ({len(kb.faq_entries())} faq), {len(kb.parameters)} parameters, version {kb.version}")
    print("  " + ", ".join(f"{k}={v}" for k, v in sorted(by_regime.items())))
    return 0


def cmd_kb_lint(args: argparse.Namespace, settings: Settings) -> int:
    from app.bot import Bot
    from app.lint import lint, summary

    bot = Bot(Path(args.dir) if args.dir else settings.knowledge_dir)
    print("checking every phrasing against the others (leave-one-out)...", file=sys.stderr)
    findings, held = lint(bot.kb, bot.matcher)
    for f in findings:
        print(f)
    print(summary(held))
    print(f"{len(findings)} finding(s)" if findings else "clean")
    return 1 if findings else 0


def cmd_kb_export(args: argparse.Namespace, settings: Settings) -> int:
    from intents.normalize import question_key
    from knowledge.loader import load_knowledge
    from knowledge.spreadsheet import to_csv

    kb = load_knowledge(settings.knowledge_dir, question_key=question_key)
    text = to_csv(kb.entries)
    if args.out in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.out).write_text("\ufeff" + text, encoding="utf-8")
        print(f"wrote {len(kb.entries)} entries to {args.out}", file=sys.stderr)
    return 0


def cmd_kb_import(args: argparse.Namespace, settings: Settings) -> int:
    import shutil
    import tempfile

    from intents.normalize import question_key
    from knowledge.loader import KnowledgeError, load_knowledge
    from knowledge.spreadsheet import diff, from_csv, merged
    from knowledge.writer import write_entries

    folder = Path(settings.knowledge_dir)
    kb = load_knowledge(folder, question_key=question_key)
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"vssbot kb import: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    incoming, sheet_problems = from_csv(text)
    for sp in sheet_problems:
        print(f"{args.file}: {sp}")
    if sheet_problems:
        print(f"{len(sheet_problems)} problem(s); nothing imported", file=sys.stderr)
        return 1
    d = diff(kb.entries, incoming)
    print(d.render())
    if d.empty:
        return 0
    result = merged(kb.entries, incoming)
    # check the whole result as the loader will see it, before touching the real files
    with tempfile.TemporaryDirectory() as tmp:
        for f in folder.glob("*.yaml"):
            shutil.copy(f, tmp)
        write_entries(result, Path(tmp))
        try:
            load_knowledge(Path(tmp), question_key=question_key)
        except KnowledgeError as exc:
            for p in exc.problems:
                print(f"after import: {p}")
            print("the import would leave the knowledge base invalid; nothing written", file=sys.stderr)
            return 1
    if not args.apply:
        print(f"\n{len(d.added)} added, {len(d.changed)} field change(s): run again with --apply to write them", file=sys.stderr)
        return 0
    written = write_entries(result, folder)
    print(f"wrote {len(written)} file(s) in {folder}", file=sys.stderr)
    return 0


def cmd_kb_publish(args: argparse.Namespace, settings: Settings) -> int:
    """Publish a folder's YAML files as the live version (running servers reload within a poll)."""
    from app import audit, kbstore
    from app.console.drafts import pending
    from knowledge.loader import KnowledgeError

    folder = Path(args.dir) if args.dir else settings.knowledge_dir
    try:
        files, kb = kbstore.folder_files(folder)
    except KnowledgeError as exc:
        for p in exc.problems:
            print(p)
        print(f"{len(exc.problems)} problem(s) in {folder}: nothing published", file=sys.stderr)
        return 1
    with _db_session(settings) as db:
        done = kbstore.publish_files(db, files, kb, _cli_actor(), args.note)
        if done is None:
            live = kbstore.latest(db)
            print(f"the files of {folder} are the live version already (#{live.id if live else '?'}, {kb.version})")
            return 0
        audit.record(db, _cli_actor(), "kb.publish", f"kb_version:{done.version.id}", {"version": done.before},
                       kbstore.audit_after(done, args.note, source="files"))
        db.commit()
        n_drafts = len(pending(db))
    changed = done.changed
    print(f"published version #{done.version.id} ({kb.version}) from {folder}: "
          f"{len(changed['entries'])} entries and {len(changed['parameters'])} parameters changed")
    if n_drafts:
        print(f"note: {n_drafts} console draft(s) are still pending; they apply on top of this version", file=sys.stderr)
    return 0


def cmd_kb_versions(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from app.db.models import KbVersion

    with _db_session(settings) as db:
        rows = db.scalars(select(KbVersion).order_by(KbVersion.id.desc()).limit(args.limit)).all()
        if not rows:
            print("no published version yet (the first `vssbot serve` or `vssbot kb publish` makes one)")
            return 0
        for i, r in enumerate(rows):
            live = "*" if i == 0 else " "
            when = r.created_at.strftime("%Y-%m-%d %H:%M")
            print(f"{live}#{r.id}\t{r.version}\t{when}\t{r.source}\t{r.created_by}\t{r.note or ''}")
    return 0


def cmd_kb_pull(args: argparse.Namespace, settings: Settings) -> int:
    """Write the live version's files into a folder (which then holds exactly that version)."""
    from app import kbstore

    out = Path(args.out)
    with _db_session(settings) as db:
        live = kbstore.latest(db)
        if live is None:
            print("vssbot kb pull: no published version yet (the first `vssbot serve` or `vssbot kb publish` makes one)",
                  file=sys.stderr)
            return 1
        files, version_id, version = dict(live.files), live.id, live.version
    try:
        out.mkdir(parents=True, exist_ok=True)
        stale = sorted(p for p in out.glob("*.yaml") if p.name not in files)
        for name, text in sorted(files.items()):
            (out / name).write_bytes(text.encode("utf-8"))  # bytes: the version hash covers them as stored
        for p in stale:
            p.unlink()
    except OSError as exc:
        print(f"vssbot kb pull: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for p in stale:
        print(f"removed {p} (not in the live version)", file=sys.stderr)
    print(f"wrote version #{version_id} ({version}): {len(files)} file(s) in {out}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from app.db.session import upgrade

    upgrade(settings.database_url)
    print("database is at the latest schema")
    return 0


def _read_password(args: argparse.Namespace) -> str:
    """From stdin with --password-stdin (one line), else asked twice at the terminal."""
    import getpass

    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise SystemExit("vssbot users: the two passwords differ; nothing changed")
    return first


def _db_session(settings: Settings):  # type: ignore[no-untyped-def]
    from app.db.session import make_engine, make_sessionmaker, upgrade

    upgrade(settings.database_url)
    return make_sessionmaker(make_engine(settings.database_url))()


def _cli_actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def cmd_users_create(args: argparse.Namespace, settings: Settings) -> int:
    from app.console.accounts import AccountError, create_user

    password = _read_password(args)
    with _db_session(settings) as db:
        try:
            create_user(db, args.username, args.role, password, _cli_actor())
        except AccountError as exc:
            print(f"vssbot users create: {exc}", file=sys.stderr)
            return 2
        db.commit()
    print(f"created {args.username.strip().lower()} ({args.role}); log in at /admin")
    return 0


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from app.db.models import StaffUser

    with _db_session(settings) as db:
        for u in db.scalars(select(StaffUser).order_by(StaffUser.username)):
            print(f"{u.username}\t{u.role}\t{'active' if u.active else 'disabled'}")
    return 0


def cmd_users_set(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from app.console.accounts import AccountError, update_user
    from app.db.models import StaffUser

    with _db_session(settings) as db:
        user = db.scalar(select(StaffUser).where(StaffUser.username == args.username.strip().lower()))
        if user is None:
            print(f"vssbot users set: no account {args.username!r}", file=sys.stderr)
            return 2
        password = _read_password(args) if args.password or args.password_stdin else None
        active = None if args.enable is None else args.enable
        try:
            update_user(db, user, _cli_actor(), role=args.role, active=active, password=password)
        except AccountError as exc:
            print(f"vssbot users set: {exc}", file=sys.stderr)
            return 2
        db.commit()
    print(f"updated {user.username}")
    return 0


# --- Privacy (Decree 13/2023/ND-CP): a person's data on request, and the retention purge -----------


def _whole(unit: str, high: int) -> Any:
    """An argparse type: a whole number from 1 to `high`, with an error that says so."""
    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of {unit}") from None
        if not 1 <= n <= high:
            raise argparse.ArgumentTypeError(f"{n} is out of range: give 1 to {high} {unit}")
        return n
    return parse


def _confirm(question: str) -> bool:
    """Ask on stderr, read the answer from stdin (end of input counts as no)."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():
        print(file=sys.stderr)  # the piped answer did not end the prompt's line
    return answer.strip().lower() in ("y", "yes", "c", "có", "co")


def _write_private(path: str, text: str) -> None:
    """A file only its owner can read: an export is one person's personal data."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def cmd_privacy_export(args: argparse.Namespace, settings: Settings) -> int:
    from app.privacy import PrivacyError, TextVault
    from app.retention import Counts, UnknownPerson, export_person, find_person, record

    with _db_session(settings) as db:
        try:
            person = find_person(db, args.channel, args.user)
            doc = export_person(db, person, TextVault.from_settings(settings))
        except (UnknownPerson, PrivacyError) as exc:
            print(f"vssbot privacy export: {exc}", file=sys.stderr)
            return 1
        text = json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
        try:
            if args.out:
                _write_private(args.out, text)
            else:
                sys.stdout.write(text)
        except OSError as exc:
            print(f"vssbot privacy export: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
            return 1
        n_messages = sum(len(c["messages"]) for c in doc["conversations"])
        record(db, _cli_actor(), "privacy.export", f"{args.channel}:{args.user}",
               Counts(people=1, conversations=len(doc["conversations"]), messages=n_messages),
               originals=doc["originals"], out=args.out or "stdout")
        db.commit()
    if doc["originals"]["stored"] > doc["originals"]["decrypted"]:
        print(f"vssbot privacy export: {doc['originals']['stored']} original(s) are stored encrypted and were not "
              "included: set VSSBOT_DATA_KEY to include them", file=sys.stderr)
    if args.out:
        print(f"wrote {args.out}: {len(doc['conversations'])} conversation(s), {n_messages} message(s)", file=sys.stderr)
    return 0


def cmd_privacy_erase(args: argparse.Namespace, settings: Settings) -> int:
    from app.retention import UnknownPerson, erase_counts, erase_person, find_person, record

    with _db_session(settings) as db:
        try:
            person = find_person(db, args.channel, args.user)
        except UnknownPerson as exc:
            print(f"vssbot privacy erase: {exc}", file=sys.stderr)
            return 1
        planned = erase_counts(db, person)
        print(f"erasing {args.channel} user {args.user!r} deletes: {planned}", file=sys.stderr)
        if not args.yes and not _confirm("Delete all of it? This cannot be undone."):
            print("nothing deleted", file=sys.stderr)
            return 1
        counts = erase_person(db, person)
        record(db, _cli_actor(), "privacy.erase", f"{args.channel}:{args.user}", counts)
        db.commit()
    print(f"deleted {counts}")
    return 0


def cmd_privacy_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from app.privacy import new_key

    print(new_key())
    return 0


def cmd_purge(args: argparse.Namespace, settings: Settings) -> int:
    from app.retention import Counts, cutoff_for, purge, purge_counts, record

    cutoff = cutoff_for(args.older_than)
    with _db_session(settings) as db:
        planned = purge_counts(db, cutoff)
        db.rollback()  # end the read transaction before asking (SQLite would hold its snapshot)
        print(f"conversations with no message since {cutoff:%Y-%m-%d %H:%M} UTC: deleting {planned}", file=sys.stderr)
        if not planned.conversations and not planned.people:
            print("nothing to purge", file=sys.stderr)
            return 0
        if not args.yes and not _confirm("Delete them? This cannot be undone."):
            print("nothing deleted", file=sys.stderr)
            return 1

        def progress(done: Counts) -> None:
            print(f"  {done.conversations}/{planned.conversations} conversations, {done.people} people", file=sys.stderr)

        done = Counts()  # filled batch by batch, so an interruption still knows what was deleted
        try:
            purge(db, cutoff, batch=args.batch, progress=progress, into=done)
        finally:
            # an interrupted purge keeps the batches it committed: the audit row says how far it got
            db.rollback()
            complete = done.conversations >= planned.conversations
            record(db, _cli_actor(), "retention.purge", f"older_than={args.older_than}d", done,
                   cutoff=cutoff.isoformat(), complete=complete)
            db.commit()
    print(f"deleted {done}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vssbot", description="VSS help-desk chatbot (settings: VSSBOT_* environment variables)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve the API, the chat page, the webhooks and the staff console")
    s.add_argument("--host", help="default VSSBOT_HOST or 127.0.0.1")
    s.add_argument("--port", type=int, help="default VSSBOT_PORT or 8000")
    s.add_argument("--workers", type=int, default=1, help="server processes (more than 1 needs PostgreSQL)")
    s.set_defaults(func=cmd_serve)

    ms = sub.add_parser("messenger", help="Messenger Page tools").add_subparsers(dest="messenger_command", required=True, metavar="MESSENGER_COMMAND")
    s = ms.add_parser("setup-profile", help="set the Page's Get Started button, greeting and persistent menu")
    s.add_argument("--dry-run", action="store_true", help="print the request body instead of sending it")
    s.set_defaults(func=cmd_messenger_setup_profile)

    s = sub.add_parser("release", help="hand a conversation a person took over back to the bot")
    s.add_argument("conversation_id", type=int, help="the conversation's number (conversations.id)")
    s.set_defaults(func=cmd_release)

    s = sub.add_parser("worker", help="send queued channel replies (the outbox) without serving HTTP")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("chat", help="talk to the bot in the terminal")
    s.add_argument("--lang", choices=["vi", "en"], help="reply language (default: detected)")
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("ask", help="ask one question, or many as JSON lines")
    s.add_argument("text", nargs="*", help="the question")
    s.add_argument("--json", action="store_true", help="print the whole reply object")
    s.add_argument("--jsonl", metavar="FILE", help='JSON lines {"text": ...} from FILE (or - for stdin), one reply object a line out')
    s.add_argument("--lang", choices=["vi", "en"], help="reply language (default: detected)")
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("eval", help="accuracy on labelled JSON-lines files or folders, by style and regime")
    s.add_argument("files", nargs="+", help="labelled .jsonl files or folders of them")
    s.add_argument("--quiet", action="store_true", help="summary only, no list of misses")
    s.add_argument("--min-score", type=float, default=0.0, help="exit 1 below this share of right replies")
    s.add_argument("--max-wrong", type=float, default=1.0, help="exit 1 above this share of wrong replies")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("tune", help="grid-search the matcher's thresholds on labelled files (prints, changes nothing)")
    s.add_argument("files", nargs="+", help="labelled .jsonl files or folders of them, each a set (not the acceptance set)")
    s.add_argument("--max-wrong", type=float, default=0.02, help="ceiling on the share of wrong answers, on every set")
    s.add_argument("--show", type=int, default=5, help="how many of the best combinations to print")
    s.set_defaults(func=cmd_tune)

    kb = sub.add_parser("kb", help="knowledge-base tools").add_subparsers(dest="kb_command", required=True, metavar="KB_COMMAND")
    s = kb.add_parser("validate", help="check every file; print each problem as file:line: message")
    s.add_argument("--dir", help="knowledge folder (default VSSBOT_KNOWLEDGE_DIR or the bundled one)")
    s.set_defaults(func=cmd_kb_validate)

    s = kb.add_parser("lint", help="validation plus colliding phrasings, typed amounts, stale entries, missing English")
    s.add_argument("--dir", help="knowledge folder (default VSSBOT_KNOWLEDGE_DIR or the bundled one)")
    s.set_defaults(func=cmd_kb_lint)

    s = kb.add_parser("export", help="the knowledge base as a spreadsheet (CSV, Vietnamese column headers)")
    s.add_argument("--format", choices=["csv"], default="csv")
    s.add_argument("--out", help="file to write (default: standard output)")
    s.set_defaults(func=cmd_kb_export)
    s = kb.add_parser("import", help="read a reviewed spreadsheet: show what it changes; --apply writes it")
    s.add_argument("file", help="a CSV exported by `vssbot kb export` and edited")
    s.add_argument("--apply", action="store_true", help="write the changes into the YAML files")
    s.set_defaults(func=cmd_kb_import)
    s = kb.add_parser("publish", help="publish the YAML files as the live version (servers reload within seconds)")
    s.add_argument("--dir", help="knowledge folder (default VSSBOT_KNOWLEDGE_DIR or the bundled one)")
    s.add_argument("--note", help="what changed, for the version list")
    s.set_defaults(func=cmd_kb_publish)
    s = kb.add_parser("versions", help="the published versions, newest (live, marked *) first")
    s.add_argument("--limit", type=int, default=30, help="how many to list")
    s.set_defaults(func=cmd_kb_versions)
    s = kb.add_parser("pull", help="write the live version's YAML files into a folder (to review staff changes in git)")
    s.add_argument("--out", required=True, help="the folder to write (its other .yaml files are removed)")
    s.set_defaults(func=cmd_kb_pull)

    us = sub.add_parser("users", help="staff accounts of the console (/admin)").add_subparsers(
        dest="users_command", required=True, metavar="USERS_COMMAND")
    s = us.add_parser("create", help="create an account (the password is asked for, or read from stdin)")
    s.add_argument("--username", required=True, help="2-64 lowercase letters, digits, '.', '_' or '-'")
    s.add_argument("--role", required=True, choices=["viewer", "editor", "admin"],
                   help="viewer reads; editor also reviews and edits the knowledge base; admin also manages accounts")
    s.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    s.set_defaults(func=cmd_users_create)
    s = us.add_parser("list", help="list the accounts")
    s.set_defaults(func=cmd_users_list)
    s = us.add_parser("set", help="change an account's role, enable or disable it, or set its password")
    s.add_argument("--username", required=True)
    s.add_argument("--role", choices=["viewer", "editor", "admin"])
    s.add_argument("--disable", dest="enable", action="store_false", default=None, help="lock the account out")
    s.add_argument("--enable", dest="enable", action="store_true", help="let a disabled account log in again")
    s.add_argument("--password", action="store_true", help="set a new password (asked for)")
    s.add_argument("--password-stdin", action="store_true", help="set a new password read from stdin")
    s.set_defaults(func=cmd_users_set)

    pv = sub.add_parser("privacy", help="a person's data on request: export it, erase it (Decree 13/2023)").add_subparsers(
        dest="privacy_command", required=True, metavar="PRIVACY_COMMAND")
    channels = ["messenger", "zalo", "web", "cli"]
    s = pv.add_parser("export", help="everything about one person as JSON (originals decrypted if the key is set)")
    s.add_argument("--channel", required=True, choices=channels)
    s.add_argument("--user", required=True, help="the channel's user id (PSID, Zalo user id, web session id)")
    s.add_argument("--out", help="file to write, readable by you only (default: standard output)")
    s.set_defaults(func=cmd_privacy_export)
    s = pv.add_parser("erase", help="delete one person and their conversations, messages, feedback, review items")
    s.add_argument("--channel", required=True, choices=channels)
    s.add_argument("--user", required=True, help="the channel's user id (PSID, Zalo user id, web session id)")
    s.add_argument("--yes", action="store_true", help="do not ask before deleting")
    s.set_defaults(func=cmd_privacy_erase)
    s = pv.add_parser("keygen", help="print a new key for VSSBOT_DATA_KEY")
    s.set_defaults(func=cmd_privacy_keygen)

    s = sub.add_parser("purge", help="delete conversations whose last message is older than DAYS (retention)")
    s.add_argument("--older-than", required=True, type=_whole("days", 36500), metavar="DAYS", help="age in days, 1 or more")
    s.add_argument("--yes", action="store_true", help="do not ask before deleting")
    s.add_argument("--batch", type=_whole("conversations", 10000), default=500, metavar="N",
                   help="conversations deleted per transaction (default 500)")
    s.set_defaults(func=cmd_purge)

    db = sub.add_parser("db", help="database tools").add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    s = db.add_parser("upgrade", help="migrate the database to the latest schema")
    s.set_defaults(func=cmd_db_upgrade)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.privacy import PrivacyError

    try:
        settings = get_settings()
    except PrivacyError as exc:  # VSSBOT_STORE_ORIGINAL without a (valid) VSSBOT_DATA_KEY
        print(f"vssbot: {exc}", file=sys.stderr)
        return 2
    quiet = ("ask", "eval", "kb", "chat", "tune", "users", "privacy", "purge")
    setup_logging("WARNING" if args.command in quiet else settings.log_level, settings.log_json)
    from knowledge.loader import KnowledgeError

    try:
        return int(args.func(args, settings) or 0)
    except KnowledgeError as exc:
        print(f"vssbot: the knowledge base in {settings.knowledge_dir} has problems:", file=sys.stderr)
        for p in exc.problems:
            print(f"  {p}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
