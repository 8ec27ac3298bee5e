"""Time in the nightly life and the champion rules: exact dates, the one label rule, decisions."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pytest

from tsa_lib.config import ConfigError, LabelsConfig, PromotionConfig, TrainConfig, TrainWindow, load_config
from tsa_lib.config import PROJECT_ROOT
from tsa_lib.registry.champion import Champion, champion_history, current_champion, decide, latest_gate
from tsa_lib.schedule import (as_of, check_mature, is_training_night, label_known, matured_day,
                              training_windows)

D = dt.date
UTC = dt.timezone.utc


def _cfg(**training: Any) -> Any:
    base = load_config(PROJECT_ROOT / "conf" / "local.yaml")
    return base.replace(labels=LabelsConfig(delay_days=2.0, mature_after_days=7), training=TrainConfig(**training))


def test_as_of_is_the_end_of_the_run_date() -> None:
    assert as_of(D(2026, 2, 19)) == dt.datetime(2026, 2, 20, tzinfo=UTC)


def test_relative_windows_exact() -> None:
    w = training_windows(_cfg(window=TrainWindow(train_days=29, valid_days=7)), D(2026, 2, 19))
    assert w.valid == (D(2026, 2, 6), D(2026, 2, 12))        # ends where labels are mature: D - 7
    assert w.train == (D(2026, 1, 8), D(2026, 2, 5))         # the 29 days before validation
    assert w.labels_as_of == dt.datetime(2026, 2, 20, tzinfo=UTC) and w.run_date == D(2026, 2, 19)
    assert w.dates[0] == D(2026, 1, 8) and w.dates[-1] == D(2026, 2, 12) and len(w.dates) == 36
    nxt = training_windows(_cfg(window=TrainWindow(train_days=29, valid_days=7)), D(2026, 2, 26))
    assert nxt.train[0] == D(2026, 1, 15) and nxt.valid[1] == D(2026, 2, 19)   # a week later, a week later


def test_fixed_windows_are_an_override() -> None:
    cfg = _cfg(train_start="2026-01-08", train_end="2026-02-05", valid_start="2026-02-06", valid_end="2026-02-12")
    w = training_windows(cfg, None)
    assert (w.train, w.valid, w.labels_as_of) == ((D(2026, 1, 8), D(2026, 2, 5)), (D(2026, 2, 6), D(2026, 2, 12)),
                                                  None)
    assert training_windows(cfg, D(2026, 2, 19)).labels_as_of == dt.datetime(2026, 2, 20, tzinfo=UTC)


@pytest.mark.parametrize("training, run_date, words", [
    ({}, D(2026, 2, 19), "set training.window"),
    ({"train_start": "2026-01-08"}, None, "'training.train_end', 'training.valid_start'"),
    ({"window": TrainWindow(10, 3)}, None, "give --run-date"),
    ({"train_start": "2026-01-01", "train_end": "2026-01-09", "valid_start": "2026-01-10",
      "valid_end": "2026-01-20"}, D(2026, 1, 15), "valid_end 2026-01-20 is after the run date 2026-01-15"),
])
def test_window_errors_are_named(training: dict[str, Any], run_date: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        training_windows(_cfg(**training), run_date)


def test_mixing_relative_and_fixed_windows_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"training.window cannot be combined with fixed dates \['training.train_end'\]"):
        TrainConfig(window=TrainWindow(10, 3), train_end="2026-01-09")
    for bad in ({"train_days": 0, "valid_days": 3}, {"train_days": 5, "valid_days": -1}):
        with pytest.raises(ConfigError, match="training.window"):
            TrainWindow(**bad)


def test_matured_day_and_check() -> None:
    cfg = _cfg()
    assert matured_day(cfg, D(2026, 3, 8)) == D(2026, 3, 1)
    check_mature(cfg, [D(2026, 2, 28), D(2026, 3, 1)], D(2026, 3, 8))
    with pytest.raises(ValueError, match=r"labels of 2026-03-02 are not mature at 2026-03-08 "
                                         r"\(labels.mature_after_days=7: the last mature day is 2026-03-01\)"):
        check_mature(cfg, [D(2026, 3, 3), D(2026, 3, 2)], D(2026, 3, 8))


def test_training_nights() -> None:
    sunday = D(2026, 2, 22)
    assert is_training_night(sunday) and not is_training_night(sunday + dt.timedelta(days=1))
    assert is_training_night(D(2026, 2, 24), conf={"train": True})
    assert is_training_night(D(2026, 2, 25), weekdays=(2,)) and not is_training_night(D(2026, 2, 25), weekdays=())
    with pytest.raises(ValueError, match=r"weekdays: \[7\] are not weekday numbers"):
        is_training_night(sunday, weekdays=(7,))


def _us(s: str) -> int:
    return int(dt.datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() * 1_000_000)


def test_label_known_exact() -> None:
    ev = np.array([_us("2026-01-01 10:00"), _us("2026-01-01 10:00"), _us("2026-01-05 00:00"),
                   _us("2026-01-05 00:00")])
    lt = np.array([_us("2026-01-03 12:00"), -1, _us("2026-01-06 00:00"), -1])   # -1: no label time
    at = dt.datetime(2026, 1, 6, tzinfo=UTC)
    # 1: reported before; 2: order + 2 days = 01-03 < 01-06; 3: reported exactly at T: not before it;
    # 4: order + 2 days = 01-07, later than T
    assert label_known(ev, lt, 2.0, at).tolist() == [True, True, False, False]
    assert label_known(ev, None, 0.0, at).tolist() == [True, True, True, True]
    with pytest.raises(ValueError, match="has no time zone"):
        label_known(ev, lt, 2.0, dt.datetime(2026, 1, 6))
    with pytest.raises(ValueError, match=r"label_time_us has shape \(1,\), event_time_us \(4,\)"):
        label_known(ev, np.array([1]), 2.0, at)


def test_labels_config_errors() -> None:
    with pytest.raises(ConfigError, match="labels.delay_days: must be >= 0, got -1"):
        LabelsConfig(delay_days=-1)
    with pytest.raises(ConfigError, match="labels.mature_after_days: must be an integer >= 0, got 1.5"):
        LabelsConfig(mature_after_days=1.5)  # type: ignore[arg-type]


# ---- champion / challenger --------------------------------------------------------------------------

P = PromotionConfig(metric="average_precision", margin=0.01, min_value=0.2)


@pytest.mark.parametrize("value, champ_value, champ, decision, words", [
    (0.5, None, None, "promoted", "no champion yet; average_precision 0.5000 >= promotion.min_value 0.2000"),
    (0.1, None, None, "rejected", "average_precision 0.1000 is below promotion.min_value 0.2000"),
    (0.80, 0.805, "v1", "promoted", "average_precision 0.8000 >= champion v1's 0.8050 - margin 0.0100"),
    (0.79, 0.805, "v1", "rejected", "average_precision 0.7900 < champion v1's 0.8050 - margin 0.0100"),
    (float("nan"), 0.8, "v1", "rejected", "average_precision is undefined on the validation window"),
    (0.5, float("nan"), "v1", "promoted", "the champion v1's average_precision is undefined"),
])
def test_decide_exact(value: float, champ_value: Any, champ: Any, decision: str, words: str) -> None:
    d, reason = decide(value, champ_value, champ, P)
    assert d == decision and reason.startswith(words), reason


def _row(ds: int, at: int, action: str, version: str, decision: str, after: Any) -> dict[str, Any]:
    return {"ds": D(2026, 2, ds), "decided_at": dt.datetime(2026, 2, ds, at, tzinfo=UTC), "action": action,
            "model_version": version, "decision": decision, "champion_after": after,
            "champion_after_path": f"/m/{after}" if after else None}


def test_champion_follows_the_latest_decision() -> None:
    rows = [_row(8, 3, "gate", "v1", "promoted", "v1"), _row(15, 3, "gate", "v2", "rejected", "v1"),
            _row(22, 3, "gate", "v3", "promoted", "v3"), _row(22, 9, "rollback", "v1", "rolled_back", "v1"),
            _row(23, 1, "promote", "v2", "forced", "v2")]
    assert current_champion([]) is None
    assert current_champion(rows[:2]) == Champion("v1", "/m/v1")
    assert current_champion(list(reversed(rows))) == Champion("v2", "/m/v2")   # order of the rows is irrelevant
    assert [c.version for c in champion_history(rows)] == ["v1", "v3", "v1", "v2"]
    assert latest_gate(rows, "v2")["decision"] == "rejected" and latest_gate(rows, "v9") is None
    assert current_champion([_row(8, 3, "gate", "v1", "rejected", None)]) is None


def test_promotion_config_errors() -> None:
    with pytest.raises(ConfigError, match="promotion.margin: must be >= 0, got -0.1"):
        PromotionConfig(margin=-0.1)
    with pytest.raises(ConfigError, match=r"promotion.min_value: must be in \[0, 1\], got 2"):
        PromotionConfig(min_value=2)
    assert math.isclose(PromotionConfig().margin, 0.0)
