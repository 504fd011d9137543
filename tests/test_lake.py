"""The lake on a real local Spark and real Delta tables (delta-rs engine: no Delta jars here)."""

from __future__ import annotations

import json
import os
import shutil
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake import Schema as DeltaSchema
from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from refinex_spark.config import Config, ConfigError, LakeConfig, SparkConfig
from refinex_spark.lake import CommitInfo, Lake, LakeError, resolve_engine, resolve_root
from refinex_spark.schemas import TABLES, Column, TableSpec
from refinex_spark.spark_session import (DELTA_CATALOG, DELTA_EXTENSION, DELTA_PACKAGE, FIXED_CONF,
                                         delta_classes_available, jvm_has_class, session_conf)

UTC = timezone.utc
GOLDEN = Path(__file__).parent / "golden" / "lake_schemas.json"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- helpers ---------------------------------------------------------------------------------

def random_value(rng: random.Random, typ: str):
    if typ == "string":
        return rng.choice(["", "plain", "naïve ünïcödé ✓ 🚀", "line\nbreak\r\n\ttab", "x" * 2000,
                           "'quote\" \\ back"]) + str(rng.randrange(10**6))
    if typ == "long":
        return rng.choice([0, -1, 2**63 - 1, -(2**63), rng.randrange(-10**12, 10**12)])
    if typ == "int":
        return rng.choice([0, 2**31 - 1, -(2**31), rng.randrange(-1000, 1000)])
    if typ == "double":
        return rng.choice([0.0, -2.5, 1e308, 5e-324, rng.uniform(-1e6, 1e6)])
    if typ == "bool":
        return rng.random() < 0.5
    assert typ == "timestamp"
    return EPOCH + timedelta(microseconds=rng.randrange(-2 * 10**15, 7 * 10**15))  # ~1906..2191


def random_rows(spec: TableSpec, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{c.name: None if c.nullable and rng.random() < 0.3 else random_value(rng, c.type) for c in spec.fields}
            for _ in range(n)]


def frame(spark, table: str, rows: list[dict]):
    spec = TABLES[table]
    return spark.createDataFrame([tuple(r[c] for c in spec.column_names) for r in rows], spec.spark_schema())


def canonical(rows: list[dict]) -> list[tuple]:
    """Rows as comparable tuples, timestamps as epoch micros (so tz objects of either reader compare equal)."""
    def norm(v):
        return (v - EPOCH) // timedelta(microseconds=1) if isinstance(v, datetime) else v
    return sorted((tuple((k, norm(v)) for k, v in sorted(r.items())) for r in rows), key=repr)


def via_spark(lake: Lake, table: str, version: int | None = None) -> list[tuple]:
    return canonical(lake.read(table, version=version).toArrow().to_pylist())


def via_deltalake(lake: Lake, table: str, version: int | None = None) -> list[tuple]:
    return canonical(DeltaTable(lake.location(table), version=version).to_pyarrow_table().to_pylist())


def rejects(n: int, seed: int = 0) -> list[dict]:
    return random_rows(TABLES["rejects"], n, seed)


def append(lake: Lake, table: str, df, *, app: str = "app", txn: int = 0, run_id: str = "run-1") -> CommitInfo:
    return lake.append(table, df, stage="test", run_id=run_id, fingerprint="fp", txn_app_id=app, txn_version=txn)


def table_files(lake: Lake, table: str) -> set[str]:
    return {p.name for p in Path(lake.location(table)).glob("*.parquet")}


# --- session and engine ----------------------------------------------------------------------

def test_session_has_the_settings_the_lake_relies_on(spark):
    for key, value in FIXED_CONF.items():
        assert spark.conf.get(key) == value
    assert spark.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"


def test_engine_auto_resolves_to_delta_rs_without_the_jars(spark, tmp_lake):
    assert jvm_has_class(spark, "org.apache.spark.sql.SparkSession") is True  # the probe can say yes
    assert delta_classes_available(spark) is False
    assert resolve_engine(spark, LakeConfig()) == "delta-rs"
    assert tmp_lake.engine == "delta-rs"


def test_forcing_the_spark_engine_without_the_jars_is_a_clear_error(spark, tmp_path):
    with pytest.raises(LakeError, match="Delta Lake classes") as err:
        Lake(spark, LakeConfig(path=str(tmp_path), engine="spark"))
    assert DELTA_PACKAGE in str(err.value)


def test_a_lake_the_delta_rs_engine_cannot_reach_is_a_clear_error(spark):
    config = LakeConfig(path="dbfs:/mnt/lake", engine="delta-rs")
    with pytest.raises(LakeError, match=r"lake.path dbfs:/mnt/lake: the delta-rs engine cannot reach it .*lake.engine"):
        Lake(spark, config)


def test_catalog_tables_need_the_spark_engine(spark, tmp_path):
    with pytest.raises(LakeError, match="catalog_schema=main.refinex needs the spark engine"):
        Lake(spark, LakeConfig(path=str(tmp_path), catalog_schema="main.refinex"))


