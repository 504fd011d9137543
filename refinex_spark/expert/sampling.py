"""Which documents the expert sees, and how a long one is cut to fit its context. Pure Python.

Sampling is a bottom-k sample on a seeded hash: every document gets the key
`sample_key(seed, doc_id)` and a stratum (its source, or one stratum for all), each stratum gets a
quota (`allocate`), and a stratum's sample is its `quota` documents with the smallest keys (ties:
smaller doc_id). So the sample depends only on the seed and the set of documents, never on
partitioning or row order; the same seed gives the same sample, and growing the count only adds
documents (the samples nest: quotas only grow with the count). A sample is of the documents there
are: as raw_docs grows, new documents with smaller keys take places of a fixed count.

Long documents are split on line boundaries (`split_document`); the expert cleans each piece and
the stage re-joins the cleaned pieces with "\\n", exactly as the raw pieces re-join to the
(newline-normalised) document.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Mapping
from fractions import Fraction

from refinex_spark.chunking import approx_tokens, split_lines

# Hex digits of the sha256 used as the key: 60 bits, so the key fits a signed 64-bit Spark long.
KEY_HEX_DIGITS = 15
# Tokens a chat template wraps around one user turn and the assistant prefix (ChatML: ~10).
TEMPLATE_OVERHEAD_TOKENS = 32
MIN_PIECE_TOKENS = 16


def sample_key(seed: int, doc_id: str) -> int:
    """The sampling key of a document: sha256 of "<seed>:<doc_id>", first 15 hex digits as an int.

    The Spark stage computes the same value with `sha2`/`conv`; this is the reference definition
    (and lets anyone check outside Spark whether a document is in a sample).
    """
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode("utf-8")).hexdigest()
    return int(digest[:KEY_HEX_DIGITS], 16)


def sample_size(population: int, fraction: float | None = None, count: int | None = None) -> int:
    """Documents to sample: round(fraction * population) (half up), or min(count, population)."""
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction and count")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        return min(population, math.floor(fraction * population + 0.5))
    if count is None or count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return min(count, population)


def allocate(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Proportional quotas per stratum that sum to exactly `total`, no quota above its size.

    Webster's (Sainte-Laguë) method, seat by seat: the k-th document (from 0) of a stratum of n
    has priority (2k + 1) / 2n, and the `total` places of least priority value win (ties: the
    smaller stratum name). One fixed order of places means a larger total only adds places, so
    the samples nest; largest remainders can take a place away as the total grows (the Alabama
    paradox). Every place of value at most (total - strata) / population is certainly among the
    winners, so they are counted at once and only the last few (at most 1.5 x strata) are dealt
    one by one.
    """
    population = sum(sizes.values())
    if any(n < 0 for n in sizes.values()):
        raise ValueError("stratum sizes must be >= 0")
    if not 0 <= total <= population:
        raise ValueError(f"total must be in [0, {population}], got {total}")
    head = Fraction(max(total - len(sizes), 0), population or 1)
    # places k with (2k + 1) / 2n <= head: k <= head * n - 1/2
    quotas = {name: min(n, max(0, math.floor(head * n - Fraction(1, 2)) + 1)) for name, n in sizes.items()}
    places = [(Fraction(2 * q + 1, 2 * n), name) for name, n in sizes.items() if (q := quotas[name]) < n]
    heapq.heapify(places)
    for _ in range(total - sum(quotas.values())):
        _, name = heapq.heappop(places)
        quotas[name] += 1
        if quotas[name] < sizes[name]:
            heapq.heappush(places, (Fraction(2 * quotas[name] + 1, 2 * sizes[name]), name))
    return quotas


def piece_budget(context_tokens: int, instruction_tokens: int) -> int:
    """Most tokens one piece may have so that instruction + piece + its cleaned copy fit the context.

    Cleaning only deletes, so the answer is at most as long as the piece: the room left after the
    instruction and the chat template is shared half and half between the piece and the answer.
    """
    budget = (context_tokens - instruction_tokens - TEMPLATE_OVERHEAD_TOKENS) // 2
    if budget < MIN_PIECE_TOKENS:
        raise ValueError(f"a context of {context_tokens} tokens leaves {budget} tokens per piece after an "
                         f"instruction of ~{instruction_tokens} tokens; raise expert.context_tokens")
    return budget


def split_document(text: str, max_tokens: int, chars_per_token: float) -> list[str]:
    """Cut a document into line-aligned pieces of at most `max_tokens` estimated tokens each.

    A piece is whole consecutive lines joined by "\\n" and costs the sum of its lines'
    `approx_tokens` plus 1 per joining "\\n" (the rule `chunking` uses). Lines are packed greedily,
    so "\\n".join(pieces) == the newline-normalised text, and every piece holds at least one line.
    A single line over the budget is a piece of its own (cutting inside a line would make the
    re-join add a line break); it is the one case where a piece exceeds `max_tokens`.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for line in split_lines(text):
        cost = approx_tokens(line, chars_per_token)
        if current and used + 1 + cost > max_tokens:
            pieces.append("\n".join(current))
            current, used = [], 0
        used += cost + (1 if current else 0)
        current.append(line)
    pieces.append("\n".join(current))
    return pieces
