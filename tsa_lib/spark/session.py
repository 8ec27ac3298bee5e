"""The one SparkSession factory of the suite.

Local target: ``local[2]``-style master, Delta's SQL extension and catalog, the
Delta jars that ``make jars`` fetched from Maven Central into ``.deps/jars`` on
the classpath, a Derby-free in-memory catalog whose database points at the
project's warehouse folder, Arrow on, UI off.  Before anything starts it checks
that pyspark, delta-spark and the jar versions are a matching pair and fails
with a message naming the versions it found.

Cluster target (Databricks, EMR): ``getOrCreate`` on what the platform provides
(Delta included); only the suite's own SQL settings are applied.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from tsa_lib.config import PROJECT_ROOT, SparkConfig, StorageConfig
from tsa_lib.errors import UserError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

JARS_DIR_ENV = "TSA_DELTA_JARS"
DEFAULT_JARS_DIR = PROJECT_ROOT / ".deps" / "jars"
_DELTA_JAR = re.compile(r"^delta-spark_(?P<spark>\d+\.\d+)_(?P<scala>\d+\.\d+)-(?P<version>[0-9][^/]*)\.jar$")
_JAR_NAME = re.compile(r"^(?P<artifact>.+?)-(?P<version>\d[\w.\-]*)\.jar$")


class VersionMismatchError(UserError):
    """pyspark, delta-spark and the Delta jars are not a matching set."""


@dataclass(frozen=True)
class DeltaJars:
    """The Delta jars found on disk: the delta-spark jar's Spark/Delta versions and the files to load."""

    spark_binary: str
    delta_version: str
    files: tuple[str, ...]


def _dist_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _pyspark_range_of_delta(delta_dist: str = "delta-spark") -> Optional[str]:
    """The pyspark requirement string that the installed delta-spark declares."""
    from importlib import metadata

    try:
        reqs = metadata.requires(delta_dist) or []
    except metadata.PackageNotFoundError:
        return None
    for r in reqs:
        if r.replace("_", "-").lower().startswith("pyspark"):
            return r
    return None


def _satisfies(version: str, requirement: str) -> bool:
    """True if ``version`` meets the specifier part of ``requirement`` (e.g. 'pyspark<=4.2.0,>=4.0.1')."""
    spec = requirement.split(";")[0]
    spec = re.sub(r"^[A-Za-z0-9_.\-\[\]]+\s*", "", spec).strip().strip("()")
    if not spec:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        return Version(version) in SpecifierSet(spec)
    except ImportError:  # packaging ships with pip/setuptools; be strict if it is absent
        return False


def find_delta_jars(jars_dir: Path | str | None = None, pyspark_jars_dir: Path | None = None) -> DeltaJars:
    """Locate the Delta jars in ``jars_dir``, leaving out any artifact pyspark already ships.

    Raises FileNotFoundError naming the folder when no delta-spark jar is there.
    """
    folder = Path(jars_dir or os.environ.get(JARS_DIR_ENV) or DEFAULT_JARS_DIR)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Delta jars folder {str(folder)!r} does not exist: run `make jars` (Maven fetches them once "
            f"from Maven Central) or set {JARS_DIR_ENV}"
        )
    if pyspark_jars_dir is None:
        import pyspark

        pyspark_jars_dir = Path(pyspark.__file__).parent / "jars"
    shipped = set()
    if pyspark_jars_dir.is_dir():
        for j in pyspark_jars_dir.glob("*.jar"):
            m = _JAR_NAME.match(j.name)
            if m:
                shipped.add(m.group("artifact"))
    delta: Optional[re.Match[str]] = None
    files: list[str] = []
    for j in sorted(folder.glob("*.jar")):
        dm = _DELTA_JAR.match(j.name)
        if dm:
            if delta is not None:
                raise VersionMismatchError(f"two delta-spark jars in {folder}: {delta.string} and {j.name}")
            delta = dm
        m = _JAR_NAME.match(j.name)
        if m and m.group("artifact") in shipped:
            continue  # Spark's own copy wins; never put two versions of one library on the classpath
        files.append(str(j))
    if delta is None:
        raise FileNotFoundError(f"no delta-spark_<spark>_<scala>-<version>.jar in {str(folder)!r}: run `make jars`")
    return DeltaJars(spark_binary=delta.group("spark"), delta_version=delta.group("version"), files=tuple(files))


