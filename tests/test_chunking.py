"""Chunking: numbering, newline handling, the token-budget rule, over-long lines, a golden format."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinex_spark.chunking import (
    TRUNCATION_MARKER,
    Chunk,
    approx_tokens,
    chunk_document,
    chunk_lines,
    line_cap,
    normalize_newlines,
    number_line,
    prefix_width,
    split_lines,
)
from refinex_spark.config import ChunkingConfig

GOLDEN = Path(__file__).parent / "golden" / "chunk_expected.txt"
_BEFORE, _AFTER = TRUNCATION_MARKER.split("{}")
MARKER_RE = re.compile(re.escape(_BEFORE) + r"(\d+)" + re.escape(_AFTER) + r"\Z")

# One token per character: makes budgets in the unit tests easy to reason about exactly.
CHAR_CFG = dict(chars_per_token=1.0)


def shown_lines(chunk: Chunk) -> list[str]:
    return chunk.text.split("\n")  # not splitlines(): lines may hold \x0b, \u2028, ...


def unnumber(shown: str, index: int, width: int) -> str:
    prefix = number_line(index, "", width)
    assert shown.startswith(prefix), (shown[:20], prefix)
    return shown[len(prefix) :]


def split_marker(body: str) -> tuple[str, int]:
    """(visible head, hidden char count) of a truncated line's body."""
    m = MARKER_RE.search(body)
    assert m, body[-60:]
    return body[: m.start()], int(m.group(1))


# --- newlines and numbering ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("a\r\nb", "a\nb"), ("a\rb", "a\nb"), ("a\r\r\nb", "a\n\nb"), ("\n\r", "\n\n"), ("abc", "abc")],
)
def test_normalize_newlines(raw: str, expected: str) -> None:
    assert normalize_newlines(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", [""]), ("a", ["a"]), ("a\n", ["a", ""]), ("a\r\nb\rc", ["a", "b", "c"]), ("\u2028x\x0b", ["\u2028x\x0b"])],
)
def test_split_lines(raw: str, expected: list[str]) -> None:
    assert split_lines(raw) == expected


@pytest.mark.parametrize(("n", "width"), [(0, 3), (1, 3), (1000, 3), (1001, 4), (10_000, 4), (10_001, 5)])
def test_prefix_width(n: int, width: int) -> None:
    assert prefix_width(n) == width


def test_number_line() -> None:
    assert number_line(7, "hello", 3) == "[007] hello"
    assert number_line(1234, "", 4) == "[1234] "


@pytest.mark.parametrize(("text", "cpt", "n"), [("", 4.0, 0), ("abcd", 4.0, 1), ("abcde", 4.0, 2), ("abc", 1.5, 2)])
def test_approx_tokens(text: str, cpt: float, n: int) -> None:
    assert approx_tokens(text, cpt) == n


# --- chunk shapes ----------------------------------------------------------------------------


def test_empty_document_is_one_empty_line() -> None:
    assert chunk_document("") == [Chunk(0, 0, 0, "[000] ", approx_tokens("[000] "), frozenset())]
    assert chunk_lines([]) == []


def test_single_line() -> None:
    [chunk] = chunk_document("hello world")
    assert (chunk.start, chunk.end, chunk.text, chunk.truncated) == (0, 0, "[000] hello world", frozenset())


def test_trailing_newline_is_a_final_empty_line() -> None:
    [chunk] = chunk_document("a\nb\n")
    assert chunk.text == "[000] a\n[001] b\n[002] "
    assert chunk.end == 2


def test_crlf_and_lone_cr_are_line_breaks() -> None:
    [chunk] = chunk_document("a\r\nb\rc\r")
    assert chunk.text == "[000] a\n[001] b\n[002] c\n[003] "


def test_prefix_width_grows_past_1000_lines() -> None:
    cfg = ChunkingConfig(token_budget=100_000)
    [small] = chunk_document("\n".join(["x"] * 1000), cfg)
    assert shown_lines(small)[0] == "[000] x" and shown_lines(small)[-1] == "[999] x"
    [big] = chunk_document("\n".join(["x"] * 1001), cfg)
    assert shown_lines(big)[0] == "[0000] x" and shown_lines(big)[-1] == "[1000] x"


