"""Print one markdown row per TSA run of ``run_tsa.py`` result files (rows for docs/experiment-log.md).

Run:  PYTHONPATH=. .venv/bin/python -m bench.quality.summarize bench/results/quality_tsa_*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCENARIOS = ("card_testing", "account_takeover", "stolen_card_new_account", "velocity_ramp")


def rows(path: Path) -> list[str]:
    res = json.loads(path.read_text())
    cfg = res.get("config", {})
    what = ", ".join([f"{k}={v}" for k, v in {**cfg.get("set", {}), **cfg.get("model_set", {})}.items()]
                     + [f"drop {c}" for c in cfg.get("drop_categorical", [])]) or "-"
    out = []
    for name, r in res["tsa"].items():
        o, per = r["test"]["overall"], r["test"]["per_fraud_scenario"]
        ap = " / ".join(f"{per[s]['average_precision']:.3f}" for s in SCENARIOS)
        out.append(f"| {path.name} | {name} | {what} | {r['valid']['average_precision']:.4f} (ep {r['best_epoch']}) "
                   f"| {o['roc_auc']:.4f} | {o['average_precision']:.4f} | {o['recall_at_1pct_fpr']:.4f} | {ap} |")
    return out


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    print("| file | model | overrides | valid AP | test AUC | test AP | recall@1%FPR | AP " + " / ".join(SCENARIOS) + " |")
    print("|---|---|---|---|---|---|---|---|")
    for p in argv:
        for line in rows(Path(p)):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