def check_versions(
    pyspark_version: Optional[str],
    delta_pip_version: Optional[str],
    jars: DeltaJars,
    delta_pyspark_requirement: Optional[str],
) -> None:
    """Fail unless pyspark, delta-spark (pip) and the Delta jars form a matching set."""
    found = (
        f"found pyspark={pyspark_version}, delta-spark={delta_pip_version}, "
        f"jar delta-spark_{jars.spark_binary}-{jars.delta_version}"
    )
    if pyspark_version is None:
        raise VersionMismatchError(f"pyspark is not installed ({found})")
    if delta_pip_version is None:
        raise VersionMismatchError(f"delta-spark is not installed ({found})")
    if delta_pip_version != jars.delta_version:
        raise VersionMismatchError(
            f"delta-spark {delta_pip_version} (pip) and the Delta jar {jars.delta_version} differ; "
            f"re-run `make jars` after changing the pin ({found})"
        )
    spark_binary = ".".join(pyspark_version.split(".")[:2])
    if spark_binary != jars.spark_binary:
        raise VersionMismatchError(
            f"the Delta jar is built for Spark {jars.spark_binary} but pyspark is {pyspark_version} ({found})"
        )
    if delta_pyspark_requirement and not _satisfies(pyspark_version, delta_pyspark_requirement):
        raise VersionMismatchError(
            f"delta-spark {delta_pip_version} requires {delta_pyspark_requirement!r} but pyspark is "
            f"{pyspark_version} ({found})"
        )


def get_spark(
    spark_cfg: SparkConfig,
    storage: Optional[StorageConfig] = None,
    jars_dir: Path | str | None = None,
) -> "SparkSession":
    """Return the SparkSession for ``spark_cfg.target``; local sessions get Delta and the warehouse."""
    from pyspark.sql import SparkSession

    storage = storage or StorageConfig()
    if spark_cfg.target == "cluster":
        spark = SparkSession.builder.appName(spark_cfg.app_name).getOrCreate()
        _apply_sql_conf(spark, spark_cfg)
        return spark

    jars = find_delta_jars(jars_dir)
    check_versions(_dist_version("pyspark"), _dist_version("delta-spark"), jars, _pyspark_range_of_delta())
    # Spark's Python workers must run this interpreter (the virtualenv's), not the system python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    warehouse = storage.warehouse_path()
    builder = (
        SparkSession.builder.master(spark_cfg.master)
        .appName(spark_cfg.app_name)
        .config("spark.jars", ",".join(jars.files))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.warehouse.dir", warehouse)
        .config("spark.driver.memory", spark_cfg.driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.catalogImplementation", "in-memory")
        .config("spark.databricks.delta.properties.defaults.enableDeletionVectors", "false")
        .config("spark.sql.adaptive.coalescePartitions.initialPartitionNum", str(spark_cfg.shuffle_partitions))
        .config("spark.driver.extraJavaOptions", "-Dderby.system.home=" + str(Path(warehouse) / ".derby"))
    )
    for k, v in spark_cfg.conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    _apply_sql_conf(spark, spark_cfg)
    log.info("local Spark %s with Delta %s, warehouse %s", spark.version, jars.delta_version, warehouse)
    return spark


def _apply_sql_conf(spark: "SparkSession", spark_cfg: SparkConfig) -> None:
    spark.conf.set("spark.sql.shuffle.partitions", str(spark_cfg.shuffle_partitions))
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(spark_cfg.arrow_max_records_per_batch))
    spark.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # Delta's log replay uses 50 partitions by default: far too many tiny tasks for a small
    # session, so it follows the shuffle partitions (never above Delta's default).
    spark.conf.set("spark.databricks.delta.snapshotPartitions", str(max(1, min(50, spark_cfg.shuffle_partitions))))