def test_session_conf_adds_delta_only_when_the_jars_will_be_there(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    plain = session_conf(Config(lake=LakeConfig(engine="auto")))
    assert "spark.sql.extensions" not in plain and "spark.sql.catalog.spark_catalog" not in plain
    assert "spark.sql.extensions" not in session_conf(Config(lake=LakeConfig(engine="delta-rs")))

    forced = session_conf(Config(lake=LakeConfig(engine="spark"), spark=SparkConfig(
        conf={"spark.sql.extensions": "com.example.Ext"})))
    assert forced["spark.sql.extensions"] == f"com.example.Ext,{DELTA_EXTENSION}"
    assert forced["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG

    packaged = session_conf(Config(lake=LakeConfig(engine="auto"), spark=SparkConfig(
        conf={"spark.jars.packages": DELTA_PACKAGE, "spark.sql.extensions": DELTA_EXTENSION})))
    assert packaged["spark.sql.extensions"] == DELTA_EXTENSION  # not added twice

    # Under spark-submit its settings win over the config's, and its --packages count as the jars.
    submitted = session_conf(Config(lake=LakeConfig(engine="auto"), spark=SparkConfig(
        conf={"spark.sql.shuffle.partitions": "8", "spark.sql.extensions": "com.example.Ext"})),
        launched={"spark.sql.shuffle.partitions": "7", "spark.jars.packages": DELTA_PACKAGE,
                  "spark.sql.extensions": "com.example.Other"})
    assert submitted["spark.sql.shuffle.partitions"] == "7"
    assert submitted["spark.sql.extensions"] == f"com.example.Other,{DELTA_EXTENSION}"
    # ... but not over what the lake relies on; and the config's jars, too late for a running JVM, are none.
    late = session_conf(Config(lake=LakeConfig(engine="auto"), spark=SparkConfig(conf={"spark.jars.packages": DELTA_PACKAGE})),
                        launched={"spark.databricks.delta.properties.defaults.enableDeletionVectors": "true"})
    assert late["spark.databricks.delta.properties.defaults.enableDeletionVectors"] == "false"
    assert "spark.jars.packages" not in late and "spark.sql.extensions" not in late

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")  # built in and preconfigured there
    assert "spark.sql.extensions" not in session_conf(Config(lake=LakeConfig(engine="spark")))


def test_session_conf_refuses_a_non_utc_session():
    with pytest.raises(ConfigError, match="spark.sql.session.timeZone must be 'UTC'"):
        session_conf(Config(spark=SparkConfig(conf={"spark.sql.session.timeZone": "Europe/Paris"})))


# --- paths and names -------------------------------------------------------------------------

@pytest.mark.parametrize("path, expected", [
    ("file:///data/lake", "/data/lake"),
    ("file:/data/lake", "/data/lake"),
    ("file://localhost/data/lake", "/data/lake"),
    ("/data/lake/", "/data/lake"),
    ("/data/../data/lake", "/data/lake"),
    ("s3://bucket/lake/", "s3://bucket/lake"),
    ("abfss://box@acct.dfs.core.windows.net/lake", "abfss://box@acct.dfs.core.windows.net/lake"),
    ("dbfs:/mnt/lake", "dbfs:/mnt/lake"),
])
def test_resolve_root(path, expected):
    assert resolve_root(path) == expected


def test_resolve_root_makes_relative_and_home_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("./lake") == str(tmp_path.resolve() / "lake")
    for relative in ("data:2024/lake", "lake:v2"):  # a colon without a slash after it names no scheme
        assert resolve_root(relative) == str(tmp_path.resolve() / relative)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_root("~/lake") == str(tmp_path.resolve() / "lake")


@pytest.mark.parametrize("path, needle", [
    ("", "empty"), ("   ", "empty"), ("/a\x00b", "NUL or newline"), ("/a\nb", "NUL or newline"),
    ("/a\rb", "NUL or newline"), ("/lake[1]", "glob"), ("/lake*", "glob"), ("/my%20lake", "URI escape"),
    ("/runs/run#1/lake", "URI fragment"),
    ("file://host/lake", "absolute local"),
    ("file:lake", "absolute local"),
])
def test_resolve_root_refuses(path, needle):
    with pytest.raises(LakeError, match=needle):
        resolve_root(path)


@pytest.mark.parametrize("master", ["yarn", "spark://host:7077", "k8s://https://api:6443", "connect"])
def test_a_relative_lake_path_is_refused_off_local_masters(master):
    for relative in ("./lake", "lake", "data/lake"):
        with pytest.raises(LakeError, match=r"lake.path .* is relative.*hdfs://, s3://, abfss://, dbfs:/"):
            resolve_root(relative, master)
    assert resolve_root("/mnt/shared/lake", master) == "/mnt/shared/lake"  # a shared mount
    assert resolve_root("hdfs:///data/lake", master) == "hdfs:///data/lake"


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "local-cluster[2,1,1024]"])
def test_a_relative_lake_path_is_fine_on_local_masters(master, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_root("./lake", master) == str(tmp_path.resolve() / "lake")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r*?[]{}:%#\\"),
               min_size=1).filter(lambda s: s.strip()))
