"""`python -m refinex_spark.bench core`: the pure core (distill, chunking, program) on one core.

Prints one JSON object:
- distill: per size bucket (2 kB, 20 kB, 200 kB synthetic documents with their expert outputs,
  faults included), docs/s, MB/s and mean fidelity of the hierarchical alignment and of the
  flat character-level baseline (`distill(..., alignment="flat")`: same program building, only
  the alignment differs), their speedup end to end and for the alignment step alone, the speedup
  a free hierarchical alignment would give (the bound the shared steps set), and their fidelity
  difference (hierarchical - flat);
- large_doc: seconds to distill one 1 MB document;
- chunking: seconds to chunk a 10,000-line document;
- apply_program: MB/s of `apply_program` over the distilled programs, in this one process;
- token_economy: approximate program tokens per chunk token over the distilled samples;
- targets and pass: each target and whether this run met it.
Timings are this process's CPU time (best of `--repeat` runs; of at least CHEAP_REPEAT for the
sub-second chunking and apply_program passes): everything is single-threaded, so
that is the time on one free core, and it stays meaningful on a shared, busy machine, where wall
time mostly measures the neighbours (`load_average` says how busy it was). Everything runs in this
process on the same seeded documents.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from collections.abc import Callable
from statistics import fmean
from typing import Any, NamedTuple, TypeVar

from ..chunking import approx_tokens, chunk_document, split_lines
from ..distill import DistillResult, Sample, align, distill
from ..program import apply_program
from ..synth import SynthDoc, generate_doc

T = TypeVar("T")

BUCKETS = {"2kB": 2_000, "20kB": 20_000, "200kB": 200_000}
DOCS = {"2kB": 300, "20kB": 60, "200kB": 6}
QUICK_DOCS = {"2kB": 10, "20kB": 3, "200kB": 1}
CHEAP_REPEAT = 7  # timing repeats of the sub-second measurements (chunking, apply_program)
TARGET_BUCKETS = ("20kB", "200kB")  # the speedup and fidelity targets hold from 20 kB up
TARGETS = {
    **{f"speedup_{b}_at_least": 20.0 for b in TARGET_BUCKETS},  # flat seconds / hierarchical seconds
    **{f"fidelity_loss_{b}_at_most": 0.01 for b in TARGET_BUCKETS},  # flat - hierarchical fidelity
    "large_doc_seconds_below": 1.0,
    "chunk_10k_lines_seconds_below": 0.2,
    "apply_program_mb_per_s_at_least": 50.0,
}


def _best(repeat: int, fn: Callable[[], T]) -> tuple[float, T]:
    """Least CPU time of `repeat` calls, and the last result.

    As timeit does, the cyclic garbage collector is off while timing: the benchmark keeps every
    distilled result alive, and collections over that heap (which a Spark worker never holds)
    would be charged to whatever runs next.
    """
    best, result = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t = time.process_time()
            result = fn()
            best = min(best, time.process_time() - t)
        finally:
            gc.enable()
    return best, result  # type: ignore[return-value]


def _at_least_one(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _docs(bucket: str, chars: int, n: int) -> list[SynthDoc]:
    base = 1_000_000 * (list(BUCKETS).index(bucket) + 1)  # distinct seeds per bucket
    return [generate_doc(base + i, chars) for i in range(n)]


def _lines(n: int) -> str:
    """A document of exactly `n` lines: synthetic pages one after another, cut at line n."""
    lines: list[str] = []
    seed = 0
    while len(lines) < n:
        lines += generate_doc(seed, 100_000).raw.split("\n")
        seed += 1
    return "\n".join(lines[:n])


class _Run(NamedTuple):
    seconds: float
    fidelity: float  # mean over the documents
    results: list[DistillResult]

    def figures(self, mb: float) -> dict[str, float]:
        n = len(self.results)
        return {"seconds": round(self.seconds, 4), "docs_per_s": round(n / self.seconds, 2),
                "mb_per_s": round(mb / self.seconds, 3), "fidelity": round(self.fidelity, 5)}


def _run(docs: list[SynthDoc], alignment: str, repeat: int) -> _Run:
    seconds, results = _best(repeat, lambda: [distill(d.raw, d.expert, alignment=alignment) for d in docs])
    return _Run(seconds, fmean(r.stats.fidelity for r in results), results)


def _align_seconds(docs: list[SynthDoc], alignment: str, repeat: int) -> float:
    """CPU time of the alignment step alone (the part the two modes do differently)."""
    lines = [(split_lines(d.raw), split_lines(d.expert)) for d in docs]
    split = [("\n".join(rl), rl, "\n".join(el), el) for rl, el in lines]
    seconds, _ = _best(repeat, lambda: [align(r, rl, e, el, alignment) for r, rl, e, el in split])
    return seconds


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m refinex_spark.bench core")
    ap.add_argument("--quick", action="store_true", help="a few docs per bucket, one repeat (for tests)")
    ap.add_argument("--repeat", type=_at_least_one, default=None, help="timing repeats (default 2, 1 with --quick)")
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 2)
    counts = QUICK_DOCS if args.quick else DOCS

    # Untimed, once per mode: the process's first distill pays for what later ones find ready.
    warm = generate_doc(0, BUCKETS["2kB"])
    for alignment in ("hierarchical", "flat"):
        distill(warm.raw, warm.expert, alignment=alignment)
    buckets: dict[str, Any] = {}
    exact: dict[str, tuple[float, float]] = {}  # (speedup, fidelity loss) unrounded: what the targets judge
    distilled: list[tuple[SynthDoc, DistillResult]] = []
    for bucket, chars in BUCKETS.items():
        docs = _docs(bucket, chars, counts[bucket])
        hier, flat = _run(docs, "hierarchical", repeat), _run(docs, "flat", repeat)
        distilled += zip(docs, hier.results)
        hier_align = _align_seconds(docs, "hierarchical", repeat)
        exact[bucket] = (flat.seconds / hier.seconds, flat.fidelity - hier.fidelity)
        mb = sum(len(d.raw) for d in docs) / 1e6
        buckets[bucket] = {
            "docs": len(docs),
            "mean_chars": round(fmean(len(d.raw) for d in docs)),
            "hierarchical": hier.figures(mb),
            "flat": flat.figures(mb),
            "speedup": round(flat.seconds / hier.seconds, 2),
            "alignment_only_speedup": round(_align_seconds(docs, "flat", repeat) / hier_align, 2),
            # What the speedup would be if the hierarchical alignment took no time at all: the bound
            # that the steps after it (ops, chunk programs, execution, fidelity, samples) put on it.
            # None when the two separately timed figures leave nothing to divide by (noise).
            "speedup_with_free_alignment": (round(flat.seconds / (hier.seconds - hier_align), 2)
                                            if hier.seconds > hier_align else None),
            "fidelity_diff": round(hier.fidelity - flat.fidelity, 5),
        }

    big = generate_doc(7, 1_000_000)
    large_s, large = _best(repeat, lambda: distill(big.raw, big.expert))
    lines_10k = _lines(10_000)
    # Passes of a tenth of a second or less: the best of more of them, as timeit takes, so that one
    # stall of a shared machine is not the figure.
    cheap = max(repeat, CHEAP_REPEAT)
    chunk_s, chunks = _best(cheap, lambda: chunk_document(lines_10k))

    # Whole-document programs of every bucket's documents.
    pairs = [(d.raw, r.program) for d, r in distilled]
    apply_s, _ = _best(cheap, lambda: [apply_program(raw, program) for raw, program in pairs])
    apply_mb = sum(len(raw) for raw, _ in pairs) / 1e6

    samples = [s for _, r in distilled for s in r.samples]
    kept = [s for s in samples if s.kept]

    def economy(group: list[Sample]) -> float:
        return round(sum(approx_tokens(s.program) for s in group) / sum(approx_tokens(s.prompt) for s in group), 4)

    report: dict[str, Any] = {
        "benchmark": "core",
        "quick": args.quick,
        "repeat": repeat,
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "distill": {"buckets": buckets},
        "large_doc": {
            "chars": len(big.raw), "lines": big.raw.count("\n") + 1, "seconds": round(large_s, 4),
            "n_ops": large.stats.n_ops, "fidelity": round(large.stats.fidelity, 5),
        },
        "chunking": {
            "lines": 10_000, "chars": len(lines_10k), "chunks": len(chunks), "seconds": round(chunk_s, 4),
        },
        "apply_program": {
            "docs": len(pairs), "mb": round(apply_mb, 3), "seconds": round(apply_s, 4),
            "mb_per_s_per_core": round(apply_mb / apply_s, 2),
        },
        "token_economy": {
            "samples": len(samples), "program_tokens_per_chunk_token": economy(samples),
            "kept_samples": len(kept), "kept_program_tokens_per_chunk_token": economy(kept) if kept else None,
        },
        "targets": dict(TARGETS),
    }
    report["pass"] = {
        **{f"speedup_{b}_at_least": exact[b][0] >= TARGETS[f"speedup_{b}_at_least"] for b in TARGET_BUCKETS},
        **{f"fidelity_loss_{b}_at_most": exact[b][1] <= TARGETS[f"fidelity_loss_{b}_at_most"] for b in TARGET_BUCKETS},
        "large_doc_seconds_below": large_s < TARGETS["large_doc_seconds_below"],
        "chunk_10k_lines_seconds_below": chunk_s < TARGETS["chunk_10k_lines_seconds_below"],
        "apply_program_mb_per_s_at_least": apply_mb / apply_s >= TARGETS["apply_program_mb_per_s_at_least"],
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
