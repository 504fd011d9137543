"""sql and history: query the lake with Spark SQL, every table registered as a view."""

from __future__ import annotations

import json
import re

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


def register(ctx: RunContext, as_of: dict[str, int] | None = None) -> list[str]:
    """Every table as a temp view (at the requested versions), then the audit views over them."""
    return ctx.lake.register_views(ctx.spark, as_of) + register_views(ctx.spark)


def run(ctx: RunContext, query: str, limit: int = 50, as_of: list[str] | None = None) -> None:
    register(ctx, parse_as_of(as_of or []))
    ctx.spark.sql(query).show(n=limit, truncate=80, vertical=False)


def history(ctx: RunContext, table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r} (tables: {', '.join(TABLES)})")
    for entry in ctx.lake.history(table):
        print(json.dumps(entry, default=str))
