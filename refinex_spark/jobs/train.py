"""train: kept `distill_samples` -> a Hugging Face model directory with a model card.

The samples of the current distill fingerprint are streamed from Spark into a Parquet file in the
output directory (`SAMPLES_FILE`, removed once the model is written) and `model.train.train_model`
reads them from there, in-process or, with `--distributed`, in every TorchDistributor process on
the cluster's GPUs (which see the output directory too). `--init-tiny` first builds a tiny
Qwen3-architecture base model with a locally trained tokenizer (no hub), for CI and the demo.

A run is identified by its base, data version, fingerprint, prompt and hyperparameters: one that
finished is not trained again, one that was cut short resumes, and an unfinished run of other
settings is refused before any sample is collected (`--fresh` discards it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import chain
from pathlib import Path

from ..config import TrainConfig
from ..lake import is_local
from ..model.prompt import load_template
from ..model.revision import hub_pin
from ..model.sample_file import write_sample_file
from ..model.tiny import build_tiny_model
from ..model.train import finish_checkpoints, prior_run, read_model_card, run_identity, train_model
from ..runtime import RunContext
from ..spark_session import spark_master
from .distill import kept_current, no_kept_samples

SAMPLES_FILE = "train-samples.parquet"


def run(ctx: RunContext, init_tiny: bool = False, distributed: bool = False, fresh: bool = False) -> dict:
    config, stats = ctx.config, ctx.stats
    fingerprint = config.fingerprint("program", "chunking", "distill")
    template = load_template(config.model.prompt_version)
    master = spark_master(ctx.spark)
    out = output_dir(config.train.output_dir, master)
    n_processes = processes(config.train, master, ctx.spark.conf.get) if distributed else 1
    if init_tiny and config.train.base_revision is not None:
        raise ValueError("--init-tiny builds its own base, which has no hub revision: unset train.base_revision")
    tiny_base = out.parent / f"{out.name}-tiny-base"
    table = ctx.read("distill_samples")  # pins the data version the run is identified by
    who = dict(base=str(tiny_base) if init_tiny else config.train.base,
               # A hub base is pinned to one commit for every training process (and the model card).
               base_revision=None if init_tiny else hub_pin(config.train.base, config.train.base_revision,
                                                            ("train.base", "train.base_revision")),
               data_version=samples_version(ctx, fingerprint), fingerprint=fingerprint,
               prompt_version=config.model.prompt_version)
    stats.info.update(output_dir=str(out), base=who["base"], base_revision=who["base_revision"])
    # Before the samples are collected: a finished run is not redone, an unfinished other one is refused.
    identity = run_identity(config.train, template=template, world_size=n_processes, **who)
    state = prior_run(out, identity, resume=not fresh)
    if state == "trained":
        finish_checkpoints(out, identity)  # what a crash after marking it done left
        stats.info.update(already_trained=True, metrics=read_model_card(out)["refinex"]["metrics"])
        return stats.as_dict()
    with stats.timer("collect"):
        kept = kept_current(table, fingerprint).select("doc_id", "prompt", "program").orderBy("doc_id", "chunk_index")
        samples = write_sample_file(out / SAMPLES_FILE,
                                    ((r["doc_id"], r["prompt"], r["program"]) for r in kept.toLocalIterator()))
    try:  # the file is a copy of distill_samples: a rerun writes it again
        stats.counts["samples"] = len(samples)  # read from the file's footer: once
        if not stats.counts["samples"]:
            raise no_kept_samples(table, fingerprint)
        if init_tiny:
            with stats.timer("init_tiny"):
                build_tiny_model(tiny_base, chain([template], chain.from_iterable(samples)), seed=config.train.seed)
        kwargs = dict(who, state=state, max_new_tokens=config.model.max_new_tokens)
        with stats.timer("train"):
            if distributed:
                from pyspark.ml.torch.distributor import TorchDistributor

                local = master.startswith("local")
                result = TorchDistributor(num_processes=n_processes, local_mode=local, use_gpu=not local).run(
                    train_model, samples, config.train, template, str(out), **kwargs)
            else:
                result = train_model(samples, config.train, template, out, **kwargs)
    finally:
        os.remove(samples.path)
    stats.info.update(metrics=result.metrics)
    return stats.as_dict()


def samples_version(ctx: RunContext, fingerprint: str) -> int | None:
    """The `distill_samples` version at which the fingerprint's samples last changed, at or before the
    one this run read: what the model is trained on, whatever else the table took since (other
    fingerprints' samples, empty commits, a column added), so none of that makes a finished run new."""
    pinned = ctx.read_versions["distill_samples"]
    for commit in ctx.lake.history("distill_samples"):  # newest first
        metadata = commit["user_metadata"]
        if (pinned is not None and commit["version"] <= pinned and isinstance(metadata, dict)
                and metadata.get("fingerprint") == fingerprint and (commit["rows_added"] or 0) > 0):
            return commit["version"]
    return pinned  # a log cleaned up past it: the version read


def processes(train: TrainConfig, master: str, conf: Callable[[str, str], str]) -> int:
    """`train.processes`, else one per GPU of the cluster (one process in local mode); `conf(key,
    default)` reads the Spark configuration."""
    if master.startswith("local"):
        return train.processes or 1
    if not conf("spark.task.resource.gpu.amount", ""):
        # TorchDistributor runs each process as a task holding one GPU; conf/yarn.yaml leaves this unset
        # so that the CPU stages run a task per core.
        raise ValueError("train --distributed needs spark.task.resource.gpu.amount=1: pass "
                         "--conf spark.task.resource.gpu.amount=1 to this spark-submit")
    if train.processes is not None:
        return train.processes
    if conf("spark.dynamicAllocation.enabled", "false").lower() == "true" or not conf("spark.executor.instances", ""):
        # Executors come and go, or their number is the cluster manager's: not a count of GPUs.
        raise ValueError("train --distributed: set train.processes to the number of GPUs to train on "
                         "(e.g. --set train.processes=8); spark.executor.instances does not say it here")
    return int(conf("spark.executor.instances", "")) * int(conf("spark.executor.resource.gpu.amount", "1"))


def output_dir(path: str, master: str) -> Path:
    """train.output_dir as an absolute local path: transformers and the training processes write it
    through the file system, so a URI is refused (a mount such as /dbfs/... or /Volumes/... works),
    as is a relative path off a local master (the driver's working directory, maybe a container's,
    is gone with it, and the executors cannot see it)."""
    if not is_local(path):
        raise ValueError(f"train.output_dir {path!r} is a URI; the model is written through the file system: "
                         "use a local path, or a mount every node shares (e.g. /dbfs/..., /Volumes/...)")
    local = Path(path).expanduser()
    if not local.is_absolute() and not master.startswith("local"):
        raise ValueError(f"train.output_dir {path!r} is relative, but Spark master {master!r} is a cluster: "
                         "use an absolute path on a mount every node shares (e.g. /dbfs/..., /Volumes/...)")
    return local.resolve()