def test_resolve_root_gives_a_stable_absolute_path(path):
    root = resolve_root(path)
    assert root.startswith("/") and resolve_root(root) == root


def test_unknown_tables_are_refused(tmp_lake, spark):
    for call in (lambda: tmp_lake.read("raw_docs; DROP"), lambda: tmp_lake.location("../etc"),
                 lambda: tmp_lake.history("nope"), lambda: append(tmp_lake, "nope", spark.range(1))):
        with pytest.raises(LakeError, match="unknown table"):
            call()


# --- schemas ---------------------------------------------------------------------------------

def test_declared_schemas_match_the_golden_delta_schemas():
    """The table formats are a contract: changing one must be deliberate (REFINEX_UPDATE_GOLDEN=1)."""
    actual = {name: [[f["name"], f["type"], f["nullable"]]
                     for f in json.loads(DeltaSchema.from_arrow(spec.arrow_schema()).to_json())["fields"]]
              for name, spec in TABLES.items()}
    if os.environ.get("REFINEX_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(actual, indent=1) + "\n")
    assert actual == json.loads(GOLDEN.read_text())


def test_arrow_and_spark_schemas_agree():
    for spec in TABLES.values():
        arrow, spark_schema = spec.arrow_schema(), spec.spark_schema()
        assert arrow.names == spark_schema.fieldNames() == spec.column_names
        assert [f.nullable for f in arrow] == [f.nullable for f in spark_schema.fields]
        assert [f.metadata[b"comment"].decode() for f in arrow] == [f.metadata["comment"] for f in spark_schema.fields]
        assert all(c.doc for c in spec.fields)
        assert arrow.field("created_at").type == pa.timestamp("us", tz="UTC")
        assert spark_schema["created_at"].dataType.typeName() == "timestamp"  # not timestamp_ntz


@pytest.mark.parametrize("fields, needle", [
    ((Column("a", "string", True, ""), Column("a", "long", True, "")), "duplicate"),
    ((Column("a", "varchar", True, ""),), "unknown column types"),
    ((Column("run_id", "string", False, ""),), "no column 'created_at'"),
    ((Column("run_id", "long", False, ""), Column("created_at", "timestamp", False, "")), "run_id must be a string"),
])
def test_table_spec_validation(fields, needle):
    with pytest.raises((ValueError, KeyError), match=needle):
        TableSpec("t", fields)


# --- writes and reads ------------------------------------------------------------------------

def test_every_table_round_trips_identically_through_spark_and_deltalake(spark, tmp_lake):
    for i, (name, spec) in enumerate(TABLES.items()):
        rows = random_rows(spec, 25, seed=i)
        info = append(tmp_lake, name, frame(spark, name, rows).repartition(3))  # several files, one commit
        assert (info.version, info.rows, info.skipped) == (0, 25, False)
        assert len(DeltaTable(tmp_lake.location(name)).file_uris()) > 1
        assert via_spark(tmp_lake, name) == via_deltalake(tmp_lake, name) == canonical(rows)


def test_appends_accumulate_with_user_metadata_in_history(spark, tmp_lake):
    first, second = rejects(7, seed=1), rejects(5, seed=2)
    a = append(tmp_lake, "rejects", frame(spark, "rejects", first), txn=0, run_id="run-a")
    b = append(tmp_lake, "rejects", frame(spark, "rejects", second), txn=1, run_id="run-b")
    assert (a.version, a.rows, b.version, b.rows) == (0, 7, 1, 5)
    assert tmp_lake.version("rejects") == 1
    assert via_spark(tmp_lake, "rejects") == via_deltalake(tmp_lake, "rejects") == canonical(first + second)
    history = tmp_lake.history("rejects")
    assert [h["version"] for h in history] == [1, 0]
    assert [h["rows_added"] for h in history] == [5, 7]
    assert [h["user_metadata"] for h in history] == [{"run_id": r, "stage": "test", "fingerprint": "fp"}
                                                     for r in ("run-b", "run-a")]
    assert history[0]["operation"] == "WRITE" and history[1]["operation"] == "CREATE TABLE"
    assert all(timedelta(0) <= datetime.now(UTC) - h["timestamp"] < timedelta(minutes=5) for h in history)


def test_time_travel_reads_each_version(spark, tmp_lake):
    batches = [rejects(3 + i, seed=10 + i) for i in range(3)]
    for i, rows in enumerate(batches):
        append(tmp_lake, "rejects", frame(spark, "rejects", rows), txn=i)
    for v in range(3):
        expected = canonical([r for rows in batches[:v + 1] for r in rows])
        assert via_spark(tmp_lake, "rejects", version=v) == via_deltalake(tmp_lake, "rejects", version=v) == expected
    with pytest.raises(LakeError, match="version 7"):
        tmp_lake.read("rejects", version=7)


def test_a_lake_path_with_spaces_reads_back(spark, tmp_path):
    """delta-rs hands back percent-encoded file URIs; Spark must get the real paths."""
    lake = Lake(spark, LakeConfig(path=str(tmp_path / "my lake")))
    batches = [rejects(3, seed=20), rejects(2, seed=21)]
    for i, rows in enumerate(batches):
        append(lake, "rejects", frame(spark, "rejects", rows), txn=i)
    assert via_spark(lake, "rejects") == via_deltalake(lake, "rejects") == canonical(batches[0] + batches[1])


def test_missing_table_reads_empty_with_the_declared_schema(tmp_lake):
    df = tmp_lake.read("refined_docs")
    assert df.schema.fieldNames() == TABLES["refined_docs"].column_names
    assert df.count() == 0
    assert not tmp_lake.exists("refined_docs") and tmp_lake.version("refined_docs") is None
    assert tmp_lake.history("refined_docs") == []
    with pytest.raises(LakeError, match="does not exist"):
        tmp_lake.read("refined_docs", version=0)


def test_empty_frame_commits_nothing(spark, tmp_lake):
    info = append(tmp_lake, "rejects", frame(spark, "rejects", []))
    assert info.skipped and info.version is None and info.rows == 0 and info.reason == "empty input"
    assert not tmp_lake.exists("rejects")
    assert not list(Path(tmp_lake.location("rejects")).glob("_staging/*"))


# --- idempotency -----------------------------------------------------------------------------

def test_repeated_app_transaction_commits_nothing_and_newer_one_commits(spark, tmp_lake):
    rows = rejects(4, seed=3)
    df = frame(spark, "rejects", rows)
    assert not append(tmp_lake, "rejects", df, txn=5).skipped
    files = table_files(tmp_lake, "rejects")
    for txn in (5, 4, 0):
        again = append(tmp_lake, "rejects", df, txn=txn)
        assert again.skipped and again.version is None and "already committed" in again.reason
    assert table_files(tmp_lake, "rejects") == files  # nothing staged or moved was left behind
    assert tmp_lake.version("rejects") == 0
    assert append(tmp_lake, "rejects", df, app="other-app", txn=5).version == 1
    assert append(tmp_lake, "rejects", df, txn=6).version == 2
    assert via_spark(tmp_lake, "rejects") == canonical(rows * 3)
    assert DeltaTable(tmp_lake.location("rejects")).transaction_version("app") == 6


def test_a_retried_write_is_skipped_before_its_frame_is_computed(spark, tmp_lake):
    append(tmp_lake, "rejects", frame(spark, "rejects", rejects(2)), txn=1)

    @F.udf("string")
    def boom(s):
        raise RuntimeError("the frame was computed")

    poisoned = frame(spark, "rejects", rejects(2, seed=9)).withColumn("detail", boom("detail"))
    assert append(tmp_lake, "rejects", poisoned, txn=1).skipped
    with pytest.raises(Exception, match="the frame was computed"):  # the same frame, when it must be computed
        append(tmp_lake, "rejects", poisoned, txn=2)
    assert tmp_lake.version("rejects") == 0
    assert not list(Path(tmp_lake.location("rejects")).glob("_staging/*"))


def test_concurrent_appends_of_one_app_transaction_commit_once(spark, tmp_lake):
    rows = rejects(6, seed=4)
    df = frame(spark, "rejects", rows)
    apps = ["same", "same", "same", "other"]
    with ThreadPoolExecutor(len(apps)) as pool:
        infos = list(pool.map(lambda ia: append(tmp_lake, "rejects", df, app=ia[1], txn=0, run_id=f"run-{ia[0]}"),
                              enumerate(apps)))
    committed = [(i, info) for i, info in enumerate(infos) if not info.skipped]
    assert sorted(apps[i] for i, _ in committed) == ["other", "same"]
    assert sorted(info.version for _, info in committed) == [0, 1]
    by_version = {h["version"]: h["user_metadata"]["run_id"] for h in tmp_lake.history("rejects")}
    assert all(by_version[info.version] == f"run-{i}" for i, info in committed)  # each knows its own version
    assert via_deltalake(tmp_lake, "rejects") == canonical(rows * 2)
    assert len(table_files(tmp_lake, "rejects")) == len(DeltaTable(tmp_lake.location("rejects")).file_uris())


# --- crash safety ----------------------------------------------------------------------------

def test_of_runs_that_read_a_table_before_each_others_commits_only_the_first_commits(spark, make_ctx):
    """Ingest and expert import both write `rejects`: a commit of either since a run read the
    table means that run's rows were computed without it, so it must not commit them."""
    from refinex_spark.runtime import ConcurrentRunError

    make_ctx("ingest").append("rejects", frame(spark, "rejects", rejects(1, seed=40)), fingerprint="fp")
    a = make_ctx("ingest")
    a.read("rejects")
    make_ctx("expert").append("rejects", frame(spark, "rejects", rejects(1, seed=41)), fingerprint="fp")
    b = make_ctx("ingest")
    b.read("rejects")  # sees the import's commit
    with pytest.raises(ConcurrentRunError, match="rejects: another run committed to it since this run read "
                                                 "version 0; nothing of this run was written, run it again"):
        a.append("rejects", frame(spark, "rejects", rejects(1, seed=42)), fingerprint="fp")
    b.append("rejects", frame(spark, "rejects", rejects(1, seed=43)), fingerprint="fp")
    assert len(via_deltalake(b.lake, "rejects")) == 3


def test_files_of_a_commit_that_crashed_are_never_read(spark, tmp_lake, monkeypatch):
    committed = rejects(5, seed=5)
    append(tmp_lake, "rejects", frame(spark, "rejects", committed), txn=0)
    before = table_files(tmp_lake, "rejects")

    def crash(*args, **kwargs):
        raise RuntimeError("driver died before the commit")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", crash)
    lost = rejects(4, seed=6)
    with pytest.raises(RuntimeError, match="driver died"):
        append(tmp_lake, "rejects", frame(spark, "rejects", lost), txn=1)
    monkeypatch.undo()

    assert table_files(tmp_lake, "rejects") > before  # the orphans are really there...
    assert tmp_lake.version("rejects") == 0
    assert via_spark(tmp_lake, "rejects") == via_deltalake(tmp_lake, "rejects") == canonical(committed)  # ...unread
    assert append(tmp_lake, "rejects", frame(spark, "rejects", lost), txn=1).version == 1  # the retry commits once
    assert via_spark(tmp_lake, "rejects") == canonical(committed + lost)


def test_files_a_crashed_commit_moved_in_are_removed_by_a_later_run(spark, tmp_path, monkeypatch):
    config = LakeConfig(path=str(tmp_path / "lake"), staging_retention_hours=0)
    first = Lake(spark, config)
    committed = rejects(3, seed=12)
    append(first, "rejects", frame(spark, "rejects", committed), txn=0)
    append(first, "rejects", frame(spark, "rejects", rejects(2, seed=13)), txn=1)
    monkeypatch.setattr(DeltaTable, "create_write_transaction",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("driver died before the commit")))
    with pytest.raises(RuntimeError, match="driver died"):
        append(first, "rejects", frame(spark, "rejects", rejects(4, seed=14)), txn=2)
    monkeypatch.undo()
    live = {u.rsplit("/", 1)[-1] for u in DeltaTable(first.location("rejects")).file_uris()}
    orphans = table_files(first, "rejects") - live
    assert orphans  # moved into the table, never committed

    time.sleep(0.01)
    later = Lake(spark, config)  # the next run: the crashed write is older than it, past the retention
    append(later, "rejects", frame(spark, "rejects", rejects(1, seed=15)), txn=2)
    left = table_files(later, "rejects")
    assert not orphans & left and live <= left  # orphans gone, every committed file kept
    assert via_spark(later, "rejects", version=0) == via_deltalake(later, "rejects", version=0) == canonical(committed)
    assert len(via_spark(later, "rejects")) == 3 + 2 + 1


