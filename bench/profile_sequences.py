"""Where the sequence job's time goes: its stages and write variants, timed in one Spark session.

Variants (run in the order given; repeat a name to see the noise; the first Spark action of a
session pays for JIT warm-up, so start with ``warm``):
  warm         build rows for 1000 orders (warm-up only)
  dq_only      quality checks + de-duplication -> noop
  noop         quality checks + (entity, ds) rows -> noop (no writing)
  parquet      ... -> plain Parquet, not partitioned
  delta        ... -> Delta by ds, one file per date (repartition by ds: what the job does)
  delta_nosort ... -> Delta by ds straight from the entity partitions (no second shuffle)
  delta_stats_all  as ``delta`` on a table collecting Delta statistics for the first 32 columns
  delta_nodict as ``delta`` with Parquet dictionary encoding off
  delta_lz4 / delta_zstd / delta_uncompressed   as ``delta`` with that Parquet codec (default snappy)
Run:  PYTHONPATH=. .venv/bin/python bench/profile_sequences.py --customers 100000 \
          --variants warm,delta_nosort,delta,delta_nosort,delta
Results are appended to bench/results/sequences_profile.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

from tsa_lib.config import GeneratorConfig, InputConfig, SequenceConfig, SparkConfig, StorageConfig, \
    SuiteConfig, TableSource  # noqa: E402
from tsa_lib.data.synthetic import TRANSACTION_COLUMNS, generate  # noqa: E402

VARIANTS = ("warm", "dq_only", "noop", "parquet", "delta", "delta_nosort", "delta_stats_all", "delta_nodict",
            "delta_lz4", "delta_zstd", "delta_uncompressed")
CODECS = {"delta_lz4": "lz4_raw", "delta_zstd": "zstd", "delta_uncompressed": "uncompressed"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--workdir", default="/tmp/tsa-profile-seq")
    p.add_argument("--variants", default="warm,noop,delta,delta_nosort")
    a = p.parse_args()
    names = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: {bad} not in {VARIANTS}")
    from tsa_lib.spark.delta_io import ensure_table, replace_partitions
    from tsa_lib.spark.quality import check_quality
    from tsa_lib.spark.sequences import SEQUENCE_STATS_COLUMNS, build_sequences, sequence_schema
    from tsa_lib.spark.session import get_spark

    work = Path(a.workdir)
    cols = TRANSACTION_COLUMNS
    gen = GeneratorConfig(seed=123, n_customers=a.customers, n_days=a.days, orders_per_customer_per_day=0.333)
    start = dt.date.fromisoformat(gen.start_date)
    dates = [start + dt.timedelta(days=i) for i in range(a.days)]
    cfg = SuiteConfig(
        input=InputConfig(transactions=TableSource(path=str(work / "transactions"))), columns=cols,
        spark=SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory="8g"),
        storage=StorageConfig(warehouse=str(work / "wh"), database="bench"),
        sequences=SequenceConfig(max_len=a.max_len, max_history_days=365.0, max_orders_per_entity_day=1000))
    spark = get_spark(cfg.spark, cfg.storage)
    src_path = work / "transactions"
    if not src_path.exists():  # the input is kept between runs of the same size
        spark.createDataFrame(generate(gen, dirty_rate=0.0).transactions).write.format("delta").save(str(src_path))
    src = spark.read.format("delta").load(str(src_path))
    n_orders = src.count()

    def rows():  # type: ignore[no-untyped-def]
        clean = check_quality(src, cols, cfg.quality).clean
        return build_sequences(clean, dates, "customer", cols, cfg.sequences, "bench").rows

    def delta(name: str, shape: Callable, stats: tuple[str, ...] = SEQUENCE_STATS_COLUMNS) -> Callable[[], None]:
        path = str(work / f"out_{name}")
        shutil.rmtree(path, ignore_errors=True)
        ensure_table(spark, path, sequence_schema(cols), stats_columns=stats)
        return lambda: replace_partitions(shape(rows()), path, dates)

    def plan(name: str) -> Callable[[], None]:
        if name == "warm":
            return lambda: rows().limit(1000).write.format("noop").mode("overwrite").save()
        if name == "dq_only":
            return lambda: check_quality(src, cols, cfg.quality).clean.write.format("noop").mode("overwrite").save()
        if name == "noop":
            return lambda: rows().write.format("noop").mode("overwrite").save()
        if name == "parquet":
            return lambda: rows().write.mode("overwrite").parquet(str(work / "out_parquet"))
        if name == "delta":
            return delta(name, lambda r: r.repartition("ds"))
        if name == "delta_nosort":
            return delta(name, lambda r: r)
        if name == "delta_stats_all":
            return delta(name, lambda r: r.repartition("ds"), stats=())
        write = delta(name, lambda r: r.repartition("ds"))
        key, value = (("parquet.enable.dictionary", "false") if name == "delta_nodict"
                      else ("spark.sql.parquet.compression.codec", CODECS[name]))

        def with_conf() -> None:
            before = spark.conf.get(key, None)
            spark.conf.set(key, value)
            try:
                write()
            finally:
                spark.conf.unset(key) if before is None else spark.conf.set(key, before)
        return with_conf

    timings: list[tuple[str, float, float]] = []   # (variant, seconds, MB written)
    for name in names:
        fn = plan(name)
        t0 = time.perf_counter()
        fn()
        took = round(time.perf_counter() - t0, 2)
        out = work / f"out_{name}"
        mb = sum(f.stat().st_size for f in out.rglob("*.parquet")) / 1e6 if out.exists() else 0.0
        timings.append((name, took, round(mb, 1)))
        print(name, took, "s", round(mb, 1), "MB", flush=True)
    spark.stop()
    res = {"customers": a.customers, "days": a.days, "max_len": a.max_len, "orders": n_orders,
           "timings_s_mb": timings, "note": "one Spark session, variants in this order"}
    print(res)
    print(f"appended to {write_result('sequences_profile', res)}")


if __name__ == "__main__":
    main()
