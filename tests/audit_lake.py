"""The lake the audit tests (report, notebooks) read: conftest's demo lake plus an oracle refine commit.

`audited_lake_config` is a copy of the demo lake with one more refine commit, made by
`refine_batch` with an "oracle" backend that answers each chunk with its distilled program. The
demo's tiny model mostly writes programs that are rejected; the oracle's refine rows delete
real noise, so the audits have deletions to show, and refined_docs has two versions to compare.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import pandas as pd
import pytest

from refinex_spark.config import Config, LakeConfig, ModelConfig
from refinex_spark.lake import Lake
from refinex_spark.refine import refine_batch
from refinex_spark.runtime import RunContext, StageStats, new_run_id
from refinex_spark.schemas import TABLES

ORACLE_MODEL = "oracle-distilled-programs"


def context(spark, config: Config, stage: str) -> RunContext:
    """A stage context on the test session's Spark, over the lake `config` points at."""
    return RunContext(config, spark, Lake(spark, config.lake), StageStats(stage=stage, run_id=new_run_id(stage)))


class OracleBackend:
    """A refine backend whose answer for a chunk is the program distilled from the expert for it."""

    model_id = ORACLE_MODEL

    def __init__(self, programs: dict[str, str]) -> None:
        self.programs = programs
        self.config = ModelConfig(path=ORACLE_MODEL)

    def format_prompt(self, template: str, chunk_text: str) -> str:
        return chunk_text

    def generate(self, prompts: list[str]) -> list[str]:
        return [self.programs.get(p, "keep_all()") for p in prompts]

    def with_config(self, config: ModelConfig) -> OracleBackend:
        return self


def _add_oracle_commit(spark, config: Config) -> None:
    ctx = context(spark, config, "refine")
    samples = ctx.read("distill_samples").where("chunk_index >= 0").select("prompt", "program").toPandas()
    raw = ctx.read("raw_docs").select("doc_id", "text", "text_hash").toPandas()
    rows = pd.DataFrame(refine_batch(list(raw.itertuples(index=False, name=None)),
                                     OracleBackend(dict(zip(samples["prompt"], samples["program"]))), "", config))
    rows = rows.assign(model_id=ORACLE_MODEL, prompt_version=config.model.prompt_version, fingerprint="oracle",
                       run_id=ctx.run_id, created_at=datetime.now(timezone.utc))
    schema = TABLES["refined_docs"].spark_schema()
    frame = spark.createDataFrame(rows[schema.fieldNames()], schema)
    ctx.append("refined_docs", frame, fingerprint="oracle")


@pytest.fixture(scope="module")
def audited_lake_config(spark, demo_lake, tmp_path_factory) -> Config:
    """Built once per session (under the base temp dir), whichever module asks first."""
    root = tmp_path_factory.getbasetemp() / "audit-oracle-lake"
    config = demo_lake.model_copy(update={"lake": LakeConfig(path=str(root / "lake"))})
    if not (root / "built").exists():
        shutil.rmtree(root / "lake", ignore_errors=True)
        shutil.copytree(demo_lake.lake.path, root / "lake")
        _add_oracle_commit(spark, config)
        (root / "built").touch()
    return config
