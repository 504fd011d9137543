"""Spark local-mode integration tests of the CPU stages on a real Delta lake (delta-rs engine)."""

from __future__ import annotations

import gzip
import inspect
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from refinex_spark import cli, readers
from refinex_spark.config import IngestConfig, TrainConfig
from refinex_spark.jobs import demo, distill, expert_import, export_sft, ingest, sql, train
from refinex_spark.jobs.demo import BAD_RECORDS, EXPERT_MODEL, write_docs
from refinex_spark.lake import Lake
from refinex_spark.model.train import read_model_card
from refinex_spark.readers import plan_splits, read_file
from refinex_spark.runtime import RunContext, StageStats, new_run_id
from refinex_spark.schemas import TABLES
from refinex_spark.synth import generate_corpus

from spark_plans import executed_nodes, metric, output_columns

pytestmark = pytest.mark.spark

DOCS = list(generate_corpus(24, seed=5, target_chars=(600, 2500)))


def _rows(ctx, table):
    return ctx.lake.read(table).toPandas()


def _counts(make_ctx, *tables):
    """Row counts of lake tables at their latest versions, read through a fresh Lake."""
    lake = make_ctx("x").lake
    return tuple(lake.read(t).count() for t in tables)


@pytest.fixture
def corpus(tmp_path):
    """Good docs + BAD_RECORDS (jsonl), extra bad kinds (gzip jsonl), a parquet and a text file."""
    raw, expert = write_docs(tmp_path / "in", DOCS)
    extra = [b'{"id": "u1", "text": "caf\xe9"}', b'{"id": "big", "text": "' + b"x" * 5000 + b'"}',
             json.dumps({"id": DOCS[0].doc_id, "text": "a different text, same id"}).encode(),
             json.dumps({"id": "dup-in-batch", "text": "first"}).encode(),
             json.dumps({"id": "dup-in-batch", "text": "second"}).encode()]
    (tmp_path / "in" / "raw" / "more.jsonl.gz").write_bytes(gzip.compress(b"\n".join(extra) + b"\n"))
    pq.write_table(pa.table({"id": ["pq-1", "pq-2"], "text": ["from parquet", None]}),
                   tmp_path / "in" / "raw" / "part.parquet")
    (tmp_path / "in" / "raw" / "note.txt").write_text("a plain text document\r\nwith two lines")
    return raw.parent, expert


def test_ingest_counts_reconcile_and_rerun_adds_nothing(make_ctx, corpus):
    raw_dir, _ = corpus
    (raw_dir / "README.md").write_text("# what this folder holds")  # no format: one reject, not a failed run
    ctx = make_ctx("ingest", "ingest.max_doc_chars=4000")
    c = ingest.run(ctx, [str(raw_dir)])["counts"]
    assert c["files"] == 5 and c["rejected.unreadable_file"] == 1
    assert c["read"] == c["accepted"] + c["rejected"] + c["already_present"]
    assert c["rejected.malformed_json"] == 1 and c["rejected.missing_text"] == 2  # bad-2 and pq-2
    assert c["rejected.text_not_string"] == 1 and c["rejected.empty_text"] == 1
    assert c["rejected.not_an_object"] == 1 and c["rejected.invalid_utf8"] == 1 and c["rejected.too_large"] == 1
    # same id as DOCS[0] with other text, and the second "dup-in-batch": first record of an id wins
    assert c["rejected.duplicate_id"] == 2
    assert c["accepted"] == len(DOCS) + 3  # + dup-in-batch (first), pq-1, note.txt
    raw = _rows(ctx, "raw_docs")
    assert len(raw) == c["accepted"] and raw["doc_id"].is_unique
    assert set(raw.loc[raw.doc_id == "dup-in-batch", "text"]) == {"first"}
    rejects = _rows(ctx, "rejects")
    assert len(rejects) == c["rejected"] and set(rejects["stage"]) == {"ingest"}
    [readme] = rejects.query("reason == 'unreadable_file'").itertuples()
    assert readme.source_file == str(raw_dir / "README.md") and "cannot tell the format" in readme.detail
    # a duplicate_id reject keeps the whole record as read, id and all, like the readers' rejects
    duplicates = rejects.query("reason == 'duplicate_id'")
    assert sorted(map(json.loads, duplicates["record"]), key=lambda r: r["id"]) == sorted(
        [{"id": DOCS[0].doc_id, "text": "a different text, same id"}, {"id": "dup-in-batch", "text": "second"}],
        key=lambda r: r["id"])
    # read back through delta-rs too: same rows
    assert DeltaTable(ctx.lake.location("raw_docs")).to_pyarrow_table().num_rows == len(raw)

    again = make_ctx("ingest", "ingest.max_doc_chars=4000")
    c2 = ingest.run(again, [f"file://{raw_dir}"])["counts"]  # another spelling of the same files
    assert c2["accepted"] == 0 and c2["already_present"] == c["accepted"] and c2["read"] == c["read"]
    assert len(_rows(again, "raw_docs")) == len(raw) and len(_rows(again, "rejects")) == len(rejects)
    history = again.lake.history("raw_docs")
    assert len(history) == 1 and history[0]["user_metadata"]["stage"] == "ingest"  # the rerun committed nothing
    with pytest.raises(ValueError, match="cannot tell the format of .*README.md"):  # nothing it could read
        ingest.run(make_ctx("ingest"), [str(raw_dir / "README.md")])
    (raw_dir.parent / "empty").mkdir()
    with pytest.raises(ValueError, match="no input files under .*empty"):
        ingest.run(make_ctx("ingest"), [str(raw_dir.parent / "empty")])


