"""demo: a synthetic corpus through the whole pipeline into the lake, then a summary and SQL to try.

synth -> files (with a few bad records, so `rejects` has something to show) -> ingest ->
expert import -> distill -> train a tiny model -> refine. Rerunning it adds nothing: every
stage skips what is already in the lake.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from ..config import LakeConfig
from ..runtime import RunContext
from ..synth import SynthDoc, generate_corpus

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


def write_docs(directory: str | Path, docs: Iterable[SynthDoc]) -> tuple[Path, Path]:
    """Raw documents (plus BAD_RECORDS) and expert outputs as jsonl files under `directory`."""
    raw_path = Path(directory) / "raw" / "docs.jsonl"
    expert_path = Path(directory) / "expert" / "outputs.jsonl"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    expert_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_raw, tmp_expert = raw_path.with_suffix(".tmp"), expert_path.with_suffix(".tmp")
    with open(tmp_raw, "w", encoding="utf-8") as raw, open(tmp_expert, "w", encoding="utf-8") as ex:
        for doc in docs:
            raw.write(json.dumps({"id": doc.doc_id, "text": doc.raw, "source": doc.source}) + "\n")
            ex.write(json.dumps({"doc_id": doc.doc_id, "text": doc.expert, "model": EXPERT_MODEL}) + "\n")
        raw.write("\n".join(BAD_RECORDS) + "\n")
    # Renamed into place only when complete: a rerun after a crash never reads a half-written file.
    os.replace(tmp_raw, raw_path)
    os.replace(tmp_expert, expert_path)
    return raw_path, expert_path


def try_lines(lake: str, name_lake: bool) -> list[str]:
    """The example queries as commands to paste; naming the lake when it is not the default one,
    which a bare `refinex-spark sql` would read."""
    where = f" --set lake.path={shlex.quote(lake)}" if name_lake else ""
    return [f'  refinex-spark sql "{q}"{where}' for q in EXAMPLE_SQL]


def run(ctx: RunContext, n_docs: int = 300, workdir: str = "./demo-data") -> dict:
    from . import distill, expert_import, ingest, refine, train

    corpus = Path(workdir) / f"{n_docs}-docs"
    raw_path, expert_path = corpus / "raw" / "docs.jsonl", corpus / "expert" / "outputs.jsonl"
    if not (raw_path.exists() and expert_path.exists()):  # written once; reruns reuse them
        raw_path, expert_path = write_docs(corpus, generate_corpus(n_docs, seed=0))
    steps = [
        ("ingest", lambda c: ingest.run(c, [str(raw_path)])),
        ("expert", lambda c: expert_import.run(c, str(expert_path))),
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
    ctx.stats.info["lake"] = ctx.lake.root
    print("\nTry:\n" + "\n".join(try_lines(ctx.lake.root, ctx.config.lake.path != LakeConfig().path)), flush=True)
    return ctx.stats.as_dict()
