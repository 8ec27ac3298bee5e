"""Benchmark: building point-in-time sequences for every order of ~2M generated orders.

Compares, on the same input (a Delta table) and the same machine:
  job     - the suite's build_sequences transforms (quality + (entity, ds) rows) on local[2],
            written as a Delta table; customer sequences alone, then the whole job (both entities)
  plain   - Spark window collect_list(struct(...)) over rowsBetween(-N, -1), written to Parquet
            (the plain approach from ENVIRONMENT.md; customer sequences)
  ref     - a single process with pyarrow/numpy: sort, then the same (entity, ds) rows for the
            customer (tsa_lib.features.sequence_rows, the job's inner loop), written to Parquet
Run:  PYTHONPATH=. .venv/bin/python bench/bench_sequences.py [--customers 100000 --days 60]
Results are appended to bench/results/sequences.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakMemory, timed, write_result  # noqa: E402

from tsa_lib.cli import RunContext  # noqa: E402
from tsa_lib.config import GeneratorConfig, InputConfig, SequenceConfig, SparkConfig, StorageConfig, \
    SuiteConfig, TableSource  # noqa: E402
from tsa_lib.data.synthetic import TRANSACTION_COLUMNS, generate  # noqa: E402
from tsa_lib.features.sequence_rows import RowSpec, build_rows, days_since_epoch, sort_for_build  # noqa: E402

log = logging.getLogger("bench.sequences")


def reference_rows(tbl: pa.Table, key: str, dates: list[dt.date], max_len: int, max_age_s: float) -> pa.Table:
    """One process, numpy/pyarrow: quality filter, sort, and the same (entity, ds) rows."""
    cols = TRANSACTION_COLUMNS
    tbl = tbl.filter(pc.and_(pc.is_valid(tbl[key]), pc.is_valid(tbl[cols.event_time])))
    spec = RowSpec(key=key, ts=cols.event_time, order_id=cols.order_id,
                   features=tuple(cols.categorical) + tuple(cols.numerical),
                   target_days=days_since_epoch(dates), max_len=max_len, cap=1000,
                   max_age_us=int(max_age_s * 1e6))
    return build_rows(sort_for_build(tbl, spec), spec)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--rate", type=float, default=0.333, help="orders per customer per day")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--workdir", default="/tmp/tsa-bench-seq")
    p.add_argument("--skip", nargs="*", default=[], choices=["plain", "ref", "job", "full"])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res: dict[str, object] = {"customers": args.customers, "days": args.days, "max_len": args.max_len}

    gen = GeneratorConfig(seed=123, n_customers=args.customers, n_days=args.days,
                          orders_per_customer_per_day=args.rate)
    with timed(res, "generate_s"):
        data = generate(gen, dirty_rate=0.0)
    tx = data.transactions
    n_orders = len(tx)
    res.update(orders=n_orders, customers_seen=int(tx.customer_id.nunique()), cards=int(tx.card_id.nunique()))
    start = dt.date.fromisoformat(gen.start_date)
    dates = [start + dt.timedelta(days=i) for i in range(args.days)]
    cols = TRANSACTION_COLUMNS
    cfg = SuiteConfig(
        input=InputConfig(transactions=TableSource(path=str(work / "transactions"))),
        columns=cols,
        spark=SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory="8g"),
        storage=StorageConfig(warehouse=str(work / "wh"), database="bench"),
        sequences=SequenceConfig(max_len=args.max_len, max_history_days=365.0, max_orders_per_entity_day=1000),
    )
    max_age_s = 365.0 * 86400

    if "ref" not in args.skip:
        with PeakMemory() as mem, timed(res, "ref_s"):
            t0 = time.perf_counter()
            tbl = pa.Table.from_pandas(tx, preserve_index=False)
            ref = reference_rows(tbl, cols.customer_id, dates, args.max_len, max_age_s)
            res["ref_build_s"] = round(time.perf_counter() - t0, 2)
            pq.write_table(ref, work / "ref_customer.parquet")
        res.update(ref_rows=ref.num_rows, ref_targets=int(pc.sum(ref["n_targets"]).as_py()),
                   ref_context=int(pc.sum(ref["n_context"]).as_py()), ref_peak_gb=mem.gb)
        del ref, tbl

    from tsa_lib.spark.build_sequences import run_build_sequences
    from tsa_lib.spark.quality import check_quality
    from tsa_lib.spark.sequences import SEQUENCE_STATS_COLUMNS, build_sequences, sequence_schema
    from tsa_lib.spark.delta_io import ensure_table, replace_partitions
    from tsa_lib.spark.session import get_spark

    spark = get_spark(cfg.spark, cfg.storage)
    with timed(res, "write_input_s"):
        spark.createDataFrame(tx).write.format("delta").mode("overwrite").save(str(work / "transactions"))
    del data, tx

    if "job" not in args.skip:
        src = spark.read.format("delta").load(str(work / "transactions"))
        with PeakMemory() as mem, timed(res, "job_customer_s"):
            clean = check_quality(src, cols, cfg.quality).clean
            rows = build_sequences(clean, dates, "customer", cols, cfg.sequences, "bench").rows
            path = str(work / "job_customer")
            ensure_table(spark, path, sequence_schema(cols), stats_columns=SEQUENCE_STATS_COLUMNS)
            replace_partitions(rows.repartition("ds"), path, dates)  # as the job does for backfills
        res["job_customer_peak_gb"] = mem.gb

    if "full" not in args.skip:
        from pyspark.sql import functions as F

        ctx = RunContext(job="build_sequences", run_id="bench", dates=tuple(dates),
                         started_at=dt.datetime.now(dt.timezone.utc))
        with PeakMemory() as mem, timed(res, "job_full_s"):
            s = run_build_sequences(spark, cfg, ctx)
        res.update(job_full_peak_gb=mem.gb, job_full_targets=s.clean_targets,
                   job_full_rows=s.entity_rows)
        # the job's output must be the reference's: same rows, same history lengths (a plan that
        # split an entity over partitions once built each piece as a whole history)
        got = (spark.read.format("delta").load(cfg.storage.table_path("sequences_customer"))
               .agg(F.count("*").alias("rows"), F.sum("n_context").alias("ctx")).first())
        res.update(job_full_customer_context=int(got["ctx"] or 0))
        if "ref_context" in res:
            res["job_full_matches_reference"] = (int(got["rows"]), int(got["ctx"] or 0)) == \
                (res["ref_rows"], res["ref_context"])
            if not res["job_full_matches_reference"]:
                log.error("job rows/context %s != reference %s", (got["rows"], got["ctx"]),
                          (res["ref_rows"], res["ref_context"]))
        # the nightly case: one run date, 365 days of lookback
        night = RunContext(job="build_sequences", run_id="night", dates=(dates[-2],),
                           started_at=dt.datetime.now(dt.timezone.utc))
        with PeakMemory() as mem, timed(res, "job_nightly_s"):
            s = run_build_sequences(spark, cfg, night)
        res.update(job_nightly_targets=s.clean_targets, job_nightly_peak_gb=mem.gb)

    if "plain" not in args.skip:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        src = spark.read.format("delta").load(str(work / "transactions"))
        w = Window.partitionBy(cols.customer_id).orderBy(cols.event_time, cols.order_id).rowsBetween(
            -args.max_len, -1)
        elem = F.struct(cols.order_id, cols.event_time, *cols.categorical, *cols.numerical)
        with PeakMemory() as mem, timed(res, "plain_s"):
            (src.filter(F.col(cols.customer_id).isNotNull())
                .withColumn("history", F.collect_list(elem).over(w))
                .write.mode("overwrite").parquet(str(work / "plain_customer")))
        res["plain_peak_gb"] = mem.gb
        # the same plain window, stored the way the suite must store it: Delta, partitioned by ds
        with PeakMemory() as mem, timed(res, "plain_delta_s"):
            (src.filter(F.col(cols.customer_id).isNotNull())
                .withColumn("history", F.collect_list(elem).over(w))
                .withColumn("ds", F.to_date(cols.event_time)).repartition("ds")
                .write.format("delta").mode("overwrite").partitionBy("ds").save(str(work / "plain_delta")))
        res["plain_delta_peak_gb"] = mem.gb
    spark.stop()

    def rate(key: str) -> float | None:
        return round(n_orders / float(res[key]), 0) if key in res else None  # type: ignore[arg-type]

    for k in ("job_customer_s", "job_full_s", "plain_s", "plain_delta_s", "ref_s"):
        res[k.replace("_s", "_rows_per_s")] = rate(k)
    if "job_customer_s" in res and "plain_s" in res:
        res["speedup_vs_plain"] = round(float(res["plain_s"]) / float(res["job_customer_s"]), 2)  # type: ignore[arg-type]
    if "job_customer_s" in res and "plain_delta_s" in res:
        res["speedup_vs_plain_delta"] = round(float(res["plain_delta_s"]) / float(res["job_customer_s"]), 2)  # type: ignore[arg-type]
    if "job_customer_s" in res and "ref_s" in res:
        res["job_over_ref"] = round(float(res["job_customer_s"]) / float(res["ref_s"]), 2)  # type: ignore[arg-type]
    path = write_result("sequences", res)
    print(res)
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
