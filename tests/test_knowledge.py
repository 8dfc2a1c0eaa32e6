"""The knowledge loader: every problem reported with its file and line; amounts from parameters."""
from __future__ import annotations

import shutil
import subprocess
from datetime import date
from pathlib import Path
from textwrap import dedent, indent

import pytest

from knowledge.loader import CONTENT_DIR, KnowledgeError, load_knowledge
from knowledge.render import format_amount
from knowledge.schema import Regime

PARAMS = dedent(
    """\
    parameters:
      - id: base_salary
        name_vi: Mức lương cơ sở
        name_en: Base salary
        values:
          - {value: 2340000, effective_from: 2024-07-01, source: "NĐ 73/2024"}
          - {value: 2530000, effective_from: 2026-07-01, source: "NĐ 161/2026"}
    """
)

GOOD_ENTRY = """\
  - id: {id}
    questions_vi:
      - Trợ cấp sinh con bao nhiêu?
      - tro cap sinh con
    questions_en:
      - How much is the childbirth grant?
    answer_vi: "Mỗi con {{base_salary*2}}."
    answer_en: "Per child {{base_salary*2}}."
    legal_basis: Luật BHXH 41/2024/QH15, Điều 58
    checked: 2026-11-24
    related: {related}
"""


def write_kb(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "parameters.yaml").write_text(PARAMS, encoding="utf-8")
    for name, body in files.items():
        (folder / name).write_text(body, encoding="utf-8")
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder, today=date(2026, 11, 24))
    return [str(p) for p in info.value.problems]


def test_a_good_file_loads_and_renders_amounts_by_date(tmp_path: Path) -> None:
    kb_dir = write_kb(tmp_path, {"maternity.yaml": "regime: maternity\nentries:\n" + GOOD_ENTRY.format(id="m.grant", related="[]")})
    kb = load_knowledge(kb_dir, today=date(2026, 11, 24))
    entry = kb.by_id["m.grant"]
    assert entry.regime is Regime.maternity
    assert entry.source_file == "maternity.yaml" and entry.source_line == 3
    assert kb.answer(entry, "vi", date(2026, 11, 24)) == "Mỗi con 5.060.000 đồng."
    assert kb.answer(entry, "en", date(2026, 11, 24)) == "Per child 5,060,000 VND."
    # before the July 2026 raise the same answer used the earlier base salary
    assert kb.answer(entry, "vi", date(2026, 6, 30)) == "Mỗi con 4.680.000 đồng."


def test_version_changes_with_content(tmp_path: Path) -> None:
    kb_dir = write_kb(tmp_path, {"maternity.yaml": "regime: maternity\nentries:\n" + GOOD_ENTRY.format(id="m.grant", related="[]")})
    v1 = load_knowledge(kb_dir).version
    (kb_dir / "maternity.yaml").write_text((kb_dir / "maternity.yaml").read_text().replace("bao nhiêu", "bao nhiêu tiền"))
    assert load_knowledge(kb_dir).version != v1


def test_bad_yaml_syntax_reports_file_and_line(tmp_path: Path) -> None:
    kb_dir = write_kb(tmp_path, {"sickness.yaml": "regime: sickness\nentries:\n  - id: x\n    questions_vi: [a, b\n    answer_vi: c\n"})
    problems = problems_of(kb_dir)
    assert len(problems) == 1
    assert problems[0].startswith("sickness.yaml:5: bad YAML")


def test_every_problem_is_reported_at_once_with_its_line(tmp_path: Path) -> None:
    body = "regime: maternity\nentries:\n" + GOOD_ENTRY.format(id="m.a", related="[m.missing]")
    body += GOOD_ENTRY.format(id="m.a", related="[]")  # duplicate id, at line 14
    body += indent(dedent(
        """\
          - id: m.no-answer
            questions_vi: [câu hỏi]
            legal_basis: Điều 1
            checked: 2026-11-24
          - id: m.long
            questions_vi: [câu hỏi dài]
            answer_vi: "{long}"
            legal_basis: Điều 1
            checked: 2026-11-24
          - id: m.param
            questions_vi: [tham số]
            answer_vi: "Mức {{no_such_param}}"
            legal_basis: Điều 1
            checked: 2026-11-24
        """
    ), "  ").replace("{long}", "x" * 950)
    kb_dir = write_kb(tmp_path, {"maternity.yaml": body, "oops.yaml": "regime: pensions\nentries: []\n"})
    problems = problems_of(kb_dir)
    joined = "\n".join(problems)
    assert "maternity.yaml:3: entry m.a: related id 'm.missing' does not exist" in joined
    assert "maternity.yaml:14: duplicate id 'm.a' (first at maternity.yaml:3)" in joined
    assert "maternity.yaml:25: entry m.no-answer: answer_vi: Field required" in joined
    assert "maternity.yaml:29: entry m.long: answer_vi is 950 characters (at most 900)" in joined
    assert "maternity.yaml:34: entry m.param: answer_vi uses unknown parameter(s) no_such_param" in joined
    assert "oops.yaml:1: unknown regime 'pensions'" in joined


def test_a_faq_needs_legal_basis_and_checked_date(tmp_path: Path) -> None:
    body = "regime: general\nentries:\n  - id: g.x\n    questions_vi: [hỏi]\n    answer_vi: đáp\n"
    problems = problems_of(write_kb(tmp_path, {"general.yaml": body}))
    assert "general.yaml:3: entry g.x: missing legal_basis" in problems
    assert "general.yaml:3: entry g.x: missing checked date" in problems


def test_parameter_value_is_the_latest_in_force() -> None:
    kb = load_knowledge()
    base = kb.parameters["base_salary"]
    assert base.value_on(date(2026, 7, 1)).value == 2_530_000
    assert base.value_on(date(2026, 6, 30)).value == 2_340_000
    assert base.value_on(date(2000, 1, 1)) is None


def test_format_amount() -> None:
    assert format_amount(25_300_000, "vi") == "25.300.000 đồng"
    assert format_amount(25_300_000, "en") == "25,300,000 VND"


def test_bundled_knowledge_base_is_valid_and_covers_every_regime() -> None:
    kb = load_knowledge()
    per_regime = {r: sum(e.regime is r for e in kb.faq_entries()) for r in Regime}
    assert all(n >= 5 for n in per_regime.values()), per_regime
    assert len(kb.faq_entries()) >= 50
    for e in kb.faq_entries():
        assert e.answer_en, f"{e.id} has no English answer"
        assert e.questions_en, f"{e.id} has no English phrasing"


def test_cli_validate_exits_non_zero_with_file_and_line(tmp_path: Path) -> None:
    kb_dir = write_kb(tmp_path / "kb", {"general.yaml": "regime: general\nentries:\n  - id: g.x\n    questions_vi: [hỏi]\n"})
    vssbot = shutil.which("vssbot") or str(Path(__file__).parents[1] / ".venv/bin/vssbot")
    bad = subprocess.run([vssbot, "kb", "validate", "--dir", str(kb_dir)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "general.yaml:3: entry g.x: answer_vi: Field required" in bad.stdout
    good = subprocess.run([vssbot, "kb", "validate", "--dir", str(CONTENT_DIR)], capture_output=True, text=True)
    assert good.returncode == 0, good.stdout
    assert good.stdout.startswith("ok:")
