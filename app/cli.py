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
    return {
        "kind": r.kind, "intent_id": r.intent_id, "regime": r.regime, "confidence": r.confidence,
        "answer": r.text,
        "suggestions": [{"intent_id": s.intent_id, "question": s.question, "regime": s.regime} for s in r.suggestions],
        "message_id": handled.reply_id,
    }


def _services(settings: Settings):  # type: ignore[no-untyped-def]
    from app.services import build_services

    return build_services(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from app.main import create_app

    host, port = args.host or settings.host, args.port or settings.port
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
        await dispatcher.run(stop)

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
    from app.evaluation import evaluate, load_cases

    bot = Bot(settings.knowledge_dir)
    cases = load_cases([Path(p) for p in args.files])
    replies = []
    for case in cases:
        r = bot.reply(case["text"], case.get("lang"))
        replies.append({
            "kind": r.kind, "intent_id": r.intent_id, "regime": r.regime, "confidence": r.confidence,
            "answer": r.text, "suggestions": [{"regime": s.regime, "intent_id": s.intent_id} for s in r.suggestions],
        })
    report = evaluate(cases, replies)
    print(report.render(show_misses=not args.quiet))
    ok = report.share() >= args.min_score and report.share("wrong") <= args.max_wrong
    return 0 if ok else 1


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import asdict

    from app.bot import Bot
    from app.evaluation import load_cases
    from app.tuning import best, grid_search

    bot = Bot(settings.knowledge_dir)
    cases = load_cases([Path(p) for p in args.files])
    current = asdict(bot.matcher.config)
    print(f"tuning on {len(cases)} cases (this takes a minute)...", file=sys.stderr)
    trials = grid_search(bot, cases)
    top = best(trials, args.max_wrong)
    if not top:
        print(f"no combination keeps wrong <= {args.max_wrong}")
        return 1
    for t in top[: args.show]:
        changed = {k: v for k, v in t.params.items() if current.get(k) != v}
        print(f"right={t.right:.3f} wrong={t.wrong:.3f} clarified={t.clarified:.3f}  {changed or '(the current settings)'}")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vssbot", description="VSS help-desk chatbot (settings: VSSBOT_* environment variables)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="serve the API, the chat page and (later) the webhooks")
    s.add_argument("--host", help="default VSSBOT_HOST or 127.0.0.1")
    s.add_argument("--port", type=int, help="default VSSBOT_PORT or 8000")
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
    s.add_argument("files", nargs="+", help="labelled .jsonl files or folders of them (not the acceptance set)")
    s.add_argument("--max-wrong", type=float, default=0.02, help="ceiling on the share of wrong answers")
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

    db = sub.add_parser("db", help="database tools").add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    s = db.add_parser("upgrade", help="migrate the database to the latest schema")
    s.set_defaults(func=cmd_db_upgrade)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    setup_logging("WARNING" if args.command in ("ask", "eval", "kb", "chat", "tune", "users") else settings.log_level, settings.log_json)
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
