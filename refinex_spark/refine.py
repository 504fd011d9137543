"""Refine documents with a model: chunk, generate one program per chunk, execute, verify (no Spark).

The refine stage maps `refine_batch` over Arrow batches; the benchmark calls it directly.
A document's chunks are generated together with every other chunk of the batch, so the
backend can sort all of them by length and fill its micro-batches.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .chunking import approx_tokens, chunk_lines, normalize_newlines, split_lines
from .config import Config
from .program import ChunkProgram, execute

if TYPE_CHECKING:  # the backends import torch; the refine core itself does not need it
    from .model.backends import Backend


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


_REASONING = re.compile(r"\A\s*<think>.*?</think>", re.DOTALL)
STATUSES = ("ok", "kept", "fallback", "error")  # of a refined_docs row (DESIGN.md)


def _error_row(doc_id: str, text_hash: str, message: str) -> dict:
    return {"doc_id": doc_id, "text_hash": text_hash, "refined_text": None, "program": None, "op_outcomes": None,
            "status": "error", "error": message[:2000], "deleted_fraction": None, "n_chunks": None,
            "n_fallback_chunks": None}


def refine_batch(
    docs: Sequence[tuple[str, str, str]], backend: Backend, template: str, config: Config,
    stats: BatchStats | None = None,
) -> list[dict]:
    """(doc_id, text, text_hash) triples -> one `refined_docs` row dict per document, in order.

    A document that cannot be refined (a pathological input, a prompt the backend refuses)
    becomes an `error` row; when the backend itself fails (it is down, or refuses every request
    for a setting of the run) the error is raised, so Spark retries the task, nothing is
    half-written, and a rerun retries every document (see `_generate`).
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
    # Needed only when something failed: built then, not for every batch.
    probe = lambda: backend.format_prompt(  # noqa: E731
        template, chunk_lines(split_lines(""), config.chunking, count_tokens=count)[0].text)
    like = lambda chunk_text: backend.format_prompt(template, _neutral(chunk_text))  # noqa: E731
    outputs = _generate(backend, prompts, [p for p in plans if not isinstance(p, dict)], probe, like,
                        config.refine.failing_batch_docs)

    rows = []
    for plan in plans:
        if isinstance(plan, dict):
            rows.append(plan)
            continue
        i, chunks, idx = plan
        doc_id, text, text_hash = docs[i]
        generated = [outputs[k] for k in idx]
        failure = _first_failure(outputs, idx)
        try:
            rows.append(_error_row(doc_id, text_hash, f"generation failed: {type(failure).__name__}: {failure}")
                        if failure is not None else _assemble(doc_id, text, text_hash, chunks, generated, config))
        except Exception as e:  # noqa: BLE001 - recorded on the row
            rows.append(_error_row(doc_id, text_hash, f"{type(e).__name__}: {e}"))
    stats.docs += len(docs)
    stats.chunks += len(prompts)
    stats.input_chars += sum(len(d[1]) for d in docs)
    for r in rows:
        stats.statuses[r["status"]] = stats.statuses.get(r["status"], 0) + 1
    stats.seconds += time.perf_counter() - started
    return rows


class PromptRefused(RuntimeError):
    """A backend's answer to a prompt it turned down itself (an HTTP 400, 413 or 422, say): a
    retry gets the same answer, so it is that document's error, not a sign the backend is down."""


_FILLER = "the cat sat on the mat and the dog lay by the door "


