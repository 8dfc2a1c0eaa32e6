"""Matcher benchmark: index build time, memory, per-question latency and top-1 accuracy.

    .venv/bin/python benchmarks/matcher.py [--entries 2000] [--phrasings 8] [--queries 500] [--no-baseline] [--profile]

Two knowledge bases, measured in the same run:
- the shipped one (knowledge/content, or --knowledge-dir / VSSBOT_KNOWLEDGE_DIR);
- a synthetic one of --entries entries: the shipped entries plus clones of the faq entries with
  --phrasings phrasings each, perturbed (a word dropped, words reordered) and made distinct by a
  real-world qualifier (who asks, or where or when: "cho lao động nữ", "ở Đà Nẵng"), so that
  clones of one entry differ only by those words, as near-duplicate entries in a large base do.

On each, the same noisy questions (made from a random entry's Vietnamese phrasing: accents
stripped on some, teencode abbreviations, typos, chat fillers, a word dropped) go to
- `Matcher.decide` (what the bot runs), and
- the naive baseline `rapidfuzz.process.extractOne(query, all_raw_phrasings, scorer=fuzz.WRatio,
  processor=utils.default_process)` over every question of the base (--no-baseline skips it).
Top-1 is right when the best entry is the one the question was made from; "answered" (matcher
only) when the decision answers outright (not clarify / fallback) with that entry.

The process is pinned to one core (sched_setaffinity) so that figures are one-core figures;
latency is shown on the wall clock and on the thread's CPU clock (a busy machine inflates the
first only). --profile adds a cProfile of Matcher.decide on the synthetic base.
Goal (issue): p99 of Matcher.decide under 3 ms at 2,000 entries on one core.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import re
import statistics
import sys
import time
import tracemalloc
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rapidfuzz import fuzz, process, utils  # noqa: E402

from intents.matcher import Matcher  # noqa: E402
from intents.normalize import fold, normalize  # noqa: E402
from knowledge.loader import CONTENT_DIR, KnowledgeError, load_knowledge  # noqa: E402
from knowledge.schema import Entry  # noqa: E402

GOAL_P99_MS = 3.0

# Who asks, and where or when: real words, so that clones carry a realistic vocabulary.
SUBJECTS = [
    "lao động nữ", "người nước ngoài", "công nhân may", "giáo viên mầm non", "tài xế công nghệ",
    "hộ kinh doanh", "sinh viên", "bộ đội xuất ngũ", "công chức xã", "lao động tự do",
    "người khuyết tật", "người cao tuổi", "nhân viên văn phòng", "công nhân xây dựng", "ngư dân",
    "nông dân", "thợ mỏ", "điều dưỡng", "bác sĩ", "kế toán", "shipper", "người giúp việc",
    "lao động thời vụ", "viên chức", "người làm bán thời gian", "thực tập sinh",
    "người đi xuất khẩu lao động", "chủ doanh nghiệp nhỏ", "tiểu thương", "vận động viên",
]
CONTEXTS = [
    "ở Hà Nội", "tại TP HCM", "ở Đà Nẵng", "ở Cần Thơ", "tại Hải Phòng", "ở Bình Dương",
    "ở Đồng Nai", "tại Nghệ An", "ở Thanh Hóa", "ở khu công nghiệp", "ở vùng sâu vùng xa",
    "ở nông thôn", "năm 2025", "từ năm 2026", "sau khi sáp nhập tỉnh", "khi làm hai nơi",
    "khi đang thử việc", "khi hợp đồng dưới một tháng", "khi công ty giải thể",
    "khi công ty nợ bảo hiểm", "khi đang ở nước ngoài", "khi mới chuyển chỗ làm",
    "trong thời gian cách ly", "sau khi ly hôn", "khi đã nghỉ hưu", "khi làm ca đêm",
    "ở Tây Nguyên", "ở miền Tây", "khi mất giấy tờ", "lúc đang nằm viện",
]

# Full words → how people type them (matching.md §1.6, the other way round).
TEENCODE = {
    "không": ["ko", "k", "khum", "hok"], "được": ["dc", "đc", "dk"], "bao nhiêu": ["bn", "bnhiu"],
    "bảo hiểm xã hội": ["bhxh"], "bảo hiểm y tế": ["bhyt"], "bảo hiểm thất nghiệp": ["bhtn"],
    "bảo hiểm": ["bh"], "trợ cấp thất nghiệp": ["tctn"], "như thế nào": ["ntn"], "gì": ["j"],
    "vậy": ["z", "v"], "rồi": ["r", "oy"], "với": ["vs"], "biết": ["bik", "bít"], "mình": ["mk", "mik"],
    "công ty": ["cty"], "hợp đồng lao động": ["hđlđ", "hdld"], "người lao động": ["nld"],
    "thai sản": ["ts"], "hồ sơ": ["hs"], "thời gian": ["tg"], "em": ["e"], "anh": ["a"], "chị": ["c"],
    "căn cước công dân": ["cccd"], "số điện thoại": ["sdt"], "đăng ký": ["dki", "đky"],
}
TEENCODE_PATTERNS = [
    (full, re.compile(rf"(?<!\w){re.escape(full)}(?!\w)")) for full in sorted(TEENCODE, key=len, reverse=True)
]
PREFIXES = ["ad ơi", "cho e hỏi", "mn ơi cho mình hỏi", "chị ơi", "ad cho hỏi", "xin hỏi", "alo"]
SUFFIXES = ["ạ", "vậy ad", "với ạ", "ad nhé", "ạ ad", "nhỉ", "ko ạ"]
NEAR_KEYS = dict(zip("qwertyuiopasdfghjklzxcvbnm", "wqrtyuiopasdfghjklzxcvbnmq"))  # crude neighbour


def strip_accents(text: str) -> str:
    return fold(unicodedata.normalize("NFC", text))


def typo(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    i = rng.randrange(1, len(word) - 1)
    op = rng.choice(("swap", "drop", "double", "near"))
    if op == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == "drop":
        return word[:i] + word[i + 1 :]
    if op == "double":
        return word[:i] + word[i] + word[i:]
    return word[:i] + NEAR_KEYS.get(word[i], word[i]) + word[i + 1 :]


def noisy(text: str, rng: random.Random) -> str:
    """A phrasing as a person might type it into a chat box."""
    q = unicodedata.normalize("NFC", text).lower().rstrip("?.! ")
    if rng.random() < 0.6:  # teencode, on whole words ("anh" → "a", never "thanh" → "tha")
        for full, pattern in TEENCODE_PATTERNS:
            if rng.random() < 0.7:
                q = pattern.sub(lambda _: rng.choice(TEENCODE[full]), q)
    words = q.split()
    if len(words) > 4 and rng.random() < 0.25:  # a word left out
        del words[rng.randrange(len(words))]
    if rng.random() < 0.5:  # one or two typos
        for _ in range(rng.choice((1, 1, 2))):
            i = rng.randrange(len(words))
            words[i] = typo(words[i], rng)
    q = " ".join(words)
    r = rng.random()
    if r < 0.35:
        q = strip_accents(q)  # typed without a Vietnamese keyboard
    elif r < 0.5:
        q = " ".join(strip_accents(w) if rng.random() < 0.5 else w for w in q.split())  # some words
    if rng.random() < 0.35:
        q = f"{rng.choice(PREFIXES)} {q}"
    if rng.random() < 0.35:
        q = f"{q} {rng.choice(SUFFIXES)}"
    return q


# --- the synthetic knowledge base ------------------------------------------------------------

def _perturb(phrase: str, rng: random.Random) -> str:
    words = phrase.rstrip("?.! ").split()
    if len(words) > 5 and rng.random() < 0.3:
        del words[rng.randrange(1, len(words))]
    if len(words) > 6 and rng.random() < 0.2:  # move the opening words to the end
        k = rng.randrange(1, 3)
        words = words[k:] + words[:k]
    return " ".join(words)


def _qualify(phrase: str, qualifier: str, rng: random.Random) -> str:
    body = _perturb(phrase, rng)
    form = rng.randrange(3)
    if form == 0:
        return f"{body} {qualifier}"
    if form == 1:
        return f"{qualifier} {body}"
    words = body.split()
    cut = rng.randrange(1, len(words)) if len(words) > 1 else 1
    return " ".join(words[:cut] + [qualifier] + words[cut:])


def synthetic_entries(base: list[Entry], total: int, rng: random.Random, phrasings: int = 8) -> list[Entry]:
    """The shipped entries, plus clones of the faq ones until there are `total` entries; each
    clone of an entry has its own qualifier, in every one of its phrasings, and `phrasings` of
    them (Vietnamese, and one English where the entry has some; 0: as many as the source)."""
    faqs = [e for e in base if e.kind == "faq"]
    out = list(base)
    qualifiers = [f"cho {s}" for s in SUBJECTS] + CONTEXTS
    used: dict[str, set[int]] = {e.id: set() for e in faqs}
    n = 0
    while len(out) < total and faqs:
        src = faqs[n % len(faqs)]
        n += 1
        if len(used[src.id]) == len(qualifiers):
            raise SystemExit(f"--entries too large: at most {len(base) + len(faqs) * len(qualifiers)} here")
        k = rng.randrange(len(qualifiers))
        while k in used[src.id]:
            k = rng.randrange(len(qualifiers))
        used[src.id].add(k)
        qualifier = qualifiers[k]
        vi, en = list(src.questions_vi), list(src.questions_en)
        if phrasings:
            en = en[:1] if phrasings > 1 else []
            keep = max(1, phrasings - len(en))
            vi = vi[:1] + rng.sample(vi[1:], min(keep - 1, len(vi) - 1))  # the canonical one first
        out.append(src.model_copy(update={
            "id": f"{src.id}.syn{n:04d}",
            "questions_vi": [_qualify(q, qualifier, rng) for q in vi],
            "questions_en": en,
            "keywords": [f"{kw} {qualifier}" for kw in src.keywords[:3]],
            "related": [],
        }))
    return out


# --- measuring ---------------------------------------------------------------------------------

def pin_one_core() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to cpu {cpu}"
    except (AttributeError, OSError) as exc:
        return f"not pinned ({type(exc).__name__})"


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


@dataclass
class Built:
    build_ms: float
    peak_mib: float  # tracemalloc peak during the build
    kept_mib: float  # tracemalloc size still held once built
    rss_mib: float  # RSS growth across the build (without tracemalloc)


def measure_build(make: Callable[[], object]) -> tuple[object, Built]:
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    obj = make()
    build_ms = (time.perf_counter() - t0) * 1000
    rss_mib = (rss_bytes() - rss0) / 2**20
    # a second build under tracemalloc for the Python-heap figures (numpy reports its buffers)
    gc.collect()
    tracemalloc.start()
    probe = make()
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del probe
    gc.collect()
    return obj, Built(build_ms, peak / 2**20, kept / 2**20, rss_mib)


@dataclass
class Run:
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_p50_ms: float  # the same on the thread's CPU clock: what a busy machine does not inflate
    cpu_p99_ms: float
    top1: float
    answered: float | None


def percentile(sorted_ms: Sequence[float], q: float) -> float:
    if not sorted_ms:
        return 0.0
    i = min(len(sorted_ms) - 1, max(0, round(q * (len(sorted_ms) - 1))))
    return sorted_ms[i]


def time_queries(
    fn: Callable[[str], tuple[str | None, bool | None]], queries: list[tuple[str, str]], repeat: int,
    scores_answers: bool = True,
) -> Run:
    for text, _ in queries[:20]:  # warm caches (normalisation's lru_caches, rapidfuzz)
        fn(text)
    gc.collect()
    wall: list[float] = []
    cpu: list[float] = []
    right = answered = 0
    for rep in range(repeat):
        for text, want in queries:
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            got, ok = fn(text)
            wall.append((time.perf_counter_ns() - t0) / 1e6)
            cpu.append((time.thread_time_ns() - c0) / 1e6)
            if rep == 0:
                right += got == want
                answered += ok is True and got == want
    wall.sort()
    cpu.sort()
    n = len(queries) or 1
    return Run(
        statistics.median(wall), percentile(wall, 0.99), wall[-1], statistics.median(cpu), percentile(cpu, 0.99),
        right / n, answered / n if scores_answers else None,
    )


def make_queries(entries: list[Entry], count: int, rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for _ in range(count):
        e = rng.choice(entries)
        out.append((noisy(rng.choice(e.questions_vi), rng), e.id))
    return out


def raw_phrasings(entries: list[Entry]) -> tuple[list[str], list[str]]:
    """Every question as written in the knowledge base (the rows the matcher indexes too)."""
    texts, ids = [], []
    for e in entries:
        for q in e.questions_vi + e.questions_en:
            texts.append(q)
            ids.append(e.id)
    return texts, ids


def _cells(built: Built, run: Run) -> list[str]:
    return [
        f"{built.build_ms:.0f}", f"{built.peak_mib:.1f}", f"{built.kept_mib:.1f}", f"{built.rss_mib:.1f}",
        f"{run.p50_ms:.2f}", f"{run.p99_ms:.2f}", f"{run.max_ms:.2f}", f"{run.cpu_p50_ms:.2f}", f"{run.cpu_p99_ms:.2f}", f"{run.top1:.1%}",
        "-" if run.answered is None else f"{run.answered:.1%}",
    ]


def bench_kb(label: str, entries: list[Entry], args: argparse.Namespace, rng: random.Random) -> tuple[list[list[str]], Run, str]:
    queries = make_queries(entries, args.queries, rng)
    matcher, mb = measure_build(lambda: Matcher(entries))
    assert isinstance(matcher, Matcher)
    row_words = statistics.mean(len(r.key.split()) for r in matcher.index.rows) if matcher.index.rows else 0.0
    query_words = statistics.mean(len(normalize(q).fold) for q, _ in queries) if queries else 0.0
    shape = (f"{label}: {len(entries)} entries, {matcher.index.size} rows ({matcher.index.size / max(1, len(entries)):.1f} an entry, "
             f"{row_words:.1f} words a row after normalisation), questions {query_words:.1f} words, e.g. {queries[0][0]!r}")

    def via_matcher(text: str) -> tuple[str | None, bool | None]:
        d = matcher.decide(text)
        best = d.candidates[0].entry.id if d.candidates else None
        return best, d.kind in ("faq", "smalltalk", "handover") or (d.kind == "fallback" and d.entry is not None)

    m = time_queries(via_matcher, queries, args.repeat)

    head = f"{label} {len(entries)}e/{matcher.index.size}r"
    rows = [[head, "Matcher.decide", *_cells(mb, m)]]
    if args.baseline:
        (texts, ids), rb = measure_build(lambda: raw_phrasings(entries))  # type: ignore[misc]

        def via_rapidfuzz(text: str) -> tuple[str | None, bool | None]:
            hit = process.extractOne(text, texts, scorer=fuzz.WRatio, processor=utils.default_process)
            return (ids[hit[2]] if hit else None), None

        b = time_queries(via_rapidfuzz, queries, 1, scores_answers=False)
        rows.append(["", "rapidfuzz WRatio", *_cells(rb, b)])
    if args.profile:
        profile(matcher, queries, label)
    return rows, m, shape


def profile(matcher: Matcher, queries: list[tuple[str, str]], label: str) -> None:
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    for text, _ in queries:
        matcher.decide(text)
    pr.disable()
    print(f"\n--- cProfile of Matcher.decide on {label} ({len(queries)} questions), by own time ---")
    pstats.Stats(pr).sort_stats("tottime").print_stats(14)


def table(rows: list[list[str]]) -> str:
    head = ["kb entries/rows", "method", "build ms", "peak MiB", "kept MiB", "rss MiB", "p50 ms", "p99 ms", "max ms", "cpu p50", "cpu p99", "top-1", "answered"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=2000, help="size of the synthetic knowledge base")
    p.add_argument("--queries", type=int, default=500, help="noisy questions per knowledge base")
    p.add_argument("--phrasings", type=int, default=8, help="phrasings of each synthetic clone (0: as many as its source)")
    p.add_argument("--repeat", type=int, default=3, help="passes over the questions for the matcher's latency")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--knowledge-dir", type=Path, default=Path(os.environ.get("VSSBOT_KNOWLEDGE_DIR") or CONTENT_DIR))
    p.add_argument("--profile", action="store_true", help="cProfile Matcher.decide on the synthetic base")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the (slow) rapidfuzz baseline")
    args = p.parse_args(argv)

    pinned = pin_one_core()
    try:
        kb = load_knowledge(args.knowledge_dir)
    except KnowledgeError as exc:
        print(f"knowledge base in {args.knowledge_dir} is invalid ({len(exc.problems)} problems), e.g.\n  {exc.problems[0]}\n"
              "use --knowledge-dir on a valid copy", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    synthetic = synthetic_entries(kb.entries, args.entries, rng, args.phrasings)
    print(f"vssbot matcher benchmark: python {sys.version.split()[0]}, {pinned}, seed {args.seed}, "
          f"{args.queries} noisy questions per base (matcher timed over {args.repeat} passes), kb {kb.version}")
    rows, _, shape_shipped = bench_kb("shipped", kb.entries, argparse.Namespace(**{**vars(args), "profile": False}), rng)
    more, big, shape_synthetic = bench_kb("synthetic", synthetic, args, rng)
    print(shape_shipped)
    print(shape_synthetic)
    print(table(rows + more))
    matcher_p99 = big.p99_ms
    verdict = "meets" if matcher_p99 < GOAL_P99_MS else "MISSES"
    print(f"goal: Matcher.decide p99 < {GOAL_P99_MS} ms at {len(synthetic)} entries on one core: {verdict} "
          f"({matcher_p99:.2f} ms wall, {big.cpu_p99_ms:.2f} ms on the CPU clock)")
    print("peak/kept MiB: tracemalloc during/after a build; rss MiB: RSS growth across a build; p50/p99/max: wall "
          "clock; cpu: the thread's CPU time (wall >> cpu: the machine was busy); top-1: best entry is the source; "
          "answered: outright answer with the source entry")
    return 0


if __name__ == "__main__":
    sys.exit(main())
