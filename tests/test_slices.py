"""Slicing pending work into commits: the file plan's invariants, and on local Spark that each
refine slice reads only its own raw_docs files while the slices cover the pending documents once."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refinex_spark.jobs import ingest, refine
from refinex_spark.jobs.demo import write_docs
from refinex_spark.jobs.slices import FILE, FileSlice, file_slices, plan_file_slices
from refinex_spark.synth import generate_corpus

from spark_plans import executed_nodes, metric, output_columns

counts = st.dictionaries(st.text("abcdef/", min_size=1, max_size=6), st.integers(0, 50), max_size=30)


@settings(max_examples=300, deadline=None)
@given(counts, st.integers(1, 40))
def test_every_pending_file_is_covered_once(pending, per_slice):
    plan = plan_file_slices(pending, per_slice)
    whole = [f for s in plan if s.buckets == 1 for f in s.files]
    split: dict[str, list[int]] = {}
    for s in plan:
        assert s.buckets >= 1 and 0 <= s.bucket < s.buckets
        if s.buckets > 1:
            assert len(s.files) == 1  # a bucket filter applies to one file only
            split.setdefault(s.files[0], []).append(s.bucket)
    assert len(whole) == len(set(whole)) and not set(whole) & set(split)
    assert set(whole) | set(split) == {f for f, n in pending.items() if n}
    for f, buckets in split.items():
        assert pending[f] > per_slice and sorted(buckets) == list(range(math.ceil(pending[f] / per_slice)))
    groups = [sum(pending[f] for f in s.files) for s in plan if s.buckets == 1]
    assert all(n <= per_slice for n in groups)
    # Packed, not one file per slice: two neighbouring groups would not have fitted in one.
    assert all(a + b > per_slice for a, b in zip(groups, groups[1:]))


def test_plan_examples_and_bad_size():
    assert plan_file_slices({"b": 3, "a": 2, "c": 0, "d": 9}, 5) == [
        FileSlice(("d",), 2, 0), FileSlice(("d",), 2, 1), FileSlice(("a", "b"))]
    assert plan_file_slices({}, 5) == []
    with pytest.raises(ValueError, match="per_slice"):
        plan_file_slices({"a": 1}, 0)


def _raw_scans(df) -> list[int]:
    """Collect df; then the files read by each scan of its final plan that read a `text` column."""
    return [metric(node, "numFiles") for node in executed_nodes(df)
            if node.nodeName().startswith("Scan") and "text" in output_columns(node)]


@pytest.mark.spark
def test_refine_slices_read_only_their_files(make_ctx, tmp_path):
    docs = list(generate_corpus(18, seed=5, target_chars=(200, 600)))
    for i in range(3):  # three ingest runs: raw_docs has at least three files
        raw, _ = write_docs(tmp_path / f"in{i}", docs[6 * i:6 * i + 6])
        ingest.run(make_ctx("ingest"), [str(raw)])
    ctx = make_ctx("refine")
    pending = refine.pending(ctx, "m", "fp")
    files = {r[FILE] for r in pending.select(FILE).distinct().collect()}
    assert len(files) >= 3

    n, parts = file_slices(pending, per_slice=6)
    assert n == len(docs) and len(parts) >= 3
    seen = [r["doc_id"] for part in parts for r in part.select("doc_id").collect()]
    assert sorted(seen) == sorted(d.doc_id for d in docs)  # every document once
    for part in parts:
        (read,) = _raw_scans(part.select("doc_id", "text"))
        assert 1 <= read < len(files)  # Spark skipped the other slices' files

    # A slice smaller than a file cuts it by hash: still every document once.
    n, parts = file_slices(pending, per_slice=2)
    assert len(parts) >= len(docs) // 2
    seen = [r["doc_id"] for part in parts for r in part.select("doc_id").collect()]
    assert sorted(seen) == sorted(d.doc_id for d in docs)


@pytest.mark.spark
def test_nothing_to_slice_before_ingest(make_ctx):
    assert file_slices(refine.pending(make_ctx("refine"), "m", "fp"), 5) == (0, [])
