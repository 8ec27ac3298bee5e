"""Delta I/O at the edges of the jobs: read the user's inputs, create the suite's
tables with explicit schemas, replace whole ``ds`` partitions, register names.

Every output table is partitioned by ``ds`` (the run date, a DATE), created with
deletion vectors and column mapping off (so ``deltalake`` can read it off-Spark),
and written with ``replaceWhere`` on the run dates only: a re-run replaces those
partitions and nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

from tsa_lib.config import PROJECT_ROOT, StorageConfig, TableSource
from tsa_lib.errors import DataError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

TABLE_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.columnMapping.mode": "none",
    "delta.appendOnly": "false",
}
SUITE_TABLES = ("sequences_customer", "sequences_card", "examples", "scores", "quarantine", "metrics", "models")


def read_source(spark: "SparkSession", source: TableSource, root: Path = PROJECT_ROOT) -> "DataFrame":
    """Read a user table given by path (delta/parquet) or by metastore name."""
    if source.table is not None:
        return spark.table(source.table)
    path = source.resolved_path(root)
    assert path is not None
    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"input table path {path!r} does not exist (format {source.format})")
    reader = spark.read.format(source.format)
    if source.format == "parquet":   # files written on different days may differ: read their union
        reader = reader.option("mergeSchema", "true")
    return reader.load(path)


def ensure_table(
    spark: "SparkSession",
    path: str,
    schema: "StructType",
    qualified_name: Optional[str] = None,
    partition_cols: Sequence[str] = ("ds",),
    comment: Optional[str] = None,
    stats_columns: Sequence[str] = (),
) -> None:
    """Create the Delta table at ``path`` with ``schema`` unless it exists; register ``qualified_name``.

    ``stats_columns``: collect Delta's per-file statistics only for these (scalar)
    columns (``delta.dataSkippingStatsColumns``), not for the first 32; tables of
    long arrays pay for the others on every write and never skip files on them.
    An existing table whose schema lacks one of ``schema``'s columns is an error
    naming the table and the columns, never a silent schema change.
    """
    from delta.tables import DeltaTable

    if DeltaTable.isDeltaTable(spark, path):
        existing = {f.name for f in spark.read.format("delta").load(path).schema.fields}
        missing = [f.name for f in schema.fields if f.name not in existing]
        if missing:
            raise DataError(f"Delta table at {path!r} exists without columns {missing}; migrate or drop it")
    else:
        builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
        if partition_cols:
            builder = builder.partitionedBy(*partition_cols)
        unknown = [c for c in stats_columns if c not in schema.fieldNames()]
        if unknown:
            raise ValueError(f"stats_columns: {unknown} are not columns of the table at {path!r}")
        props = dict(TABLE_PROPERTIES)
        if stats_columns:
            props["delta.dataSkippingStatsColumns"] = ",".join(stats_columns)
        for k, v in props.items():
            builder = builder.property(k, v)
        if comment:
            builder = builder.comment(comment)
        builder.execute()
        log.info("created Delta table %s", path)
    if qualified_name:
        register_table(spark, qualified_name, path)


def table_properties(spark: "SparkSession", path: str) -> dict[str, str]:
    """The Delta table properties (TBLPROPERTIES) of the table at ``path``."""
    from delta.tables import DeltaTable

    return dict(DeltaTable.forPath(spark, path).detail().select("properties").first()[0] or {})


def set_table_properties(spark: "SparkSession", path: str, props: dict[str, str]) -> None:
    """Set TBLPROPERTIES on the Delta table at ``path`` (one commit), unless they already hold."""
    current = table_properties(spark, path)
    todo = {k: v for k, v in props.items() if current.get(k) != v}
    if todo:
        kv = ", ".join(f"'{_sql_str(k)}' = '{_sql_str(v)}'" for k, v in sorted(todo.items()))
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({kv})")


def register_table(spark: "SparkSession", qualified_name: str, path: str) -> None:
    """Make ``qualified_name`` (db.table) point at the Delta folder ``path`` in the session catalog."""
    db, _, _table = qualified_name.rpartition(".")
    if db:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified_name} USING DELTA LOCATION '{_sql_str(path)}'")


def register_suite_tables(spark: "SparkSession", storage: StorageConfig, root: Path = PROJECT_ROOT) -> list[str]:
    """Register every suite table that exists on disk as ``<database>.<table>``; returns the names."""
    from delta.tables import DeltaTable

    names = []
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {storage.database}")
    for t in SUITE_TABLES:
        path = storage.table_path(t, root)
        if DeltaTable.isDeltaTable(spark, path):
            spark.sql(f"CREATE TABLE IF NOT EXISTS {storage.qualified(t)} USING DELTA LOCATION '{_sql_str(path)}'")
            names.append(storage.qualified(t))
    return names


def replace_partitions(
    df: "DataFrame",
    path: str,
    dates: Iterable[dt.date],
    user_metadata: Optional[dict[str, Any]] = None,
    partition_col: str = "ds",
    extra_condition: Optional[str] = None,
) -> None:
    """Overwrite exactly the ``partition_col`` partitions in ``dates`` of the Delta table at ``path``.

    Rows of ``df`` outside ``dates`` make Delta fail the write (replaceWhere is
    checked), so a bug can never touch another day's data.  ``extra_condition``
    narrows what is replaced inside those partitions (e.g. one job's quarantine rows).
    """
    days = sorted(set(dates))
    if not days:
        raise ValueError(f"replace_partitions({path!r}): no dates given")
    cond = f"{partition_col} IN ({', '.join(repr(d.isoformat()) for d in days)})"
    if extra_condition:
        cond = f"{cond} AND ({extra_condition})"
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", cond)
    )
    if user_metadata:
        writer = writer.option("userMetadata", json.dumps(user_metadata, sort_keys=True, default=str))
    writer.save(path)
    what = cond if len(days) <= 3 else f"{len(days)} {partition_col} partitions {days[0]}..{days[-1]}" + (
        f" AND ({extra_condition})" if extra_condition else "")
    log.info("replaced %s in %s", what, path)


def _sql_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")
