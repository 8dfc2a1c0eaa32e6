"""Knowledge-base versions: loading from texts as from files, drafts written back to the YAML
with only the touched items changed, start-up seeding, publish/restore, two processes
converging, and the `vssbot kb publish / versions / pull` commands."""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import select

from app import kbstore
from app.bot import Bot
from app.db.models import AuditLog, KbVersion
from app.services import Services, build_services
from app.settings import Settings
from intents.normalize import question_key
from knowledge.loader import CONTENT_DIR, KnowledgeError, content_hash, load_knowledge, read_folder

NEW_PHRASING = "con rồng bay qua cầu vồng tím"


@pytest.fixture(scope="module")
def live() -> tuple[dict[str, str], object]:
    """The bundled files as texts, and their knowledge base."""
    return kbstore.folder_files(CONTENT_DIR)


@pytest.fixture
def content(tmp_path: Path) -> Path:
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder)
    return folder


# --- Loading ----------------------------------------------------------------------------------------


def test_texts_load_like_the_folder_same_version_same_problems(tmp_path: Path, live) -> None:  # type: ignore[no-untyped-def]
    files, kb = live
    assert kb.version == load_knowledge(CONTENT_DIR, question_key=question_key).version == content_hash(files)
    assert kbstore.load(files).version == kb.version
    # a folder with problems: the same problems, file and line, either way
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "parameters.yaml").write_text(files["parameters.yaml"], encoding="utf-8")
    (bad / "sickness.yaml").write_text("regime: sickness\nentries:\n  - id: x\n    questions_vi: [a, b\n    answer_vi: c\n")
    (bad / "maternity.yaml").write_text("regime: maternity\nentries:\n  - id: m.one\n    questions_vi: [Hỏi gì]\n"
                                        "    answer_vi: Đáp.\n    related: [nowhere]\n", encoding="utf-8")
    with pytest.raises(KnowledgeError) as from_folder:
        load_knowledge(bad, today=date(2026, 11, 24), question_key=question_key)
    texts = {p.name: p.read_text(encoding="utf-8") for p in bad.glob("*.yaml")}
    with pytest.raises(KnowledgeError) as from_texts:
        kbstore.load(texts, today=date(2026, 11, 24))
    assert [str(p) for p in from_texts.value.problems] == [str(p) for p in from_folder.value.problems]
    assert any("sickness.yaml:5: bad YAML" in str(p) for p in from_texts.value.problems)
    assert any("related id 'nowhere'" in str(p) for p in from_texts.value.problems)


def test_the_version_hash_covers_the_bytes_as_stored(tmp_path: Path) -> None:
    folder = tmp_path / "k"
    shutil.copytree(CONTENT_DIR, folder)
    raw = read_folder(folder)
    texts = {n: b.decode("utf-8") for n, b in raw.items()}
    assert content_hash(raw) == content_hash(texts) == load_knowledge(folder).version


# --- Drafts written back to the files -----------------------------------------------------------------


def test_an_edited_entry_is_rewritten_in_place_and_nothing_else_changes(live) -> None:  # type: ignore[no-untyped-def]
    files, kb = live
    data = kbstore.entry_dict(kb.by_id["maternity.leave-duration"])
    data["questions_vi"].append(NEW_PHRASING)
    out = kbstore.apply_changes(files, kb, [kbstore.Change("entry", data["id"], data)])
    diffs = kbstore.diff_files(files, out)
    assert [d.name for d in diffs] == ["maternity.yaml"]
    assert f"+      - {NEW_PHRASING}" in diffs[0].lines
    # only that entry's block moved: everything before it is byte for byte the same
    start = files["maternity.yaml"].index("  - id: maternity.leave-duration")
    assert out["maternity.yaml"][:start] == files["maternity.yaml"][:start]
    new_kb = kbstore.load(out)
    assert kbstore.entry_dict(new_kb.by_id["maternity.leave-duration"]) == data
    assert kbstore.changed_ids(kb, new_kb) == {"entries": ["maternity.leave-duration"], "parameters": []}
    assert len(new_kb.entries) == len(kb.entries)


