"""demo: a synthetic corpus through the whole pipeline into the lake, then a summary and SQL to try.

synth -> files (with a few bad records, so `rejects` has something to show) -> ingest ->
expert import -> distill -> train a tiny model -> refine. Rerunning it adds nothing: every
stage skips what is already in the lake.
"""

from __future__ import annotations

import json
import os

from ..runtime import RunContext
from ..synth import generate_corpus

EXPERT_MODEL = "synthetic-expert"
BAD_RECORDS = [
    '{"id": "bad-1", "text": "unterminated',            # malformed_json
    '{"id": "bad-2"}',                                  # missing_text
    '{"id": "bad-3", "text": 42}',                      # text_not_string
    '{"id": "bad-4", "text": "   "}',                   # empty_text
    '["not", "an", "object"]',                          # not_an_object
]
EXAMPLE_SQL = [
    "SELECT status, count(*) AS docs, round(avg(deleted_fraction), 3) AS avg_deleted FROM refined_docs GROUP BY status",
    "SELECT kept, drop_reason, count(*) AS samples FROM distill_samples GROUP BY kept, drop_reason ORDER BY samples DESC",
    "SELECT reason, count(*) AS n FROM rejects GROUP BY reason",
    "SELECT doc_id, program FROM refined_docs WHERE status = 'ok' LIMIT 5",
]


def write_corpus(workdir: str, n_docs: int, seed: int = 0) -> tuple[str, str]:
    """Raw documents and expert outputs as jsonl files; written once, reused by reruns."""
    raw_path = os.path.join(workdir, "raw", "docs.jsonl")
    expert_path = os.path.join(workdir, "expert", "outputs.jsonl")
    if os.path.exists(raw_path) and os.path.exists(expert_path):
        return raw_path, expert_path
    os.makedirs(os.path.dirname(raw_path), exist_ok=True)
    os.makedirs(os.path.dirname(expert_path), exist_ok=True)
    with open(raw_path + ".tmp", "w", encoding="utf-8") as raw, open(expert_path + ".tmp", "w", encoding="utf-8") as ex:
        for doc in generate_corpus(n_docs, seed=seed):
            raw.write(json.dumps({"id": doc.doc_id, "text": doc.raw, "source": doc.source}) + "\n")
            ex.write(json.dumps({"doc_id": doc.doc_id, "text": doc.expert, "model": EXPERT_MODEL}) + "\n")
        raw.write("\n".join(BAD_RECORDS) + "\n")
    os.replace(raw_path + ".tmp", raw_path)
    os.replace(expert_path + ".tmp", expert_path)
    return raw_path, expert_path


def run(ctx: RunContext, n_docs: int = 300, workdir: str = "./demo-data") -> dict:
    from . import distill, expert_import, ingest, refine, train

    raw_path, expert_path = write_corpus(workdir, n_docs)
    steps = [
        ("ingest", lambda c: ingest.run(c, [raw_path])),
        ("expert", lambda c: expert_import.run(c, expert_path)),
        ("distill", distill.run),
        ("train", lambda c: train.run(c, init_tiny=True)),
        ("refine", refine.run),
    ]
    summary = {}
    for stage, step in steps:
        print(f"== {stage}", flush=True)
        stage_ctx = ctx.for_stage(stage)
        summary[stage] = step(stage_ctx)
        stage_ctx.stats.report()
    ctx.stats.info["stages"] = {k: v.get("counts") for k, v in summary.items()}
    ctx.stats.info["lake"] = ctx.lake.location("raw_docs").rsplit("/", 1)[0]
    print("\nTry:\n" + "\n".join(f'  refinex-spark sql "{q}"' for q in EXAMPLE_SQL), flush=True)
    return ctx.stats.as_dict()
