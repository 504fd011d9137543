"""expert generate: a seeded sample of `raw_docs` cleaned end to end by an LLM -> `expert_outputs`.

Driver: sample the documents (`refinex_spark.expert.sampling`: bottom-k on a seeded hash,
optionally a proportional quota per source), drop those that already have an `ok` output for the
same model, prompt version and raw text, cut the rest into slices of about
`expert.docs_per_commit` documents (one Delta commit each, so a crash loses one slice's answers,
not the run's), spread each slice over tasks of about `expert.docs_per_task` documents, and run
`_generate_partition` over them with mapInArrow. The driver reads the prompt file and ships its
text, the API key and the settings in the task.

Task: a thread pool of `expert.concurrency` sends each document (split into line-aligned pieces
when it would not fit `expert.context_tokens`) to the chat-completions endpoint, or, with
`backend: hf`, generates with a local transformers model through the worker's backend cache (one
document at a time: the hf expert is for small local runs; serve a large expert with vLLM).

Request budget: `expert.max_requests` bounds the requests of the run, retries included. Tasks
cannot share a counter, so the cap is dealt out: each task gets max_requests // tasks, and the
first max_requests % tasks (by their number in the run) one more. A task that runs out of budget
while another has some left sends fewer than the cap allows, never more (a task Spark re-runs after
a failure starts its share again). A document whose task ran out of budget gets an error row
(`budget_exhausted`) and is retried by the next run.

Every pending document leaves exactly one row in this run: `ok` with the cleaned text, or `error`
with the reason ("<kind>: detail", see `refinex_spark.expert.client`). Errors are tried again by
the next run; `distill` uses the newest `ok` row of a document.

Progress (`jobs.progress`): tasks add their counts to an accumulator when they finish, and a driver
thread prints them every `expert.progress_interval_s` seconds to stderr, in the format of
`format_progress`. The end-of-run summary in `ctx.stats` is computed from
the written rows, so it is exact even when Spark re-ran a task.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import pyarrow as pa
from pyspark import TaskContext
from pyspark.accumulators import Accumulator
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from ..chunking import approx_tokens
from ..config import ExpertConfig, ModelConfig
from ..expert import PLAIN_SUFFIX, load_instruction
from ..expert.client import ChatClient, Completion, ExpertFailure, RequestBudget, RetryPolicy, clean_pieces
from ..expert.sampling import KEY_HEX_DIGITS, allocate, piece_budget, sample_size, split_document
from ..model.prompt import build_prompt, user_message
from ..model.revision import model_revision
from ..runtime import RunContext
from .progress import progress
from .slices import slices

KEY_RANGE = 16**KEY_HEX_DIGITS
# The model list comes back in well under a second: a host that does not answer it in a minute is down,
# and should not hold the run for a generation's request_timeout_s.
_CHECK_TIMEOUT_S = 60.0
_OUT = T.StructType([
    T.StructField("doc_id", T.StringType(), False),
    T.StructField("raw_text_hash", T.StringType(), False),
    T.StructField("text", T.StringType(), True),
    T.StructField("status", T.StringType(), False),
    T.StructField("error", T.StringType(), True),
    T.StructField("latency_s", T.DoubleType(), True),
    T.StructField("tokens", T.LongType(), True),
    # Per-document request counts, summed into the run summary; not written to the table.
    T.StructField("_requests", T.LongType(), False),
    T.StructField("_retries", T.LongType(), False),
    T.StructField("_failures", T.LongType(), False),
])


def key_column(seed: int, doc_id: str = "doc_id"):
    """`sampling.sample_key(seed, doc_id)` as a Spark column (sha2 is over the UTF-8 bytes, as in Python)."""
    digest = F.sha2(F.concat(F.lit(f"{seed}:"), F.col(doc_id)), 256)
    return F.conv(F.substring(digest, 1, KEY_HEX_DIGITS), 16, 10).cast("long")


def _key_bound(quota: int, size: int) -> int:
    """A key below which a stratum's `quota` smallest keys lie but for a ~1e-23 chance.

    Keys are uniform, so the number of keys below bound b is Binomial(size, b / KEY_RANGE); taking
    its mean as quota + 10 sqrt(quota) + 10 puts the quota over 10 standard deviations below it.
    Only these few candidates are ranked, instead of sorting every document of the stratum.
    """
    share = (quota + 10 * math.sqrt(quota) + 10) / size
    return KEY_RANGE if share >= 1 else math.ceil(share * KEY_RANGE)


def sample_ids(raw: DataFrame, expert: ExpertConfig) -> tuple[DataFrame, dict[str, int]]:
    """(doc_id of the sampled documents, quota per stratum); see `refinex_spark.expert.sampling`."""
    stratum = F.col("source") if expert.stratify_by_source else F.lit("")
    keyed = raw.select("doc_id", stratum.alias("_stratum"), key_column(expert.seed).alias("_key"))
    sizes = {r["_stratum"]: r["count"] for r in keyed.groupBy("_stratum").count().collect()}
    total = sample_size(sum(sizes.values()), expert.sample_fraction, expert.sample_count)
    quotas = {s: q for s, q in allocate(sizes, total).items() if q}
    spark = raw.sparkSession

    def ranked(bound: Callable[[str], int]) -> DataFrame:
        limits = spark.createDataFrame([(s, q, bound(s)) for s, q in quotas.items()],
                                       "_stratum string, _quota long, _bound long")
        order = Window.partitionBy("_stratum").orderBy("_key", "doc_id")
        return (keyed.join(F.broadcast(limits), "_stratum").where(F.col("_key") < F.col("_bound"))
                .withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= F.col("_quota")))

    sample = ranked(lambda s: _key_bound(quotas[s], sizes[s]))
    got = {r["_stratum"]: r["count"] for r in sample.groupBy("_stratum").count().collect()} if quotas else {}
    if got != quotas:  # the bound was too tight (never expected); rank every document instead
        sample = ranked(lambda s: KEY_RANGE)
    return sample.select("doc_id"), quotas


@dataclass(frozen=True)
class _Task:
    """What every Spark task needs; built on the driver and shipped in the task closure."""

    expert: ExpertConfig
    instruction: str
    piece_tokens: int  # most tokens per piece, and the answer's max_tokens
    max_requests: int | None  # of the run, dealt out by task_budget
    n_tasks: int  # of the run
    first_task: int  # the run-wide number of this slice's first task
    api_key: str | None = field(repr=False)  # never in logs or error messages
    hf_model: ModelConfig | None  # set for the hf backend
    hf_revision: str | None = None  # of hf_model's directory: a model replaced in place is loaded again


def _piece_completer(task: _Task, budget: RequestBudget) -> Callable[[str], Completion]:
    """piece -> Completion, by the configured backend; counts each piece against the budget."""
    cfg = task.expert
    if task.hf_model is None:
        client = ChatClient(cfg.base_url or "", cfg.model, api_key=task.api_key, timeout_s=cfg.request_timeout_s,
                            retry=RetryPolicy(cfg.max_retries, cfg.backoff_base_s, cfg.backoff_max_s),
                            temperature=cfg.temperature, budget=budget)
        return lambda piece: client.complete(user_message(task.instruction, piece), task.piece_tokens)

    from ..model.cache import get_backend  # torch only where the hf expert runs

    def generate(piece: str) -> Completion:
        if not budget.take():
            return Completion.failed(f"budget_exhausted: request budget of {budget.limit} for this task used up")
        backend = get_backend(task.hf_model, task.hf_revision)
        before, started = backend.stats.output_tokens, time.perf_counter()
        [text] = backend.generate([build_prompt(backend.tokenizer, task.instruction, piece, PLAIN_SUFFIX)])
        tokens, latency = backend.stats.output_tokens - before, time.perf_counter() - started
        if tokens >= task.hf_model.max_new_tokens:  # no stop token within the limit: the answer was cut
            # Kept, the cut-off tail would read to distill as text the expert deleted (as openai's finish_reason=length).
            return Completion.failed(f"truncated: the answer hit max_new_tokens={task.hf_model.max_new_tokens}",
                                     latency_s=latency, tokens=tokens, requests=1)
        return Completion(text, latency_s=latency, tokens=tokens, requests=1)

    return generate


def task_budget(max_requests: int | None, n_tasks: int, number: int) -> int | None:
    """Task `number`'s share of the run's max_requests (None: no cap): the shares add up to it exactly."""
    if max_requests is None:
        return None
    return max_requests // n_tasks + (number < max_requests % n_tasks)


def _generate_partition(task: _Task, progress: Accumulator | None):
    """The task body: one request budget and one thread pool per task (not per Arrow batch)."""
    cfg = task.expert
    schema = to_arrow_schema(_OUT)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        number = task.first_task + TaskContext.get().partitionId()
        complete = _piece_completer(task, RequestBudget(task_budget(task.max_requests, task.n_tasks, number)))

        def clean(text: str) -> Completion:
            try:
                return clean_pieces(split_document(text, task.piece_tokens, cfg.chars_per_token), complete)
            except Exception as e:  # noqa: BLE001 - one document's failure is its error row, not the task's
                return Completion.failed(f"internal: {type(e).__name__}: {e}")

        workers = cfg.concurrency if task.hf_model is None else 1  # one local model: no parallel generate
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for batch in batches:
                docs = batch.to_pylist()
                results = list(pool.map(clean, [d["text"] for d in docs]))
                if progress is not None:
                    progress.add(_progress_counts(results))
                yield pa.RecordBatch.from_pylist([
                    {"doc_id": d["doc_id"], "raw_text_hash": d["text_hash"], "text": r.text,
                     "status": "ok" if r.ok else "error", "error": r.error, "latency_s": r.latency_s,
                     "tokens": r.tokens, "_requests": r.requests, "_retries": r.retries, "_failures": r.failures}
                    for d, r in zip(docs, results)], schema=schema)

    return run


def _progress_counts(results: list[Completion]) -> Counter:
    ok = sum(r.ok for r in results)
    return Counter(docs=len(results), ok=ok, error=len(results) - ok, requests=sum(r.requests for r in results),
                   retries=sum(r.retries for r in results), failures=sum(r.failures for r in results),
                   tokens=sum(r.tokens or 0 for r in results))


def format_progress(counts: dict[str, int], total_docs: int, elapsed_s: float) -> str:
    """One progress line, e.g.
    `expert: 42s docs 128/500 (ok 120, error 8) requests 150 (failed 30, retried 22) 812.4 tokens/s`."""
    c = Counter(counts)
    rate = c["tokens"] / elapsed_s if elapsed_s > 0 else 0.0
    return (f"expert: {elapsed_s:.0f}s docs {c['docs']}/{total_docs} (ok {c['ok']}, error {c['error']}) "
            f"requests {c['requests']} (failed {c['failures']}, retried {c['retries']}) {rate:.1f} tokens/s")


def settings(config: ExpertConfig, *, fraction: float | None = None, count: int | None = None,
             seed: int | None = None, stratify: bool | None = None, backend: str | None = None) -> ExpertConfig:
    """The expert section with command-line choices applied; a given sample size replaces the configured one."""
    update: dict[str, Any] = {k: v for k, v in (("seed", seed), ("stratify_by_source", stratify),
                                                ("backend", backend)) if v is not None}
    if fraction is not None or count is not None:
        update.update(sample_fraction=fraction, sample_count=count)
    cfg = ExpertConfig.model_validate({**config.model_dump(), **update})
    if cfg.sample_fraction is None and cfg.sample_count is None:
        raise ValueError("choose the sample: --fraction or --count (or expert.sample_fraction / expert.sample_count)")
    if cfg.backend == "openai" and not cfg.base_url:
        raise ValueError("expert.base_url is not set (the chat-completions server, e.g. http://host:8000/v1)")
    return cfg


def run(ctx: RunContext, *, fraction: float | None = None, count: int | None = None, seed: int | None = None,
        stratify: bool | None = None, backend: str | None = None, progress_stream: TextIO | None = None) -> dict:
    stats = ctx.stats
    cfg = settings(ctx.config.expert, fraction=fraction, count=count, seed=seed, stratify=stratify, backend=backend)
    instruction = load_instruction(cfg.prompt_version)
    piece_tokens = piece_budget(cfg.context_tokens, approx_tokens(instruction, cfg.chars_per_token))
    stats.info.update(model=cfg.model, prompt_version=cfg.prompt_version, backend=cfg.backend, seed=cfg.seed,
                      sample_fraction=cfg.sample_fraction, sample_count=cfg.sample_count,
                      stratified=cfg.stratify_by_source, piece_tokens=piece_tokens)

    with stats.timer("sample"):
        if ctx.read("raw_docs").isEmpty():  # a wrong lake.path, or nothing ingested yet: not "0 sampled"
            raise ValueError(f"raw_docs at {ctx.lake.location('raw_docs')} has no documents to sample: "
                             "run ingest first, or set lake.path to your lake")
        ids, quotas = sample_ids(ctx.read("raw_docs").select("doc_id", "source"), cfg)
        done = (ctx.read("expert_outputs")
                .where((F.col("status") == "ok") & (F.col("expert_model") == cfg.model)
                       & (F.col("prompt_version") == cfg.prompt_version))
                .select("doc_id", F.col("raw_text_hash").alias("text_hash")).distinct())
        # Kept (memory and disk) for the slices: the sample is computed and raw_docs scanned once.
        pending = (ids.join(ctx.read("raw_docs").select("doc_id", "text", "text_hash"), "doc_id")
                   .join(done, ["doc_id", "text_hash"], "left_anti").persist())
        n_pending = pending.count()
    try:
        return _generate(ctx, cfg, pending, n_pending, quotas, instruction, piece_tokens, progress_stream)
    finally:
        pending.unpersist()


def check_endpoint(cfg: ExpertConfig, api_key: str | None) -> None:
    """Before anything is sent: an endpoint that is down, refuses the key, or does not serve expert.model
    fails the run at once (a ValueError, one line), instead of an error row for every sampled document.
    Asked once, for its model list; a server without one (404) is left to the documents' own requests."""
    client = ChatClient(cfg.base_url or "", cfg.model, api_key=api_key)
    try:
        served = client.served_models(timeout_s=min(cfg.request_timeout_s, _CHECK_TIMEOUT_S))
    except ExpertFailure as e:
        if e.kind in ("connection", "timeout", "http_401", "http_403"):
            raise ValueError(f"the expert endpoint {cfg.base_url} is not usable, nothing was sent: {e}") from None
        return
    if served and cfg.model not in served:
        raise ValueError(f"expert.model {cfg.model!r} is not served at {cfg.base_url} (it serves: "
                         f"{', '.join(served[:10])}{', ...' if len(served) > 10 else ''})")