def test_a_file_replaced_under_its_name_has_its_new_bad_records_rejected(make_ctx, tmp_path):
    """Rejects are told apart by their record too: the same line of a replaced file can be another bad record."""
    daily = tmp_path / "drop" / "daily.jsonl"
    daily.parent.mkdir()
    for bad in ("{bad-day-1", "{bad-day-2"):
        daily.write_text(json.dumps({"id": "d1", "text": "a document"}) + "\n" + bad + "\n")
        assert ingest.run(make_ctx("ingest"), [str(daily.parent)])["counts"]["rejected.malformed_json"] == 1
    assert sorted(_rows(make_ctx("x"), "rejects")["record"]) == ["{bad-day-1", "{bad-day-2"]
    ingest.run(make_ctx("ingest"), [str(daily.parent)])  # the same file again: nothing new
    assert len(_rows(make_ctx("x"), "rejects")) == 2


def test_a_big_file_is_read_by_a_task_per_split(spark, corpus):
    raw_dir, _ = corpus
    files = readers.list_input_files([str(raw_dir)])
    big = str(raw_dir / "docs.jsonl")
    cfg = IngestConfig(split_mb=8 / 1024)
    assert [f for f, size in files.items() if readers.splittable(f, cfg, size)] == [big]
    n_splits = [len(plan_splits(f, cfg)) for f in files]
    assert n_splits[0] >= 3 and sum(n_splits) == n_splits[0] + 3  # docs.jsonl splits; gz, parquet, text do not
    from pyspark.sql import functions as F

    sc = spark.sparkContext
    sc.setJobGroup("planning", "ingest planning")  # planning runs as read_records is called; the read waits
    try:
        planned = ingest.read_records(spark, files, cfg)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    tracker = sc.statusTracker()
    stages = [tracker.getStageInfo(s) for j in tracker.getJobIdsForGroup("planning")
              for s in tracker.getJobInfo(j).stageIds]
    # The big file's newlines are counted by a task per piece, not by one task reading it all.
    assert len(readers.plan_file(big, cfg)) in [s.numTasks for s in stages]
    # Metadata is read by a task per file the listing found bigger than a split: the small parquet
    # file (a splittable format) gets none. Its stage is the last one started where files are planned.
    source = inspect.getsource(ingest).splitlines()
    at = f"ingest.py:{1 + next(i for i, line in enumerate(source) if '_plan_files(cfg), ' in line)}"
    assert max((s for s in stages if s.name.endswith(at)), key=lambda s: s.stageId).numTasks == 1
    read = planned.withColumn("task", F.spark_partition_id()).toPandas()
    assert read["task"].nunique() == sum(n_splits)
    key = lambda r: tuple(str(r.get(k)) for k in ("source_file", "line_no", "kind", "doc_id", "reason"))  # noqa: E731
    expected = sorted(key(r) for f in files for r in read_file(f, cfg))
    assert sorted(key(r) for r in read.astype(object).where(read.notna(), None).to_dict("records")) == expected


def test_reading_given_lines_again_reads_only_the_splits_that_hold_them(spark, corpus):
    """How the records of duplicate_id rejects are found again: of a big file, only the splits they are in."""
    raw_dir, _ = corpus
    big = str(raw_dir / "docs.jsonl")
    cfg = IngestConfig(split_mb=8 / 1024)
    splits = plan_splits(big, cfg)
    wanted = [splits[1].first_line, splits[1].first_line + 2, splits[-1].first_line + 1]
    got = ingest.read_records(spark, {big: None}, cfg, lines={big: wanted}).toPandas()
    expected = [r["line_no"] for split in (splits[1], splits[-1]) for r in read_file(big, cfg, split=split)]
    assert sorted(got["line_no"]) == sorted(expected) and set(wanted) <= set(got["line_no"])
    assert len(splits) > 3  # so the splits in between were really left out


def test_a_stored_record_read_again_is_present_even_after_a_conflicting_one(make_ctx, tmp_path):
    """The stored record of an id is never rejected as a duplicate of a new record with other text
    that happens to sort first: that one is the conflict."""
    stored, other = tmp_path / "b.jsonl", tmp_path / "a.jsonl"
    stored.write_text('{"id": "x", "text": "the stored text"}\n')
    other.write_text('{"id": "x", "text": "another text"}\n')
    ingest.run(make_ctx("ingest"), [str(stored)])
    ctx = make_ctx("ingest")
    c = ingest.run(ctx, [str(other), str(stored)])["counts"]
    assert (c["read"], c["accepted"], c["already_present"], c["rejected.duplicate_id"]) == (2, 0, 1, 1)
    rejects = _rows(ctx, "rejects")
    assert list(zip(rejects["source_file"].str.rsplit("/", n=1).str[-1], rejects["detail"])) == [
        ("a.jsonl", "doc_id x already in raw_docs with different text")]
    assert list(_rows(ctx, "raw_docs")["text"]) == ["the stored text"]


def test_overlapping_runs_from_one_snapshot_commit_once_and_the_other_is_told_to_rerun(make_ctx, tmp_path):
    from refinex_spark.runtime import ConcurrentRunError

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"id": "a", "text": "from the first shard"}\n')
    second.write_text('{"id": "b", "text": "from the second shard"}\n')
    early, late = make_ctx("ingest"), make_ctx("ingest")
    early.read("raw_docs"), late.read("raw_docs")  # both runs start from the same (empty) snapshot
    ingest.run(early, [str(first)])
    with pytest.raises(ConcurrentRunError, match="run it again"):
        ingest.run(late, [str(second)])
    assert ingest.run(make_ctx("ingest"), [str(second)])["counts"]["accepted"] == 1  # the rerun loses nothing
    assert sorted(_rows(make_ctx("x"), "raw_docs")["doc_id"]) == ["a", "b"]


