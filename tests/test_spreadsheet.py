"""`vssbot kb export` / `kb import`: the knowledge base round-trips through a spreadsheet, an
import shows its diff before it is applied, and a bad sheet changes nothing."""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from intents.normalize import question_key
from knowledge.loader import CONTENT_DIR, load_knowledge
from knowledge.spreadsheet import COLUMNS, diff, from_csv, to_csv

VSSBOT = str(Path(sys.executable).parent / "vssbot")
HEADERS = [h for h, _ in COLUMNS]


def comparable(entries):  # type: ignore[no-untyped-def]
    return {e.id: e.model_dump(exclude={"source_line"}) for e in entries}


@pytest.fixture
def kb_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, folder)
    return folder


def run(kb_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VSSBOT_KNOWLEDGE_DIR": str(kb_dir)}
    return subprocess.run([VSSBOT, "kb", *args], capture_output=True, text=True, env=env, timeout=120)


def edit(sheet: str, rows_to_add: list[list[str]] | None = None, **changes: tuple[str, str]) -> str:
    """Change cells: changes[id-with-underscores] = (header, new value); append rows."""
    rows = list(csv.reader(io.StringIO(sheet.lstrip("\ufeff"))))
    for row in rows[1:]:
        key = row[0].replace(".", "_").replace("-", "_")
        if key in changes:
            header, value = changes[key]
            row[HEADERS.index(header)] = value
    rows += rows_to_add or []
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def test_export_has_vietnamese_headers_and_every_entry() -> None:
    kb = load_knowledge(question_key=question_key)
    rows = list(csv.reader(io.StringIO(to_csv(kb.entries))))
    assert rows[0] == HEADERS and rows[0][:3] == ["Mã", "Loại", "Chế độ"]
    assert len(rows) == len(kb.entries) + 1


def test_round_trip_changes_nothing(kb_dir: Path, tmp_path: Path) -> None:
    before = load_knowledge(kb_dir, question_key=question_key)
    entries, problems = from_csv(to_csv(before.entries))
    assert not problems
    assert diff(before.entries, entries).empty
    sheet = tmp_path / "kb.csv"
    assert run(kb_dir, "export", "--out", str(sheet)).returncode == 0
    assert sheet.read_bytes().startswith("\ufeff".encode())  # spreadsheet programs see UTF-8
    applied = run(kb_dir, "import", str(sheet), "--apply")
    assert applied.returncode == 0 and "no changes" in applied.stdout
    assert comparable(load_knowledge(kb_dir, question_key=question_key).entries) == comparable(before.entries)


def test_import_shows_the_diff_and_applies_only_when_asked(kb_dir: Path, tmp_path: Path) -> None:
    before = load_knowledge(kb_dir, question_key=question_key)
    sheet = tmp_path / "kb.csv"
    run(kb_dir, "export", "--out", str(sheet))
    leave = before.by_id["maternity.leave-duration"]
    new_q = "nghỉ sinh bé được mấy tháng hả ad"
    new_row = ["general.test-entry", "faq", "general", "Câu hỏi thử nghiệm mới là gì?\ncau hoi thu nghiem moi",
               "A brand new test question?", "", "Trả lời thử nghiệm.", "Test answer.", "Luật BHXH 41/2024/QH15, Điều 1",
               "2026-11-25", "", ""]
    sheet.write_text(edit(sheet.read_text(encoding="utf-8-sig"), [new_row],
                          maternity_leave_duration=("Câu hỏi tiếng Việt", "\n".join(leave.questions_vi + [new_q]))),
                     encoding="utf-8")

    dry = run(kb_dir, "import", str(sheet))
    assert dry.returncode == 0, dry.stderr
    assert "+ general.test-entry (general)" in dry.stdout
    assert f"~ maternity.leave-duration questions_vi:\n    + {new_q}" in dry.stdout
    assert "--apply" in dry.stderr
    assert comparable(load_knowledge(kb_dir, question_key=question_key).entries) == comparable(before.entries)

    applied = run(kb_dir, "import", str(sheet), "--apply")
    assert applied.returncode == 0, applied.stderr
    after = load_knowledge(kb_dir, question_key=question_key)
    assert new_q in after.by_id["maternity.leave-duration"].questions_vi
    assert after.by_id["general.test-entry"].answer_en == "Test answer."
    unchanged = {k: v for k, v in comparable(after.entries).items() if k not in ("maternity.leave-duration", "general.test-entry")}
    assert unchanged == {k: v for k, v in comparable(before.entries).items() if k != "maternity.leave-duration"}


def test_a_bad_sheet_changes_nothing(kb_dir: Path, tmp_path: Path) -> None:
    before = comparable(load_knowledge(kb_dir, question_key=question_key).entries)
    sheet = tmp_path / "kb.csv"
    run(kb_dir, "export", "--out", str(sheet))
    original = sheet.read_text(encoding="utf-8-sig")

    # an unknown regime and an empty answer: reported with their rows, nothing written
    sheet.write_text(edit(original, maternity_leave_duration=("Chế độ", "pensions"),
                          sickness_amount=("Trả lời tiếng Việt", "")), encoding="utf-8")
    bad = run(kb_dir, "import", str(sheet), "--apply")
    assert bad.returncode == 1
    assert "maternity.leave-duration: regime" in bad.stdout and "sickness.amount: answer_vi" in bad.stdout
    assert "row " in bad.stdout

    # a question that another entry already has: the loader refuses the result
    other = load_knowledge(kb_dir, question_key=question_key).by_id["sickness.amount"].questions_vi[0]
    leave = load_knowledge(kb_dir, question_key=question_key).by_id["maternity.leave-duration"]
    sheet.write_text(edit(original, maternity_leave_duration=("Câu hỏi tiếng Việt", "\n".join(leave.questions_vi + [other]))),
                     encoding="utf-8")
    clash = run(kb_dir, "import", str(sheet), "--apply")
    assert clash.returncode == 1 and "is also a question of" in clash.stdout and "sickness.amount" in clash.stdout

    sheet.write_text("Mã,Loại\nx,faq\n", encoding="utf-8")
    assert "missing column" in run(kb_dir, "import", str(sheet)).stdout
    assert comparable(load_knowledge(kb_dir, question_key=question_key).entries) == before
