"""The lake: the pipeline's Delta tables, written by one of two engines.

`spark` (delta-spark jars on the classpath: Databricks, YARN with --packages): native
`format("delta")`, with `txnAppId`/`txnVersion` for idempotent appends and `userMetadata` on
every commit. `delta-rs` (the embedded default, no jars): Spark tasks write snappy Parquet into
a staging directory of the table, the driver moves the files into the table directory and
commits them as ONE Delta transaction with the `deltalake` package, carrying the same app
transaction and userMetadata. Reads take the snapshot's file list from the log, so files that
were written but never committed (a crash between write and commit) are never read.

Both engines keep the tables readable by the other: declared schemas with UTC timestamps, no
deletion vectors, no column mapping.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import reduce
from operator import and_
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction, CommitProperties, Transaction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .config import LakeConfig, lake_path_problem
from .readers import URI_SCHEME, resolve
from .schemas import TABLES, TableSpec
from .spark_session import DELTA_PACKAGE, delta_classes_available, spark_master

Engine = Literal["spark", "delta-rs"]
# Set on every table either engine creates. Column mapping is off unless asked for, in both.
TABLE_PROPERTIES = {"delta.enableDeletionVectors": "false"}
# Set by the spark engine's CREATE, a commit of its own without an app transaction: the table's app
# transactions are then one version behind its commits (see `_SparkEngine.last_transaction`).
CREATED_EMPTY = "refinex.createdEmpty"
_STAGING_DIR = re.compile(r"^(\d{13})-[0-9a-f]{32}$")  # <start epoch ms>-<uuid>
_TABLE_FILE = re.compile(r"^part-.+-((\d{13})-[0-9a-f]{32})-\d{5}\.snappy\.parquet$")  # part-<run>-<commit id>-<n>
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class LakeError(RuntimeError):
    """A lake operation was refused or failed; nothing was committed unless the message says so."""


@dataclass(frozen=True, slots=True)
class CommitInfo:
    table: str
    version: int | None  # the version this append committed; None when it committed nothing
    rows: int
    skipped: bool  # True when nothing was committed (see reason)
    seconds: float
    reason: str = ""


def resolve_root(path: str, master: str = "local", what: str = "lake.path") -> str:
    """lake.path (or another output location, `what` in errors) as Spark and delta-rs need it: an
    absolute local path, or a remote URI left as is.

    A relative path is refused unless Spark runs locally (`master` local[...]): on a cluster it names
    a directory on the driver's disk, which the executors cannot see, so their files would be lost.
    """
    problem = lake_path_problem(path or "")
    if problem:
        raise LakeError(f"{what} {path!r} {problem}")
    m = URI_SCHEME.match(path)
    if m and m.group(1).lower() != "file":
        return path.rstrip("/")  # s3://, abfss://, dbfs:/, hdfs://: the storage layer resolves these
    local = path
    if m:  # file:/p, file:///p, file://localhost/p
        local = re.sub(r"^file:(//(localhost)?)?", "", path, flags=re.IGNORECASE)
        if not local.startswith("/"):
            raise LakeError(f"{what} {path!r}: only absolute local file URIs (file:///path) are supported")
    local = os.path.expanduser(local)  # an unknown ~user stays a relative name
    if not os.path.isabs(local) and not master.startswith("local"):
        raise LakeError(f"{what} {path!r} is relative, but Spark master {master!r} runs executors on other "
                        f"machines, which cannot see the driver's directory: set {what} to shared storage "
                        "(hdfs://, s3://, abfss://, dbfs:/) or an absolute path on a mount every node shares")
    return str(Path(local).resolve())


def is_local(uri: str) -> bool:
    return not URI_SCHEME.match(uri)


def spark_path(uri: str) -> str:
    # An explicit scheme: on a cluster a bare path would resolve against fs.defaultFS (HDFS).
    return f"file://{uri}" if is_local(uri) else uri


def resolve_engine(spark: SparkSession, config: LakeConfig) -> Engine:
    available = delta_classes_available(spark)
    if config.engine == "spark" and not available:
        raise LakeError(
            "lake.engine is 'spark' but the Delta Lake classes (io.delta.sql.DeltaSparkSessionExtension) are not on "
            f"the Spark classpath: start Spark with --packages {DELTA_PACKAGE}, or set lake.engine to auto or delta-rs")
    engine: Engine = ("spark" if available else "delta-rs") if config.engine == "auto" else config.engine
    if engine == "delta-rs" and config.catalog_schema:
        raise LakeError(f"lake.catalog_schema={config.catalog_schema} needs the spark engine (catalog tables are "
                        f"written through the catalog), but the Delta Lake classes are not on the Spark classpath")
    return engine


def _user_metadata(run_id: str, stage: str, fingerprint: str) -> str:
    return json.dumps({"run_id": run_id, "stage": stage, "fingerprint": fingerprint}, sort_keys=True)


def _history_entry(version: int, timestamp: datetime, operation: str | None, user_metadata: str | None,
                   metrics: dict[str, Any] | None) -> dict[str, Any]:
    parsed: Any = user_metadata
    if user_metadata:
        try:
            parsed = json.loads(user_metadata)
        except ValueError:
            pass  # written by someone else: keep the raw string
    rows = (metrics or {}).get("numOutputRows")
    return {"version": version, "timestamp": timestamp, "operation": operation, "user_metadata": parsed,
            "rows_added": int(rows) if rows is not None else None}


class _Engine(Protocol):
    def location(self, spec: TableSpec) -> str: ...
    def exists(self, spec: TableSpec) -> bool: ...
    def read(self, spec: TableSpec, version: int | None, session: SparkSession) -> DataFrame | None: ...
    def version(self, spec: TableSpec) -> int | None: ...
    def last_transaction(self, spec: TableSpec, app_id: str, version: int) -> int | None: ...
    def history(self, spec: TableSpec) -> list[dict[str, Any]]: ...
    def append(self, spec: TableSpec, df: DataFrame, *, run_id: str, user_metadata: str, txn_app_id: str,
               txn_version: int) -> tuple[int | None, int, str]: ...
    def delete(self, spec: TableSpec, where: dict[str, str], user_metadata: str) -> int: ...


class Lake:
    """The declared tables of one lake, through the engine resolved from config.engine."""

    def __init__(self, spark: SparkSession, config: LakeConfig):
        self.spark = spark
        self.config = config
        self.engine: Engine = resolve_engine(spark, config)
        # A session setting rather than a write option, so both engines' Parquet writers see it
        # (delta-spark hands only file-system options of a write on to Parquet).
        spark.conf.set("parquet.block.size", str(config.row_group_mb << 20))
        self._engine: _Engine
        catalog = self.engine == "spark" and config.catalog_schema
        root = None if catalog else resolve_root(config.path, spark_master(spark))
        self.root = root or config.catalog_schema  # where the tables are, for messages and reports
        if self.engine == "spark":
            self._engine = _SparkEngine(spark, root, config.catalog_schema)
        else:
            # Spark's default INT96 Parquet timestamps are not a type delta-rs accepts for `timestamp`;
            # get_spark sets this, a caller-built session may not have.
            spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
            self._engine = _DeltaRsEngine(root, config.staging_retention_hours)

    @staticmethod
    def spec(table: str) -> TableSpec:
        if table not in TABLES:
            raise LakeError(f"unknown table {table!r} (tables: {', '.join(TABLES)})")
        return TABLES[table]

    def location(self, table: str) -> str:
        return self._engine.location(self.spec(table))

    def exists(self, table: str) -> bool:
        return self._engine.exists(self.spec(table))

    def version(self, table: str) -> int | None:
        return self._engine.version(self.spec(table))

    def last_transaction(self, table: str, app_id: str, version: int) -> int | None:
        """The last app transaction version of app_id in the table at `version` (None: it has none)."""
        return self._engine.last_transaction(self.spec(table), app_id, version)

    def read(self, table: str, version: int | None = None, *, session: SparkSession | None = None) -> DataFrame:
        """The table at `version` (latest if None); an empty frame of the declared schema if it does not exist.

        Either way a file scan, so `_metadata.file_path` resolves (see `jobs.slices`).
        """
        spec = self.spec(table)
        session = session or self.spark
        df = self._engine.read(spec, version, session)
        return df if df is not None else self.empty(table, session=session)

    def empty(self, table: str, *, session: SparkSession | None = None) -> DataFrame:
        """No rows, the declared schema; a file scan like a table's (`_metadata.file_path` resolves)."""
        return (session or self.spark).read.schema(self.spec(table).spark_schema()).parquet()

    def append(self, table: str, df: DataFrame, *, stage: str, run_id: str, fingerprint: str, txn_app_id: str,
               txn_version: int) -> CommitInfo:
        """Append df as one transaction; a no-op if (txn_app_id, txn_version) was already committed. An empty df
        commits nothing on delta-rs and an empty transaction on delta-spark (which finds it empty only by writing)."""
        spec = self.spec(table)
        if not txn_app_id:
            raise LakeError("txn_app_id must be a non-empty string")
        if isinstance(txn_version, bool) or not isinstance(txn_version, int) or txn_version < 0:
            raise LakeError(f"txn_version must be a non-negative int, got {txn_version!r}")
        start = time.perf_counter()
        version, rows, reason = self._engine.append(
            spec, _conform(df, spec), run_id=run_id, user_metadata=_user_metadata(run_id, stage, fingerprint),
            txn_app_id=txn_app_id, txn_version=txn_version)
        return CommitInfo(table, version, rows, version is None, time.perf_counter() - start, reason)

    def delete(self, table: str, where: dict[str, str], *, stage: str, run_id: str, fingerprint: str) -> int:
        """Delete, in one commit, the rows whose columns equal the given values; returns how many went."""
        spec = self.spec(table)
        unknown = [c for c in where if c not in spec.column_names]
        if unknown or not where:
            raise LakeError(f"{table}: cannot delete by {unknown or 'nothing'} (columns: {', '.join(spec.column_names)})")
        if not self.exists(table):
            return 0
        return self._engine.delete(spec, where, _user_metadata(run_id, stage, fingerprint))

    def history(self, table: str) -> list[dict[str, Any]]:
        """Commits, newest first: version, timestamp (UTC), operation, user_metadata (parsed), rows_added."""
        return self._engine.history(self.spec(table))

    def register_views(self, spark: SparkSession | None = None, as_of: dict[str, int] | None = None) -> list[str]:
        """Every declared table as a temp view named like the table (empty if it does not exist yet),
        at the versions in `as_of` (latest otherwise); returns the names."""
        session, as_of = spark or self.spark, as_of or {}
        for name in TABLES:
            self.read(name, version=as_of.get(name), session=session).createOrReplaceTempView(name)
        return list(TABLES)