def test_a_compaction_between_two_runs_reads_does_not_let_both_commit(make_ctx, tmp_path):
    """OPTIMIZE (or Databricks' auto-compaction) commits with no app transaction: two runs that read the
    same rows a compaction apart must still not both commit."""
    from refinex_spark.runtime import ConcurrentRunError

    for i in range(2):  # two commits, two files to compact
        (tmp_path / f"seed{i}.jsonl").write_text(f'{{"id": "seed{i}", "text": "already there {i}"}}\n')
        ingest.run(make_ctx("ingest"), [str(tmp_path / f"seed{i}.jsonl")])
    (tmp_path / "new.jsonl").write_text('{"id": "new", "text": "pending for both runs"}\n')
    early = make_ctx("ingest")
    early.read("raw_docs")
    table = DeltaTable(early.lake.location("raw_docs"))
    assert table.optimize.compact()["numFilesRemoved"] >= 2  # a commit of no run
    late = make_ctx("ingest")
    assert late.read("raw_docs") and late.read_versions["raw_docs"] == early.read_versions["raw_docs"] + 1
    ingest.run(early, [str(tmp_path / "new.jsonl")])
    with pytest.raises(ConcurrentRunError, match="run it again"):
        ingest.run(late, [str(tmp_path / "new.jsonl")])
    assert sorted(_rows(make_ctx("x"), "raw_docs")["doc_id"]) == ["new", "seed0", "seed1"]


