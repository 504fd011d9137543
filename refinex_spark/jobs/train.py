"""train: kept `distill_samples` -> a Hugging Face model directory with a model card.

The samples of the current distill fingerprint are collected on the driver (a few million
short pairs at most) and handed to `model.train.train_model`, in-process or, with
`--distributed`, through TorchDistributor on the cluster's GPUs. `--init-tiny` first builds a
tiny Qwen3-architecture base model with a locally trained tokenizer (no hub), for CI and the demo.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import functions as F

from ..model.prompt import load_template
from ..model.tiny import build_tiny_model
from ..model.train import train_model
from ..runtime import RunContext
from ..spark_session import spark_master


def run(ctx: RunContext, init_tiny: bool = False, distributed: bool = False) -> dict:
    config, stats = ctx.config, ctx.stats
    fingerprint = config.fingerprint("program", "chunking", "distill")
    template = load_template(config.model.prompt_version)
    with stats.timer("collect"):
        kept = (ctx.read("distill_samples").where(F.col("kept") & (F.col("fingerprint") == fingerprint))
                .select("doc_id", "chunk_index", "prompt", "program").orderBy("doc_id", "chunk_index"))
        rows = kept.collect()
        samples = [(r["prompt"], r["program"]) for r in rows]
        doc_ids = [r["doc_id"] for r in rows]
    if not samples:
        raise ValueError(f"no kept distill_samples under fingerprint {fingerprint}: run `distill` first")
    stats.counts["samples"] = len(samples)
    output_dir = Path(config.train.output_dir).resolve()
    base = config.train.base
    if init_tiny:
        with stats.timer("init_tiny"):
            texts = [template] + [t for pair in samples for t in pair]
            base = str(build_tiny_model(output_dir.parent / f"{output_dir.name}-tiny-base", texts,
                                        seed=config.train.seed))
    kwargs = dict(base=base, data_version=ctx.read_versions.get("distill_samples"), fingerprint=fingerprint,
                  prompt_version=config.model.prompt_version, groups=doc_ids)
    with stats.timer("train"):
        if distributed:
            from pyspark.ml.torch.distributor import TorchDistributor

            local = spark_master(ctx.spark).startswith("local")
            n = int(ctx.spark.conf.get("spark.executor.instances", "1")) if not local else 1
            result = TorchDistributor(num_processes=n, local_mode=local, use_gpu=not local).run(
                train_model, samples, config.train, template, str(output_dir), **kwargs)
        else:
            result = train_model(samples, config.train, template, output_dir, **kwargs)
    stats.info.update(output_dir=str(output_dir), base=base, metrics=result.metrics)
    return stats.as_dict()
