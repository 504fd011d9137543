"""refine: new `raw_docs` -> `refined_docs`, the refine model inside `mapInArrow`.

Incremental: a document is pending when `refined_docs` has no row for its doc_id and text
hash under this model and fingerprint. Each Python worker loads the model once
(`model.cache`), takes its GPU from the task's resources, and generates every chunk of an
Arrow batch in length-sorted micro-batches. On a cluster the stage asks for GPUs with a
stage-level ResourceProfile (local mode has none). Per-document failures are `error` rows;
a failing backend fails the task, so Spark retries it and a rerun picks up what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from contextlib import nullcontext

import yaml
from pyspark import TaskContext
from pyspark.accumulators import Accumulator
from pyspark.sql import functions as F

from ..config import Config, ModelConfig
from ..lake import CommitInfo
from ..model import cache
from ..model.prompt import load_template, template_digest
from ..model.revision import HUB_ID, hub_pin, model_revision
from ..refine import STATUSES, BatchStats, refine_batch
from ..runtime import RunContext
from ..schemas import TABLES
from ..spark_session import spark_master
from .batches import RowsFn, map_rows
from .progress import progress
from .slices import file_slices, with_source_file

_COMPUTED = ["doc_id", "text_hash", "refined_text", "program", "op_outcomes", "status", "error",
             "deleted_fraction", "n_chunks", "n_fallback_chunks"]


def check_model(config: Config) -> None:
    """Refuse, on the driver, a model setting every task would fail on (after Spark's retries, in a traceback)."""
    m = config.model
    if m.backend == "openai":
        if not m.base_url:
            raise ValueError("model.backend openai needs model.base_url (the served model's http(s)://.../v1)")
        if m.revision is not None:  # the server loaded its weights: nothing here could pin them
            raise ValueError("model.revision pins the weights the hf and vllm backends load; a served (openai) "
                             "model's are the server's: unset model.revision, or name the revision in served_model")
        return
    if os.path.isdir(m.path):
        if not os.path.isfile(os.path.join(m.path, "config.json")):
            raise ValueError(f"model.path {m.path} holds no model (no config.json): run `refinex-spark train` "
                             "first, or point model.path at a model directory")
        _check_trained_prompt(m.path, m.prompt_version)
    elif not HUB_ID.fullmatch(m.path):
        raise ValueError(f"model.path {m.path!r} is no directory and no hub id (org/name): run `refinex-spark "
                         "train` first, or point model.path at a model directory")
    elif _holds_models(org := m.path.split("/")[0]):  # models/refine next to ./models/other: a mistyped path
        raise ValueError(f"model.path {m.path!r} is no directory, and ./{org}/ here holds models, so it is no "
                         "hub id either: run `refinex-spark train` first, or fix the path")


def _check_trained_prompt(model_dir: str, prompt_version: str) -> None:
    """Refuse a prompt other than the one the model card says the model was trained on: its programs
    would be of a prompt it never saw. A model without a refinex card (ProX's, a hub model) passes."""
    from ..model.train import CARD, read_model_card

    if not os.path.isfile(os.path.join(model_dir, CARD)):
        return
    try:
        trained = read_model_card(model_dir).get("refinex") or {}
    except (ValueError, AttributeError, yaml.YAMLError):
        return  # a README that is no model card of ours
    if "prompt_version" not in trained:
        return
    digest = template_digest(load_template(prompt_version))
    if (trained["prompt_version"], trained.get("template_digest", digest)) != (prompt_version, digest):
        raise ValueError(
            f"model.path {model_dir} was trained on prompt {trained['prompt_version']} (template "
            f"{trained.get('template_digest')}), but refine would prompt it with {prompt_version} (template "
            f"{digest}): set model.prompt_version to {trained['prompt_version']} with its template file as it "
            "was, or train the model on this prompt")


def _holds_models(directory: str) -> bool:
    """Whether `directory` is a local folder with a model directory in it (a config.json one level down)."""
    return os.path.isdir(directory) and any(
        os.path.isfile(os.path.join(directory, name, "config.json")) for name in os.listdir(directory))


def model_id(config: Config) -> str:
    """What the rows name as their model: a served model's name, else the resolved local path or hub id."""
    m = config.model
    if m.backend == "openai":
        return m.served_model or m.path
    return os.path.abspath(m.path) if os.path.exists(m.path) else m.path


def weights_revision(m: ModelConfig) -> str | None:
    """What names the model's weights: a local directory's digest, a hub model's commit (which the
    workers are then told to load), nothing for a served model (the server holds the weights)."""
    if m.backend == "openai":
        return None
    return hub_pin(m.path, m.revision, ("model.path", "model.revision")) or model_revision(m.path)


def fingerprint(config: Config, revision: str | None) -> str:
    """Settings that change a refined row: program + chunking + generation (`revision`: the model's,
    weights_revision); not batch size or device."""
    m = config.model
    generation = {"model": model_id(config), "revision": revision, "backend": m.backend,
                  "max_new_tokens": m.max_new_tokens, "prompt_version": m.prompt_version}
    blob = config.fingerprint("program", "chunking") + json.dumps(generation, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _bind_gpu(backend: str) -> None:
    """Use the GPU Spark assigned to this task (cluster mode with GPU scheduling)."""
    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        import torch

        if backend != "vllm":
            torch.cuda.set_device(int(gpus.addresses[0]))
        elif not torch.cuda.is_initialized():
            # vLLM's engine is a process of its own, on the first device it can see: it is shown this
            # one only (before this worker's first engine starts; the cached engine keeps its GPU).
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus.addresses[0]


def format_progress(counts: dict[str, int], total_docs: int, elapsed_s: float) -> str:
    """One progress line, e.g. `refine: 42s docs 1200/5000 (ok 1000, kept 150, fallback 40, error 10) 0.52 MB/s`."""
    c = Counter(counts)
    shown = (*STATUSES, "dropped") if c["dropped"] else STATUSES  # ProX drop_doc(): only when it happened
    statuses = ", ".join(f"{s} {c[s]}" for s in shown)
    rate = c["input_chars"] / elapsed_s / 1e6 if elapsed_s > 0 else 0.0
    return f"refine: {elapsed_s:.0f}s docs {c['docs']}/{total_docs} ({statuses}) {rate:.2f} MB/s"


def _refine_rows(config: Config, template: str, revision: str | None, progress: Accumulator | None) -> RowsFn:
    def run(docs: list[dict]) -> list[dict]:
        _bind_gpu(config.model.backend)
        backend = cache.get_backend(config.model, revision)  # loaded once per Python worker and revision
        stats = BatchStats()
        rows = refine_batch([(d["doc_id"], d["text"], d["text_hash"]) for d in docs], backend, template, config, stats)
        if progress is not None:
            progress.add(Counter(docs=stats.docs, input_chars=stats.input_chars, **stats.statuses))
        ctx = TaskContext.get()
        rate = stats.input_chars / stats.seconds / 1e6 if stats.seconds else 0.0
        print(f"[refine] partition {ctx.partitionId() if ctx else -1}: {stats.docs} docs, {stats.chunks} chunks "
              f"in {stats.seconds:.1f}s ({rate:.3f} MB/s), statuses {stats.statuses}", file=sys.stderr, flush=True)
        return rows

    return run


def _gpu_profile(spark):
    """A stage-level ResourceProfile asking one GPU per task; None where it cannot apply (local mode)."""
    if spark_master(spark).startswith("local"):
        return None
    if not spark.conf.get("spark.executor.resource.gpu.amount", None):
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(1).resource("gpu", 1.0)).build


def pending(ctx: RunContext, model: str, fp: str):
    """Documents with no row under this model and fingerprint, with the raw_docs file they are in."""
    done = (ctx.read("refined_docs").where((F.col("model_id") == model) & (F.col("fingerprint") == fp))
            .select("doc_id", "text_hash"))
    raw = with_source_file(ctx.read("raw_docs").select("doc_id", "text", "text_hash"))
    return raw.join(done, ["doc_id", "text_hash"], "left_anti")


def run(ctx: RunContext, retry_errors: bool = False) -> dict:
    """Refine what is pending, committing every `refine.docs_per_commit` documents; `retry_errors`:
    first delete this model and fingerprint's `error` rows (one commit), so their documents are pending
    again (a crash after it only leaves them pending).

    Slices are disjoint groups of raw_docs files (`file_slices`), each is one Delta commit, so a
    crash loses at most the slice in flight and a rerun continues from what the committed slices
    left pending. Each slice reads only its files: the run reads raw_docs' texts once.
    """
    config, stats = ctx.config, ctx.stats
    check_model(config)
    model = model_id(config)
    revision = weights_revision(config.model)
    fp = fingerprint(config, revision)
    # Executors get an absolute model path (or the hub commit to load) and the template text; they
    # never read conf/.
    pinned = {"path": model} if os.path.isdir(config.model.path) else {"path": model, "revision": revision}
    shipped = config.model_copy(update={"model": config.model.model_copy(update=pinned)})
    template = load_template(config.model.prompt_version)
    out_schema = TABLES["refined_docs"].spark_schema(_COMPUTED)
    if retry_errors:  # before pending() pins refined_docs' version
        stats.counts["errors_retried"] = ctx.lake.delete(
            "refined_docs", {"model_id": model, "fingerprint": fp, "status": "error"}, stage=ctx.stage,
            run_id=ctx.run_id, fingerprint=fp)
    docs = pending(ctx, model, fp)
    with stats.timer("plan"):
        n_pending, parts = file_slices(docs, config.refine.docs_per_commit)
    stats.counts["pending"] = n_pending
    stats.counts["docs"] = 0  # this run's documents as committed (a row each), updated after each slice
    line = lambda counts, seconds: format_progress(counts, n_pending, seconds)  # noqa: E731
    last = None
    with progress(ctx.spark, line, config.refine.progress_interval_s) if parts else nullcontext() as accumulator:
        refine_rows = _refine_rows(shipped, template, revision, accumulator)
        for i, part in enumerate(parts):
            ctx.check_not_overtaken("refined_docs")  # before a slice of GPU work whose commit would be refused
            info = _refine_slice(ctx, part, refine_rows, out_schema, model, fp)
            if info.version is not None:
                stats.counts["docs"] += info.rows
                last = info.version
            print(f"[refine] slice {i + 1}/{len(parts)} committed: {stats.counts['docs']}/{n_pending} docs",
                  file=sys.stderr, flush=True)
    if last is not None:  # statuses read back once, from this run's committed rows (not once per slice)
        written = ctx.lake.read("refined_docs", version=last).where(F.col("run_id") == ctx.run_id)
        for r in written.groupBy("status").count().collect():
            stats.counts[f"status.{r['status']}"] = r["count"]
    seconds = stats.timings.get("refine_and_write", 0.0)
    stats.info.update(model_id=model, fingerprint=fp, slices=len(parts),
                      docs_per_s=round(stats.counts["docs"] / seconds, 2) if seconds else None)
    return stats.as_dict()


def _refine_slice(ctx: RunContext, part, refine_rows: RowsFn, out_schema, model: str, fp: str) -> CommitInfo:
    """One slice refined and committed."""
    config, stats = ctx.config, ctx.stats
    rows = (map_rows(part, refine_rows, out_schema, profile=_gpu_profile(ctx.spark))
            .withColumn("model_id", F.lit(model))
            .withColumn("prompt_version", F.lit(config.model.prompt_version))
            .withColumn("fingerprint", F.lit(fp))
            .withColumn("run_id", F.lit(ctx.run_id))
            .withColumn("created_at", F.current_timestamp()))
    with stats.timer("refine_and_write"):  # the model runs as the rows are written
        return ctx.append("refined_docs", rows, fingerprint=fp)