def test_expert_import_distill_export_and_reruns(make_ctx, corpus, tmp_path, spark):
    raw_dir, expert_path = corpus
    cache = spark._jsparkSession.sharedState().cacheManager()
    spark.catalog.clearCache()
    ingested = ingest.run(make_ctx("ingest"), [str(raw_dir)])["counts"]
    assert cache.isEmpty()  # what a stage caches it releases: a notebook runs stage after stage
    with open(expert_path, "a") as f:
        f.write(json.dumps({"doc_id": "not-ingested", "text": "x", "model": "m"}) + "\n")
        f.write(json.dumps({"text": "an output that names no document", "model": "m"}) + "\n")
        f.write(json.dumps({"doc_id": DOCS[1].doc_id, "text": "no model named, no --model given"}) + "\n")
        # a second output of DOCS[2] for the same model and prompt version in this batch: the first one wins
        f.write(json.dumps({"doc_id": DOCS[2].doc_id, "text": "a later output", "model": EXPERT_MODEL}) + "\n")
        f.write(json.dumps({"doc_id": DOCS[3].doc_id, "text": "a blank model is none", "model": " "}) + "\n")
        # an output of another version of the document: its raw_text_hash is not the stored text's
        f.write(json.dumps({"doc_id": DOCS[3].doc_id, "text": "of another text", "model": "other",
                            "raw_text_hash": "0" * 64}) + "\n")
    ex = expert_import.run(make_ctx("expert"), str(expert_path))["counts"]
    assert cache.isEmpty()
    assert ex["accepted"] == len(DOCS) and ex["rejected.unknown_doc_id"] == 1 and ex["rejected.missing_doc_id"] == 1
    assert ex["rejected.missing_model"] == 2 and ex["rejected.duplicate_id"] == 1 and ex["rejected"] == 6
    assert ex["rejected.text_hash_mismatch"] == 1
    assert ex["read"] == ex["accepted"] + ex["rejected"] + ex["already_present"]
    expert_rejects = _rows(make_ctx("x"), "rejects").query("stage == 'expert'")
    missing = expert_rejects.query("reason == 'missing_doc_id'")
    assert list(missing["detail"]) == ["no field 'doc_id'"]
    assert sorted(expert_rejects.query("reason == 'missing_model'")["detail"]) == sorted(
        [f"doc_id {DOCS[1].doc_id}", f"doc_id {DOCS[3].doc_id}"])
    [mismatch] = expert_rejects.query("reason == 'text_hash_mismatch'")["detail"]
    assert mismatch.startswith(f"doc_id {DOCS[3].doc_id}: raw_text_hash {'0' * 64} is not the stored text's ")
    assert list(expert_rejects.query("reason == 'duplicate_id'")["detail"]) == [f"doc_id {DOCS[2].doc_id}"]
    # every reject keeps its record as the file holds it, model and all
    unknown = expert_rejects.query("reason == 'unknown_doc_id'")["record"]
    assert list(map(json.loads, unknown)) == [{"doc_id": "not-ingested", "text": "x", "model": "m"}]
    duplicate = json.loads(expert_rejects.query("reason == 'duplicate_id'")["record"].iloc[0])
    assert duplicate == {"doc_id": DOCS[2].doc_id, "text": "a later output", "model": EXPERT_MODEL}
    outputs = _rows(make_ctx("x"), "expert_outputs").set_index("doc_id")
    assert outputs.loc[DOCS[2].doc_id, "text"] == DOCS[2].expert and outputs.loc[DOCS[1].doc_id, "expert_model"] \
        == EXPERT_MODEL
    before = _counts(make_ctx, "expert_outputs", "rejects")
    assert before == (len(DOCS), ingested["rejected"] + ex["rejected"])
    rerun = expert_import.run(make_ctx("expert"), str(expert_path))["counts"]
    assert rerun["accepted"] == 0 and rerun["already_present"] == len(DOCS)
    assert _counts(make_ctx, "expert_outputs", "rejects") == before  # the rerun added no rows
    unnamed = tmp_path / "unnamed.jsonl"  # no record names its model and no --model: refused, not all rejects
    unnamed.write_text(json.dumps({"doc_id": DOCS[0].doc_id, "text": DOCS[0].expert}) + "\n")
    with pytest.raises(ValueError, match="names its expert model .*pass --model NAME"):
        expert_import.run(make_ctx("expert"), str(unnamed))
    # ingest.format applies to expert import too: a name `auto` cannot place is read as told
    renamed = shutil.copy(expert_path, expert_path.with_suffix(".out"))
    with pytest.raises(ValueError, match="set ingest.format"):
        expert_import.run(make_ctx("expert"), str(renamed))
    assert expert_import.run(make_ctx("expert", "ingest.format=jsonl"), str(renamed))["counts"]["already_present"] \
        == len(DOCS)

    d = distill.run(make_ctx("distill"))["counts"]
    assert d["docs"] == len(DOCS)
    samples = _rows(make_ctx("distill"), "distill_samples")
    assert set(samples["doc_id"]) == {doc.doc_id for doc in DOCS}  # every doc leaves rows
    assert (samples["kept"] | samples["drop_reason"].notna()).all()
    heavy = {doc.doc_id for doc in DOCS if "heavy_rewrite" in doc.faults}
    assert all(not k for k in samples.loc[samples.doc_id.isin(heavy), "kept"])
    assert _counts(make_ctx, "distill_samples") == (len(samples),)
    assert distill.run(make_ctx("distill"))["counts"]["docs"] == 0  # rerun: nothing pending
    assert _counts(make_ctx, "distill_samples") == (len(samples),)  # and no rows added
    # a result-relevant setting change distils again under a new fingerprint
    assert distill.run(make_ctx("distill", "distill.max_ops_per_chunk=3"))["counts"]["docs"] == len(DOCS)

    out = tmp_path / "sft"
    e = export_sft.run(make_ctx("export-sft"), str(out))
    lines = [json.loads(line) for p in sorted(out.glob("part-*.json")) for line in p.read_text().splitlines()]
    assert len(lines) == e["counts"]["samples"] == int(samples["kept"].sum())
    assert [m["role"] for m in lines[0]["messages"]] == ["user", "assistant"]
    assert list(lines[0]) == export_sft.COLUMNS  # what a crashed export is recognised by
    keys = [(line["doc_id"], line["chunk_index"]) for line in lines]
    assert keys == sorted(keys)
    # A big export is many part files (here: small ranges left unmerged), still in order file after file.
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    try:
        export_sft.run(make_ctx("export-sft"), str(tmp_path / "sft-parts"))
    finally:
        spark.conf.unset("spark.sql.adaptive.coalescePartitions.enabled")
    parts = sorted((tmp_path / "sft-parts").glob("part-*.json"))
    assert len(parts) > 1
    assert [(json.loads(line)["doc_id"], json.loads(line)["chunk_index"])
            for p in parts for line in p.read_text().splitlines()] == keys
    with pytest.raises(ValueError, match="already exists"):
        export_sft.run(make_ctx("export-sft"), str(out))
    with pytest.raises(ValueError, match="already exists"):  # created after the check (or dbfs:/): Spark's own check
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(export_sft, "_existing_output", lambda target, fmt: None)
            export_sft.run(make_ctx("export-sft"), str(out))
    # A crashed export (some of its part files, no _SUCCESS) is written again; a directory of other
    # files never is, Spark-like names included.
    crashed = tmp_path / "sft-crashed"
    (crashed / "_temporary" / "0").mkdir(parents=True)
    part = sorted(out.glob("part-*.json"))[0]
    shutil.copy(part, crashed / part.name)
    shutil.copy(part.with_name(f".{part.name}.crc"), crashed / f".{part.name}.crc")
    again = export_sft.run(make_ctx("export-sft"), str(crashed))
    assert again["replaced_crashed_export"] and (crashed / "_SUCCESS").exists()
    assert sorted(p.read_text() for p in crashed.glob("part-*.json")) == sorted(p.read_text() for p in out.glob("part-*.json"))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    pq.write_to_dataset(pa.table({"doc": ["precious"]}), tmp_path / "dataset")  # pyarrow's part-0-<uuid>.parquet
    (tmp_path / "spark-like").mkdir()
    (tmp_path / "spark-like" / part.name).write_text('{"doc": "precious"}\n')  # an export's name, not its rows
    for theirs, fmt in (("mine", "jsonl"), ("dataset", "parquet"), ("spark-like", "jsonl")):
        kept = {p.name: p.read_bytes() for p in (tmp_path / theirs).iterdir()}
        with pytest.raises(ValueError, match="holds files no export wrote"):
            export_sft.run(make_ctx("export-sft"), str(tmp_path / theirs), fmt=fmt)
        assert {p.name: p.read_bytes() for p in (tmp_path / theirs).iterdir()} == kept
    (tmp_path / "a-file").write_text("x")  # Spark would fail with a Java traceback, after sorting every sample
    with pytest.raises(ValueError, match="cannot be created: a folder above it is a file"):
        export_sft.run(make_ctx("export-sft"), str(tmp_path / "a-file" / "deeper" / "sft"))
    uri = export_sft.run(make_ctx("export-sft"), f"file://{tmp_path}/sft-uri", fmt="parquet")
    assert uri["output"] == f"{tmp_path}/sft-uri" and uri["counts"]["samples"] == e["counts"]["samples"]
    assert e["output"] == str(out)
    # settings nothing was distilled under: a message naming what is there, not a Spark error
    never = make_ctx("export-sft", "distill.max_ops_per_chunk=5")
    with pytest.raises(ValueError, match="no kept distill_samples under fingerprint") as err:
        export_sft.run(never, str(tmp_path / "sft-none"))
    assert never.config.fingerprint("program", "chunking", "distill") in str(err.value)
    assert samples["fingerprint"].iloc[0] in str(err.value) and not (tmp_path / "sft-none").exists()
    with pytest.raises(ValueError, match="no kept distill_samples under fingerprint") as err:
        train.run(never, init_tiny=True)  # the same message, and no samples file left behind
    assert samples["fingerprint"].iloc[0] in str(err.value)
    assert not (Path(never.config.train.output_dir) / train.SAMPLES_FILE).exists()

    # A newer expert output of a document (here: one that keeps it all) distils it again; export reads
    # its new samples only, and the old ones stay in the table, superseded.
    doc = next(d for d in DOCS if samples.loc[samples.doc_id == d.doc_id, "kept"].any())
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"doc_id": doc.doc_id, "text": doc.raw, "model": "second-expert"}) + "\n")
    assert expert_import.run(make_ctx("expert"), str(newer))["counts"]["accepted"] == 1
    assert distill.run(make_ctx("distill"))["counts"]["docs"] == 1
    assert distill.run(make_ctx("distill"))["counts"]["docs"] == 0  # and then it is done
    rows = _rows(make_ctx("x"), "distill_samples")
    of_doc = rows[(rows.doc_id == doc.doc_id) & (rows.fingerprint == samples["fingerprint"].iloc[0])]
    old, new = (of_doc[of_doc.expert_model == m] for m in (EXPERT_MODEL, "second-expert"))
    assert len(old) and len(new) and (new["drop_reason"].isna() | new["drop_reason"].eq("keep_all_sampled_out")).all()
    e2 = export_sft.run(make_ctx("export-sft"), str(tmp_path / "sft-newer"))
    exported = [json.loads(line) for p in sorted((tmp_path / "sft-newer").glob("part-*.json"))
                for line in p.read_text().splitlines()]
    assert e2["counts"]["samples"] == e["counts"]["samples"] - int(old["kept"].sum()) + int(new["kept"].sum())
    assert sorted(x["chunk_index"] for x in exported if x["doc_id"] == doc.doc_id) == sorted(
        new.loc[new.kept, "chunk_index"])


