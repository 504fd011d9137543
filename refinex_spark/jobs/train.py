"""train: kept `distill_samples` -> a Hugging Face model directory with a model card.

The samples of the current distill fingerprint are streamed from Spark into a Parquet file beside
the output directory (`<output_dir>-samples.parquet`) and `model.train.train_model` reads them
from there, in-process or, with `--distributed`, in every TorchDistributor process on the
cluster's GPUs (which must see that path, as they see the output directory). `--init-tiny` first builds a
tiny Qwen3-architecture base model with a locally trained tokenizer (no hub), for CI and the demo.
"""

from __future__ import annotations

from itertools import chain
from pathlib import Path

from pyspark.sql import functions as F

from ..model.prompt import load_template
from ..model.sample_file import write_sample_file
from ..model.tiny import build_tiny_model
from ..model.train import train_model
from ..runtime import RunContext
from ..spark_session import spark_master


def run(ctx: RunContext, init_tiny: bool = False, distributed: bool = False) -> dict:
    config, stats = ctx.config, ctx.stats
    fingerprint = config.fingerprint("program", "chunking", "distill")
    template = load_template(config.model.prompt_version)
    output_dir = Path(config.train.output_dir).resolve()
    with stats.timer("collect"):
        kept = (ctx.read("distill_samples").where(F.col("kept") & (F.col("fingerprint") == fingerprint))
                .select("doc_id", "prompt", "program").orderBy("doc_id", "chunk_index"))
        samples = write_sample_file(output_dir.parent / f"{output_dir.name}-samples.parquet",
                                    ((r["doc_id"], r["prompt"], r["program"]) for r in kept.toLocalIterator()))
    if not len(samples):
        raise ValueError(f"no kept distill_samples under fingerprint {fingerprint}: run `distill` first")
    stats.counts["samples"] = len(samples)
    base = config.train.base
    if init_tiny:
        with stats.timer("init_tiny"):
            texts = chain([template], chain.from_iterable(samples))
            base = str(build_tiny_model(output_dir.parent / f"{output_dir.name}-tiny-base", texts,
                                        seed=config.train.seed))
    kwargs = dict(base=base, data_version=ctx.read_versions.get("distill_samples"), fingerprint=fingerprint,
                  prompt_version=config.model.prompt_version)
    with stats.timer("train"):
        if distributed:
            from pyspark.ml.torch.distributor import TorchDistributor

            local = spark_master(ctx.spark).startswith("local")
            result = TorchDistributor(num_processes=_processes(ctx, local), local_mode=local, use_gpu=not local).run(
                train_model, samples, config.train, template, str(output_dir), **kwargs)
        else:
            result = train_model(samples, config.train, template, output_dir, **kwargs)
    stats.info.update(output_dir=str(output_dir), base=base, metrics=result.metrics)
    return stats.as_dict()


def _processes(ctx: RunContext, local: bool) -> int:
    """`train.processes`, else one per GPU of the cluster (one process in local mode)."""
    if ctx.config.train.processes is not None:
        return ctx.config.train.processes
    if local:
        return 1
    conf = ctx.spark.conf
    return int(conf.get("spark.executor.instances", "1")) * int(conf.get("spark.executor.resource.gpu.amount", "1"))
