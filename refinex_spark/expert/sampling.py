"""Which documents the expert sees, and how a long one is cut to fit its context. Pure Python.

Sampling is a bottom-k sample on a seeded hash: every document gets the key
`sample_key(seed, doc_id)` and a stratum (its source, or one stratum for all), each stratum gets a
quota (`allocate`), and a stratum's sample is its `quota` documents with the smallest keys (ties:
smaller doc_id). So the sample depends only on the seed and the set of documents, never on
partitioning or row order; the same seed gives the same sample, and growing the count only adds
documents (the samples nest).

Long documents are split on line boundaries (`split_document`); the expert cleans each piece and
the stage re-joins the cleaned pieces with "\\n", exactly as the raw pieces re-join to the
(newline-normalised) document.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

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
    """Proportional quotas per stratum that sum to exactly `total` (largest-remainder method).

    Each stratum gets floor(total * size / N); the leftover units go to the largest remainders,
    ties to the smaller stratum name, so the result is deterministic. No quota exceeds its size.
    """
    population = sum(sizes.values())
    if any(n < 0 for n in sizes.values()):
        raise ValueError("stratum sizes must be >= 0")
    if not 0 <= total <= population:
        raise ValueError(f"total must be in [0, {population}], got {total}")
    if population == 0:
        return {name: 0 for name in sizes}
    quotas = {name: total * n // population for name, n in sizes.items()}
    leftover = total - sum(quotas.values())
    by_remainder = sorted(sizes, key=lambda name: (-(total * sizes[name] % population), name))
    for name in by_remainder[:leftover]:
        quotas[name] += 1
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
