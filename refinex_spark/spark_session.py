"""The SparkSession every stage runs on, built from the `spark` config section.

Delta's session extension and catalog are added only when the Delta jars will be on the
classpath (lake.engine=spark, or auto with the jars configured or installed); adding them
without the jars would break every catalog lookup. On Databricks Delta is built in and
preconfigured, so nothing is added there.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import sys
from pathlib import Path

from pyspark.errors import PySparkRuntimeError
from pyspark.sql import SparkSession

from .config import Config, ConfigError

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.1"

# The lake relies on these: UTC instants everywhere, and Parquet timestamps as INT64 micros
# (Spark's default INT96 is not a type delta-rs accepts for a `timestamp` column).
# No deletion vectors either: delta-rs could not read such a table (DESIGN.md); pinned here so that
# a cluster's spark-defaults.conf cannot turn them on.
FIXED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
}
DEFAULT_CONF = {"spark.sql.execution.arrow.pyspark.enabled": "true"}


def on_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def _delta_jars_configured(conf: dict[str, str]) -> bool:
    """Will the session start with delta-spark on its classpath? (Decided before the JVM exists.)"""
    if "io.delta:delta-spark" in conf.get("spark.jars.packages", "") or "delta-spark" in conf.get("spark.jars", ""):
        return True
    import pyspark

    jar_dirs = [Path(pyspark.__file__).parent / "jars"]
    if os.environ.get("SPARK_HOME"):
        jar_dirs.append(Path(os.environ["SPARK_HOME"]) / "jars")
    return any(glob.glob(str(d / "delta-spark*.jar")) for d in jar_dirs)


# Read when the JVM starts: under spark-submit it has, so the config's values of these change nothing.
LAUNCH_CONF = ("spark.jars", "spark.jars.packages", "spark.jars.repositories", "spark.driver.memory",
               "spark.driver.extraJavaOptions", "spark.driver.extraClassPath", "spark.driver.extraLibraryPath")


def session_conf(config: Config, launched: dict[str, str] | None = None) -> dict[str, str]:
    """The Spark conf get_spark builds with: defaults, the user's conf, what spark-submit set
    (`launched`, which wins over the config: its --conf is the run's own), Delta when wanted, FIXED_CONF."""
    user = dict(config.spark.conf)
    for key, value in FIXED_CONF.items():
        if key in user and user[key] != value:
            raise ConfigError(f"spark.conf.{key} must be {value!r} (the lake relies on it), got {user[key]!r}")
    if launched is not None:  # the JVM is running: settings read at its start are what it started with
        user = {k: v for k, v in user.items() if k not in LAUNCH_CONF}
    conf = {**DEFAULT_CONF, **user, **(launched or {}), **FIXED_CONF}
    engine = config.lake.engine
    if not on_databricks() and (engine == "spark" or (engine == "auto" and _delta_jars_configured(conf))):
        extensions = [e.strip() for e in conf.get("spark.sql.extensions", "").split(",") if e.strip()]
        if DELTA_EXTENSION not in extensions:
            extensions.append(DELTA_EXTENSION)
        conf["spark.sql.extensions"] = ",".join(extensions)
        conf.setdefault("spark.sql.catalog.spark_catalog", DELTA_CATALOG)
    return conf


class SparkStartError(RuntimeError):
    """The JVM behind a classic session did not start (no Java, a bad JAVA_HOME)."""


def launched_by_spark_submit() -> bool:
    """spark-submit starts the JVM first and hands its gateway to Python through this variable."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


@functools.cache  # once per process: a notebook or a test session builds the session many times
def _warn(message: str) -> None:
    print(f"refinex-spark: warning: {message}", file=sys.stderr, flush=True)


def _launched_conf(config: Config) -> dict[str, str]:
    """The conf spark-submit started the driver with (its --conf, --packages, spark-defaults.conf),
    after warning about each config setting it overrides or that comes too late to apply."""
    from pyspark import SparkConf
    from pyspark.core.context import SparkContext

    SparkContext._ensure_initialized()  # connects to spark-submit's JVM; SparkConf() then reads its settings
    launched = dict(SparkConf().getAll())
    # Without --name, spark-submit names the application after its script: then spark.app_name does.
    if launched.get("spark.app.name") == os.path.basename(sys.argv[0] if sys.argv else ""):
        del launched["spark.app.name"]
    for key, value in config.spark.conf.items():
        if key in FIXED_CONF:
            continue
        if key in launched and launched[key] != value:
            _warn(f"spark.conf.{key}={value!r} from the config is overridden by spark-submit's {launched[key]!r}")
        elif key not in launched and key in LAUNCH_CONF:
            _warn(f"spark.conf.{key} from the config has no effect under spark-submit (the driver JVM is "
                  f"already running): pass it to spark-submit (--conf {key}=...)")
    return launched


def get_spark(config: Config) -> SparkSession:
    # Under spark-submit, --master and --conf decide where the application runs, not config; with
    # SPARK_REMOTE set (Spark Connect: databricks-connect, a Connect server), the server does.
    remote = os.environ.get("SPARK_REMOTE")
    submitted = launched_by_spark_submit()
    master = None if submitted or remote else config.spark.master
    if (master or remote or "").startswith("local"):  # SPARK_REMOTE=local[N]: a Connect server started here
        # Local Python workers must run this interpreter (its venv has pyarrow, pandas and the
        # package), not whatever `python3` is first on PATH; PySpark reads only the env var.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(config.spark.app_name)
    if master:
        builder = builder.master(master)
    # Databricks starts its Python driver on a gateway too, with its session configured already.
    launched = _launched_conf(config) if submitted and not remote and not on_databricks() else None
    conf = session_conf(config, launched)
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except PySparkRuntimeError as e:
        if e.getCondition() != "JAVA_GATEWAY_EXITED":
            raise
        java_home = os.environ.get("JAVA_HOME")
        packages = conf.get("spark.jars.packages")
        raise SparkStartError(
            f"Spark could not start its JVM (master {master}): its own message is printed above. "
            # conf/yarn.yaml's Delta jars, run from a shell that cannot reach Maven: not a Java problem.
            + (f"If it says 'unresolved dependency', spark.jars.packages ({packages}) could not be fetched: "
               "it needs Maven Central or spark.jars.repositories (lake.engine delta-rs needs no jars). "
               if packages else "")
            + f"pyspark 4.2 needs Java 17 or 21: JAVA_HOME={java_home!r}"
            + ("" if java_home else f", java on PATH: {shutil.which('java')!r}")) from e
    # getOrCreate may hand back a running session: make sure its runtime confs are the lake's.
    for key, value in FIXED_CONF.items():
        spark.conf.set(key, value)
    return spark


def spark_master(spark: SparkSession) -> str:
    """The master URL ("local[2]", "yarn", ...); Spark Connect sessions have no SparkContext to ask.

    A Connect server elsewhere (SPARK_REMOTE=sc://...) counts as a cluster whatever its own
    master: its tasks do not see this machine's relative paths, so they are refused as on one.
    """
    try:
        return spark.sparkContext.master
    except (AttributeError, NotImplementedError):  # Spark Connect (pyspark 4 / 3.x raise these)
        remote = os.environ.get("SPARK_REMOTE", "")
        if remote and not remote.startswith("local"):
            return remote
        return spark.conf.get("spark.master", None) or "connect"


def jvm_has_class(spark: SparkSession, class_name: str) -> bool | None:
    """Whether the driver JVM can load the class; None when there is no JVM handle (Spark Connect)."""
    try:
        jvm = spark._jvm  # classic sessions only; Spark Connect raises here
    except Exception:  # noqa: BLE001 - any failure means "no JVM handle"
        return None
    if jvm is None:
        return None
    try:
        # Spark's own loader: sees --jars/--packages, which the plain py4j loader may not.
        loader = jvm.org.apache.spark.util.Utils.getContextOrSparkClassLoader()
        jvm.java.lang.Class.forName(class_name, False, loader)
        return True
    except Exception:  # noqa: BLE001 - ClassNotFoundException arrives as a Py4JJavaError
        return False


def delta_classes_available(spark: SparkSession) -> bool:
    found = jvm_has_class(spark, DELTA_EXTENSION)
    if found is not None:
        return found
    # Spark Connect: the classpath is the server's; trust Databricks or an explicit extension conf.
    try:
        return on_databricks() or DELTA_EXTENSION in (spark.conf.get("spark.sql.extensions", "") or "")
    except Exception:  # noqa: BLE001
        return False
