"""Schema drift: the user's input checked against the configured columns before it is read.

Parquet folders are checked file by file (footers only, with pyarrow): a file that lacks a
configured column would be read as nulls for that file alone, so a day whose feed dropped
a column would silently get defaults.  Every input (Parquet, Delta, a metastore table) is
also checked for retyped columns: a numerical column must be numeric, a time column a
timestamp, date, string or number.  Missing columns fail the run unless
``quality.missing_columns: default`` (then they are counted and logged, and get the
configured defaults); a retyped column always fails.  Errors name the file, the column and
the type found.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from tsa_lib.config import ColumnsConfig
from tsa_lib.errors import DataError

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

NUMERIC, TIME, KEY = "a number", "a timestamp, date, string or epoch number", "a string or a number"


class SchemaDriftError(DataError):
    """An input lacks a configured column, or a column has a type it cannot have."""


def expected_kinds(cols: ColumnsConfig, engineered_here: bool = True) -> dict[str, str]:
    """Configured column -> what it must be."""
    out = {cols.order_id: KEY, cols.customer_id: KEY, cols.card_id: KEY, cols.event_time: TIME}
    if cols.label:
        out[cols.label] = NUMERIC
    if cols.label_time:
        out[cols.label_time] = TIME
    out.update({c: KEY for c in (*cols.categorical, *cols.relative)})
    out.update({c: NUMERIC for c in cols.numerical})
    if engineered_here:
        out.update({c: NUMERIC for c in cols.engineered})
    return out


def _arrow_ok(t: pa.DataType, kind: str) -> bool:
    num = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_boolean(t)
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t)
    time = pa.types.is_timestamp(t) or pa.types.is_date(t)
    return {NUMERIC: num or pa.types.is_null(t), TIME: num or text or time or pa.types.is_null(t),
            KEY: num or text or pa.types.is_null(t)}[kind]


def _spark_ok(t: object, kind: str) -> bool:
    from pyspark.sql.types import (BooleanType, DateType, NullType, NumericType, StringType, TimestampNTZType,
                                   TimestampType)

    num = isinstance(t, (NumericType, BooleanType, NullType))
    return {NUMERIC: num, TIME: num or isinstance(t, (StringType, TimestampType, TimestampNTZType, DateType)),
            KEY: num or isinstance(t, StringType)}[kind]


def check_spark_schema(schema: "StructType", kinds: dict[str, str], where: str) -> None:
    """Retyped columns of a (Delta or metastore) table: a SchemaDriftError naming them."""
    bad = [f"{f.name} is {f.dataType.simpleString()}, expected {kinds[f.name]}" for f in schema.fields
           if f.name in kinds and not _spark_ok(f.dataType, kinds[f.name])]
    if bad:
        raise SchemaDriftError(f"{where}: retyped column(s): {'; '.join(bad)}")


def parquet_files(path: str) -> list[Path]:
    """The data files of a Parquet folder (hidden and ``_`` files left out), in path order."""
    root = Path(path)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.parquet")
                  if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def check_parquet_files(path: str, kinds: dict[str, str], where: str, missing: str = "fail",
                        files: Optional[Iterable[Path]] = None) -> dict[str, int]:
    """Check every file's footer: missing columns (error, or with ``missing="default"`` a count per
    column that is returned and logged) and retyped columns (always an error)."""
    counts: dict[str, int] = {}
    for f in files if files is not None else parquet_files(path):
        schema = pq.read_schema(f)
        names = set(schema.names)
        gone = [c for c in kinds if c not in names]
        if gone and missing == "fail":
            raise SchemaDriftError(f"{where}: file {str(f)!r} lacks configured column(s) {gone} (schema drift); "
                                   f"set quality.missing_columns: default to read them as nulls with the defaults")
        for c in gone:
            counts[c] = counts.get(c, 0) + pq.ParquetFile(f).metadata.num_rows
        bad = [f"{c} is {schema.field(c).type}, expected {kinds[c]}" for c in kinds
               if c in names and not _arrow_ok(schema.field(c).type, kinds[c])]
        if bad:
            raise SchemaDriftError(f"{where}: file {str(f)!r} has retyped column(s): {'; '.join(bad)}")
    if counts:
        log.warning("%s: %s rows come from files without these columns; they get the configured defaults",
                    where, counts)
    return counts
