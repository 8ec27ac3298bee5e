"""The replay: the DAG's task commands for three nights on a real standalone Spark cluster.

Night 2 is the only training night and its labels are sabotaged (the gate must reject it);
night 3's score task is SIGKILLed right after its first Delta write and retried.  Small
windows (labels mature after 2 days, 10 + 4 training days) keep the history at 24 days.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tsa_lib.config import PROJECT_ROOT

START = dt.date(2026, 2, 22)
NIGHTS = 3


def _config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((PROJECT_ROOT / "conf" / "local.yaml").read_text())
    raw["labels"] = {"delay_days": 2, "mature_after_days": 2}
    raw["training"].update(model_preset="tiny", window={"train_days": 10, "valid_days": 4}, epochs=2,
                           batch_size=64, min_known_labels=50)
    raw["promotion"]["min_value"] = 0.0
    raw["sequences"]["max_len"] = 8
    raw["generator"]["fraud_rate"] = 0.05   # enough known fraud in a 4-day validation window of 600 customers
    raw["tracking"] = {"mlflow": False}     # tests/test_tracking.py covers MLflow; here it only costs time
    path = tmp_path / "replay-test.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_replay_three_nights_on_a_standalone_cluster(tmp_path: Path) -> None:
    second = START + dt.timedelta(days=1)
    workdir = tmp_path / "replay"
    cmd = [sys.executable, "-m", "tsa_lib.orchestration.replay", "--config", str(_config(tmp_path)),
           "--start", START.isoformat(), "--nights", str(NIGHTS), "--workdir", str(workdir), "--customers", "600",
           "--sabotage-night", second.isoformat(), "--training-weekdays", str(second.weekday()),
           "--kill-task", "score@3"]
    r = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    s = json.loads((workdir / "summary.json").read_text())
    assert s["ok"] and s["failed"] is None
    failed = {k: c["detail"] for k, c in s["checks"].items() if not c["ok"]}
    assert not failed and {"scored_exactly_once", "labels_known_at_run_date", "sabotage_rejected",
                           "metrics_only_mature", "executors_from_wheel"} <= set(s["checks"])
    assert s["bootstrap"]["gate"]["decision"] == "promoted"
    n1, n2, n3 = s["nights"]
    assert not n1["training"] and n2["training"] and n2["sabotaged"] and n2["gate"]["decision"] == "rejected"
    assert n2["sabotage"]["labels_shuffled"] > 0
    assert n3["champion_after"] == s["bootstrap"]["gate"]["model_version"]   # the sabotaged model never scored
    score = next(t for t in n3["tasks"] if t["task"] == "score")
    assert score["killed"] and score["retried"] and "replaced " in score["kill_after"]
    assert all(n["scored"] > 0 for n in s["nights"])
    assert n3["metrics_has_day"] and n3["evaluated_day"] == START.isoformat()
    executors = s["executor_tsa_lib"]
    assert executors and all(".whl" in p and not p.startswith(str(PROJECT_ROOT / "tsa_lib")) for p in executors)
    assert "ALL CHECKS PASSED" in r.stdout


def test_replay_refuses_a_foreign_workdir(tmp_path: Path) -> None:
    from tsa_lib.orchestration.replay import prepare_workdir

    mine = tmp_path / "not-a-replay"
    mine.mkdir()
    (mine / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="not made by a replay"):
        prepare_workdir(mine)
    assert (mine / "keep.txt").is_file()
    with pytest.raises(ValueError, match="outside the project"):
        prepare_workdir(Path("/usr/share/tsa-replay"))
    again = prepare_workdir(tmp_path / "fresh")
    (again / "old.json").write_text("{}")
    assert not (prepare_workdir(again) / "old.json").exists()   # a replay's own folder is made fresh
