"""Reading what Spark did from a query's final physical plan (adaptive stages included)."""

from __future__ import annotations

from collections.abc import Iterator


def executed_nodes(df) -> Iterator:
    """Collect df, then yield every node of its executed plan (JVM objects, classic sessions only)."""
    df.collect()
    pending = [df._jdf.queryExecution().executedPlan()]
    while pending:
        node = pending.pop()
        name = node.nodeName()
        if name == "AdaptiveSparkPlan":
            pending.append(node.executedPlan())
        elif name.endswith("QueryStage"):
            pending.append(node.plan())
        else:
            yield node
            pending.extend(map(node.children().apply, range(node.children().size())))


def output_columns(node) -> set[str]:
    return {a.name() for a in map(node.output().apply, range(node.output().size()))}


def metric(node, name: str) -> int:
    return node.metrics().apply(name).value()