def test_chunk_exactly_at_budget_and_one_token_over() -> None:
    cfg = ChunkingConfig(token_budget=32, max_line_fraction=1.0, **CHAR_CFG)
    # "[000] " + 10 chars = 16, "\n" = 1, "[001] " + 9 chars = 15: exactly 32.
    [chunk] = chunk_document("a" * 10 + "\n" + "b" * 9, cfg)
    assert chunk.n_tokens == 32
    first, second = chunk_document("a" * 10 + "\n" + "b" * 10, cfg)
    assert (first.start, first.end, first.n_tokens) == (0, 0, 16)
    assert (second.start, second.end, second.n_tokens) == (1, 1, 16)


def test_line_exactly_at_cap_is_not_truncated() -> None:
    cfg = ChunkingConfig(token_budget=100, max_line_fraction=0.5, **CHAR_CFG)
    assert line_cap(cfg) == 50
    [at_cap] = chunk_document("z" * 44, cfg)  # 6 prefix chars + 44 = 50 tokens
    assert at_cap.truncated == frozenset() and at_cap.text == "[000] " + "z" * 44
    [over] = chunk_document("z" * 45, cfg)
    assert over.truncated == {0}


def test_over_long_line_is_cut_to_the_longest_head_that_fits() -> None:
    cfg = ChunkingConfig(token_budget=100, max_line_fraction=0.5, **CHAR_CFG)
    line = "".join(chr(ord("a") + i % 26) for i in range(1000))
    chunks = chunk_document(f"before\n{line}\nafter", cfg)
    [holder] = [c for c in chunks if c.start <= 1 <= c.end]
    assert holder.truncated == {1}
    assert all(c.truncated == frozenset() for c in chunks if c is not holder)
    shown = shown_lines(holder)[1 - holder.start]
    head, hidden = split_marker(unnumber(shown, 1, 3))
    assert line.startswith(head) and hidden == len(line) - len(head) > 0
    assert len(shown) <= line_cap(cfg)
    one_more = number_line(1, line[: len(head) + 1] + TRUNCATION_MARKER.format(hidden - 1), 3)
    assert len(one_more) > line_cap(cfg)


def test_huge_line_is_counted_a_logarithmic_number_of_times_on_small_texts() -> None:
    seen: list[int] = []

    def counter(text: str) -> int:
        seen.append(len(text))
        return math.ceil(len(text) / 4)

    line = "w" * 2_000_000
    [chunk] = chunk_document(line, count_tokens=counter)
    assert chunk.truncated == {0}
    assert len(seen) <= 1 + 2 * math.ceil(math.log2(len(line)))
    # Only the first call sees the whole line; the search probes stay near the cap's size.
    assert max(seen[1:]) < 8 * line_cap(ChunkingConfig()) * 4


def test_each_line_is_counted_exactly_once() -> None:
    calls: list[str] = []

    def counter(text: str) -> int:
        calls.append(text)
        return len(text.split())

    lines = [f"word {i} " * (i % 7) for i in range(5000)]
    chunks = chunk_lines(lines, ChunkingConfig(token_budget=64), counter)
    assert len(calls) == len(lines)
    assert "\n".join(c.text for c in chunks).split("\n") == calls


def test_custom_count_tokens_sets_the_boundaries() -> None:
    def words(text: str) -> int:
        return len(text.split())

    # Each numbered line "[00i] w w w" is 4 words; a chunk of k lines costs 4k + (k - 1) <= 16 -> k = 3.
    chunks = chunk_document("\n".join(["w w w"] * 7), ChunkingConfig(token_budget=16), words)
    assert [(c.start, c.end, c.n_tokens) for c in chunks] == [(0, 2, 14), (3, 5, 14), (6, 6, 4)]


def test_over_budget_only_for_a_lone_line_whose_shortest_display_is_over_budget() -> None:
    # Degenerate on purpose: cap 0 tokens and 2 tokens per character, so every line is over the
    # cap, and a marker alone ("[000]  [... 100 more chars]") is over the budget.
    cfg = ChunkingConfig(token_budget=16, max_line_fraction=0.01, chars_per_token=0.5)
    chunks = chunk_document("x" * 100 + "\n\nab", cfg)
    assert [(c.start, c.end) for c in chunks] == [(0, 0), (1, 1), (2, 2)]
    assert [c.n_tokens > cfg.token_budget for c in chunks] == [True, False, True]
    assert chunks[0].text == number_line(0, TRUNCATION_MARKER.format(100), 3)
    assert chunks[1].truncated == frozenset() and chunks[1].text == "[001] "  # nothing to hide
    assert chunks[2].truncated == {2}


def test_chunk_lines_rejects_unsplit_lines() -> None:
    for bad in ("a\nb", "a\rb"):
        with pytest.raises(ValueError, match="line 1"):
            chunk_lines(["ok", bad])


