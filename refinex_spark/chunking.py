"""Line numbering and token-budget chunking: what the refine model reads.

A document is split into lines on "\\n" (after "\\r\\n" and "\\r" are normalised), every line is
prefixed with its global 0-based index ("[007] "), and consecutive whole lines are packed into
chunks that fit a token budget. Programs refer to those global indices (DESIGN.md, "The program
language"), so the numbering width is fixed for the whole document, not per chunk.

Token accounting (the rule the tests check): a line costs `count_tokens(numbered line)`, and a
chunk costs the sum of its lines plus 1 token for each "\\n" joining them. Each line is counted
exactly once, so chunking is linear in the document size even with a real tokenizer. For BPE
tokenizers this additive count is an estimate of the joined text's length (merges across a
newline are rare), which is why the budget should keep some headroom below the model context.

Over-long lines: a line whose numbered text costs more than `line_cap(config)` is shown cut, with
`TRUNCATION_MARKER` saying how many characters are hidden, and is listed in `Chunk.truncated` (the
program executor then only lets the model remove it whole). The cut keeps the longest head whose
display still fits the cap. The budget holds for every chunk except one case: a chunk of a single
line whose shortest possible display (prefix, plus the marker if the line is non-empty) alone
costs more than the budget, which only a degenerate config or tokenizer can produce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, partial

from refinex_spark.config import ChunkingConfig

TokenCounter = Callable[[str], int]

# Format with the number of hidden characters; appended after the visible head of a cut line.
TRUNCATION_MARKER = " [... {} more chars]"


def normalize_newlines(text: str) -> str:
    """Turn "\\r\\n" and lone "\\r" into "\\n" (the only line separator programs know about)."""
    if "\r" not in text:  # most text: one scan for "\r" costs a tenth of the two replace() scans
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_lines(text: str) -> list[str]:
    """Normalise newlines, then split on "\\n"; "" is one empty line, a trailing "\\n" ends in ""."""
    return normalize_newlines(text).split("\n")


def prefix_width(n_lines: int) -> int:
    """Digits of the line-number prefix for a document of `n_lines` lines (at least 3)."""
    return max(3, len(str(n_lines - 1)))


def number_line(index: int, line: str, width: int) -> str:
    return f"[{index:0{width}d}] {line}"


def approx_tokens(text: str, chars_per_token: float = 4.0) -> int:
    """Fast token estimate without a tokenizer: ceil(len / chars_per_token)."""
    return math.ceil(len(text) / chars_per_token)


def line_cap(config: ChunkingConfig) -> int:
    """Most tokens one numbered line may cost before it is shown truncated."""
    return math.floor(config.max_line_fraction * config.token_budget)


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int  # position of the chunk in the document
    start: int  # first line, global 0-based, inclusive
    end: int  # last line, global 0-based, inclusive
    text: str  # numbered lines joined by "\n" (what the model reads)
    n_tokens: int  # sum of line costs + 1 per joining "\n"
    truncated: frozenset[int]  # global line numbers shown truncated


def chunk_document(
    text: str, config: ChunkingConfig | None = None, count_tokens: TokenCounter | None = None
) -> list[Chunk]:
    """Split `text` into numbered chunks of whole lines; "" gives one chunk with one empty line."""
    return chunk_lines(split_lines(text), config, count_tokens)


def chunk_lines(
    lines: Sequence[str], config: ChunkingConfig | None = None, count_tokens: TokenCounter | None = None
) -> list[Chunk]:
    """Chunk already-split lines (as from `split_lines`), so callers that need the lines split once.

    Greedy: a line joins the current chunk while the chunk stays within the budget, so chunks are
    contiguous, never overlap, cover every line in order, and each holds at least one line.
    """
    cfg = config or ChunkingConfig()
    count = count_tokens or partial(approx_tokens, chars_per_token=cfg.chars_per_token)
    budget, cap = cfg.token_budget, line_cap(cfg)
    width = prefix_width(len(lines))

    chunks: list[Chunk] = []
    shown: list[str] = []  # numbered lines of the chunk being filled
    cut: list[int] = []
    used = 0

    def close(end: int) -> None:
        start = end - len(shown) + 1
        chunks.append(Chunk(len(chunks), start, end, "\n".join(shown), used, frozenset(cut)))

    for i, line in enumerate(lines):
        if "\n" in line or "\r" in line:
            raise ValueError(f"line {i} contains a line break; split the text with split_lines() first")
        numbered = number_line(i, line, width)
        tokens = count(numbered)
        if tokens > cap and line:
            numbered, tokens = _truncated(i, line, width, cap, count)
            cut_here = True
        else:
            cut_here = False
        if shown and used + 1 + tokens > budget:
            close(i - 1)
            shown, cut, used = [], [], 0
        used += tokens + (1 if shown else 0)
        shown.append(numbered)
        if cut_here:
            cut.append(i)
    if shown:
        close(len(lines) - 1)
    return chunks


def _truncated(index: int, line: str, width: int, cap: int, count: TokenCounter) -> tuple[str, int]:
    """Display of an over-long line: the longest head whose numbered text + marker fits `cap`."""

    def show(keep: int) -> str:
        return number_line(index, line[:keep] + TRUNCATION_MARKER.format(len(line) - keep), width)

    @cache
    def cost(keep: int) -> int:
        return count(show(keep))

    # Gallop up from ~cap chars, then bisect: the tokenizer only ever sees text a few times the
    # cap, never a whole megabyte line, and needs O(log cap) calls. `keep` < len(line) always
    # (keeping everything is not a truncation); `lo` fits unless it is 0 (the documented case).
    lo, hi, probe = 0, len(line), max(1, cap)
    while probe < hi and cost(probe) <= cap:
        lo, probe = probe, probe * 2
    hi = min(hi, probe)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= cap:
            lo = mid
        else:
            hi = mid
    return show(lo), cost(lo)