def _own_version(table: DeltaTable, commit_id: str, since: int | None = None) -> int | None:
    """The version of the commit tagged `commit_id` after version `since` (default: any the log holds)."""
    limit = None if since is None else table.version() - since
    return next((int(c["version"]) for c in table.history(limit=limit) if c.get("refinexCommitId") == commit_id), None)


def _sql_string(value: str) -> str:
    """A SQL string literal: the value is data, whatever quotes it holds."""
    return "'" + value.replace("'", "''") + "'"


def _conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Exactly the declared columns, in order, cast to the declared types (extra or missing columns are errors)."""
    declared = spec.spark_schema()
    have = {f.name: f.dataType for f in df.schema.fields}
    missing = [n for n in declared.fieldNames() if n not in have]
    extra = [n for n in have if n not in declared.fieldNames()]
    if missing or extra:
        raise LakeError(f"{spec.name}: columns do not match the declared schema "
                        f"(missing {missing}, unexpected {extra})")
    return df.select(*[F.col(f.name) if have[f.name] == f.dataType else F.col(f.name).cast(f.dataType).alias(f.name)
                       for f in declared.fields])


def _columns_added(spec: TableSpec, have: list[tuple[Any, ...]], declared: list[tuple[Any, ...]]) -> int:
    """How many columns the declaration added since the table was written: the table must have the
    others as declared (`have` and `declared` describe columns alike, in order), and lack only nullable
    ones at the end (where Delta adds a column). Any other difference is refused."""
    if declared[:len(have)] != have or not all(c.nullable for c in spec.fields[len(have):]):
        raise LakeError(f"{spec.name} has a schema other than the declared one (columns "
                        f"{', '.join(str(c[0]) for c in have)}; declared {', '.join(spec.column_names)}); "
                        "nothing was committed")
    return len(declared) - len(have)


def _delta_columns(schema: DeltaSchema) -> list[tuple[Any, ...]]:
    return [(f["name"], json.dumps(f["type"]), f["nullable"]) for f in json.loads(schema.to_json())["fields"]]


def _already(app_id: str, txn_version: int) -> str:
    return f"already committed: {app_id} has a transaction >= {txn_version}"


def _txn_done(table: DeltaTable, app_id: str, txn_version: int) -> bool:
    done = table.transaction_version(app_id)
    return done is not None and done >= txn_version


class _DeltaRsEngine:
    def __init__(self, root: str, staging_retention_hours: float):
        self.root = root
        self.retention_ms = int(staging_retention_hours * 3_600_000)
        self.started_ms = int(time.time() * 1000)
        self._swept: set[str] = set()  # tables whose leftovers from before this run are removed
        try:
            self.fs, self.fs_root = (pafs.LocalFileSystem(), root) if is_local(root) else resolve(root)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise LakeError(f"lake.path {root}: the delta-rs engine cannot reach it ({e}); where the Delta jars "
                            "are (Databricks, --packages), lake.engine auto or spark writes through Spark") from e

    def location(self, spec: TableSpec) -> str:
        return f"{self.root}/{spec.name}"

    def exists(self, spec: TableSpec) -> bool:
        return DeltaTable.is_deltatable(self.location(spec))

    def version(self, spec: TableSpec) -> int | None:
        return DeltaTable(self.location(spec)).version() if self.exists(spec) else None

    def last_transaction(self, spec: TableSpec, app_id: str, version: int) -> int | None:
        return DeltaTable(self.location(spec), version=version).transaction_version(app_id)

    def read(self, spec: TableSpec, version: int | None, session: SparkSession) -> DataFrame | None:
        if not self.exists(spec):
            if version is not None:
                raise LakeError(f"table {spec.name} does not exist, so it has no version {version}")
            return None
        try:
            files = DeltaTable(self.location(spec), version=version).file_uris()
        except Exception as e:  # deltalake raises its own errors for versions that were never written
            latest = self.version(spec)
            if version is not None and latest is not None and version > latest:
                raise LakeError(f"cannot load {spec.name} at version {version}: its versions are 0 to {latest}") from e
            raise LakeError(f"cannot load {spec.name} at version {version}: {e}") from e
        if not files:
            return None
        # delta-rs percent-encodes the URIs (a space is %20), and Hadoop paths are taken literally.
        return session.read.schema(spec.spark_schema()).parquet(*[spark_path(unquote(f)) for f in files])

    def history(self, spec: TableSpec) -> list[dict[str, Any]]:
        if not self.exists(spec):
            return []
        return [_history_entry(c["version"], datetime.fromtimestamp(c["timestamp"] / 1000, timezone.utc),
                               c.get("operation"), c.get("userMetadata"), c.get("operationMetrics"))
                for c in DeltaTable(self.location(spec)).history()]

    def _remove_stale_writes(self, uri: str, table_dir: str) -> None:
        """Leftovers of writes that never committed, from before this run and past the retention:
        staging dirs, and data files a commit that then failed had already moved into the table.

        A data file is deleted only when it is not in the latest snapshot, its commit id (in its name,
        stamped when the files moved in) is in no commit of the table, and it is younger than the
        oldest commit the log still holds (a checkpoint's log cleanup drops older commits, whose
        files retained versions may still list), so time travel never loses a file. The table is
        read after the directory is listed: a commit landing meanwhile is in it.
        """
        cutoff = self.started_ms - self.retention_ms

        def untouched(info: pafs.FileInfo) -> bool:
            # A write's name holds when it started; a write running longer than the retention is
            # still adding files, so nothing it wrote lately may be swept. Object stores give
            # their directories no mtime: for those the start time, checked by name, decides.
            return info.mtime_ns is None or info.mtime_ns // 1_000_000 < cutoff

        selector = pafs.FileSelector(f"{table_dir}/_staging", allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            m = _STAGING_DIR.match(info.base_name)
            if info.type != pafs.FileType.Directory or not m or int(m.group(1)) >= cutoff:
                continue
            # Another run starting now may sweep the same leftovers: gone already is done.
            contents = pafs.FileSelector(info.path, recursive=True, allow_not_found=True)
            if all(untouched(f) for f in self.fs.get_file_info(contents)):
                with suppress(FileNotFoundError):
                    self.fs.delete_dir(info.path)
        old: dict[str, list[pafs.FileInfo]] = {}  # commit id -> its files past the retention
        for info in self.fs.get_file_info(pafs.FileSelector(table_dir, allow_not_found=True)):
            m = _TABLE_FILE.match(info.base_name)
            if info.is_file and m and int(m.group(2)) < cutoff and untouched(info):
                old.setdefault(m.group(1), []).append(info)
        if old and DeltaTable.is_deltatable(uri):  # rare: only then is the table read, and its history
            table = DeltaTable(uri)
            live = {f.rsplit("/", 1)[-1] for f in table.file_uris()}
            history = table.history()
            if not history:  # a log delta-rs cannot list: no file can be shown to be no commit's
                return
            committed = {c.get("refinexCommitId") for c in history}
            # commitInfo, and so its timestamp, is optional to other writers: none known, nothing is older
            oldest = min((c["timestamp"] for c in history if isinstance(c.get("timestamp"), int)), default=0)
            old = {cid: [f for f in files if f.base_name not in live] for cid, files in old.items()
                   if cid not in committed and int(cid[:13]) >= oldest}
        for files in old.values():
            for info in files:
                with suppress(FileNotFoundError):
                    self.fs.delete_file(info.path)

    def append(self, spec: TableSpec, df: DataFrame, *, run_id: str, user_metadata: str, txn_app_id: str,
               txn_version: int) -> tuple[int | None, int, str]:
        if spec.partition_by:
            raise LakeError(f"{spec.name} is partitioned; the delta-rs engine writes unpartitioned tables only")
        uri = self.location(spec)
        # One snapshot for the whole append, brought up to date (not reloaded) when committing.
        table = DeltaTable(uri) if DeltaTable.is_deltatable(uri) else None
        if table is not None and _txn_done(table, txn_app_id, txn_version):
            # Checked before computing df: a retried stage costs nothing.
            return None, 0, _already(txn_app_id, txn_version)
        table_dir = f"{self.fs_root}/{spec.name}"
        if spec.name not in self._swept:  # leftovers predate this run: one sweep (a directory listing) is enough
            self._remove_stale_writes(uri, table_dir)
            self._swept.add(spec.name)
        staging_id = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"
        staging = f"{table_dir}/_staging/{staging_id}"
        try:
            df.write.option("compression", "snappy").parquet(spark_path(f"{uri}/_staging/{staging_id}"))
            files = self._staged_files(spec, staging)
            rows = sum(n for _, _, n, _ in files)
            if rows == 0:
                return None, 0, "empty input"
            # Stamped now, as the files move in (a slice may have run for longer than the retention):
            # another run's sweep judges moved files by this time, so it never takes an in-flight commit's.
            commit_id = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"
            prefix = f"part-{_UNSAFE_NAME.sub('_', run_id)[:64]}-{commit_id}"
            adds = []
            for i, (path, size, n, null_count) in enumerate(files):
                name = f"{prefix}-{i:05d}.snappy.parquet"
                self.fs.move(path, f"{table_dir}/{name}")
                stats = json.dumps({"numRecords": n, "nullCount": null_count}, separators=(",", ":"))
                adds.append(AddAction(name, size, {}, int(time.time() * 1000), True, stats))
            txn = Transaction(app_id=txn_app_id, version=txn_version)
            properties = CommitProperties(
                custom_metadata={"userMetadata": user_metadata, "refinexCommitId": commit_id,
                                 "operationMetrics": {"numFiles": str(len(adds)), "numOutputRows": str(rows),
                                                      "numOutputBytes": str(sum(a.size for a in adds))}},
                app_transactions=[txn])
            try:
                version = self._commit(spec, uri, table, adds, properties, commit_id, txn)
            except CommitFailedError:
                # Delta's conflict check: a concurrent commit of the same app transaction won (unless the
                # commit that holds it is this one, and the error came after it was written).
                version = _own_version(DeltaTable(uri), commit_id)
                if version is None and not _txn_done(DeltaTable(uri), txn_app_id, txn_version):
                    raise
            if version is None:  # certainly not committed, so the moved files are ours to delete
                for a in adds:
                    self.fs.delete_file(f"{table_dir}/{a.path}")
                return None, 0, _already(txn_app_id, txn_version)
            return version, rows, ""
        finally:
            if self.fs.get_file_info(staging).type != pafs.FileType.NotFound:
                self.fs.delete_dir(staging)

    def delete(self, spec: TableSpec, where: dict[str, str], user_metadata: str) -> int:
        # DataFusion SQL: a quote doubled is the only escape (a backslash is a plain character).
        predicate = " AND ".join(f"{column} = {_sql_string(value)}" for column, value in where.items())
        metrics = DeltaTable(self.location(spec)).delete(
            predicate, commit_properties=CommitProperties(custom_metadata={"userMetadata": user_metadata}))
        return int(metrics.get("num_deleted_rows") or 0)

    def _staged_files(self, spec: TableSpec, staging: str) -> list[tuple[str, int, int, dict[str, int]]]:
        """(path, size, rows, null counts) of the non-empty Parquet parts; refuses nulls in NOT NULL columns."""
        out = []
        for info in self.fs.get_file_info(pafs.FileSelector(staging)):
            if not (info.is_file and info.base_name.startswith("part-") and info.base_name.endswith(".parquet")):
                continue  # _SUCCESS, .crc checksums
            meta = pq.read_metadata(info.path, filesystem=self.fs)
            if meta.num_rows == 0:
                continue
            nulls: dict[str, int] = {}
            for j in range(meta.num_columns):
                stats = [meta.row_group(g).column(j).statistics for g in range(meta.num_row_groups)]
                if all(s is not None and s.has_null_count for s in stats):
                    nulls[meta.schema.column(j).path] = sum(s.null_count for s in stats)
            bad = {c: n for c, n in nulls.items() if n and not spec.column(c).nullable}
            if bad:
                raise LakeError(f"{spec.name}: NOT NULL columns have nulls {bad}; nothing was committed")
            out.append((info.path, info.size, meta.num_rows, nulls))
        return sorted(out)

    def _commit(self, spec: TableSpec, uri: str, table: DeltaTable | None, adds: list[AddAction],
                properties: CommitProperties, commit_id: str, txn: Transaction) -> int | None:
        """Commit adds as one transaction; the version committed, or None if the app transaction was there.

        `table` is the snapshot the append started from (None: there was no table then).
        """
        schema = DeltaSchema.from_arrow(spec.arrow_schema())
        if table is None and not DeltaTable.is_deltatable(uri):
            try:
                create_table_with_add_actions(uri, schema, adds, mode="error", description=spec.doc,
                                              configuration=TABLE_PROPERTIES, commit_properties=properties)
                return 0
            except Exception:
                if not DeltaTable.is_deltatable(uri):
                    raise
                if (own := _own_version(DeltaTable(uri), commit_id)) is not None:
                    return own  # created, then the call failed: appending again would add the rows twice
                # another writer created the table first: append to it
        if table is None:
            table = DeltaTable(uri)
        else:
            table.update_incremental()  # other writers may have committed while df was computed
        # Checked on the snapshot the commit is based on; later commits of the same app id conflict.
        if _txn_done(table, txn.app_id, txn.version):
            return None
        self._add_columns(spec, table, schema, properties)
        read_version = table.version()
        table.create_write_transaction(adds, mode="append", schema=schema, commit_properties=properties)
        # Our version is read_version + 1 unless other writers committed in between: find it by id.
        table.update_incremental()
        version = _own_version(table, commit_id, since=read_version)
        if version is None:
            raise LakeError(f"{spec.name}: commit {commit_id} succeeded but is not in the table history")
        return version

    @staticmethod
    def _add_columns(spec: TableSpec, table: DeltaTable, schema: DeltaSchema, properties: CommitProperties) -> None:
        """Add the columns the declaration added since the table was written (`_columns_added`), in a
        commit of its own."""
        added = _columns_added(spec, _delta_columns(table.schema()), _delta_columns(schema))
        if not added:
            return
        tag = CommitProperties(custom_metadata={"userMetadata": properties.custom_metadata["userMetadata"]})
        try:
            table.alter.add_columns(schema.fields[-added:], commit_properties=tag)
        except Exception:  # noqa: BLE001 - a concurrent writer may have added them first
            table.update_incremental()
            if _columns_added(spec, _delta_columns(table.schema()), _delta_columns(schema)):
                raise
        table.update_incremental()


class _SparkEngine:
    """delta-spark: the cluster path. Not exercised where the Delta jars are absent (CI)."""

    def __init__(self, spark: SparkSession, root: str | None, catalog_schema: str | None):
        self.spark = spark
        self.root = root
        self.catalog_schema = catalog_schema
        self._created_empty: dict[str, bool] = {}  # per table: whether its version 0 is our CREATE

    def location(self, spec: TableSpec) -> str:
        return f"{self.catalog_schema}.{spec.name}" if self.catalog_schema else f"{self.root}/{spec.name}"

    def _delta_table(self, spec: TableSpec):
        from delta.tables import DeltaTable as SparkDeltaTable

        if self.catalog_schema:
            return SparkDeltaTable.forName(self.spark, self.location(spec))
        return SparkDeltaTable.forPath(self.spark, spark_path(self.location(spec)))

    def exists(self, spec: TableSpec) -> bool:
        if self.catalog_schema:
            return self.spark.catalog.tableExists(self.location(spec))
        from delta.tables import DeltaTable as SparkDeltaTable

        return SparkDeltaTable.isDeltaTable(self.spark, spark_path(self.location(spec)))

    def version(self, spec: TableSpec) -> int | None:
        if not self.exists(spec):
            return None
        return int(self._delta_table(spec).history(1).select("version").head()[0])

    def last_transaction(self, spec: TableSpec, app_id: str, version: int) -> int | None:
        # delta-spark's Python API does not show app transactions. The table version stands in, less its
        # own CREATE commit (each later commit of ours carries the next one): no app transaction of ours
        # is above it, but a commit without one (OPTIMIZE, auto-compaction) moves it on.
        if spec.name not in self._created_empty:
            properties = self._delta_table(spec).detail().select("properties").head()[0] or {}
            self._created_empty[spec.name] = properties.get(CREATED_EMPTY) == "true"
        return version - 1 if self._created_empty[spec.name] else version

    def read(self, spec: TableSpec, version: int | None, session: SparkSession) -> DataFrame | None:
        if not self.exists(spec):
            if version is not None:
                raise LakeError(f"table {spec.name} does not exist, so it has no version {version}")
            return None
        if self.catalog_schema:  # identifiers: a validated schema name and a declared table name
            as_of = f" VERSION AS OF {int(version)}" if version is not None else ""
            df = session.sql(f"SELECT * FROM {self.location(spec)}{as_of}")
        else:
            reader = session.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", int(version))
            df = reader.load(spark_path(self.location(spec)))
        # A table written before the declaration added a column reads it as null until an append adds it.
        have = set(df.columns)
        return df.select(*[F.col(f.name) if f.name in have else F.lit(None).cast(f.dataType).alias(f.name)
                           for f in spec.spark_schema().fields])

    def history(self, spec: TableSpec) -> list[dict[str, Any]]:
        if not self.exists(spec):
            return []
        rows = (self._delta_table(spec).history()
                .select("version", "timestamp", "operation", "userMetadata", "operationMetrics").collect())
        # Spark hands back naive local datetimes; astimezone() reads them as local time.
        return [_history_entry(r["version"], r["timestamp"].astimezone(timezone.utc), r["operation"],
                               r["userMetadata"], r["operationMetrics"]) for r in rows]

    def _create_if_missing(self, spec: TableSpec) -> None:
        from delta.tables import DeltaTable as SparkDeltaTable

        builder = SparkDeltaTable.createIfNotExists(self.spark)
        if self.catalog_schema:
            # catalog_schema is validated as `schema` or `catalog.schema` identifiers (config.py).
            self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {self.catalog_schema}")
            builder = builder.tableName(self.location(spec))
        else:
            builder = builder.location(spark_path(self.location(spec)))
        # The declared schema, NOT NULL columns and comments included (a table created by a first write
        # would have every column nullable, and delta-rs would then refuse it as another schema).
        builder = builder.addColumns(spec.spark_schema()).comment(spec.doc)
        if spec.partition_by:
            builder = builder.partitionedBy(*spec.partition_by)
        for key, value in {**TABLE_PROPERTIES, CREATED_EMPTY: "true"}.items():
            builder = builder.property(key, value)
        builder.execute()

    def append(self, spec: TableSpec, df: DataFrame, *, run_id: str, user_metadata: str, txn_app_id: str,
               txn_version: int) -> tuple[int | None, int, str]:
        # No df.isEmpty() first: it would compute df twice (a second read and shuffle, a wasted GPU batch).
        # An empty df is then an empty commit, which still records the app transaction.
        self._create_if_missing(spec)
        before = self.version(spec)
        writer = (df.write.format("delta").mode("append")
                  .option("txnAppId", txn_app_id).option("txnVersion", str(txn_version))
                  .option("userMetadata", user_metadata))
        # Names and types: delta-spark reads every column back nullable.
        columns = lambda schema: [(f.name, f.dataType.simpleString()) for f in schema.fields]  # noqa: E731
        if _columns_added(spec, columns(self._delta_table(spec).toDF().schema), columns(spec.spark_schema())):
            writer = writer.option("mergeSchema", "true")  # Delta adds them at the end, as declared
        from delta.exceptions import ConcurrentTransactionException  # importing it maps the JVM's to it

        try:
            if self.catalog_schema:
                writer.saveAsTable(self.location(spec))
            else:
                writer.save(spark_path(self.location(spec)))
        except ConcurrentTransactionException:
            # Another run's commit of the same app transaction won the conflict check (delta-spark checks
            # txnVersion when the transaction starts, so both may have written their files).
            return None, 0, _already(txn_app_id, txn_version)
        # Delta skips an already-committed app transaction silently: no new version means skipped.
        # (A concurrent writer's commit in between would be reported as ours; Delta gives no commit id.)
        after = self.version(spec)
        if after == before:
            return None, 0, _already(txn_app_id, txn_version)
        metrics = self._delta_table(spec).history(1).select("operationMetrics").head()[0] or {}
        return after, int(metrics.get("numOutputRows", 0)), ""

    def delete(self, spec: TableSpec, where: dict[str, str], user_metadata: str) -> int:
        # A Column, not SQL text: Spark's parser reads backslash escapes in string literals.
        condition = reduce(and_, [F.col(column) == F.lit(value) for column, value in where.items()])
        before = self.version(spec)
        key = "spark.databricks.delta.commitInfo.userMetadata"  # how delta-spark tags a DELETE's commit
        self.spark.conf.set(key, user_metadata)
        try:
            self._delta_table(spec).delete(condition)
        finally:
            self.spark.conf.unset(key)
        if self.version(spec) == before:
            return 0
        metrics = self._delta_table(spec).history(1).select("operationMetrics").head()[0] or {}
        return int(metrics.get("numDeletedRows", 0))