def test_new_moved_and_deleted_entries_and_a_new_parameter_value(live) -> None:  # type: ignore[no-untyped-def]
    files, kb = live
    new = {"id": "maternity.dragon", "kind": "faq", "regime": "maternity", "questions_vi": [NEW_PHRASING, "rong bay"],
           "questions_en": ["A dragon question?"], "keywords": [], "answer_vi": "Mỗi con {base_salary*2}.",
           "answer_en": "Per child {base_salary*2}.", "legal_basis": "Luật BHXH 41/2024/QH15", "checked": "2026-11-24",
           "related": ["maternity.leave-duration"]}
    moved = kbstore.entry_dict(kb.by_id["sickness.half-day"])
    moved["regime"] = "general"
    # deleting an entry nobody relates to
    related_to = {r for e in kb.entries for r in e.related}
    victim = next(e.id for e in kb.entries if e.kind == "faq" and e.id not in related_to and e.regime.value == "old_age")
    base = kb.parameters["base_salary"].model_dump(mode="json")
    base["values"].append({"value": 2700000, "effective_from": "2027-07-01", "source": "Nghị định mới"})
    changes = [kbstore.Change("entry", new["id"], new), kbstore.Change("entry", moved["id"], moved),
               kbstore.Change("entry", victim, None), kbstore.Change("parameter", "base_salary", base)]
    out = kbstore.apply_changes(files, kb, changes)
    new_kb = kbstore.load(out)
    assert new_kb.by_id["maternity.dragon"].source_file == "maternity.yaml"
    assert new_kb.answer(new_kb.by_id["maternity.dragon"], "vi", date(2027, 8, 1)) == "Mỗi con 5.400.000 đồng."
    assert new_kb.by_id["sickness.half-day"].source_file == "general.yaml"
    assert new_kb.by_id["sickness.half-day"].regime.value == "general"
    assert victim not in new_kb.by_id
    assert [v.value for v in new_kb.parameters["base_salary"].values] == [2340000, 2530000, 2700000]
    changed = kbstore.changed_ids(kb, new_kb)
    assert changed == {"entries": sorted(["maternity.dragon", "sickness.half-day", victim]), "parameters": ["base_salary"]}
    param_diff = next(d for d in kbstore.diff_files(files, out) if d.name == "parameters.yaml")
    assert param_diff.added == 1 and param_diff.removed == 0  # the comments and the other lines stay


def test_a_draft_that_does_not_fit_the_schema_is_named(live) -> None:  # type: ignore[no-untyped-def]
    files, kb = live
    with pytest.raises(KnowledgeError) as info:
        kbstore.apply_changes(files, kb, [kbstore.Change("entry", "x.bad", {"id": "x.bad", "questions_vi": []})])
    assert "draft x.bad" in str(info.value)


# --- Versions in the database ----------------------------------------------------------------------------


def services_on(database_url: str, content: Path, bot: Bot | None = None) -> Services:
    return build_services(Settings(database_url=database_url, knowledge_dir=content, kb_poll_seconds=0), bot=bot)


def test_the_first_start_seeds_version_1_from_the_files_and_follows_them_until_someone_publishes(
        database_url: str, content: Path) -> None:
    svc = services_on(database_url, content)
    try:
        with svc.sessions() as db:
            rows = db.scalars(select(KbVersion)).all()
            assert [(r.id, r.source, r.created_by) for r in rows] == [(1, "files", "system")]
            assert rows[0].version == svc.bot.kb.version == load_knowledge(content).version
            assert db.scalar(select(AuditLog.action).where(AuditLog.actor == "system")) == "kb.publish"
    finally:
        svc.close()
    # a developer edits a file and restarts: nobody published since, so the files are taken
    path = content / "maternity.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("      - tổng quan chế độ thai sản\n",
                                                             f"      - tổng quan chế độ thai sản\n      - {NEW_PHRASING}\n"),
                    encoding="utf-8")
    svc = services_on(database_url, content)
    try:
        assert svc.bot.reply(NEW_PHRASING).intent_id == "maternity.overview"
        with svc.sessions() as db:
            assert [r.id for r in db.scalars(select(KbVersion))] == [1, 2]
            # now staff publish in the console: from then on the files no longer win
            files, kb = kbstore.folder_files(CONTENT_DIR)
            db.add(KbVersion(version=kb.version, files=files, source="console", created_by="editor"))
            db.commit()
    finally:
        svc.close()
    svc = services_on(database_url, content)
    try:
        assert svc.bot.reply(NEW_PHRASING).intent_id != "maternity.overview"
        with svc.sessions() as db:
            assert len(db.scalars(select(KbVersion)).all()) == 3
    finally:
        svc.close()


