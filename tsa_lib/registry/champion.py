"""Champion / challenger decisions: the pure part (no Spark).

Every decision about a model is one row of the ``models`` table (``tsa.models``): the
gate's verdict on a newly trained model, a manual promotion, a rollback.  Each row
carries the champion *after* it (``champion_after``, ``champion_after_path``), so the
current champion is that field of the latest row (by ``ds``, then ``decided_at``), and
the history of champions is the sequence of its values.  A registry alias (MLflow's
``@champion``) can mirror that field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from tsa_lib.config import PromotionConfig
from tsa_lib.errors import UserError

ACTIONS = ("gate", "promote", "rollback")
DECISIONS = ("promoted", "rejected", "forced", "rolled_back")


class PromotionError(UserError):
    """A promotion or rollback that the rules refuse (or that names no known model)."""


@dataclass(frozen=True)
class Champion:
    version: str
    path: str


def decide(value: float, champion_value: Optional[float], champion_version: Optional[str],
           p: PromotionConfig) -> tuple[str, str]:
    """(decision, reason) for a challenger whose metric is ``value`` against the champion's.

    Promoted when ``value`` >= ``promotion.min_value`` and, if there is a champion,
    ``value`` >= its value - ``promotion.margin`` (both on the same validation orders).
    """
    m = p.metric
    if value is None or not math.isfinite(value):
        return "rejected", f"{m} is undefined on the validation window"
    if value < p.min_value:
        return "rejected", f"{m} {value:.4f} is below promotion.min_value {p.min_value:.4f}"
    if champion_version is None:
        return "promoted", f"no champion yet; {m} {value:.4f} >= promotion.min_value {p.min_value:.4f}"
    if champion_value is None or not math.isfinite(champion_value):
        return "promoted", f"the champion {champion_version}'s {m} is undefined on the validation window"
    if value >= champion_value - p.margin:
        return "promoted", (f"{m} {value:.4f} >= champion {champion_version}'s {champion_value:.4f} - margin "
                            f"{p.margin:.4f}")
    return "rejected", (f"{m} {value:.4f} < champion {champion_version}'s {champion_value:.4f} - margin "
                        f"{p.margin:.4f}")


def _ordered(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda r: (r["ds"], r["decided_at"]))


def current_champion(rows: Sequence[Mapping[str, Any]]) -> Optional[Champion]:
    """The champion after the latest decision, or None when there is none."""
    if not rows:
        return None
    last = _ordered(rows)[-1]
    if last["champion_after"] is None:
        return None
    return Champion(version=str(last["champion_after"]), path=str(last["champion_after_path"]))


def champion_history(rows: Sequence[Mapping[str, Any]]) -> list[Champion]:
    """The successive champions, oldest first (a model that returns appears again)."""
    out: list[Champion] = []
    for r in _ordered(rows):
        if r["champion_after"] is None:
            continue
        c = Champion(version=str(r["champion_after"]), path=str(r["champion_after_path"]))
        if not out or out[-1] != c:
            out.append(c)
    return out


def latest_gate(rows: Sequence[Mapping[str, Any]], version: str) -> Optional[Mapping[str, Any]]:
    """The most recent gate decision about ``version``."""
    gates = [r for r in _ordered(rows) if r["action"] == "gate" and r["model_version"] == version]
    return gates[-1] if gates else None