def test_files_of_versions_whose_log_was_cleaned_up_are_not_swept(spark, tmp_path):
    """After a checkpoint and log cleanup the oldest commits leave the history; their files, which
    retained versions still list, are not taken for orphans of failed writes."""
    config = LakeConfig(path=str(tmp_path / "lake"), staging_retention_hours=0)
    first = Lake(spark, config)
    committed = rejects(3, seed=40)
    append(first, "rejects", frame(spark, "rejects", committed), txn=0)
    append(first, "rejects", frame(spark, "rejects", rejects(2, seed=41)), txn=1)
    table = DeltaTable(first.location("rejects"))
    table.alter.set_table_properties({"delta.logRetentionDuration": "interval 0 seconds"})  # version 2
    table.create_checkpoint()
    table.cleanup_metadata()  # the log of versions 0 and 1 is gone; version 2 still lists their files
    assert [c["version"] for c in DeltaTable(first.location("rejects")).history()] == [2]
    # Rewriting version 0's file (as refine --retry-errors deletes rows) takes it out of the latest snapshot.
    first.delete("rejects", {"reason": committed[0]["reason"]}, stage="test", run_id="run-1", fingerprint="fp")
    time.sleep(0.01)
    later = Lake(spark, config)  # the next run sweeps, with no retention
    append(later, "rejects", frame(spark, "rejects", rejects(1, seed=42)), txn=2)
    assert len(via_deltalake(later, "rejects", version=2)) == 5  # time travel still finds every file


