"""expert generate: sampling and splitting (pure), then the Spark stage against a loopback fake
expert (tests/expert_server.py): nothing lost, retries bounded, Retry-After honoured, resumable,
budgeted, long documents split and re-joined, distill consuming the outputs; and the hf backend."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from expert_server import FakeExpert, default_clean
from refinex_spark.chunking import approx_tokens, normalize_newlines
from refinex_spark.cli import build_parser
from refinex_spark.config import Config, ExpertConfig, LakeConfig, ModelConfig
from refinex_spark.expert import load_instruction
from refinex_spark.expert.sampling import (
    allocate,
    piece_budget,
    sample_key,
    sample_size,
    split_document,
)
from refinex_spark.jobs import distill, expert_generate
from refinex_spark.jobs.expert_generate import KEY_RANGE, format_progress, key_column, sample_ids
from refinex_spark.lake import Lake
from refinex_spark.runtime import RunContext, StageStats, new_run_id
from refinex_spark.synth import generate_corpus

INSTRUCTION = load_instruction("expert-v1")
MODEL = "fake-expert"
KEY_ENV = "REFINEX_TEST_EXPERT_KEY"
MAX_RETRIES = 2
FAULT_MODES = ("paraphrase", "rate_limit", "flaky", "error500", "outage", "slow", "malformed", "empty_choices",
               "no_content", "truncated", "bad_request")
# mode -> (status in the first run, error kind); outage recovers before the second run.
EXPECTED = {"paraphrase": ("ok", None), "rate_limit": ("ok", None), "flaky": ("ok", None),
            "error500": ("error", "http_500"), "outage": ("error", "http_503"), "slow": ("error", "timeout"),
            "malformed": ("error", "bad_reply"), "empty_choices": ("error", "bad_reply"),
            "no_content": ("error", "bad_reply"), "truncated": ("error", "truncated"),
            "bad_request": ("error", "http_400")}


# --------------------------------------------------------------------------- pure: sampling, splitting

@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=3), st.integers(0, 1000), max_size=8), st.data())
def test_allocate_is_proportional_and_exact(sizes, data):
    population = sum(sizes.values())
    total = data.draw(st.integers(0, population))
    quotas = allocate(sizes, total)
    assert sum(quotas.values()) == total and quotas.keys() == sizes.keys()
    for name, size in sizes.items():
        assert 0 <= quotas[name] <= size
        # Webster's method stays within a place or so of the exact share (it may exceed one, rarely)
        assert population == 0 or abs(quotas[name] - total * size / population) < 2


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 30), max_size=6))
def test_allocate_takes_places_in_one_order_so_samples_nest(sizes):
    """Quotas are the first `total` places in the order of (2k + 1) / 2n, so a larger total never
    takes a place away (largest remainders did: sizes 3, 3, 1 gave c one place of 3 and none of 4)."""
    from fractions import Fraction

    places = sorted((Fraction(2 * k + 1, 2 * n), name) for name, n in sizes.items() for k in range(n))
    before = dict.fromkeys(sizes, 0)
    for total in range(sum(sizes.values()) + 1):
        expected = dict.fromkeys(sizes, 0)
        for _, name in places[:total]:
            expected[name] += 1
        quotas = allocate(sizes, total)
        assert quotas == expected and all(quotas[k] >= before[k] for k in sizes)
        before = quotas
    assert allocate({"a": 3, "b": 3, "c": 1}, 3)["c"] <= allocate({"a": 3, "b": 3, "c": 1}, 4)["c"]


def test_allocate_rejects_impossible_totals():
    with pytest.raises(ValueError):
        allocate({"a": 2}, 3)


def test_sample_size():
    assert sample_size(1000, fraction=0.1) == 100
    assert sample_size(5, fraction=0.5) == 3  # half up
    assert sample_size(10, count=25) == 10
    for kwargs in ({}, {"fraction": 0.1, "count": 3}, {"fraction": 0.0}, {"fraction": 1.5}):
        with pytest.raises(ValueError):
            sample_size(10, **kwargs)


def _cost(piece: str, cpt: float) -> int:
    lines = piece.split("\n")
    return sum(approx_tokens(line, cpt) for line in lines) + len(lines) - 1


_text = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\n\r"), max_size=60), min_size=1,
                 max_size=40).map("\n".join) | st.text(max_size=300)


@settings(max_examples=200, deadline=None)
@given(_text, st.integers(1, 80), st.sampled_from([1.0, 3.0, 4.0]))
def test_split_document_is_line_aligned_and_within_budget(text, budget, cpt):
    pieces = split_document(text, budget, cpt)
    assert "\n".join(pieces) == normalize_newlines(text)
    for piece in pieces:
        assert _cost(piece, cpt) <= budget or "\n" not in piece  # only a single over-long line exceeds it
    for piece, nxt in zip(pieces, pieces[1:]):  # greedy: the next line did not fit
        assert _cost(piece, cpt) + 1 + approx_tokens(nxt.split("\n")[0], cpt) > budget


def test_piece_budget_leaves_room_for_the_answer():
    assert piece_budget(32_768, 500) == (32_768 - 500 - 32) // 2
    with pytest.raises(ValueError, match="raise expert.context_tokens"):
        piece_budget(600, 550)


def test_sample_key_is_seeded_and_in_range():
    assert sample_key(0, "doc") == sample_key(0, "doc") != sample_key(1, "doc")
    assert all(0 <= sample_key(s, f"d{i}") < KEY_RANGE for s in range(3) for i in range(50))


def test_load_instruction():
    assert INSTRUCTION.endswith('=== DOCUMENT ===')  # the document follows the delimiter line
    assert "Copy every other character exactly, in the same order" in INSTRUCTION
    for bad in ("refine-v1", "expert-v999", "../expert-v1"):
        with pytest.raises(ValueError):
            load_instruction(bad)


def test_format_progress():
    line = format_progress({"docs": 128, "ok": 120, "error": 8, "requests": 150, "failures": 30, "retries": 22,
                            "tokens": 8124}, 500, 10.0)
    assert line == ("expert: 10s docs 128/500 (ok 120, error 8) requests 150 (failed 30, retried 22) "
                    "812.4 tokens/s")


def test_settings_apply_command_line_choices():
    base = ExpertConfig(base_url="http://x/v1", sample_count=10)
    assert expert_generate.settings(base, fraction=0.2).sample_count is None
    assert expert_generate.settings(base, seed=5, stratify=True).model_dump() == {
        **base.model_dump(), "seed": 5, "stratify_by_source": True}
    with pytest.raises(ValueError, match="choose the sample"):
        expert_generate.settings(ExpertConfig(base_url="http://x/v1"))
    with pytest.raises(ValueError, match="base_url"):
        expert_generate.settings(ExpertConfig(sample_count=3))
    with pytest.raises(ValueError):
        ExpertConfig(sample_count=3, sample_fraction=0.5)


def test_cli_parses_expert_generate():
    args = build_parser().parse_args(["expert", "generate", "--count", "5", "--seed", "3", "--stratify",
                                      "--backend", "hf"])
    assert (args.stage, args.count, args.fraction, args.seed, args.stratify, args.backend) == (
        "expert", 5, None, 3, True, "hf")
    assert args.fn.__name__ == "_expert_generate"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["expert", "generate", "--count", "5", "--fraction", "0.1"])


# --------------------------------------------------------------------------- Spark: sampling

@pytest.fixture(scope="module")
def population(spark):
    sizes = {"a.example": 150, "b.example": 100, "c.example": 50}
    rows = [(f"{src[0]}-{i}-é", src) for src, n in sizes.items() for i in range(n)]
    return spark.createDataFrame(rows, "doc_id string, source string"), sizes


def _ids(df) -> set[str]:
    return {r["doc_id"] for r in df.collect()}


@pytest.mark.spark
def test_key_column_matches_the_reference(population):
    df, _ = population
    got = {r["doc_id"]: r["k"] for r in df.select("doc_id", key_column(7).alias("k")).collect()}
    assert got == {d: sample_key(7, d) for d in got}


@pytest.mark.spark
def test_sampling_is_seeded_and_nested(population):
    df, _ = population
    cfg = ExpertConfig(sample_count=30, seed=1)
    first, quotas = sample_ids(df, cfg)
    assert quotas == {"": 30}
    assert _ids(first) == _ids(sample_ids(df, cfg)[0]) and len(_ids(first)) == 30
    assert _ids(first) != _ids(sample_ids(df, cfg.model_copy(update={"seed": 2}))[0])
    assert _ids(first) < _ids(sample_ids(df, cfg.model_copy(update={"sample_count": 45}))[0])
    assert len(_ids(sample_ids(df, ExpertConfig(sample_fraction=0.1, seed=1))[0])) == 30
    # bottom-k: exactly the 30 smallest keys of the population
    everything = sorted(_ids(df), key=lambda d: (sample_key(1, d), d))
    assert _ids(first) == set(everything[:30])


@pytest.mark.spark
def test_sampling_is_stratified(population):
    df, sizes = population
    sample, quotas = sample_ids(df, ExpertConfig(sample_count=31, seed=3, stratify_by_source=True))
    assert quotas == allocate(sizes, 31) == {"a.example": 16, "b.example": 10, "c.example": 5}
    got = sample.join(df, "doc_id").groupBy("source").count().collect()
    assert {r["source"]: r["count"] for r in got} == quotas
    for source, quota in quotas.items():  # per source: its `quota` smallest keys
        members = sorted((d for d in _ids(df) if d.startswith(source[0])), key=lambda d: (sample_key(3, d), d))
        assert set(members[:quota]) <= _ids(sample)


# --------------------------------------------------------------------------- Spark: the stage

def put_raw_docs(lake: Lake, docs: list[tuple[str, str, str]]) -> None:
    """(doc_id, text, source) rows straight into raw_docs, as ingest writes them."""
    rows = [(d, t, s, None, hashlib.sha256(t.encode()).hexdigest(), len(t)) for d, t, s in docs]
    df = (lake.spark.createDataFrame(rows, "doc_id string, text string, source string, metadata string, "
                                           "text_hash string, n_chars long")
          .withColumn("run_id", F.lit("test-ingest")).withColumn("created_at", F.current_timestamp()))
    lake.append("raw_docs", df, stage="ingest", run_id="test-ingest", fingerprint="test",
                txn_app_id="test-ingest", txn_version=0)


def context(lake: Lake, stage: str, **expert) -> RunContext:
    config = Config(lake=lake.config, model=ModelConfig(device="cpu"), expert=ExpertConfig(**expert))
    return RunContext(config, lake.spark, lake, StageStats(stage=stage, run_id=new_run_id(stage)))


def http_settings(server: FakeExpert, **extra) -> dict:
    return {"base_url": server.base_url, "model": MODEL, "api_key_env": KEY_ENV, "sample_fraction": 1.0,
            # 3 s: a stall of a busy 2-core machine (Spark tasks, the server's threads) must not look
            # like the `slow` fault, which the server answers only after slow_s.
            "context_tokens": 8192, "concurrency": 4, "docs_per_task": 5, "request_timeout_s": 3.0,
            "max_retries": MAX_RETRIES, "backoff_base_s": 0.01, "backoff_max_s": 2.0, "progress_interval_s": 0.5,
            **extra}


def rows_of(lake: Lake, run_id: str) -> list:
    return lake.read("expert_outputs").where(F.col("run_id") == run_id).collect()


def long_doc() -> str:
    """~40k chars: several pieces at context_tokens=8192; every 7th line is noise, so no piece cleans to ''."""
    return "\n".join(("NOISE share buttons" if i % 7 == 3 else f"Paragraph {i}: " + "lorem ipsum dolor " * 5)
                     for i in range(420))


@pytest.fixture(scope="module")
def pipeline(spark, tmp_path_factory):
    """Run 1 with a failing expert, run 2 after the outage recovers, then distill; all on one lake."""
    lake = Lake(spark, LakeConfig(path=str(tmp_path_factory.mktemp("expert") / "lake")))
    synth = list(generate_corpus(6, seed=11, target_chars=(400, 1500)))
    faulty = {mode: f"[[expert:{mode}]]\n{doc.raw}"
              for mode, doc in zip(FAULT_MODES, generate_corpus(len(FAULT_MODES), seed=12, target_chars=(200, 500)))}
    docs = ([(d.doc_id, d.raw, d.source) for d in synth] + [(f"fault-{m}", t, "faults") for m, t in faulty.items()]
            + [("long-doc", long_doc(), "long")])
    put_raw_docs(lake, docs)
    os.environ[KEY_ENV] = "sekret"
    try:
        with FakeExpert(INSTRUCTION, model=MODEL, answers={d.raw: d.expert for d in synth}, api_key="sekret",
                        retry_after_s=1, slow_s=4.0) as server:
            first = context(lake, "expert", **http_settings(server))
            progress = io.StringIO()
            stats1 = expert_generate.run(first, progress_stream=progress)
            after_first = Counter(server.requests)
            server.recover()
            second = context(lake, "expert", **http_settings(server))
            stats2 = expert_generate.run(second)
            after_second = Counter(server.requests)
            times = dict(server.times)
            rejected = list(server.rejected)
            max_tokens = set(server.max_tokens)
    finally:
        del os.environ[KEY_ENV]
    stats3 = distill.run(context(lake, "distill"))
    return {"lake": lake, "synth": synth, "faulty": faulty, "docs": docs, "stats": (stats1, stats2, stats3),
            "runs": (first.run_id, second.run_id), "requests": (after_first, after_second), "times": times,
            "rejected": rejected, "progress": progress.getvalue(), "max_tokens": max_tokens,
            "piece_tokens": stats1["piece_tokens"]}


@pytest.mark.spark
def test_every_sampled_doc_has_exactly_one_row_per_run(pipeline):
    lake, (run1, run2) = pipeline["lake"], pipeline["runs"]
    first = Counter(r["doc_id"] for r in rows_of(lake, run1))
    assert set(first) == {d for d, _, _ in pipeline["docs"]} and set(first.values()) == {1}
    failed = {r["doc_id"] for r in rows_of(lake, run1) if r["status"] == "error"}
    second = Counter(r["doc_id"] for r in rows_of(lake, run2))
    assert set(second) == failed and set(second.values()) == {1}  # the second run only retries failures
    for r in rows_of(lake, run1) + rows_of(lake, run2):
        assert (r["text"] is None) == (r["status"] == "error") == (r["error"] is not None)
        assert (r["expert_model"], r["prompt_version"]) == (MODEL, "expert-v1")
    assert pipeline["rejected"] == []  # every request carried the key, the model and the instruction


@pytest.mark.spark
def test_outcomes_per_expert_behaviour(pipeline):
    lake, (run1, run2) = pipeline["lake"], pipeline["runs"]
    first = {r["doc_id"]: r for r in rows_of(lake, run1)}
    for doc in pipeline["synth"]:
        row = first[doc.doc_id]
        assert row["status"] == "ok" and row["text"] == doc.expert
        assert row["tokens"] == len(doc.expert.split()) and row["latency_s"] > 0
        assert row["raw_text_hash"] == hashlib.sha256(doc.raw.encode()).hexdigest()
    for mode, (status, kind) in EXPECTED.items():
        row = first[f"fault-{mode}"]
        assert row["status"] == status, (mode, row["error"])
        if kind:
            assert row["error"].startswith(f"{kind}: "), (mode, row["error"])
    assert first["fault-rate_limit"]["text"] == default_clean(pipeline["faulty"]["rate_limit"])
    assert first["fault-paraphrase"]["text"].startswith("Here is the cleaned text:")
    second = {r["doc_id"]: r for r in rows_of(lake, run2)}
    assert second["fault-outage"]["status"] == "ok"  # recovered
    assert {d for d, r in second.items() if r["status"] == "error"} == {
        f"fault-{m}" for m, (s, _) in EXPECTED.items() if s == "error" and m != "outage"}  # permanent stay failed


@pytest.mark.spark
def test_retries_are_bounded_and_retry_after_honoured(pipeline):
    after_first, after_second = pipeline["requests"]
    assert max(after_first.values()) <= 1 + MAX_RETRIES
    assert max((after_second - after_first).values()) <= 1 + MAX_RETRIES
    faulty = pipeline["faulty"]
    assert after_first[faulty["error500"]] == after_first[faulty["malformed"]] == 1 + MAX_RETRIES
    assert after_first[faulty["truncated"]] == after_first[faulty["bad_request"]] == 1
    first, second = pipeline["times"][faulty["rate_limit"]]
    assert second - first >= 1.0
    untouched = [d.raw for d in pipeline["synth"]] + [faulty["rate_limit"], faulty["flaky"]]
    assert all(after_second[t] == after_first[t] for t in untouched)  # done docs are not asked again


@pytest.mark.spark
def test_long_documents_are_split_and_rejoined(pipeline):
    lake, (run1, _) = pipeline["lake"], pipeline["runs"]
    text = long_doc()
    pieces = [p for p in pipeline["requests"][0] if p in text and p != text]
    assert len(pieces) >= 3 and "\n".join(sorted(pieces, key=text.index)) == text
    assert all(_cost(p, 3.0) <= pipeline["piece_tokens"] for p in pieces)
    assert pipeline["max_tokens"] == {pipeline["piece_tokens"]}
    row = next(r for r in rows_of(lake, run1) if r["doc_id"] == "long-doc")
    assert row["status"] == "ok" and row["text"] == default_clean(text)
    assert row["tokens"] == len(default_clean(text).split())


@pytest.mark.spark
def test_stats_reconcile_with_the_server(pipeline):
    (s1, s2, _), (after_first, after_second) = pipeline["stats"], pipeline["requests"]
    n = len(pipeline["docs"])
    errors = sum(1 for s, _ in EXPECTED.values() if s == "error")
    c1 = s1["counts"]
    assert (c1["sampled"], c1["already_done"], c1["pending"]) == (n, 0, n)
    assert (c1["docs.ok"], c1["docs.error"]) == (n - errors, errors)
    assert c1["requests"] == sum(after_first.values())
    # Failed attempts: one each for the docs that fail once or fail permanently without retry, 1 + max_retries
    # for the others that fail; every failure is retried except each failed doc's last one.
    once = ("rate_limit", "flaky", "truncated", "bad_request")
    assert c1["requests.failed"] == len(once) + (1 + MAX_RETRIES) * (errors - 2)
    assert c1["requests.retried"] == c1["requests.failed"] - errors
    assert c1["error.bad_reply"] == 3 and c1["error.timeout"] == 1
    c2 = s2["counts"]
    assert (c2["already_done"], c2["pending"], c2["docs.ok"]) == (n - errors, errors, 1)
    assert c2["requests"] == sum(after_second.values()) - sum(after_first.values())
    assert s1["tokens_per_s"] > 0 and s1["counts"]["tokens"] > 0


@pytest.mark.spark
def test_progress_is_printed(pipeline):
    lines = pipeline["progress"].strip().splitlines()
    c = pipeline["stats"][0]["counts"]
    n = len(pipeline["docs"])
    assert lines and all(line.startswith("expert: ") for line in lines)
    assert f"docs {n}/{n} (ok {c['docs.ok']}, error {c['docs.error']}) requests {c['requests']} " \
           f"(failed {c['requests.failed']}, retried {c['requests.retried']})" in lines[-1]


@pytest.mark.spark
def test_distill_consumes_the_outputs(pipeline):
    lake = pipeline["lake"]
    ok = {r["doc_id"] for r in lake.read("expert_outputs").where("status = 'ok'").collect()}
    distilled = {r["doc_id"] for r in lake.read("distill_samples").select("doc_id").distinct().collect()}
    assert distilled == ok and "fault-outage" in ok
    assert pipeline["stats"][2]["counts"]["docs"] == len(ok)
    kept = lake.read("distill_samples").where("doc_id = 'long-doc' AND kept").count()
    assert kept >= 1  # a deletion-only cleanup distils into training samples


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(0, 5000), n_tasks=st.integers(1, 400))
def test_task_budgets_add_up_to_the_cap(cap, n_tasks):
    shares = [expert_generate.task_budget(cap, n_tasks, i) for i in range(n_tasks)]
    assert sum(shares) == cap and max(shares) - min(shares) <= 1
    assert expert_generate.task_budget(None, n_tasks, 0) is None


@pytest.mark.spark
def test_an_unusable_endpoint_fails_the_run_before_anything_is_sent(spark, tmp_path, monkeypatch):
    """A refused key, a model the server does not serve, a host that is down: one error before any
    document is sent, not an error row per sampled document (which every rerun would add again)."""
    lake = Lake(spark, LakeConfig(path=str(tmp_path / "lake")))
    monkeypatch.setenv(KEY_ENV, "wrong")
    with FakeExpert(INSTRUCTION, model=MODEL, api_key="sekret") as server:
        # nothing ingested (or a wrong lake.path): said so, not "0 sampled"
        with pytest.raises(ValueError, match="raw_docs at .* has no documents to sample: run ingest first"):
            expert_generate.run(context(lake, "expert", **http_settings(server)))
        put_raw_docs(lake, [(f"doc-{i}", f"text {i}\nNOISE", "s") for i in range(4)])
        with pytest.raises(ValueError, match=r"is not usable, nothing was sent: http_401"):
            expert_generate.run(context(lake, "expert", **http_settings(server)))
        monkeypatch.setenv(KEY_ENV, "sekret")
        with pytest.raises(ValueError, match=rf"expert.model 'other-model' is not served at .* \(it serves: {MODEL}\)"):
            expert_generate.run(context(lake, "expert", **http_settings(server, model="other-model")))
        assert server.total_requests == 0 and not lake.exists("expert_outputs")
        down = http_settings(server)
    with pytest.raises(ValueError, match=r"is not usable, nothing was sent: connection"):
        expert_generate.run(context(lake, "expert", **down))  # the server is gone now
    assert not lake.exists("expert_outputs")


@pytest.mark.spark
def test_request_budget_is_split_over_tasks(spark, tmp_path):
    lake = Lake(spark, LakeConfig(path=str(tmp_path / "lake")))
    docs = [(f"doc-{i}", f"line one of {i}\nNOISE\nline two", "s") for i in range(8)]
    put_raw_docs(lake, docs)
    with FakeExpert(INSTRUCTION, model=MODEL) as server:
        ctx = context(lake, "expert", **http_settings(server, docs_per_task=4, max_requests=3))
        stats = expert_generate.run(ctx, progress_stream=io.StringIO())
        sent = server.total_requests
    assert (stats["tasks"], stats["requests_per_task"]) == (2, 2)  # 3 requests dealt out as 2 + 1
    rows = rows_of(lake, ctx.run_id)
    assert sorted(r["doc_id"] for r in rows) == sorted(d for d, _, _ in docs)
    ok = [r for r in rows if r["status"] == "ok"]
    assert sent == len(ok) == stats["counts"]["requests"] == 3  # the cap, not one more
    assert all(r["text"] == "line one of " + r["doc_id"][4:] + "\nline two" for r in ok)
    assert all(r["error"].startswith("budget_exhausted: ") for r in rows if r["status"] == "error")
    assert stats["counts"]["error.budget_exhausted"] == len(docs) - len(ok) >= 4


@pytest.mark.spark
def test_a_run_overtaken_since_its_read_pays_for_no_answers(spark, tmp_path):
    """Two runs read the same pending sample; the first commits. The second learns it before it sends
    anything (its commit would be refused), not after paying for a slice of answers."""
    from refinex_spark.runtime import ConcurrentRunError

    lake = Lake(spark, LakeConfig(path=str(tmp_path / "lake")))
    put_raw_docs(lake, [(f"doc-{i}", f"line one of {i}\nNOISE\nline two", "s") for i in range(4)])
    with FakeExpert(INSTRUCTION, model=MODEL) as server:
        first, late = (context(lake, "expert", **http_settings(server)) for _ in range(2))
        for ctx in (first, late):
            ctx.read("expert_outputs")  # both start from the same (empty) table
        expert_generate.run(first, progress_stream=io.StringIO())
        sent = server.total_requests
        with pytest.raises(ConcurrentRunError, match="nothing more of this run was done, run it again"):
            expert_generate.run(late, progress_stream=io.StringIO())
        assert server.total_requests == sent == 4
    assert len(lake.read("expert_outputs").collect()) == 4


class _DriverKilled(Exception):
    pass


@pytest.mark.spark
def test_slices_commit_separately_and_a_crash_loses_one_slice(spark, tmp_path):
    """The driver dies right after the first slice's commit; the rerun asks only for the rest."""
    lake = Lake(spark, LakeConfig(path=str(tmp_path / "lake")))
    docs = [(f"doc-{i}", f"line one of {i}\nNOISE\nline two", "s") for i in range(9)]
    put_raw_docs(lake, docs)
    commit = lake.append

    def commit_then_die(*args, **kwargs):
        info = commit(*args, **kwargs)
        raise _DriverKilled(f"killed after committing version {info.version}")

    with FakeExpert(INSTRUCTION, model=MODEL) as server:
        settings_ = http_settings(server, docs_per_commit=3, docs_per_task=2)
        crashed = context(lake, "expert", **settings_)
        lake.append = commit_then_die
        try:
            with pytest.raises(_DriverKilled):
                expert_generate.run(crashed, progress_stream=io.StringIO())
        finally:
            lake.append = commit
        first = rows_of(lake, crashed.run_id)
        asked_first = server.total_requests
        rerun = context(lake, "expert", **settings_)
        stats = expert_generate.run(rerun, progress_stream=io.StringIO())
        asked_rerun = server.total_requests - asked_first
    second = rows_of(lake, rerun.run_id)
    assert 0 < len(first) < len(docs)  # the first slice's commit survived the crash
    assert stats["slices"] == -(-(len(docs) - len(first)) // 3)  # the rest, in slices of about 3
    assert sorted(r["doc_id"] for r in first + second) == sorted(d for d, _, _ in docs)  # each doc once
    assert asked_rerun == len(second) == stats["counts"]["docs.ok"] == len(docs) - len(first)
    commits = [h for h in lake.history("expert_outputs") if h["user_metadata"]["run_id"] == rerun.run_id]
    assert len(commits) == 2 and sum(c["rows_added"] for c in commits) == len(second)  # one commit per slice


@pytest.mark.spark
@pytest.mark.slow
def test_hf_backend_writes_rows(spark, tmp_path):
    """Two runs of one model directory, replaced in place between them: the Python workers that
    Spark keeps load it again (their cache is keyed by the directory's revision), so the second run
    answers as the new weights do."""
    from refinex_spark.model.tiny import build_tiny_model

    docs = [(d.doc_id, d.raw, d.source) for d in generate_corpus(6, seed=21, target_chars=(200, 400))]
    rambling = build_tiny_model(tmp_path / "tiny", [INSTRUCTION] + [t for _, t, _ in docs], vocab_size=512)
    # The same weights, but every token ends the answer: it is done at once, well within max_new_tokens.
    model_dir = tmp_path / "expert"
    shutil.copytree(rambling, model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**generation, "eos_token_id": list(range(512))}))
    raw = spark.createDataFrame([(d, s) for d, _, s in docs], "doc_id string, source string")
    expected = _ids(sample_ids(raw, ExpertConfig(sample_count=3, seed=4, stratify_by_source=True))[0])
    outcomes = {}
    for name in ("terse", "rambling"):
        if name == "rambling":
            shutil.copytree(rambling, model_dir, dirs_exist_ok=True)  # the model replaced in place
        lake = Lake(spark, LakeConfig(path=str(tmp_path / f"lake-{name}")))
        put_raw_docs(lake, docs)
        ctx = context(lake, "expert", backend="hf", model=str(model_dir), sample_count=3, seed=4,
                      stratify_by_source=True, context_tokens=768, docs_per_task=2)
        stats = expert_generate.run(ctx, progress_stream=io.StringIO())
        rows = rows_of(lake, ctx.run_id)
        assert {r["doc_id"] for r in rows} == expected and len(rows) == 3
        assert all(r["expert_model"] == str(model_dir) for r in rows)
        outcomes[name] = stats, rows
    stats, rows = outcomes["terse"]
    assert all(r["status"] == "ok" and r["text"] == "" and r["tokens"] == 0 for r in rows), rows
    assert stats["counts"]["docs.ok"] == 3 and stats["counts"]["requests"] >= 3
    # Random weights never stop within max_new_tokens here: a cut answer is a `truncated` error, as the
    # openai backend's finish_reason=length is, not an `ok` cleanup whose lost tail distill would delete.
    stats, rows = outcomes["rambling"]
    assert all(r["status"] == "error" and r["error"].startswith("truncated: the answer hit max_new_tokens=")
               for r in rows), rows
    assert stats["counts"]["error.truncated"] == 3