def test_a_failing_stage_releases_what_it_cached(make_ctx, corpus, spark, monkeypatch):
    """A commit refused (another run committed first, say) leaves nothing cached in the session."""
    raw_dir, expert_path = corpus
    cache = spark._jsparkSession.sharedState().cacheManager()
    spark.catalog.clearCache()
    for stage, run in (("ingest", lambda c: ingest.run(c, [str(raw_dir)])),
                       ("expert", lambda c: expert_import.run(c, str(expert_path)))):
        ctx = make_ctx(stage)
        monkeypatch.setattr(ctx, "append", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("commit refused")))
        with pytest.raises(RuntimeError, match="commit refused"):
            run(ctx)
        assert cache.isEmpty(), stage
        monkeypatch.undo()
        run(make_ctx(stage))  # then as it should, so that the next stage has its input


def test_distill_uses_the_newest_ok_output_of_each_document(make_ctx, tmp_path):
    docs = DOCS[:3]
    raw, _ = write_docs(tmp_path / "in", docs)
    ingest.run(make_ctx("ingest"), [str(raw)])

    def outputs(name: str, model: str, chosen) -> str:
        path = tmp_path / name
        path.write_text("".join(json.dumps({"doc_id": d.doc_id, "text": d.expert, "model": model}) + "\n"
                                for d in chosen))
        return str(path)

    # The later import's model sorts first, so only ranking by time (not the name tie-break) picks it.
    expert_import.run(make_ctx("expert"), outputs("old.jsonl", "expert-2", docs))
    expert_import.run(make_ctx("expert"), outputs("new.jsonl", "expert-1", docs[:1]))
    assert distill.run(make_ctx("distill"))["counts"]["docs"] == len(docs)
    samples = _rows(make_ctx("x"), "distill_samples")
    used = samples.groupby("doc_id")["expert_model"].agg(set).to_dict()
    assert used == {docs[0].doc_id: {"expert-1"}, **{d.doc_id: {"expert-2"} for d in docs[1:]}}


def test_distill_takes_up_an_output_committed_while_it_read(make_ctx, tmp_path):
    """An expert run stamps its rows when it starts: one that commits after a distill run read the
    outputs leaves rows older than that run's samples, which must still be distilled on the next run."""
    docs = DOCS[:2]
    raw, expert = write_docs(tmp_path / "in", docs)
    ingest.run(make_ctx("ingest"), [str(raw)])
    expert_import.run(make_ctx("expert"), str(expert))
    assert distill.run(make_ctx("distill"))["counts"]["docs"] == len(docs)
    ctx = make_ctx("expert")
    distilled_at = ctx.lake.read("distill_samples").agg(F.min(F.unix_micros("created_at"))).first()[0]
    late = (ctx.lake.read("expert_outputs").where(F.col("doc_id") == docs[0].doc_id)
            .withColumn("expert_model", F.lit("late-expert"))
            .withColumn("text", F.lit(docs[0].raw))  # keeps everything: samples unlike the first ones
            .withColumn("created_at", F.timestamp_micros(  # between the first output and the samples
                ((F.unix_micros("created_at") + F.lit(distilled_at)) / 2).cast("long"))))
    ctx.append("expert_outputs", late, fingerprint="")
    [(late_at,)] = (ctx.lake.read("expert_outputs").where("expert_model = 'late-expert'")
                    .select(F.unix_micros("created_at")).collect())
    assert late_at < distilled_at
    assert distill.run(make_ctx("distill"))["counts"]["docs"] == 1
    samples = _rows(make_ctx("x"), "distill_samples")
    newest = samples[samples.created_at == samples.groupby("doc_id")["created_at"].transform("max")]
    assert newest.groupby("doc_id")["expert_model"].agg(set).to_dict() == {
        docs[0].doc_id: {"late-expert"}, docs[1].doc_id: {EXPERT_MODEL}}
    stamped = make_ctx("x").lake.read("distill_samples").where(F.col("expert_model") == "late-expert")
    assert {r[0] for r in stamped.select(F.unix_micros("expert_created_at")).collect()} == {late_at}
    assert distill.run(make_ctx("distill"))["counts"]["docs"] == 0  # and then it is done


def test_distill_breaks_ties_between_outputs_of_one_import(make_ctx, tmp_path):
    """One import, one timestamp, two prompt versions of each document: exactly one is distilled."""
    docs = DOCS[:2]
    raw, _ = write_docs(tmp_path / "in", docs)
    ingest.run(make_ctx("ingest"), [str(raw)])
    path = tmp_path / "two_versions.jsonl"
    path.write_text("".join(json.dumps({"doc_id": d.doc_id, "text": text, "model": "m", "prompt_version": v}) + "\n"
                            for d in docs for v, text in (("v1", d.raw), ("v2", d.expert))))
    assert expert_import.run(make_ctx("expert"), str(path))["counts"]["accepted"] == 4
    stats = distill.run(make_ctx("distill"))
    samples = _rows(make_ctx("x"), "distill_samples")
    assert stats["counts"]["docs"] == len(docs)
    assert (samples.groupby("doc_id")["chunk_index"].apply(lambda c: c.is_unique)).all()
    # v2 (the expert text) wins the tie, so the documents are distilled against their cleanings.
    assert samples.groupby("doc_id")["n_ops"].sum().gt(0).all()


