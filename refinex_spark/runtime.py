"""What every stage run carries: config, Spark, lake, run id, and one place for stats and timing."""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

from .config import Config


class ConcurrentRunError(RuntimeError):
    """Two runs of a stage worked from the same table snapshot; the later one must be rerun."""


def new_run_id(stage: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stage}-{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass
class StageStats:
    """Counters and phase timings of one stage run, printed once at the end as JSON."""

    stage: str
    run_id: str
    counts: Counter = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(phase, time.perf_counter() - start)

    def add_time(self, phase: str, seconds: float) -> None:
        """Add to a phase's time: a phase run several times (a commit per slice) reports its total."""
        self.timings[phase] = round(self.timings.get(phase, 0.0) + seconds, 3)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "run_id": self.run_id, "counts": dict(sorted(self.counts.items())),
                "seconds": self.timings, **self.info}

    def report(self, stream=sys.stdout) -> None:
        print(json.dumps(self.as_dict(), indent=2, default=str), file=stream, flush=True)


@contextmanager
def persisted(df: Any) -> Iterator[Any]:
    """df persisted for the block and released however the block ends: a notebook runs stage
    after stage in one session, failed ones (a ConcurrentRunError, say) included."""
    df = df.persist()
    try:
        yield df
    finally:
        df.unpersist()


@dataclass
class RunContext:
    config: Config
    spark: Any  # pyspark.sql.SparkSession; untyped so the pure core never imports Spark through here
    lake: Any   # refinex_spark.lake.Lake
    stats: StageStats
    # Table versions this run read: its inputs are pinned to one snapshot, and its commits use them.
    read_versions: dict[str, int | None] = field(default_factory=dict)
    commits: Counter = field(default_factory=Counter)  # commits this run made, per table

    def read(self, table: str):
        """The table at the version this run first saw (an empty frame if it does not exist yet)."""
        if table not in self.read_versions:
            self.read_versions[table] = self.lake.version(table)
        version = self.read_versions[table]
        if version is None:  # it did not exist then: still empty to this run, whatever was committed since
            return self.lake.empty(table)
        return self.lake.read(table, version=version)

    @property
    def run_id(self) -> str:
        return self.stats.run_id

    @property
    def stage(self) -> str:
        return self.stats.stage

    def for_stage(self, stage: str) -> "RunContext":
        """A context for another stage on the same Spark session and lake (the demo chains stages)."""
        return RunContext(self.config, self.spark, self.lake, StageStats(stage=stage, run_id=new_run_id(stage)))

    def _next_transaction(self, table: str) -> tuple[str, int | None, int]:
        """(app id, table version this run read, the app transaction version of its next commit)."""
        app = f"refinex-{table}"
        current = self.read_versions[table] if table in self.read_versions else self.lake.version(table)
        last = None if current is None else self.lake.last_transaction(table, app, current)
        return app, current, (0 if last is None else last + 1) + self.commits[table]

    def check_not_overtaken(self, table: str) -> None:
        """ConcurrentRunError now, before costly work (paid expert requests), if another run has committed
        to table since this run read it: this run's commit would be refused anyway."""
        app, current, txn_version = self._next_transaction(table)
        latest = self.lake.version(table)
        done = None if latest is None else self.lake.last_transaction(table, app, latest)
        if done is not None and done >= txn_version:
            raise ConcurrentRunError(f"{table}: another run committed to it since this run read version {current}; "
                                     "nothing more of this run was done, run it again")

    def append(self, table: str, df, *, fingerprint: str):
        """Commit df to a lake table as one transaction.

        The app transaction version is one above the last one in the snapshot this run read (plus
        the run's earlier commits to the table), so of two runs that computed their rows from the
        same snapshot, or from two snapshots apart only by commits of no run (OPTIMIZE, compaction),
        only the first commits. The app id is the table's, whichever stage writes: with one per
        stage, a commit of another stage (import writes `rejects` too) between two ingests' reads
        gave them different versions, and both wrote the same rejects.
        """
        app, current, txn_version = self._next_transaction(table)
        info = self.lake.append(table, df, stage=self.stage, run_id=self.run_id, fingerprint=fingerprint,
                                txn_app_id=app, txn_version=txn_version)
        self.commits[table] += not info.skipped
        self.stats.counts[f"rows_written.{table}"] += info.rows if not info.skipped else 0
        self.stats.add_time(f"commit.{table}", info.seconds)  # refine and expert generate commit once per slice
        if info.skipped and info.reason.startswith("already committed"):
            # Another run computed its rows from the same snapshot and committed first: this run's
            # rows may overlap them, so nothing was written. A rerun starts from the new snapshot.
            kept = (f"this run's {self.commits[table]} earlier commit(s) stand, the rest was not written"
                    if self.commits[table] else "nothing of this run was written")
            raise ConcurrentRunError(f"{table}: another run committed to it since this run read version "
                                     f"{current}; {kept}, run it again ({info.reason})")
        return info


def open_run(config: Config, stage: str) -> RunContext:
    from .lake import Lake
    from .spark_session import get_spark, spark_master

    spark = get_spark(config)
    stats = StageStats(stage=stage, run_id=new_run_id(stage))
    stats.info["spark_master"] = spark_master(spark)
    return RunContext(config=config, spark=spark, lake=Lake(spark, config.lake), stats=stats)
