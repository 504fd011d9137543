"""sql and history: query the lake with Spark SQL, every table registered as a view."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from pyspark.errors import PySparkException
from pyspark.logger import PySparkLogger

from ..runtime import RunContext
from ..schemas import TABLES
from ..views import register_views


def parse_as_of(items: list[str]) -> dict[str, int]:
    """["raw_docs=3"] -> {"raw_docs": 3}; table names are checked against the declared tables."""
    out: dict[str, int] = {}
    for item in items:
        m = re.fullmatch(r"([a-z_]+)=(\d+)", item)
        if not m or m.group(1) not in TABLES:
            raise ValueError(f"--as-of-version expects TABLE=N with TABLE in {sorted(TABLES)}, got {item!r}")
        out[m.group(1)] = int(m.group(2))
    return out


def check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r} (tables: {', '.join(TABLES)})")


def register(ctx: RunContext, as_of: dict[str, int] | None = None) -> list[str]:
    """Every table as a temp view (at the requested versions), then the audit views over them.

    A table no stage has written yet is an empty view, but a lake with no table at all is a wrong
    lake.path, not an empty result: refused."""
    if not any(ctx.lake.exists(t) for t in TABLES):
        raise ValueError(f"no lake tables at {ctx.lake.root} (lake.path "
                         f"{ctx.config.lake.path!r}): set lake.path to your lake (--set lake.path=...), or run ingest first")
    return ctx.lake.register_views(ctx.spark, as_of) + register_views(ctx.spark)


@contextmanager
def _user_query_errors() -> Iterator[None]:
    """Spark's errors about the user's query (or a version it cannot time-travel to) as a one-line ValueError.

    PySpark also logs such an error with its JVM stack trace; that log is muted here, the caller reports it.
    """
    # PySpark's own logger class: it logs with keyword arguments a plain logging.Logger would refuse.
    loggers = [PySparkLogger.getLogger(n) for n in ("SQLQueryContextLogger", "DataFrameQueryContextLogger")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    except PySparkException as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ValueError(f"query failed: {first.strip()}") from e
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def run(ctx: RunContext, query: str, limit: int = 50, as_of: list[str] | None = None) -> None:
    versions = parse_as_of(as_of or [])
    with _user_query_errors():
        register(ctx, versions)
        ctx.spark.sql(query).show(n=limit, truncate=80, vertical=False)


def history(ctx: RunContext, table: str) -> None:
    check_table(table)
    entries = ctx.lake.history(table)
    if not entries:  # a declared table no stage has written yet: say so rather than print nothing
        existing = [t for t in TABLES if ctx.lake.exists(t)]
        raise ValueError(f"table {table!r} does not exist yet at {ctx.lake.location(table)} "
                         f"(tables: {', '.join(TABLES)}; in this lake: {', '.join(existing) or 'none'})")
    for entry in entries:
        print(json.dumps(entry, default=str))