def _shuffled_texts(df) -> list[tuple[set[str], int]]:
    """Collect df; then, for each shuffle in its final plan that moved a `text` column, its
    output columns and the rows it wrote (Spark's own metrics)."""
    return [(output_columns(node), metric(node, "shuffleRecordsWritten")) for node in executed_nodes(df)
            if node.nodeName() == "Exchange" and "text" in output_columns(node)]


def test_distill_moves_only_pending_texts(make_ctx, tmp_path):
    """The expert pass covers a sample of raw_docs: only the sample's raw texts are shuffled to the
    join, and on a later run only the documents not distilled yet, from either side."""
    raw, expert = write_docs(tmp_path / "in", DOCS)
    ingest.run(make_ctx("ingest"), [str(raw)])
    outputs = expert.read_text().splitlines()
    for first, last in ((0, 4), (4, 7)):
        batch = tmp_path / f"outputs-{first}.jsonl"
        batch.write_text("\n".join(outputs[first:last]) + "\n")
        expert_import.run(make_ctx("expert"), str(batch))
        ctx = make_ctx("distill")  # a run reads the lake as it is when the run first reads it
        shuffled = _shuffled_texts(distill.pending(ctx, ctx.config.fingerprint("program", "chunking", "distill")))
        raw_side = [rows for columns, rows in shuffled if "expert_model" not in columns]
        expert_side = [rows for columns, rows in shuffled if "expert_model" in columns]
        assert raw_side == expert_side == [last - first], shuffled
        assert distill.run(make_ctx("distill"))["counts"]["docs"] == last - first
    assert {d for d in _rows(make_ctx("x"), "distill_samples")["doc_id"]} == {d.doc_id for d in DOCS[:7]}


def test_sql_time_travel_and_history(make_ctx, corpus, tmp_path, capsys):
    raw_dir, _ = corpus
    ingest.run(make_ctx("ingest"), [str(raw_dir / "docs.jsonl")])
    (tmp_path / "later.jsonl").write_text('{"id": "later", "text": "added in a second run"}\n')
    ingest.run(make_ctx("ingest"), [str(tmp_path / "later.jsonl")])
    ctx = make_ctx("sql")
    sql.run(ctx, "SELECT doc_id FROM raw_docs WHERE doc_id = 'later'")
    assert "| later|" in capsys.readouterr().out
    sql.register(ctx)
    assert ctx.spark.sql("SELECT count(*) AS n FROM raw_docs").first()["n"] == len(DOCS) + 1
    sql.register(ctx, sql.parse_as_of(["raw_docs=0"]))
    assert ctx.spark.sql("SELECT count(*) AS n FROM raw_docs").first()["n"] == len(DOCS)  # before the 2nd run
    with pytest.raises(ValueError, match="TABLE=N"):
        sql.parse_as_of(["nosuch=1"])
    sql.history(ctx, "raw_docs")
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [e["version"] for e in entries] == [1, 0] and entries[0]["rows_added"] == 1
    with pytest.raises(ValueError, match="unknown table"):
        sql.history(ctx, "bogus")


@pytest.fixture(scope="module")
def cli_lake(spark, tmp_path_factory):
    """A lake made through the CLI by two ingests (raw_docs versions 0 and 1); the --set naming it."""
    root = tmp_path_factory.mktemp("cli")
    lake = ["--set", f"lake.path={root / 'lake'}"]
    for doc_id, text in (("a", "one"), ("b", "two")):
        (root / f"{doc_id}.jsonl").write_text(json.dumps({"id": doc_id, "text": text}) + "\n")
        assert cli.main(["ingest", str(root / f"{doc_id}.jsonl"), *lake]) == 0
    return lake