def test_a_commit_written_before_its_call_failed_keeps_its_files(spark, tmp_path, monkeypatch):
    """A conflict error raised after this commit's log entry landed: the app transaction found is
    this commit's own, so its files stay (deleted, the version would list missing files)."""
    from deltalake.exceptions import CommitFailedError

    lake = Lake(spark, LakeConfig(path=str(tmp_path / "lake")))
    first, second = rejects(3, seed=50), rejects(2, seed=51)
    append(lake, "rejects", frame(spark, "rejects", first), txn=0)
    real = DeltaTable.create_write_transaction

    def written_then_failed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(self, *args, **kwargs)
        raise CommitFailedError("the log entry landed, then the call failed")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", written_then_failed)
    assert append(lake, "rejects", frame(spark, "rejects", second), txn=1).version == 1
    assert via_deltalake(lake, "rejects") == canonical(first + second)


def test_files_are_stamped_when_they_move_into_the_table(spark, tmp_path):
    """A sweep judges a data file by the time in its name: that is when it moved in, not when its
    slice began (hours of GPU before it), so another run never takes an in-flight commit's files."""
    from pyspark.sql import functions as F

    lake = Lake(spark, LakeConfig(path=str(tmp_path / "lake")))
    slow = F.udf(lambda reason: time.sleep(1.0) or reason, "string")  # a slice that takes a while
    df = frame(spark, "rejects", rejects(1, seed=60))
    began_ms = int(time.time() * 1000)
    append(lake, "rejects", df.withColumn("reason", slow("reason")), txn=0)
    [name] = table_files(lake, "rejects")
    assert int(re.search(r"-(\d{13})-[0-9a-f]{32}-\d{5}\.snappy\.parquet$", name).group(1)) >= began_ms + 1000


