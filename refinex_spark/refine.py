"""Refine documents with a model: chunk, generate one program per chunk, execute, verify (no Spark).

The refine stage maps `refine_batch` over Arrow batches; the benchmark calls it directly.
A document's chunks are generated together with every other chunk of the batch, so the
backend can sort all of them by length and fill its micro-batches.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .chunking import approx_tokens, chunk_lines, normalize_newlines, split_lines
from .config import Config
from .model.backends import Backend
from .program import ChunkProgram, execute


@dataclass
class BatchStats:
    docs: int = 0
    chunks: int = 0
    input_chars: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def is_subsequence(small: str, big: str) -> bool:
    """Deletion-only check: every char of `small` appears in `big` in order."""
    it = iter(big)
    return all(c in it for c in small)


def _error_row(doc_id: str, text_hash: str, message: str) -> dict:
    return {"doc_id": doc_id, "text_hash": text_hash, "refined_text": None, "program": None, "op_outcomes": None,
            "status": "error", "error": message[:2000], "deleted_fraction": None, "n_chunks": None,
            "n_fallback_chunks": None}


def refine_batch(
    docs: Sequence[tuple[str, str, str]], backend: Backend, template: str, config: Config,
    stats: BatchStats | None = None,
) -> list[dict]:
    """(doc_id, text, text_hash) triples -> one `refined_docs` row dict per document, in order.

    A document that cannot be refined (a bug, a pathological input) becomes an `error` row; a
    failure of the backend itself raises, so Spark retries the task and nothing is half-written.
    """
    started = time.perf_counter()
    stats = stats if stats is not None else BatchStats()
    count = lambda s: approx_tokens(s, config.chunking.chars_per_token)  # noqa: E731 - as distill counts
    plans: list[tuple[int, list, list[int]] | dict] = []
    prompts: list[str] = []
    for i, (doc_id, text, text_hash) in enumerate(docs):
        try:
            chunks = chunk_lines(split_lines(text), config.chunking, count_tokens=count)
        except Exception as e:  # noqa: BLE001 - recorded on the row
            plans.append(_error_row(doc_id, text_hash, f"chunking failed: {type(e).__name__}: {e}"))
            continue
        first = len(prompts)
        prompts += [backend.format_prompt(template, c.text) for c in chunks]
        plans.append((i, chunks, list(range(first, len(prompts)))))
    outputs = backend.generate(prompts) if prompts else []

    rows = []
    for plan in plans:
        if isinstance(plan, dict):
            rows.append(plan)
            continue
        i, chunks, idx = plan
        doc_id, text, text_hash = docs[i]
        try:
            rows.append(_assemble(doc_id, text, text_hash, chunks, [outputs[k] for k in idx], config))
        except Exception as e:  # noqa: BLE001 - recorded on the row
            rows.append(_error_row(doc_id, text_hash, f"{type(e).__name__}: {e}"))
    stats.docs += len(docs)
    stats.chunks += len(prompts)
    stats.input_chars += sum(len(d[1]) for d in docs)
    for r in rows:
        stats.statuses[r["status"]] = stats.statuses.get(r["status"], 0) + 1
    stats.seconds += time.perf_counter() - started
    return rows


def _assemble(doc_id: str, text: str, text_hash: str, chunks: list, programs: list[str], config: Config) -> dict:
    chunk_programs = [ChunkProgram(c.start, c.end, p, c.truncated) for c, p in zip(chunks, programs)]
    result = execute(text, chunk_programs, config.program)
    raw = normalize_newlines(text)
    if config.program.dialect == "refinex" and not is_subsequence(result.text, raw):
        return _error_row(doc_id, text_hash, "refined text is not deletion-only")
    outcomes = [{"op": o.op, "applied": o.applied, "reason": o.reason} for o in result.outcomes]
    return {"doc_id": doc_id, "text_hash": text_hash, "refined_text": result.text,
            "program": "\n".join(p.strip() for p in programs),
            "op_outcomes": json.dumps(outcomes, ensure_ascii=False), "status": result.status, "error": None,
            "deleted_fraction": (len(raw) - len(result.text)) / len(raw) if raw else 0.0,
            "n_chunks": len(chunks), "n_fallback_chunks": len(result.fallback_chunks)}