# --- properties ------------------------------------------------------------------------------


def utf8_thirds(text: str) -> int:
    return len(text.encode()) // 3


def words(text: str) -> int:
    return len(text.split())


COUNTERS: dict[str, Callable[[str], int] | None] = {"approx": None, "utf8": utf8_thirds, "words": words}

_short = st.text(max_size=30)
_long = st.text(alphabet=st.sampled_from("ab é漢\t"), min_size=40, max_size=900)


@st.composite
def documents(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.one_of(_short, _short, _long), max_size=40))
    seps = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(parts), max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, seps, strict=True)) + draw(_short)


configs = st.builds(
    ChunkingConfig,
    token_budget=st.integers(16, 400),
    chars_per_token=st.floats(0.5, 8.0),
    max_line_fraction=st.floats(0.05, 1.0),
)


@settings(max_examples=200, deadline=None)
@given(text=documents(), cfg=configs, counter_name=st.sampled_from(sorted(COUNTERS)))
def test_chunking_invariants(text: str, cfg: ChunkingConfig, counter_name: str) -> None:
    counter = COUNTERS[counter_name]
    count = counter or (lambda s: approx_tokens(s, cfg.chars_per_token))
    cap, budget = line_cap(cfg), cfg.token_budget
    lines = split_lines(text)
    width = prefix_width(len(lines))
    chunks = chunk_document(text, cfg, counter)

    assert chunk_lines(lines, cfg, counter) == chunks
    # Cover every line exactly once, in order, no empty chunk.
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [i for c in chunks for i in range(c.start, c.end + 1)] == list(range(len(lines)))
    for c in chunks:
        shown = shown_lines(c)
        assert len(shown) == c.end - c.start + 1
        assert c.truncated <= set(range(c.start, c.end + 1))
        assert c.n_tokens == sum(count(s) for s in shown) + len(shown) - 1
        for i, s in zip(range(c.start, c.end + 1), shown, strict=True):
            body = unnumber(s, i, width)  # numbering = global index, fixed width
            if i not in c.truncated:
                assert body == lines[i]
                continue
            assert lines[i] and count(number_line(i, lines[i], width)) > cap
            head, hidden = split_marker(body)
            assert lines[i].startswith(head) and hidden == len(lines[i]) - len(head) > 0
            # The head is the longest that fits the cap (all three counters grow with the head).
            assert count(s) <= cap or head == ""
            if hidden > 1:
                longer = number_line(i, lines[i][: len(head) + 1] + TRUNCATION_MARKER.format(hidden - 1), width)
                assert count(longer) > cap
        if c.n_tokens > budget:  # the one documented exception to the budget
            assert c.start == c.end
            shortest = TRUNCATION_MARKER.format(len(lines[c.start])) if lines[c.start] else ""
            assert count(number_line(c.start, shortest, width)) > budget
    # Greedy packing: the next chunk's first line would not have fitted in the previous chunk.
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev.n_tokens + 1 + count(shown_lines(nxt)[0]) > budget


# --- golden format ---------------------------------------------------------------------------

GOLDEN_DOC = (
    "Café Müller — Home | Menu | Über uns | Kontakt\r\n"
    "日本語のテキストと絵文字 🙂 も含まれています。\r\n"
    "\r\n"
    + "A paragraph that goes on and on without a single line break. " * 12
    + "\r\n"
    "Share this article: Twitter · Facebook · Email\r"
    "Second paragraph, short.\n"
    "Ελληνικά και русский текст в одной строке.\r\n"
    "\r\n"
    "© 2024 Example Corp. All rights reserved.\r\n"
)
GOLDEN_CFG = ChunkingConfig(token_budget=64, chars_per_token=4.0, max_line_fraction=0.5)


def render_chunks(chunks: list[Chunk]) -> str:
    out = []
    for c in chunks:
        cut = ",".join(str(i) for i in sorted(c.truncated)) or "-"
        out.append(f"=== chunk {c.index} lines {c.start}-{c.end} tokens {c.n_tokens} truncated {cut}\n{c.text}\n")
    return "".join(out)


def test_golden_chunks() -> None:
    rendered = render_chunks(chunk_document(GOLDEN_DOC, GOLDEN_CFG))
    if os.environ.get("REFINEX_UPDATE_GOLDEN") == "1":  # deliberate regeneration only
        with GOLDEN.open("w", encoding="utf-8", newline="") as f:
            f.write(rendered)
    with GOLDEN.open(encoding="utf-8", newline="") as f:
        assert rendered == f.read()