def test_stale_staging_dirs_are_removed_by_a_later_run_and_never_read(spark, tmp_path):
    config = LakeConfig(path=str(tmp_path / "lake"), staging_retention_hours=0)
    first = Lake(spark, config)
    committed = rejects(3, seed=7)
    append(first, "rejects", frame(spark, "rejects", committed), txn=0)
    staging = Path(first.location("rejects")) / "_staging"

    def staged(start_ms: int, name: str | None = None) -> Path:
        d = staging / (name or f"{start_ms:013d}-{uuid.uuid4().hex}")
        d.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rejects(2, seed=8), schema=TABLES["rejects"].arrow_schema()),
                       d / "part-00000.snappy.parquet")
        return d

    now_ms = int(time.time() * 1000)
    crashed = staged(now_ms - 60_000)  # a write of an earlier run that died before committing
    foreign = staged(0, name="not-ours")
    assert via_spark(first, "rejects") == canonical(committed)

    time.sleep(0.01)
    later = Lake(spark, config)  # the next run
    concurrent = staged(int(time.time() * 1000) + 60_000)  # started after the next run began
    append(later, "rejects", frame(spark, "rejects", rejects(1, seed=9)), txn=1)
    assert not crashed.exists()
    assert concurrent.exists() and foreign.exists()

    kept = Lake(spark, config.model_copy(update={"staging_retention_hours": 24.0}))
    old = staged(now_ms - 3_600_000)
    append(kept, "rejects", frame(spark, "rejects", rejects(1, seed=10)), txn=2)
    assert old.exists()  # younger than the retention: may belong to a concurrent writer


def test_a_write_running_longer_than_the_retention_is_not_swept(spark, tmp_path):
    """A staging dir is judged by when its files were last written, not by when its write began."""
    config = LakeConfig(path=str(tmp_path / "lake"), staging_retention_hours=1)
    lake = Lake(spark, config)
    append(lake, "rejects", frame(spark, "rejects", rejects(2, seed=30)), txn=0)
    two_hours_ago = time.time() - 7200
    dirs = {}
    for name, mtime in [("running", None), ("dead", two_hours_ago)]:
        d = Path(lake.location("rejects")) / "_staging" / f"{int(two_hours_ago * 1000):013d}-{uuid.uuid4().hex}"
        (d / "_temporary").mkdir(parents=True)
        part = d / "_temporary" / "part-00000.snappy.parquet"
        part.write_bytes(b"x")
        if mtime is not None:  # everything in it last written then
            for path in (part, part.parent):
                os.utime(path, (mtime, mtime))
        dirs[name] = d
    append(Lake(spark, config), "rejects", frame(spark, "rejects", rejects(1, seed=31)), txn=1)  # the next run
    assert dirs["running"].exists() and not dirs["dead"].exists()


def test_leftovers_another_run_sweeps_first_are_no_error(spark, tmp_path):
    """Two runs starting together both find a dead write; whichever deletes it second carries on."""
    config = LakeConfig(path=str(tmp_path / "lake"), staging_retention_hours=0)
    lake = Lake(spark, config)
    append(lake, "rejects", frame(spark, "rejects", rejects(2, seed=40)), txn=0)
    dead = Path(lake.location("rejects")) / "_staging" / f"{int(time.time() * 1000) - 60_000:013d}-{uuid.uuid4().hex}"
    dead.mkdir(parents=True)
    (dead / "part-00000.snappy.parquet").write_bytes(b"x")
    time.sleep(0.01)
    later = Lake(spark, config)
    fs = later._engine.fs

    class OtherRunFirst:
        """The lake's own file system, but the other run deletes each leftover just before this one does."""

        def __getattr__(self, name):
            return getattr(fs, name)

        def delete_dir(self, path):
            shutil.rmtree(path)
            fs.delete_dir(path)

    engine, sweep = later._engine, later._engine._remove_stale_writes

    def racing_sweep(*args):
        engine.fs = OtherRunFirst()  # only while sweeping: Parquet readers want the real one
        try:
            sweep(*args)
        finally:
            engine.fs = fs

    engine._remove_stale_writes = racing_sweep
    append(later, "rejects", frame(spark, "rejects", rejects(1, seed=41)), txn=1)
    assert not dead.exists() and len(via_spark(later, "rejects")) == 3