def _neutral(text: str) -> str:
    """Plain English of `text`'s line lengths: about as many tokens as English text that long (the
    ratio chunking sizes chunks by), and nothing a content filter would turn down."""
    return "\n".join((_FILLER * (len(line) // len(_FILLER) + 1))[:len(line)] for line in text.split("\n"))


def _generate(backend: Backend, prompts: list[str], plans: list, probe: Callable[[], str],
              like: Callable[[str], str], failing_batch_docs: int) -> list[str | Exception]:
    """All prompts in one call; if that fails, document by document, so one bad document (a
    refused prompt, an unparseable reply) costs only its own row.

    A failure becomes a row only where the backend has shown it works: it must answer `probe()`
    (the prompt of an empty document) before the documents are tried one by one, and again before
    those that failed other than by a refusal get one more try. And when all of a batch's
    documents, `failing_batch_docs` or more, still fail, that is a setting (a context too short
    for a chunk and max_new_tokens), not the documents, unless they were all refused and the
    backend answers `like(longest chunk)`, a prompt as long as theirs in plain filler text: then
    it turned down what they say (a content filter). Each of these raises: an outage, or a
    setting that makes the server refuse every request, must fail the task (Spark retries it, a
    rerun resumes), not become error rows, which only `refine --retry-errors` retries. A document
    the working backend refuses is its own error row, however many there are in its batch, or it
    would fail every rerun.
    """
    if not prompts:
        return []
    try:
        return list(backend.generate(prompts))
    except Exception as batch_error:  # noqa: BLE001 - narrowed down per document below
        _answers(backend, probe, batch_error)
        # What the backend did answer stays answered (see Backend.generate): the rest is asked again.
        partial = getattr(batch_error, "outputs", None)
        outputs: list[str | Exception] = (list(partial) if isinstance(partial, list) and len(partial) == len(prompts)
                                          else [batch_error] * len(prompts))
        failing = [plan for plan in plans if _first_failure(outputs, plan[2]) is not None]
        if len(failing) > 1 or not isinstance(batch_error, PromptRefused):  # a lone refusal needs no asking again
            _per_document(backend, prompts, failing, outputs)
        retry = [plan for plan in plans
                 if any(isinstance(outputs[k], Exception) and not isinstance(outputs[k], PromptRefused)
                        for k in plan[2])]
        if retry:
            _answers(backend, probe, _first_failure(outputs, retry[0][2]))
            _per_document(backend, prompts, retry, outputs)
        failed = [f for _, _, idx in plans if (f := _first_failure(outputs, idx)) is not None]
        if len(failed) == len(plans) >= failing_batch_docs and not (
                all(isinstance(f, PromptRefused) for f in failed)
                and _answered(backend, like(max((c.text for _, chunks, _ in plans for c in chunks), key=len)))):
            raise RuntimeError(f"the backend answers an empty document's prompt but failed all {len(failed)} "
                               f"documents of the batch, each on its own ({type(failed[0]).__name__}: {failed[0]}): "
                               "a setting, such as a context too short for a chunk plus model.max_new_tokens?")
        return outputs


def _first_failure(outputs: list[str | Exception], idx: list[int]) -> Exception | None:
    """The first exception among a document's slots (None: all its chunks were answered)."""
    return next((o for k in idx if isinstance(o := outputs[k], Exception)), None)


def _answered(backend: Backend, prompt: str) -> bool:
    try:
        backend.generate([prompt])
    except Exception:  # noqa: BLE001 - refused, like the documents' own prompts
        return False
    return True


def _answers(backend: Backend, probe: Callable[[], str], failure: Exception) -> None:
    """Raises unless the backend answers the probe: then `failure` was the backend's, not a document's."""
    try:
        backend.generate([probe()])
    except Exception as down:  # noqa: BLE001 - the backend, not the documents, fails
        raise RuntimeError(f"the backend failed ({type(failure).__name__}: {failure}) and then an empty "
                           f"document's prompt ({type(down).__name__}: {down})") from down


def _per_document(backend: Backend, prompts: list[str], plans: list, outputs: list[str | Exception]) -> None:
    """Generate each plan's prompts on their own, into outputs; a failure fills that document's slots."""
    for _, _, idx in plans:
        try:
            for k, out in zip(idx, backend.generate([prompts[k] for k in idx])):
                outputs[k] = out
        except Exception as e:  # noqa: BLE001 - this document's error row
            for k in idx:
                outputs[k] = e


def _storable(text: str) -> str:
    """Model output may hold lone surrogates, which no UTF-8 table can store: written as \\udXXXX.

    Only for storing: the ops run as the model wrote them, so the parser rejects such text rather
    than matching a stand-in character that the line may well hold.
    """
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _without_reasoning(output: str) -> str:
    """The program after a leading <think>...</think> block: a model tuned through a chat template
    that opens every answer with one (Qwen3's, rendering export-sft rows), or a reasoning model,
    still answers with its program after it. An unclosed block (cut at max_new_tokens) holds no
    program, only drafts that may read as ops: it is just its "<think>", one rejected line, so the
    chunk keeps its text and the document is a fallback."""
    if output.lstrip().startswith("<think>") and "</think>" not in output:
        return "<think>"
    return _REASONING.sub("", output, count=1)


def _assemble(doc_id: str, text: str, text_hash: str, chunks: list, programs: list[str], config: Config) -> dict:
    programs = [_without_reasoning(p) for p in programs]
    chunk_programs = [ChunkProgram(c.start, c.end, p, c.truncated) for c, p in zip(chunks, programs)]
    result = execute(text, chunk_programs, config.program)
    raw = normalize_newlines(text)
    if config.program.dialect == "refinex" and not is_subsequence(result.text, raw):
        return _error_row(doc_id, text_hash, "refined text is not deletion-only")
    # Each op made storable before JSON: a surrogate escaped in the JSON text would decode back to itself.
    outcomes = [{"op": _storable(o.op), "applied": o.applied, "reason": o.reason, "chunk": o.chunk}
                for o in result.outcomes]
    return {"doc_id": doc_id, "text_hash": text_hash, "refined_text": result.text,
            "program": _storable("\n".join(p.strip() for p in programs)),
            "op_outcomes": json.dumps(outcomes, ensure_ascii=False), "status": result.status, "error": None,
            "deleted_fraction": (len(raw) - len(result.text)) / len(raw) if raw else 0.0,
            "n_chunks": len(chunks), "n_fallback_chunks": len(result.fallback_chunks)}
