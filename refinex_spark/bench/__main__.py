"""`python -m refinex_spark.bench SUITE [options]`: run one benchmark suite.

Suites live in modules of this package and are imported only when asked for, so `core` runs
without Spark or torch being importable. Each suite's `main(argv)` prints one JSON object.
"""

from __future__ import annotations

import importlib
import sys

SUITES = {
    "core": "distill vs a flat alignment, 1 MB distill, chunking, apply_program, token economy",
    "spark": "Spark stages vs the core in one process, ingest rate, Delta commit overhead",
    "refine": "refine model throughput",
}


def _usage() -> str:
    lines = ["usage: python -m refinex_spark.bench SUITE [options]", "", "suites:"]
    lines += [f"  {name:8s} {what}" for name, what in SUITES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if not args or args[0] not in SUITES:
        print(f"{_usage()}\n\nerror: expected a suite name, got {args[0] if args else 'nothing'!r}", file=sys.stderr)
        return 2
    name = f"{__package__}.{args[0]}"
    try:
        suite = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:
            raise  # the suite exists but one of its own imports is missing: show the real error
        print(f"error: benchmark suite {args[0]!r} is not installed ({name} is missing)", file=sys.stderr)
        return 2
    suite.main(args[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