# --- format guarantees -----------------------------------------------------------------------

def test_big_files_are_cut_into_row_groups_that_readers_can_split(spark, tmp_path):
    """One task's file (the ingest of one big input file) must still be read by several tasks."""
    lake = Lake(spark, LakeConfig(path=str(tmp_path / "lake"), row_group_mb=1))
    rng = random.Random(0)
    rows = [{**r, "text": "".join(rng.choices("abcdefghij klmnopqrstuvwxyz", k=10_000))}
            for r in random_rows(TABLES["raw_docs"], 300, 1)]
    assert append(lake, "raw_docs", frame(spark, "raw_docs", rows).coalesce(1)).rows == 300
    (path,) = Path(lake.location("raw_docs")).glob("*.parquet")
    assert pq.ParquetFile(path).metadata.num_row_groups >= 3
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(1 << 20))  # splits smaller than this 3 MB file
    try:
        tasks = lake.read("raw_docs").select("doc_id").rdd.glom().map(len).collect()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert sum(tasks) == 300 and sum(n > 0 for n in tasks) >= 3
    Lake(spark, LakeConfig(path=str(tmp_path / "other")))  # the session's default again for later tests


def test_timestamps_are_stored_and_read_as_utc_instants(spark, tmp_lake):
    rows = rejects(3, seed=11)
    plus5 = timezone(timedelta(hours=5))
    instants = [datetime(2024, 3, 31, 1, 30, tzinfo=plus5), datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                datetime(2038, 1, 19, 3, 14, 8, 1, tzinfo=timezone(timedelta(hours=-8)))]
    for r, t in zip(rows, instants):
        r["created_at"] = t
    append(tmp_lake, "rejects", frame(spark, "rejects", rows))

    table = DeltaTable(tmp_lake.location("rejects"))
    assert json.loads(table.schema().to_json())["fields"][-1]["type"] == "timestamp"
    arrow = table.to_pyarrow_table()
    assert arrow.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    for uri in table.file_uris():
        assert pq.read_schema(uri).field("created_at").type == pa.timestamp("us", tz="UTC")
    micros = sorted((t - EPOCH) // timedelta(microseconds=1) for t in instants)
    assert sorted(r["m"] for r in tmp_lake.read("rejects").select(F.unix_micros("created_at").alias("m")).collect()) \
        == micros
    assert sorted((t - EPOCH) // timedelta(microseconds=1) for t in arrow.column("created_at").to_pylist()) == micros


def test_tables_have_no_deletion_vectors_and_no_column_mapping(spark, tmp_lake):
    append(tmp_lake, "raw_docs", frame(spark, "raw_docs", random_rows(TABLES["raw_docs"], 3, seed=12)))
    table = DeltaTable(tmp_lake.location("raw_docs"))
    protocol = table.protocol()
    features = set(protocol.reader_features or []) | set(protocol.writer_features or [])
    assert not features & {"deletionVectors", "columnMapping"}
    assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
    config = table.metadata().configuration
    assert config.get("delta.enableDeletionVectors") == "false" and "delta.columnMapping.mode" not in config
    assert table.metadata().partition_columns == []


def _written_by_an_older_declaration(lake: Lake, table: str, drop: list[str], seed: int) -> list[dict]:
    """The table as a release that declared it without `drop` wrote it (through deltalake); its rows."""
    arrow = TABLES[table].arrow_schema()
    old = pa.schema([f for f in arrow if f.name not in drop])
    rows = [{k: v for k, v in r.items() if k not in drop} for r in random_rows(TABLES[table], 4, seed=seed)]
    write_deltalake(lake.location(table), pa.Table.from_pylist(rows, schema=old),
                    configuration={"delta.enableDeletionVectors": "false"})
    return rows


def test_a_table_gains_the_columns_declared_since_it_was_written(spark, tmp_lake):
    """An added column (declared last, nullable) reads null in an older lake and joins the table, at its
    end and in a commit of its own, on the next append; both readers then agree, and nothing else moved."""
    [added] = [c.name for c in TABLES["distill_samples"].fields][TABLES["distill_samples"].column_names.index(
        "created_at") + 1:]
    old = _written_by_an_older_declaration(tmp_lake, "distill_samples", [added], seed=21)
    assert via_spark(tmp_lake, "distill_samples") == canonical([{**r, added: None} for r in old])
    new = random_rows(TABLES["distill_samples"], 3, seed=22)
    new[0][added] = EPOCH
    info = append(tmp_lake, "distill_samples", frame(spark, "distill_samples", new))
    assert info.version == 2 and info.rows == 3  # version 1 added the column
    expected = canonical([{**r, added: None} for r in old] + new)
    assert via_spark(tmp_lake, "distill_samples") == via_deltalake(tmp_lake, "distill_samples") == expected
    table = DeltaTable(tmp_lake.location("distill_samples"))
    assert [f.name for f in table.schema().fields] == TABLES["distill_samples"].column_names
    assert (table.protocol().min_reader_version, table.protocol().min_writer_version) == (1, 2)
    assert json.loads(table.history(2)[1]["userMetadata"])["run_id"] == "run-1"  # the column's commit is tagged
    assert via_spark(tmp_lake, "distill_samples", version=0) == canonical([{**r, added: None} for r in old])


@pytest.mark.parametrize("drop", [["detail"], ["created_at"]])
def test_a_table_that_differs_otherwise_from_its_declaration_is_refused(spark, tmp_lake, drop):
    """Only nullable columns at the end are added: a column missing elsewhere (or a NOT NULL one) is a
    different table, and nothing is committed to it."""
    _written_by_an_older_declaration(tmp_lake, "rejects", drop, seed=23)
    with pytest.raises(LakeError, match="schema other than the declared one"):
        append(tmp_lake, "rejects", frame(spark, "rejects", rejects(2, seed=24)))
    assert DeltaTable(tmp_lake.location("rejects")).version() == 0


def test_delete_takes_declared_columns_and_any_value_as_data(spark, tmp_lake):
    rows = random_rows(TABLES["raw_docs"], 3, seed=17)
    rows[0]["doc_id"], rows[1]["doc_id"], rows[2]["doc_id"] = "it's' OR '1'='1", "plain", "other"
    append(tmp_lake, "raw_docs", frame(spark, "raw_docs", rows))
    kw = dict(stage="test", run_id="run-2", fingerprint="fp")
    with pytest.raises(LakeError, match="cannot delete by"):
        tmp_lake.delete("raw_docs", {"doc_id = doc_id OR 1": "x"}, **kw)
    assert tmp_lake.delete("raw_docs", {"doc_id": "it's' OR '1'='1"}, **kw) == 1  # a quote is data, not SQL
    assert sorted(r["doc_id"] for r in tmp_lake.read("raw_docs").collect()) == ["other", "plain"]
    assert tmp_lake.history("raw_docs")[0]["user_metadata"]["run_id"] == "run-2"
    assert tmp_lake.delete("rejects", {"reason": "x"}, **kw) == 0  # no table yet: nothing to delete


def test_frames_are_conformed_to_the_declared_schema(spark, tmp_lake):
    rows = rejects(3, seed=13)
    for i, r in enumerate(rows):
        r["line_no"] = i
    spec = TABLES["rejects"]
    df = frame(spark, "rejects", rows)
    reordered = df.select(*reversed(spec.column_names)).withColumn("line_no", F.col("line_no").cast("int"))
    assert append(tmp_lake, "rejects", reordered).rows == 3
    assert via_spark(tmp_lake, "rejects") == canonical(rows)
    with pytest.raises(LakeError, match=r"unexpected \['extra'\]"):
        append(tmp_lake, "rejects", df.withColumn("extra", F.lit(1)), txn=1)
    with pytest.raises(LakeError, match=r"missing \['detail'\]"):
        append(tmp_lake, "rejects", df.drop("detail"), txn=1)


def test_nulls_in_not_null_columns_are_refused(spark, tmp_lake):
    rows = rejects(3, seed=14)
    df = frame(spark, "rejects", rows).withColumn(
        "reason", F.when(F.col("line_no").isNull() | (F.col("line_no") >= 0), None).otherwise(F.col("reason")))
    with pytest.raises(LakeError, match=r"NOT NULL columns have nulls \{'reason': \d+\}"):
        append(tmp_lake, "rejects", df)
    assert not tmp_lake.exists("rejects")
    assert not table_files(tmp_lake, "rejects")
    assert not list(Path(tmp_lake.location("rejects")).glob("_staging/*"))


def test_partitioned_tables_need_the_spark_engine(spark, tmp_lake, monkeypatch):
    spec = TABLES["rejects"]
    monkeypatch.setitem(TABLES, "rejects", TableSpec(spec.name, spec.fields, partition_by=("stage",)))
    with pytest.raises(LakeError, match="partitioned"):
        append(tmp_lake, "rejects", frame(spark, "rejects", rejects(1)))


def test_register_views_registers_every_table_at_the_requested_versions(spark, tmp_lake):
    append(tmp_lake, "rejects", frame(spark, "rejects", rejects(4, seed=15)))
    append(tmp_lake, "raw_docs", frame(spark, "raw_docs", random_rows(TABLES["raw_docs"], 2, seed=16)))
    for name in TABLES:
        spark.catalog.dropTempView(name)
    assert tmp_lake.register_views() == list(TABLES)
    assert spark.sql("SELECT count(*) AS n FROM rejects").head()["n"] == 4
    assert spark.sql("SELECT count(*) AS n FROM raw_docs").head()["n"] == 2
    assert spark.sql("SELECT count(*) AS n FROM refined_docs").head()["n"] == 0  # not written yet: empty
    append(tmp_lake, "rejects", frame(spark, "rejects", rejects(3, seed=17)))
    tmp_lake.register_views(as_of={"rejects": 0})
    assert spark.sql("SELECT count(*) AS n FROM rejects").head()["n"] == 4
