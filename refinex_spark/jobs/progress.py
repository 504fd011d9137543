"""Live progress of a long stage: tasks add counts to a Counter accumulator as they finish (PySpark
accumulators travel with task results), and a driver thread prints a line of them every few seconds.

Spark Connect has no SparkContext, so no accumulators: there the stage runs without live lines (its
end-of-run summary comes from the written rows either way).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from pyspark.accumulators import Accumulator, AccumulatorParam

Line = Callable[[dict[str, int], float], str]  # (counts so far, seconds since start) -> the line to print


class _CounterParam(AccumulatorParam):
    def zero(self, value: Counter) -> Counter:
        return Counter()

    def addInPlace(self, value1: Counter, value2: Counter) -> Counter:
        value1.update(value2)
        return value1


@contextmanager
def progress(spark: Any, line: Line, interval_s: float, stream: TextIO | None = None) -> Iterator[Accumulator | None]:
    """An accumulator for the tasks' counts (None on Spark Connect), printed as `line` every interval_s
    while the block runs and once at its end."""
    try:
        accumulator = spark.sparkContext.accumulator(Counter(), _CounterParam())
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        yield None
        return
    started, stop = time.perf_counter(), threading.Event()

    def show() -> None:
        print(line(dict(accumulator.value), time.perf_counter() - started), file=stream or sys.stderr, flush=True)

    def loop() -> None:
        while not stop.wait(interval_s):
            show()

    printer = threading.Thread(target=loop, name="progress", daemon=True)
    printer.start()
    try:
        yield accumulator
    finally:
        stop.set()
        printer.join()
        show()