def test_a_given_bot_is_kept_and_the_empty_table_still_seeded(database_url: str, content: Path) -> None:
    bot = Bot(content)
    svc = services_on(database_url, content, bot=bot)
    try:
        assert svc.bot is bot and svc.kb_version_id == 1
        with svc.sessions() as db:
            assert kbstore.latest(db).version == bot.kb.version
    finally:
        svc.close()


def test_restore_and_a_second_process_converges(database_url: str, content: Path) -> None:
    one = services_on(database_url, content, bot=Bot(content))
    two = services_on(database_url, content, bot=Bot(content))
    try:
        with one.sessions() as db:
            files, kb = kbstore.folder_files(content)
            data = kbstore.entry_dict(kb.by_id["maternity.leave-duration"])
            data["questions_vi"].append(NEW_PHRASING)
            files2 = kbstore.apply_changes(files, kb, [kbstore.Change("entry", data["id"], data)])
            row = kbstore.add_version(db, files2, "console", "editor", "a dragon")
            db.commit()
            new_id = row.id
        assert two.sync_kb() is True and two.kb_version_id == new_id
        assert two.bot.reply(NEW_PHRASING).intent_id == "maternity.leave-duration"
        assert two.sync_kb() is False  # nothing new
        with one.sessions() as db:
            done = kbstore.restore(db, 1, "editor")
            db.commit()
            assert done.version.source == "restore" and done.version.note == "restore of #1"
            assert done.changed["entries"] == ["maternity.leave-duration"]
            with pytest.raises(kbstore.PublishRefused):
                kbstore.restore(db, 1, "editor")  # already live
        assert two.sync_kb() is True
        assert two.bot.reply(NEW_PHRASING).intent_id != "maternity.leave-duration"
        # an older version never replaces a newer one
        assert one.adopt_kb(new_id, kbstore.load(files2)) is True
        assert one.adopt_kb(1, kb) is False
    finally:
        one.close()
        two.close()


# --- The command line ------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from app.settings import get_settings

    monkeypatch.setenv("VSSBOT_DATABASE_URL", database_url)
    get_settings.cache_clear()
    yield database_url
    get_settings.cache_clear()


def test_cli_publish_versions_and_pull_round_trip(cli_env: str, content: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    assert main(["kb", "publish", "--dir", str(content), "--note", "from git"]) == 0
    assert "published version #1" in capsys.readouterr().out
    assert main(["kb", "publish", "--dir", str(content)]) == 0
    assert "live version already" in capsys.readouterr().out
    path = content / "sickness.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "\n# a comment at the end\n", encoding="utf-8")
    assert main(["kb", "publish", "--dir", str(content), "--note", "a comment"]) == 0
    out = capsys.readouterr().out
    assert "published version #2" in out and "0 entries" in out
    assert main(["kb", "versions"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("*#2") and "a comment" in listing[0] and listing[1].startswith(" #1")
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    (pulled / "stale.yaml").write_text("entries: []\n")
    assert main(["kb", "pull", "--out", str(pulled)]) == 0
    assert "wrote version #2" in capsys.readouterr().out
    assert not (pulled / "stale.yaml").exists()
    assert read_folder(pulled) == read_folder(content)  # byte for byte what was published
    assert main(["kb", "validate", "--dir", str(pulled)]) == 0
    # a folder with a problem publishes nothing
    path.write_text("regime: sickness\nentries: [\n", encoding="utf-8")
    assert main(["kb", "publish", "--dir", str(content)]) == 1
    assert "bad YAML" in capsys.readouterr().out
    from sqlalchemy import create_engine

    engine = create_engine(cli_env)
    with engine.connect() as conn:
        rows = conn.execute(select(KbVersion.id, KbVersion.source, KbVersion.created_by)).all()
        actions = conn.execute(select(AuditLog.action, AuditLog.actor)).all()
    engine.dispose()
    assert [(i, s) for i, s, _ in rows] == [(1, "files"), (2, "files")] and rows[0][2].startswith("cli:")
    assert [a for a, _ in actions] == ["kb.publish", "kb.publish"]


def test_cli_pull_on_an_empty_database_says_so(cli_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    assert main(["kb", "pull", "--out", str(tmp_path / "x")]) == 1
    assert "no published version" in capsys.readouterr().err