def _table_rows(out: str) -> list[list[str]]:
    """The header and rows of the table Spark's show() printed."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]


def test_cli_sql_history_and_as_of_version(cli_lake, capsys):
    capsys.readouterr()
    assert cli.main(["sql", "SELECT doc_id, text FROM raw_docs ORDER BY doc_id", *cli_lake]) == 0
    assert _table_rows(capsys.readouterr().out) == [["doc_id", "text"], ["a", "one"], ["b", "two"]]
    assert cli.main(["sql", "SELECT doc_id FROM raw_docs", "--as-of-version", "raw_docs=0", *cli_lake]) == 0
    assert _table_rows(capsys.readouterr().out) == [["doc_id"], ["a"]]  # before the second ingest
    assert cli.main(["sql", "SELECT doc_id FROM raw_docs ORDER BY doc_id", "--limit", "1", *cli_lake]) == 0
    assert _table_rows(capsys.readouterr().out) == [["doc_id"], ["a"]]
    assert cli.main(["history", "raw_docs", *cli_lake]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["version"] for e in entries] == [1, 0] and [e["rows_added"] for e in entries] == [1, 1]
    assert {e["user_metadata"]["stage"] for e in entries} == {"ingest"}
    for limit in ("0", "-3"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["sql", "SELECT 1", "--limit", limit, *cli_lake])
        assert exit_.value.code == 2 and "--limit: must be a positive integer" in capsys.readouterr().err


def test_cli_errors_are_one_line(cli_lake, capsys, tmp_path):
    lake = cli_lake
    capsys.readouterr()
    # A lake.path with no table at all is a mistyped path, not an empty result (sql, report, notebooks).
    for argv in (["sql", "SELECT count(*) FROM refined_docs"], ["report", f"file://{tmp_path / 'report'}"]):
        assert cli.main([*argv, "--set", f"lake.path={tmp_path / 'nolake'}"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"refinex-spark {argv[0]}: error: no lake tables at {tmp_path / 'nolake'}"), err
    assert not (tmp_path / "report").exists()
    for argv, needle in [
        (["history", "refined_docs"], "history: error: table 'refined_docs' does not exist yet at "),
        (["sql", "SELEC 1"], "sql: error: query failed: [PARSE_SYNTAX_ERROR]"),
        (["sql", "SELECT nope FROM raw_docs"], "sql: error: query failed: [UNRESOLVED_COLUMN"),
        (["sql", "SELECT 1", "--as-of-version", "raw_docs=99"],
         "sql: error: cannot load raw_docs at version 99: its versions are 0 to 1"),
        (["sql", "SELECT 1", "--set", "spark.conf.spark.sql.session.timeZone=CET"],
         "sql: error: spark.conf.spark.sql.session.timeZone must be 'UTC'"),
        # A model no task could load: refused before any Spark job, not after every task's retries.
        (["refine", "--retry-errors", "--set", "model.path=./no-model-here"],
         "refine: error: model.path './no-model-here' is no directory and no hub id"),
        (["refine", "--set", "model.backend=openai"], "refine: error: model.backend openai needs model.base_url"),
        (["report", "s3://bucket/report"], "report: error: report output 's3://bucket/report' is a URI"),
    ]:
        assert cli.main([*argv, *lake]) == 1, argv
        err = capsys.readouterr().err
        assert err.startswith(f"refinex-spark {needle}") and err.count("\n") == 1, err
        if argv[0] == "history":  # names the declared tables, and which of them this lake has
            assert f"tables: {', '.join(TABLES)}" in err and "in this lake: raw_docs)" in err
    # A table name is checked with the arguments: a usage error, before Spark starts.
    for argv, needle in [
        (["history", "bogus"], "argument table: unknown table 'bogus' (tables: raw_docs, rejects, "),
        (["sql", "SELECT 1", "--as-of-version", "nosuch=1"], "argument --as-of-version: --as-of-version expects TABLE=N"),
        (["report", "--examples-per-status", "-1"], "argument --examples-per-status: must be an integer of at least 0"),
        (["demo", "--docs", "0"], "argument --docs: must be a positive integer, got 0"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*argv, *lake])
        assert exit_.value.code == 2 and needle in capsys.readouterr().err, argv


def test_cli_says_when_spark_cannot_start(tmp_path):
    """No usable Java: one line that names the cause, not py4j's traceback (in a fresh process,
    since this one's session is already up)."""
    import os
    import subprocess

    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java")}
    run = subprocess.run([sys.executable, "-m", "refinex_spark", "sql", "SELECT 1", "--set", f"lake.path={tmp_path}"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.splitlines()[-1] == (
        "refinex-spark sql: error: Spark could not start its JVM (master local[2]): its own message is printed "
        f"above. pyspark 4.2 needs Java 17 or 21: JAVA_HOME='{tmp_path / 'no-java'}'")


def test_cli_names_jars_that_could_not_be_fetched(tmp_path):
    """conf/yarn.yaml's Delta jars from a shell that cannot reach Maven (here: an Ivy resolver over an
    empty folder, so the test needs no network and none can help): the message points at the jars,
    not only at Java."""
    import subprocess

    (tmp_path / "empty").mkdir()
    (tmp_path / "ivysettings.xml").write_text(
        '<ivysettings><settings defaultResolver="nowhere"/><resolvers><filesystem name="nowhere">'
        f'<artifact pattern="{tmp_path}/empty/[organisation]/[module]/[artifact]-[revision].[ext]"/>'
        '</filesystem></resolvers></ivysettings>')
    package = "io.delta:delta-spark_4.2_2.13:4.4.1"
    run = subprocess.run([sys.executable, "-m", "refinex_spark", "sql", "SELECT 1", "--set", f"lake.path={tmp_path}",
                          "--set", f"spark.conf.spark.jars.packages={package}",
                          "--set", f"spark.conf.spark.jars.ivySettings={tmp_path / 'ivysettings.xml'}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "unresolved dependency" in run.stderr, run.stderr
    assert (f"If it says 'unresolved dependency', spark.jars.packages ({package}) could not be fetched: it needs "
            "Maven Central or spark.jars.repositories") in run.stderr.splitlines()[-1]


def test_demo_hints_name_a_lake_that_is_not_the_default():
    """The printed queries, pasted, read the lake the demo wrote (a bare `sql` reads ./lake)."""
    import shlex

    argv = shlex.split(demo.try_lines("/data/my lake", True)[0])
    assert argv[:2] == ["refinex-spark", "sql"] and argv[-2:] == ["--set", "lake.path=/data/my lake"]
    assert cli.build_parser().parse_args(argv[1:]).query == demo.EXAMPLE_SQL[0]
    assert "--set" not in demo.try_lines("/work/lake", False)[0]


def test_demo_bad_records_are_each_rejected(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(BAD_RECORDS) + "\n")
    got = [r["reason"] for r in read_file(str(path), IngestConfig())]
    assert got == ["malformed_json", "missing_text", "text_not_string", "empty_text", "not_an_object"]


def test_spark_submit_entry_point(tmp_path):
    """The stage runs as a real spark-submit application, whose --master wins over the config's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import refinex_spark.spark_submit as entry
    from deltalake import DeltaTable

    raw, _ = write_docs(tmp_path / "in", DOCS[:3])
    submit = Path(sys.executable).with_name("spark-submit")
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false", entry.__file__,
         "ingest", str(raw), "--set", f"lake.path={tmp_path / 'lake'}", "--set", "spark.bogus=1"],
        capture_output=True, text=True, env=env, timeout=300)
    # spark-submit forwards the Python process's stderr to its stdout
    assert done.returncode == 2 and "unknown key 'spark.bogus'" in done.stdout + done.stderr
    done = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false", entry.__file__,
         "ingest", str(raw), "--set", f"lake.path={tmp_path / 'lake'}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["counts"]["accepted"] == 3 and summary["spark_master"] == "local[1]"
    assert DeltaTable(str(tmp_path / "lake" / "raw_docs")).to_pyarrow_table().num_rows == 3
    # spark-submit's --conf wins over the environment file's value (conf/local.yaml: 8 partitions), and
    # a setting read only when the JVM starts is reported as having no effect rather than dropped silently.
    done = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=7", entry.__file__, "--env", "local",
         "sql", "SET spark.sql.shuffle.partitions", "--set", f"lake.path={tmp_path / 'lake'}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"\|\s*spark\.sql\.shuffle\.partitions\s*\|\s*7\s*\|", done.stdout), done.stdout[-2000:]
    said = done.stdout + done.stderr
    assert "spark.conf.spark.sql.shuffle.partitions='8' from the config is overridden by spark-submit's '7'" in said
    assert "spark.conf.spark.driver.extraJavaOptions from the config has no effect under spark-submit" in said
    # With no --name, spark-submit names the application after its script: the config's name stands.
    done = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false", entry.__file__,
         "sql", "SET spark.app.name", "--set", f"lake.path={tmp_path / 'lake'}", "--set", "spark.app_name=refinex-test"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and re.search(r"\|\s*spark\.app\.name\s*\|\s*refinex-test\s*\|", done.stdout), \
        done.stdout[-2000:] + done.stderr[-2000:]


def test_rerunning_the_demo_adds_no_rows(spark, demo_lake):
    """Every stage again on the demo's lake, train included (which rewrites the model): no table grows."""
    lake = Lake(spark, demo_lake.lake)
    before = {t: lake.read(t).count() for t in TABLES if lake.exists(t)}
    assert before["refined_docs"] > 0
    ctx = RunContext(demo_lake, spark, lake, StageStats("demo", new_run_id("demo")))
    data = Path(demo_lake.lake.path).parent / "data"  # the demo_lake fixture's corpus, reused
    stages = demo.run(ctx, n_docs=60, workdir=str(data))["stages"]
    assert stages["refine"]["pending"] == 0 and stages["distill"]["docs"] == 0
    assert {t: Lake(spark, demo_lake.lake).read(t).count() for t in before} == before


def test_distributed_training_runs_ddp_processes_that_read_the_samples_file(spark, demo_lake, tmp_path):
    """`train --distributed` in local mode with two processes (DDP over gloo): the driver streams the
    samples into one file, each process reads it and trains on its half of every batch, and
    rank 0 writes the model."""
    out = tmp_path / "model"
    config = demo_lake.model_copy(update={"train": demo_lake.train.model_copy(
        update={"output_dir": str(out), "processes": 2, "epochs": 0.25})})
    ctx = RunContext(config, spark, Lake(spark, config.lake), StageStats("train", new_run_id("train")))
    summary = train.run(ctx, init_tiny=True, distributed=True)
    metrics = summary["metrics"]
    kept = ctx.read("distill_samples").where("kept").count()
    assert summary["counts"]["samples"] == kept > 0
    assert not (out / train.SAMPLES_FILE).exists()  # read by both processes, then removed with the model written
    assert metrics["n_train"] + metrics["n_eval"] + metrics["dropped_too_long"] == kept
    # Two ranks share each step's batches: half the steps one process would take.
    batch = config.train.batch_size
    assert metrics["world_size"] == 2 and metrics["completed"]
    assert metrics["max_steps"] == math.ceil(math.ceil(metrics["n_train"] / (2 * batch)) * 0.25)
    assert read_model_card(out)["refinex"]["metrics"]["world_size"] == 2


@pytest.mark.parametrize("path, master, expected", [
    ("./models/refine", "local[2]", Path("models/refine").resolve()),
    ("/mnt/shared/models/refine", "yarn", Path("/mnt/shared/models/refine")),
    ("/mnt/m/refine v2 [%]", "yarn", Path("/mnt/m/refine v2 [%]")),  # no lake-path rules: a plain directory
    ("file:///dbfs/models/refine", "yarn", "is a URI"),
    ("./models/refine", "yarn", "is relative"),  # the driver container's directory: gone with it
    ("hdfs:///models/refine", "local[2]", "is a URI"),  # would become a local directory named hdfs:
    ("s3://bucket/models/refine", "yarn", "is a URI"),
])
def test_train_output_dir_is_a_path_the_writers_can_use(path, master, expected):
    if isinstance(expected, Path):
        assert train.output_dir(path, master) == expected
    else:
        with pytest.raises(ValueError, match=expected):
            train.output_dir(path, master)


def test_distributed_training_processes():
    conf = {"spark.executor.instances": "4", "spark.executor.resource.gpu.amount": "2",
            "spark.task.resource.gpu.amount": "1"}
    def count(train_cfg, master, settings):  # type: ignore[no-untyped-def]
        return train.processes(train_cfg, master, lambda key, default: settings.get(key, default))

    one_per_gpu = TrainConfig()
    assert count(one_per_gpu, "yarn", conf) == 8
    assert count(one_per_gpu, "local[2]", {}) == 1 and count(TrainConfig(processes=2), "local[2]", {}) == 2
    assert count(TrainConfig(processes=3), "yarn", conf) == 3
    for unknown in ({**conf, "spark.dynamicAllocation.enabled": "true"},
                    {k: v for k, v in conf.items() if k != "spark.executor.instances"}):
        with pytest.raises(ValueError, match="set train.processes"):
            count(one_per_gpu, "yarn", unknown)
        assert count(TrainConfig(processes=3), "yarn", unknown) == 3
    # conf/yarn.yaml's CPU-friendly setting: TorchDistributor would refuse it with a traceback.
    with pytest.raises(ValueError, match="spark.task.resource.gpu.amount=1"):
        count(TrainConfig(processes=3), "yarn", {k: v for k, v in conf.items() if k != "spark.task.resource.gpu.amount"})