def _generate(ctx: RunContext, cfg: ExpertConfig, pending: DataFrame, n_pending: int, quotas: dict[str, int],
              instruction: str, piece_tokens: int, progress_stream: TextIO | None) -> dict:
    """Generate and commit the pending documents slice by slice."""
    stats = ctx.stats
    stats.counts["sampled"] = sum(quotas.values())
    stats.counts["already_done"] = stats.counts["sampled"] - n_pending
    stats.counts["pending"] = n_pending
    if cfg.stratify_by_source:
        stats.info["quotas"] = dict(sorted(quotas.items()))
    if n_pending == 0:
        return stats.as_dict()

    parts = slices(pending, n_pending, cfg.docs_per_commit)
    slice_tasks = math.ceil(math.ceil(n_pending / len(parts)) / cfg.docs_per_task)
    n_tasks = slice_tasks * len(parts)
    stats.info.update(slices=len(parts), tasks=n_tasks, requests_per_task=task_budget(cfg.max_requests, n_tasks, 0))
    hf_model = None
    if cfg.backend == "hf":
        hf_model = ModelConfig(path=cfg.model, backend="hf", device=ctx.config.model.device,
                               dtype=ctx.config.model.dtype, max_new_tokens=piece_tokens, batch_size=1)
    api_key = os.environ.get(cfg.api_key_env) or None
    if hf_model is None:
        check_endpoint(cfg, api_key)
    task = _Task(cfg, instruction, piece_tokens, cfg.max_requests, n_tasks, 0, api_key, hf_model,
                 model_revision(cfg.model) if hf_model else None)

    line = lambda counts, seconds: format_progress(counts, n_pending, seconds)  # noqa: E731
    with progress(ctx.spark, line, cfg.progress_interval_s, progress_stream) as accumulator:
        for i, part in enumerate(parts):  # one commit per slice: a crash loses the answers of one slice at most
            ctx.check_not_overtaken("expert_outputs")  # before paying for answers whose commit would be refused
            slice_task = replace(task, first_task=i * slice_tasks)
            results = (part.repartition(slice_tasks, "doc_id")
                       .mapInArrow(_generate_partition(slice_task, accumulator), _OUT).persist())
            try:
                with stats.timer("generate"):
                    results.count()
                _summarise(results, stats)
                rows = results.select("doc_id", F.lit(cfg.model).alias("expert_model"),
                                      F.lit(cfg.prompt_version).alias("prompt_version"), "text", "status", "error",
                                      "latency_s", "tokens", "raw_text_hash", F.lit(ctx.run_id).alias("run_id"),
                                      F.current_timestamp().alias("created_at"))
                with stats.timer("write"):
                    ctx.append("expert_outputs", rows, fingerprint=ctx.config.fingerprint("expert"))
            finally:
                results.unpersist()
    return stats.as_dict()


def _summarise(results: DataFrame, stats) -> None:
    kind = F.when(F.col("status") == "error", F.substring_index("error", ":", 1))
    groups = results.groupBy("status", kind.alias("kind")).agg(
        F.count("*").alias("docs"), F.sum("_requests").alias("requests"), F.sum("_retries").alias("retries"),
        F.sum("_failures").alias("failures"), F.sum("tokens").alias("tokens")).collect()
    for g in groups:
        stats.counts[f"docs.{g['status']}"] += g["docs"]
        if g["kind"] is not None:
            stats.counts[f"error.{g['kind']}"] += g["docs"]
        for column, key in (("requests", "requests"), ("failures", "requests.failed"),
                            ("retries", "requests.retried"), ("tokens", "tokens")):
            stats.counts[key] += g[column] or 0
    seconds = stats.timings.get("generate", 0.0)
    stats.info["tokens_per_s"] = round(stats.counts["tokens"] / seconds, 1) if seconds else None
