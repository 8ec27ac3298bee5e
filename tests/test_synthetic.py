"""The synthetic generator: deterministic, realistic shape, planted scenarios at the right rates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tsa_lib.config import ConfigError, GeneratorConfig
from tsa_lib.data.synthetic import FRAUD_SCENARIOS, generate

CFG = GeneratorConfig(seed=11, n_customers=3000, n_days=45)


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate(CFG)


def test_same_seed_same_rows(data) -> None:  # type: ignore[no-untyped-def]
    again = generate(CFG)
    pd.testing.assert_frame_equal(data.transactions, again.transactions)
    pd.testing.assert_frame_equal(data.order_features, again.order_features)
    other = generate(GeneratorConfig(seed=12, n_customers=3000, n_days=45))
    assert not other.transactions["amount"].equals(data.transactions["amount"])


def test_fraud_rate_and_scenarios(data) -> None:  # type: ignore[no-untyped-def]
    tx = data.transactions
    assert 0.01 <= tx["is_fraud"].mean() <= 0.03
    fraud = tx[(tx["is_fraud"] == 1) & ~tx["scenario"].str.startswith("dirty_")]
    assert set(fraud["scenario"]) == set(FRAUD_SCENARIOS)
    shares = fraud["scenario"].value_counts(normalize=True)
    assert shares.min() > 0.15  # roughly a quarter each
    for s in ("legit_travel", "legit_burst", "legit_new_device", "legit_new_account"):
        assert (tx["scenario"] == s).sum() > 0, s
        assert tx.loc[tx["scenario"] == s, "is_fraud"].sum() == 0


def test_population_shape(data) -> None:  # type: ignore[no-untyped-def]
    tx = data.transactions.dropna(subset=["customer_id"])
    legit = tx[tx["scenario"].str.startswith("legit")]
    cards_per_customer = legit.groupby("customer_id")["card_id"].nunique()
    assert cards_per_customer.min() >= 1 and cards_per_customer.quantile(0.99) <= 4
    customers_per_card = legit.groupby("card_id")["customer_id"].nunique()
    assert (customers_per_card > 1).sum() > 0  # family cards
    assert tx["amount"].dropna().between(-1e9, 1e7).all()
    assert {"pos", "web", "app"} <= set(tx["channel"])
    assert tx["order_id"].is_unique is False  # duplicated ids are planted as dirty rows
    assert data.order_features["order_id"].is_unique


def test_scenarios_are_sequential(data) -> None:  # type: ignore[no-untyped-def]
    tx = data.transactions.dropna(subset=["order_ts"]).sort_values(["order_ts", "order_id"])
    # card testing: on one card, tiny charges minutes apart precede large ones
    ct = tx[tx["scenario"] == "card_testing"]
    first_card = ct["card_id"].iloc[0]
    ep = ct[ct["card_id"] == first_card].sort_values("order_ts")
    assert ep["amount"].iloc[0] < 3 and ep["amount"].iloc[-1] > 200
    assert (ep["order_ts"].diff().dropna() <= pd.Timedelta(minutes=10)).all()
    # stolen card: the fraud account is new but the card has older history under someone else
    st = tx[tx["scenario"] == "stolen_card_new_account"].groupby("customer_id").head(1)
    with_history = 0
    for _, r in st.iterrows():
        before = tx[(tx["card_id"] == r["card_id"]) & (tx["order_ts"] < r["order_ts"])]
        assert r["customer_id"] not in set(before["customer_id"])
        with_history += len(before) > 0
    assert with_history / len(st) > 0.7
    # account takeover: at least 20 days of silence before the first fraudulent order
    ato = tx[tx["scenario"] == "account_takeover"]
    c = ato["customer_id"].iloc[0]
    t0 = ato[ato["customer_id"] == c]["order_ts"].min()
    prev = tx[(tx["customer_id"] == c) & (tx["order_ts"] < t0)]["order_ts"]
    assert prev.empty or (t0 - prev.max()) >= pd.Timedelta(days=20)


def test_engineered_features_point_in_time(data) -> None:  # type: ignore[no-untyped-def]
    f = data.order_features
    assert (f["account_age_days"] >= 0).all() and (f["card_age_days"] >= 0).all()
    assert f[["email_risk", "ip_risk"]].stack().between(0, 1).all()
    assert np.isfinite(f.drop(columns="order_id").to_numpy()).all()


def test_dirty_rows_planted(data) -> None:  # type: ignore[no-untyped-def]
    tx = data.transactions
    assert tx["customer_id"].isna().sum() > 0
    assert tx["order_ts"].isna().sum() > 0
    assert tx["amount"].isna().sum() > 0
    assert (tx["amount"] < 0).sum() > 0
    clean = generate(GeneratorConfig(seed=11, n_customers=300, n_days=20), dirty_rate=0.0).transactions
    assert clean["order_id"].is_unique and clean["customer_id"].notna().all()


def test_bad_generator_arguments() -> None:
    with pytest.raises(ValueError, match="dirty_rate"):
        generate(GeneratorConfig(n_customers=10, n_days=10), dirty_rate=0.5)
    with pytest.raises(ConfigError, match="generator.n_customers"):
        GeneratorConfig(n_customers=0)


def test_label_times_and_merchants(data) -> None:  # type: ignore[no-untyped-def]
    tx = data.transactions.dropna(subset=["order_ts"])
    fraud = tx[tx["is_fraud"] == 1]
    delay = (fraud["label_ts"] - fraud["order_ts"]).dt.total_seconds() / 86400
    assert delay.min() >= 1.0 and delay.max() <= 60.0 and 4 < delay.mean() < 12   # reports 1 to 60 days late
    assert tx.loc[tx["is_fraud"] == 0, "label_ts"].isna().all()
    assert tx["merchant_id"].str.match(r"^M\d\d_\d+$").all()
    assert "compromised_merchant" not in set(tx["scenario"])            # off by default


def test_compromised_merchants() -> None:
    g = generate(GeneratorConfig(seed=11, n_customers=3000, n_days=45, compromised_merchants=4))
    tx = g.transactions.dropna(subset=["order_ts"])
    hit = tx[tx["scenario"] == "compromised_merchant"]
    assert hit["merchant_id"].nunique() == 4 and (hit["is_fraud"] == 1).all() and hit["label_ts"].notna().all()
    for m, rows in hit.groupby("merchant_id"):
        lo, hi = rows["order_ts"].min(), rows["order_ts"].max()
        assert hi - lo <= pd.Timedelta(days=28)
        during = tx[(tx["merchant_id"] == m) & tx["order_ts"].between(lo, hi)]
        assert (during["is_fraud"] == 1).mean() > 0.6, m                  # most of its orders, for weeks
    base = generate(CFG).transactions
    same = generate(GeneratorConfig(seed=11, n_customers=3000, n_days=45, compromised_merchants=4)).transactions
    cols = ["order_id", "customer_id", "card_id", "merchant_id", "order_ts", "amount", "country"]
    pd.testing.assert_frame_equal(base[cols], same[cols])                # only labels change
    pd.testing.assert_frame_equal(generate(CFG).order_features, g.order_features)
