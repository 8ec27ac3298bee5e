"""Daily evaluation: scores + labels -> the ``metrics`` table (per day) and an HTML report.

Per day: ROC AUC, average precision, recall at 1% FPR, card precision@100 (the
fraud literature's measure: each day the 100 cards, or customers with
``evaluation.precision_entity``, with the highest score, the share compromised,
cards detected on earlier days of the evaluated period left out) and score drift
(PSI against the previous day's scores).  The report (HTML with PNG plots) shows ROC and PR
curves, score histograms by label, the gate-weight distribution and an
attention heat map of a few flagged orders.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import pandas as pd

from tsa_lib.cli import RunContext, fmt_dates
from tsa_lib.config import PROJECT_ROOT, SuiteConfig
from tsa_lib.errors import UserError
from tsa_lib.evaluation.metrics import card_precision_by_day, psi, summarize
from tsa_lib.spark.delta_io import ensure_table, replace_partitions
from tsa_lib.spark.labels import read_labels

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

JOB = "evaluate"
CARD_K = 100
METRIC_COLUMNS = ("n", "positives", "roc_auc", "average_precision", "recall_at_1pct_fpr", "card_precision_at_100",
                  "psi_vs_prev_day", "mean_score")


def metrics_schema() -> "StructType":
    from pyspark.sql.types import DateType, DoubleType, StringType, StructField, StructType, TimestampType

    return StructType([StructField("model_name", StringType(), False), StructField("model_version", StringType(), False),
                       *[StructField(c, DoubleType(), True) for c in METRIC_COLUMNS],
                       StructField("run_id", StringType(), False), StructField("evaluated_at", TimestampType(), False),
                       StructField("ds", DateType(), False)])


class NoScoresError(UserError):
    """The dates to evaluate were never scored."""


@dataclass
class EvalResult:
    per_day: pd.DataFrame
    overall: dict[str, float]
    report: Optional[Path] = None
    notes: list[str] = field(default_factory=list)


def _scored_with_labels(spark: "SparkSession", cfg: SuiteConfig, dates: list[dt.date],
                        labels_as_of: Optional[dt.datetime]) -> pd.DataFrame:
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    path = cfg.storage.table_path("scores", PROJECT_ROOT)
    if not DeltaTable.isDeltaTable(spark, path):
        return pd.DataFrame(columns=["ds"])
    scores = spark.read.format("delta").load(path).filter(F.col("ds").isin(dates))
    labels = read_labels(spark, cfg, dates, labels_as_of).drop("label_pending")
    return scores.join(labels, ["order_id", "event_time"], "left").toPandas()


def _entity(df: pd.DataFrame, col: str) -> np.ndarray:
    return df[col].fillna("__none__").astype(str).to_numpy()


def day_metrics(df: pd.DataFrame, prev_scores: Optional[np.ndarray]) -> dict[str, float]:
    """Metrics of one day's scored orders (rows without a label are left out of the label metrics).
    Card precision depends on the earlier days of the period: ``run_evaluation`` adds it."""
    lab = df[df["label"].notna()]
    out: dict[str, float] = {"n": float(len(df)), "mean_score": float(df["score"].mean()) if len(df) else np.nan}
    if len(lab) and lab["label"].nunique() == 2:
        s = summarize(lab["label"].astype(int).to_numpy(), lab["score"].to_numpy())
        out.update({k: float(v) for k, v in s.items() if k != "n"})
    else:
        out.update(positives=float(lab["label"].sum()) if len(lab) else 0.0, roc_auc=np.nan,
                   average_precision=np.nan, recall_at_1pct_fpr=np.nan)
    out["psi_vs_prev_day"] = psi(prev_scores, df["score"].to_numpy()) \
        if prev_scores is not None and len(prev_scores) > 10 and len(df) > 10 else np.nan
    return out


def run_evaluation(spark: "SparkSession", cfg: SuiteConfig, ctx: RunContext, report: bool = True,
                   labels_as_of: Optional[dt.datetime] = None) -> EvalResult:
    """Compute per-day metrics for ``ctx.dates`` with the labels known at ``labels_as_of`` (None:
    now), write them, and (optionally) render the report."""
    if not ctx.dates:
        raise UserError("evaluate needs --run-date or --start-date/--end-date")
    dates = sorted(ctx.dates)
    prev_day = dates[0] - dt.timedelta(days=1)
    ent = "card_id" if cfg.evaluation.precision_entity == "card" else "customer_id"
    df = _scored_with_labels(spark, cfg, [prev_day, *dates], labels_as_of)
    if df[df["ds"].isin(dates)].empty:
        raise NoScoresError(f"no scores for {fmt_dates(dates)} in "
                            f"{cfg.storage.table_path('scores', PROJECT_ROOT)!r}: run jobs/score.py first")
    rows = []
    for d in dates:
        day = df[df["ds"] == d]
        if day.empty:
            continue
        prev = df[df["ds"] == d - dt.timedelta(days=1)]["score"].to_numpy()
        m = day_metrics(day, prev if len(prev) else None)
        rows.append({"ds": d, "model_name": str(day["model_name"].iloc[0]),
                     "model_version": str(day["model_version"].iloc[0]), **m})
    per_day = pd.DataFrame(rows)
    window = df[df["ds"].isin(dates)]
    lab = window[window["label"].notna()]
    by_day: dict[Any, float] = {}
    if len(lab) and lab["label"].nunique() == 2:   # cards detected on earlier days are left out of later ones
        by_day = card_precision_by_day(_entity(lab, ent), lab["ds"].to_numpy(), lab["label"].astype(int).to_numpy(),
                                       lab["score"].to_numpy(), k=CARD_K)
    per_day["card_precision_at_100"] = [by_day.get(d, np.nan) for d in per_day["ds"]]
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None, microsecond=0)
    out = per_day.assign(run_id=ctx.run_id, evaluated_at=now)
    schema = metrics_schema()
    sdf = spark.createDataFrame(out[[f.name for f in schema.fields]].astype(
        {c: "float64" for c in METRIC_COLUMNS}).replace({np.nan: None}), schema)
    path = cfg.storage.table_path("metrics", PROJECT_ROOT)
    ensure_table(spark, path, schema, cfg.storage.qualified("metrics"), comment="TSA daily evaluation metrics")
    replace_partitions(sdf, path, [r["ds"] for r in rows], ctx.metadata(cfg.hash))
    overall = {k: float(v) for k, v in summarize(lab["label"].astype(int).to_numpy(), lab["score"].to_numpy(),
                                                 card_ids=_entity(lab, ent),
                                                 day=lab["ds"].astype(str).to_numpy()).items()} \
        if len(lab) and lab["label"].nunique() == 2 else {}
    res = EvalResult(per_day=per_day, overall=overall)
    for d in dates:
        day_lab = lab[lab["ds"] == d]
        if len(day_lab) and day_lab["label"].nunique() < 2:
            res.notes.append(f"{d}: {len(day_lab)} orders with a known label, {int(day_lab['label'].sum())} fraud: "
                             f"ROC AUC, AP and recall need both classes (left empty)")
        elif not len(day_lab) and d in set(window["ds"]):
            res.notes.append(f"{d}: no order has a known label yet: label metrics left empty")
    if report:
        folder = cfg.storage.artifacts_path(f"reports/{dates[0].isoformat()}_{dates[-1].isoformat()}")
        res.report = write_report(folder, window, per_day, overall)
    return res


def write_report(folder: Path, df: pd.DataFrame, per_day: pd.DataFrame, overall: dict[str, float]) -> Path:
    """ROC/PR curves, score histograms by label, gate weights, attention of flagged orders -> report.html."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    lab = df[df["label"].notna()]
    y = lab["label"].astype(int).to_numpy()
    s = lab["score"].to_numpy()
    figs: list[tuple[str, str]] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
        figs.append((name, title))

    if len(y) and y.min() != y.max():
        order = np.argsort(-s, kind="stable")
        ys = y[order]
        tp, fp = np.cumsum(ys), np.cumsum(1 - ys)
        fig, ax = plt.subplots(1, 2, figsize=(9, 4))
        ax[0].plot(fp / max(fp[-1], 1), tp / max(tp[-1], 1))
        ax[0].plot([0, 1], [0, 1], "--", color="grey")
        ax[0].set(xlabel="false positive rate", ylabel="recall", title=f"ROC (AUC {overall.get('roc_auc', 0):.3f})")
        ax[1].plot(tp / max(tp[-1], 1), tp / np.arange(1, len(tp) + 1))
        ax[1].set(xlabel="recall", ylabel="precision",
                  title=f"PR (AP {overall.get('average_precision', 0):.3f})")
        save(fig, "roc_pr.png", "ROC and precision-recall curves")
        fig, ax = plt.subplots(figsize=(6, 4))
        bins = np.linspace(0, 1, 41)
        ax.hist(s[y == 0], bins=bins, alpha=0.6, density=True, label="legit")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, density=True, label="fraud")
        ax.set(yscale="log", xlabel="score", title="score by label")
        ax.legend()
        save(fig, "scores_by_label.png", "Score histograms by label")
    if "gate_customer" in df and df["gate_customer"].notna().any():
        fig, ax = plt.subplots(figsize=(6, 4))
        g = df["gate_customer"].dropna().to_numpy()
        ax.hist(g, bins=40)
        ax.set(xlabel="gate weight of the customer sequence (card = 1 - it)", title="gate weights")
        save(fig, "gates.png", "Gate-weight distribution")
    top = df.sort_values("score", ascending=False).head(8)
    if len(top) and "top_customer_weights" in top:
        k = max((len(w) for w in top["top_customer_weights"] if w is not None), default=0)
        if k:
            mat = np.full((len(top), k), np.nan)
            for i, w in enumerate(top["top_customer_weights"]):
                if w is not None and len(w):
                    mat[i, :len(w)] = w
            fig, ax = plt.subplots(figsize=(6, 4))
            im = ax.imshow(mat, aspect="auto", cmap="viridis")
            ax.set(yticks=range(len(top)), yticklabels=[f"{o} ({sc:.2f})" for o, sc in zip(top["order_id"], top["score"])],
                   xlabel="most-attended past orders (rank)", title="attention of the most suspicious orders")
            fig.colorbar(im)
            save(fig, "attention.png", "Attention heat map of flagged orders")
    table = per_day.to_html(index=False, float_format=lambda v: f"{v:.4f}")
    ov = "".join(f"<li>{html.escape(k)}: {v:.4f}</li>" for k, v in overall.items())
    imgs = "".join(f"<h3>{html.escape(t)}</h3><img src='{n}'>" for n, t in figs)
    (folder / "report.html").write_text(
        f"<html><head><meta charset='utf-8'><title>TSA evaluation</title></head><body>"
        f"<h1>TSA evaluation</h1><h2>Overall</h2><ul>{ov}</ul><h2>Per day</h2>{table}{imgs}</body></html>")
    return folder / "report.html"
