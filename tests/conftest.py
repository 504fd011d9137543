"""Shared fixtures: one local Spark session for the whole test run, and a fresh lake per test."""

from __future__ import annotations

import pytest

from refinex_spark.config import Config, LakeConfig, SparkConfig


@pytest.fixture(scope="session")
def spark():
    from refinex_spark.spark_session import get_spark

    config = Config(spark=SparkConfig(master="local[2]", app_name="refinex-spark-tests", conf={
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }))
    session = get_spark(config)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module, restored after it: tiny matrices gain nothing from
    intra-op threads, and on a busy 2-core machine two spinning threads per process stall each
    other (training measured 20x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tmp_lake(spark, tmp_path):
    """A Lake (delta-rs engine here) rooted in a fresh directory; lake.config.path is that directory."""
    from refinex_spark.lake import Lake

    return Lake(spark, LakeConfig(path=str(tmp_path / "lake")))


@pytest.fixture
def make_ctx(spark, tmp_path):
    """make_ctx(stage, *overrides) -> a RunContext on a lake under tmp_path (shared by the test's stages)."""
    from refinex_spark.config import load_config
    from refinex_spark.lake import Lake
    from refinex_spark.runtime import RunContext, StageStats, new_run_id

    def make(stage: str, *overrides: str, files: tuple[str, ...] = ()) -> RunContext:
        config = load_config(files=files, overrides=[f"lake.path={tmp_path / 'lake'}",
                                                     f"train.output_dir={tmp_path / 'model'}",
                                                     f"model.path={tmp_path / 'model'}", *overrides])
        return RunContext(config, spark, Lake(spark, config.lake), StageStats(stage, new_run_id(stage)))

    return make


@pytest.fixture(scope="session")
def demo_lake(spark, tmp_path_factory):
    """A small lake built by the demo (ingest, expert import, distill, train tiny, refine): its Config."""
    from refinex_spark.config import CONF_DIR, load_config
    from refinex_spark.jobs import demo
    from refinex_spark.lake import Lake
    from refinex_spark.runtime import RunContext, StageStats, new_run_id

    root = tmp_path_factory.mktemp("demo")
    config = load_config(files=[CONF_DIR / "demo.yaml"], overrides=[
        f"lake.path={root / 'lake'}", f"train.output_dir={root / 'model'}", f"model.path={root / 'model'}"])
    ctx = RunContext(config, spark, Lake(spark, config.lake), StageStats("demo", new_run_id("demo")))
    demo.run(ctx, n_docs=60, workdir=str(root / "data"))
    return config
