"""Deterministic synthetic card transactions with planted temporal fraud.

Pure numpy/pandas, no Spark: ``generate(cfg)`` returns two DataFrames,
``transactions`` (one row per order) and ``order_features`` (engineered,
static per-order features keyed by order id).  The same seed gives the same
rows, byte for byte.

Population: customers with 1 to 3 cards, some cards shared by two customers
(family cards), per-customer spend level, home country, devices and favourite
merchant categories.

Legitimate look-alikes (label 0), so no single order gives fraud away:
- ``legit_travel``: a trip abroad for a few days (new country, same device);
- ``legit_burst``: several small purchases minutes apart (transit, coffee);
- ``legit_new_device``: a customer switches phone for good;
- ``legit_new_account``: accounts opened during the window, first orders high.

Fraud (label 1), about ``fraud_rate`` of all orders, planted so that most of
its signal is in the order of events:
- ``card_testing``: tiny charges minutes apart, then large ones, on one card;
- ``account_takeover``: a long silence, then a new device and country;
- ``stolen_card_new_account``: a victim's card used from a fresh account
  (visible in the card's history, not in the customer's);
- ``velocity_ramp``: gaps shrinking and amounts growing on one account;
- ``compromised_merchant`` (only with ``generator.compromised_merchants`` > 0): a merchant
  (a terminal) is compromised for 2 to 4 weeks and most orders there are fraud, with
  nothing unusual in the orders themselves: only the merchant's recently confirmed fraud
  gives it away (``labels.feedback`` with the merchant as the second entity).

Every order has a ``merchant_id`` (merchants of its category, a few popular ones taking
most orders).

Labels arrive late: every fraud order has a ``label_ts``, the time its report came in,
1 to 60 days after the order (1 day plus an exponential delay with a mean of
``REPORT_DELAY_MEAN_DAYS``, capped at 60 days); legitimate orders have none (a config
gives them ``labels.delay_days``).  The delays come from their own random stream, so
every other column is the same as without them.

Dirty rows (null keys, null times, duplicate order ids, NaN/negative amounts)
are added at ``dirty_rate`` so the quarantine path is exercised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tsa_lib.config import ColumnsConfig, GeneratorConfig
from tsa_lib.errors import UserError

log = logging.getLogger(__name__)

MCC = np.array(["grocery", "restaurant", "fuel", "transit", "coffee", "apparel", "electronics", "digital_goods",
                "gift_cards", "travel", "hotel", "pharmacy", "home", "entertainment", "jewelry"])
MCC_LEGIT_P = np.array([.20, .15, .09, .07, .08, .08, .04, .06, .01, .03, .03, .05, .06, .04, .01])
CHANNELS = np.array(["pos", "web", "app"])
COUNTRIES = np.array(["US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "BR", "MX", "IN", "NG", "RU", "CN", "TR"])
HOME_P = np.array([.45, .12, .10, .08, .06, .05, .04, .05, .01, .01, .01, .005, .005, .005, .005])
HOME_P = HOME_P / HOME_P.sum()
RISKY = np.array([8, 9, 10, 11, 12, 13, 14])  # indices of countries used by fraudsters
ENTRY = np.array(["chip", "contactless", "swipe", "ecom", "manual"])
SCENARIOS = ("legit", "legit_travel", "legit_burst", "legit_new_device", "legit_new_account",
             "card_testing", "account_takeover", "stolen_card_new_account", "velocity_ramp", "compromised_merchant")
FRAUD_SCENARIOS = ("card_testing", "account_takeover", "stolen_card_new_account", "velocity_ramp")
COMPROMISE_FRAUD_SHARE = 0.8      # of a compromised merchant's orders during the compromise
COMPROMISED_MCC = np.array([0, 1, 2, 3, 4])   # in-person categories: grocery .. coffee
REPORT_DELAY_MEAN_DAYS = 7.0
REPORT_DELAY_MAX_DAYS = 60.0
DIRTY_KINDS = ("null_customer", "null_time", "duplicate_order", "nan_amount", "negative_amount")

TRANSACTION_COLUMNS = ColumnsConfig(
    order_id="order_id",
    customer_id="customer_id",
    card_id="card_id",
    event_time="order_ts",
    label="is_fraud",
    label_time="label_ts",
    categorical=("merchant_category", "channel", "device_id", "country", "entry_mode"),
    numerical=("amount", "hour_of_day", "items"),
    engineered=("account_age_days", "card_age_days", "email_risk", "ip_risk", "billing_shipping_match",
                "customer_tenure_orders"),
)


@dataclass
class Generated:
    transactions: pd.DataFrame
    order_features: pd.DataFrame


class _Builder:
    """Accumulates order columns from many vectorized pieces."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, **cols: np.ndarray) -> None:
        n = len(cols["ts"])
        for k, v in cols.items():
            if np.ndim(v) == 0:
                cols[k] = np.full(n, v)
        self.parts.append(cols)

    def frame(self) -> dict[str, np.ndarray]:
        keys = self.parts[0].keys()
        return {k: np.concatenate([p[k] for p in self.parts]) for k in keys}


@dataclass
class _World:
    """What the scenarios share: the population, the order pieces built so far, the fraud ids."""

    cfg: GeneratorConfig
    rng: np.random.Generator
    start: int                      # epoch seconds of the first day
    span: int                       # seconds in the window
    home: np.ndarray
    spend: np.ndarray
    activity: np.ndarray
    device: np.ndarray
    opened: np.ndarray
    is_new: np.ndarray
    mcc_pref: np.ndarray
    n_cards: np.ndarray
    card_owner: np.ndarray
    card_issued: np.ndarray
    card_first: np.ndarray
    shared_cards: np.ndarray
    shared_user: np.ndarray
    b: _Builder = field(default_factory=_Builder)
    life_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    next_cust: int = -1             # fraudster accounts get fresh customer ids from here (new_accounts)
    fraud_accounts_opened: list[np.ndarray] = field(default_factory=list)
    per_scenario: float = 0.0       # fraud orders wanted per fraud scenario

    def __post_init__(self) -> None:
        self.next_cust = self.n_c

    def new_accounts(self, opened_at: np.ndarray) -> np.ndarray:
        """Fresh customer ids for fraudster accounts opened at ``opened_at`` (epoch seconds)."""
        ids = self.next_cust + np.arange(len(opened_at))
        self.fraud_accounts_opened.append(np.stack([ids, opened_at]))
        self.next_cust += len(opened_at)
        return ids

    @property
    def n_c(self) -> int:
        return len(self.home)

    @property
    def n_k(self) -> int:
        return len(self.card_owner)

    @property
    def window_lo(self) -> int:
        return self.start + 7 * 86400   # leave a week of history before any fraud


def generate(cfg: GeneratorConfig, dirty_rate: float = 0.0005) -> Generated:
    """Generate the synthetic transactions and engineered features for ``cfg``: the population,
    ordinary orders, legitimate look-alikes, one function per fraud scenario, then the columns."""
    if not 0.0 <= dirty_rate < 0.1:
        raise UserError(f"dirty_rate: must be in [0, 0.1), got {dirty_rate!r}")
    w = _population(cfg, np.random.default_rng(cfg.seed))
    _legit_orders(w)
    _lookalikes(w)
    n_legit = sum(len(p["ts"]) for p in w.b.parts)
    w.per_scenario = cfg.fraud_rate * n_legit / (1 - cfg.fraud_rate) / 4.0
    for scenario in (_card_testing, _account_takeover, _stolen_card_new_account, _velocity_ramp):
        scenario(w)
    return _assemble(w, dirty_rate)


def _population(cfg: GeneratorConfig, rng: np.random.Generator) -> _World:
    """Customers (home country, spend, activity, device, account age) and their cards."""
    start = pd.Timestamp(cfg.start_date, tz="UTC").value // 10**9  # epoch seconds
    span = cfg.n_days * 86400
    n_c = cfg.n_customers
    home = rng.choice(len(COUNTRIES), n_c, p=HOME_P)
    spend = np.exp(rng.normal(3.4, 0.6, n_c))  # typical order amount per customer
    activity = rng.gamma(2.0, cfg.orders_per_customer_per_day / 2.0, n_c)
    device = np.arange(n_c)  # one device per customer: device ids d<customer>
    # new accounts: 8% open during the window; the rest opened long before it
    opened = start - rng.integers(30, 1500, n_c) * 86400
    is_new = rng.random(n_c) < 0.15
    opened[is_new] = start + rng.integers(0, span - 86400, is_new.sum())
    mcc_pref = rng.dirichlet(MCC_LEGIT_P * 30, n_c)
    n_cards = rng.choice([1, 2, 3], n_c, p=[.55, .33, .12])
    card_owner = np.repeat(np.arange(n_c), n_cards)
    n_k = len(card_owner)
    card_issued = opened[card_owner] + rng.integers(0, 200, n_k) * 86400
    card_issued = np.minimum(card_issued, np.maximum(opened[card_owner], start + span - 86400))
    card_first = np.concatenate([[0], np.cumsum(n_cards)[:-1]])  # first card index of each customer
    # family cards: 3% of cards are also used by a second customer
    shared_cards = rng.choice(n_k, max(1, int(0.03 * n_k)), replace=False)
    shared_user = rng.integers(0, n_c, len(shared_cards))

    return _World(cfg=cfg, rng=rng, start=start, span=span, home=home, spend=spend, activity=activity,
                  device=device, opened=opened, is_new=is_new, mcc_pref=mcc_pref, n_cards=n_cards,
                  card_owner=card_owner, card_issued=card_issued, card_first=card_first,
                  shared_cards=shared_cards, shared_user=shared_user)


def _legit_orders(w: _World) -> None:
    """Ordinary legitimate orders, family cards shared by two customers, new accounts' first orders."""
    rng, start, span, b = w.rng, w.start, w.span, w.b
    opened, activity, n_c, card_first, n_cards = w.opened, w.activity, w.n_c, w.card_first, w.n_cards
    shared_user, shared_cards, mcc_pref, home, device = w.shared_user, w.shared_cards, w.mcc_pref, w.home, w.device
    spend, is_new = w.spend, w.is_new
    life_start = np.maximum(opened, start)
    life = (start + span - life_start) / 86400.0
    counts = rng.poisson(activity * life)
    cust = np.repeat(np.arange(n_c), counts)
    n = len(cust)
    day_frac = _hour_of_day(rng, n)
    ts = life_start[cust] + np.floor(rng.random(n) * life[cust]).astype(np.int64) * 86400 + day_frac
    ts = np.minimum(ts, start + span - 1)
    card = card_first[cust] + (rng.random(n) * n_cards[cust]).astype(np.int64)
    scen = np.full(n, "legit", dtype=object)
    # family card usage: re-route some orders of the second user onto the shared card
    fam_mask = np.isin(cust, shared_user) & (rng.random(n) < 0.3)
    if fam_mask.any():
        lookup = dict(zip(shared_user.tolist(), shared_cards.tolist()))
        card[fam_mask] = np.array([lookup[c] for c in cust[fam_mask]])
    mcc = _choice_rows(rng, mcc_pref[cust])
    country = home[cust].copy()
    dev = np.array([f"d{d}" for d in device[cust]], dtype=object)
    amount = _amounts(rng, spend[cust], mcc)
    # new accounts spend a bit more on their first orders: a look-alike of fresh-account fraud
    new_first = is_new[cust] & (ts - opened[cust] < 3 * 86400)
    amount[new_first] *= rng.uniform(1.5, 3.0, new_first.sum())
    scen[new_first] = "legit_new_account"
    b.add(ts=ts, cust=cust, card=card, mcc=mcc, country=country, dev=dev, amount=amount, scen=scen,
          label=np.zeros(n, np.int8))

    w.life_start = life_start


def _lookalikes(w: _World) -> None:
    """Legitimate orders that look like fraud: travel, a new device for good, bursts of small charges."""
    rng, start, span, b, n_c = w.rng, w.start, w.span, w.b, w.n_c
    life_start, card_first, n_cards, home = w.life_start, w.card_first, w.n_cards, w.home
    # ---- legitimate look-alikes ---------------------------------------------
    # travel: 3% of customers spend 3-10 days abroad; orders in that window move country
    parts = b.parts[0]
    trav = rng.random(n_c) < 0.03
    t0 = start + rng.integers(0, span, n_c)
    t1 = t0 + rng.integers(3, 11, n_c) * 86400
    dest = rng.choice(len(COUNTRIES), n_c)
    in_trip = trav[parts["cust"]] & (parts["ts"] >= t0[parts["cust"]]) & (parts["ts"] < t1[parts["cust"]])
    parts["country"][in_trip] = dest[parts["cust"][in_trip]]
    parts["scen"][in_trip] = "legit_travel"
    travel_mcc = rng.choice([3, 9, 10, 1], in_trip.sum())
    parts["mcc"][in_trip] = travel_mcc
    # new device for good: 5% of customers switch at a random time
    sw = rng.random(n_c) < 0.05
    tsw = start + rng.integers(0, span, n_c)
    after = sw[parts["cust"]] & (parts["ts"] >= tsw[parts["cust"]])
    parts["dev"][after] = np.array([f"d{c}b" for c in parts["cust"][after]], dtype=object)
    parts["scen"][after & (parts["scen"] == "legit")] = "legit_new_device"
    # bursts of small purchases: 2% of customers, 3-8 small charges minutes apart
    n_burst = max(1, int(0.02 * n_c))
    bc = rng.choice(n_c, n_burst, replace=False)
    k = rng.integers(3, 9, n_burst)
    bcust = np.repeat(bc, k)
    room = np.maximum(start + span - life_start[bc] - 86400, 1)
    bstart = np.repeat(life_start[bc] + (rng.random(n_burst) * room).astype(np.int64), k)
    step = _within_group_cumsum(rng.integers(60, 900, len(bcust)), k)
    nb = len(bcust)
    b.add(ts=np.minimum(bstart + step, start + span - 1), cust=bcust,
          card=card_first[bcust] + (rng.random(nb) * n_cards[bcust]).astype(np.int64),
          mcc=rng.choice([3, 4, 1], nb), country=home[bcust], dev=np.array([f"d{c}" for c in bcust], dtype=object),
          amount=np.round(rng.uniform(0.8, 6.0, nb), 2), scen=np.full(nb, "legit_burst", dtype=object),
          label=np.zeros(nb, np.int8))


def _card_testing(w: _World) -> None:
    rng, start, span, b, n_k, window_lo = w.rng, w.start, w.span, w.b, w.n_k, w.window_lo
    per_scenario, card_owner, home = w.per_scenario, w.card_owner, w.home
    # card testing: 3-8 tiny charges 1-10 minutes apart, then 1-3 large ones, on one card
    n_ep = max(1, int(round(per_scenario / 7.5)))
    kcard = rng.integers(0, n_k, n_ep)
    n_tiny = rng.integers(3, 9, n_ep)
    n_big = rng.integers(1, 4, n_ep)
    size = n_tiny + n_big
    t_ep = rng.integers(window_lo, start + span - 86400, n_ep)
    own = rng.random(n_ep) < 0.5  # half on the owner's account, half from a fraudster account
    fr_acc = np.where(own, card_owner[kcard], w.new_accounts(t_ep - rng.integers(0, 5, n_ep) * 86400))
    gaps = rng.integers(60, 600, size.sum())
    times = np.repeat(t_ep, size) + _within_group_cumsum(gaps, size)
    pos = _within_group_index(size)
    tiny = pos < np.repeat(n_tiny, size)
    ep = np.repeat(np.arange(n_ep), size)
    amt = np.where(tiny, np.round(rng.uniform(0.5, 2.5, len(ep)), 2), np.round(rng.uniform(250, 1800, len(ep)), 2))
    mcc_ct = np.where(tiny, rng.choice([7, 4, 13, 3], len(ep)), rng.choice([6, 8, 14, 5, 12, 0], len(ep)))
    b.add(ts=times, cust=fr_acc[ep], card=kcard[ep], mcc=mcc_ct,
          country=np.where(rng.random(n_ep) < 0.5, home[card_owner[kcard]], rng.choice(RISKY, n_ep))[ep],
          dev=np.array([f"x{e}" for e in ep], dtype=object), amount=amt,
          scen=np.full(len(ep), "card_testing", dtype=object), label=np.ones(len(ep), np.int8))


def _account_takeover(w: _World) -> None:
    rng, start, span, b, n_c, window_lo, cfg = w.rng, w.start, w.span, w.b, w.n_c, w.window_lo, w.cfg
    per_scenario, is_new, card_first, n_cards, spend = w.per_scenario, w.is_new, w.card_first, w.n_cards, w.spend
    # account takeover: silence of 20+ days, then 2-5 orders from a new device and country
    n_ep = max(1, int(round(per_scenario / 3.5)))
    victims = rng.choice(np.flatnonzero(~is_new), n_ep, replace=False)
    t_ep = rng.integers(start + 30 * 86400, start + span - 86400, n_ep) if cfg.n_days > 31 else \
        rng.integers(window_lo, start + span - 86400, n_ep)
    gap = rng.integers(20, 40, n_ep) * 86400
    # carve the silence out of the victim's legitimate history
    silence = np.zeros(len(b.parts[0]["ts"]), bool)
    p0 = b.parts[0]
    vmap = np.full(n_c, -1)
    vmap[victims] = np.arange(n_ep)
    vi = vmap[p0["cust"]]
    has = vi >= 0
    silence[has] = (p0["ts"][has] >= t_ep[vi[has]] - gap[vi[has]]) & (p0["ts"][has] < t_ep[vi[has]] + 2 * 86400)
    for key in list(p0):
        p0[key] = p0[key][~silence]
    size = rng.integers(2, 6, n_ep)
    ep = np.repeat(np.arange(n_ep), size)
    times = np.repeat(t_ep, size) + _within_group_cumsum(rng.integers(300, 3 * 3600, len(ep)), size)
    vcard = card_first[victims] + (rng.random(n_ep) * n_cards[victims]).astype(np.int64)
    b.add(ts=times, cust=victims[ep], card=vcard[ep], mcc=rng.choice([6, 8, 14, 5, 12, 1, 0], len(ep)),
          country=np.where(rng.random(n_ep) < 0.5, rng.choice(RISKY, n_ep),
                           rng.choice(len(COUNTRIES), n_ep))[ep],
          dev=np.array([f"a{e}" for e in ep], dtype=object),
          amount=np.round(spend[victims[ep]] * rng.uniform(1.5, 6, len(ep)), 2),
          scen=np.full(len(ep), "account_takeover", dtype=object), label=np.ones(len(ep), np.int8))


def _stolen_card_new_account(w: _World) -> None:
    rng, start, span, b, window_lo = w.rng, w.start, w.span, w.b, w.window_lo
    per_scenario, is_new, card_owner, home, spend = w.per_scenario, w.is_new, w.card_owner, w.home, w.spend
    # stolen card from a fresh account: a victim's card with history, a brand-new customer id
    n_ep = max(1, int(round(per_scenario / 3.0)))
    kcard = rng.choice(np.flatnonzero(~is_new[card_owner]), n_ep)  # established cards, with a history
    t_ep = rng.integers(min(window_lo + 7 * 86400, start + span - 2 * 86400), start + span - 86400, n_ep)
    acc = w.new_accounts(t_ep - rng.integers(0, 2 * 86400, n_ep))
    size = rng.integers(2, 5, n_ep)
    ep = np.repeat(np.arange(n_ep), size)
    times = np.repeat(t_ep, size) + _within_group_cumsum(rng.integers(600, 6 * 3600, len(ep)), size)
    b.add(ts=times, cust=acc[ep], card=kcard[ep], mcc=rng.choice([6, 5, 8, 0, 12], len(ep)),
          country=np.where(rng.random(n_ep) < 0.6, home[card_owner[kcard]], rng.choice(RISKY, n_ep))[ep],
          dev=np.array([f"s{e}" for e in ep], dtype=object),
          amount=np.round(spend[card_owner[kcard[ep]]] * rng.uniform(2, 6, len(ep)), 2),
          scen=np.full(len(ep), "stolen_card_new_account", dtype=object), label=np.ones(len(ep), np.int8))


def _velocity_ramp(w: _World) -> None:
    rng, start, span, b, n_c, window_lo = w.rng, w.start, w.span, w.b, w.n_c, w.window_lo
    per_scenario, card_first, n_cards, home, spend = w.per_scenario, w.card_first, w.n_cards, w.home, w.spend
    # velocity ramp: 4-8 orders, each gap halves and each amount grows by half
    n_ep = max(1, int(round(per_scenario / 6.0)))
    victims = rng.choice(n_c, n_ep, replace=False)
    t_ep = rng.integers(window_lo, start + span - 86400, n_ep)
    size = rng.integers(4, 9, n_ep)
    ep = np.repeat(np.arange(n_ep), size)
    pos = _within_group_index(size)
    gaps = (3600 * 0.5 ** pos * rng.uniform(0.8, 1.2, len(ep))).astype(np.int64) + 30
    times = np.repeat(t_ep, size) + _within_group_cumsum(gaps, size)
    vcard = card_first[victims] + (rng.random(n_ep) * n_cards[victims]).astype(np.int64)
    b.add(ts=times, cust=victims[ep], card=vcard[ep], mcc=rng.choice([6, 5, 8, 13], len(ep)),
          country=home[victims[ep]], dev=np.array([f"d{c}" for c in victims[ep]], dtype=object),
          amount=np.round(spend[victims[ep]] * 1.5 ** pos * rng.uniform(0.9, 1.1, len(ep)), 2),
          scen=np.full(len(ep), "velocity_ramp", dtype=object), label=np.ones(len(ep), np.int8))


def _assemble(w: _World, dirty_rate: float) -> Generated:
    """All pieces in time order, as the transactions and order_features tables (+ dirty rows)."""
    rng, start, span, b, cfg, n_c = w.rng, w.start, w.span, w.b, w.cfg, w.n_c
    opened, card_issued, next_cust, fraud_accounts_opened = w.opened, w.card_issued, w.next_cust, w.fraud_accounts_opened
    f = b.frame()
    order = np.lexsort((f["cust"], f["ts"]))
    f = {k: v[order] for k, v in f.items()}
    n = len(f["ts"])
    ts = np.minimum(f["ts"], start + span - 1)
    merchant = _merchants(np.random.default_rng([cfg.seed, 2]), f["mcc"], n_c)
    behaviour_fraud = f["label"] == 1          # the engineered features react to these only
    if cfg.compromised_merchants:
        _compromise(np.random.default_rng([cfg.seed, 3]), merchant, f, ts, start, span, cfg.compromised_merchants)
    channel_p = np.where(np.isin(f["mcc"], [6, 7, 8]), 1, 0)
    channel = np.where(channel_p == 1, rng.choice([1, 2], n), rng.choice([0, 0, 0, 1, 2], n))
    entry = np.where(channel == 0, rng.choice([0, 1, 2], n, p=[.5, .4, .1]), np.where(rng.random(n) < .97, 3, 4))
    tx = pd.DataFrame({
        "order_id": np.arange(1, n + 1, dtype=np.int64) + 10_000_000,
        "customer_id": np.char.add("C", f["cust"].astype(str)).astype(object),
        "card_id": np.char.add("K", f["card"].astype(str)).astype(object),
        "merchant_id": merchant,
        "order_ts": pd.to_datetime(ts, unit="s", utc=True),
        "merchant_category": MCC[f["mcc"]],
        "channel": CHANNELS[channel],
        "device_id": f["dev"].astype(str),
        "country": COUNTRIES[f["country"]],
        "entry_mode": ENTRY[entry],
        "amount": np.round(f["amount"].astype(np.float64), 2),
        "hour_of_day": ((ts % 86400) / 3600.0).round(3),
        "items": np.maximum(1, rng.poisson(1.3, n) + (f["amount"] > 200)).astype(np.int32),
        "is_fraud": f["label"].astype(np.int32),
        "label_ts": _report_times(np.random.default_rng([cfg.seed, 1]), ts, f["label"] == 1),
        "scenario": f["scen"].astype(str),
    })

    # ---- engineered per-order features (point in time) -------------------------
    opened_all = np.concatenate([opened, np.zeros(next_cust - n_c, np.int64)])
    for arr in fraud_accounts_opened:
        opened_all[arr[0]] = arr[1]
    acc_age = (ts - opened_all[f["cust"]]) / 86400.0
    card_age = (ts - card_issued[f["card"]]) / 86400.0
    fraud = behaviour_fraud
    tenure = pd.Series(1, index=range(n)).groupby(f["cust"]).cumsum().to_numpy() - 1
    feats = pd.DataFrame({
        "order_id": tx["order_id"].to_numpy(),
        "account_age_days": np.round(np.maximum(acc_age, 0.0), 3),
        "card_age_days": np.round(np.maximum(card_age, 0.0), 3),
        # weak, noisy single-order signals: fraud shifts them a little, legit overlaps heavily
        "email_risk": np.round(np.clip(rng.beta(2, 8, n) + fraud * rng.normal(0.05, 0.1, n), 0, 1), 4),
        "ip_risk": np.round(np.clip(rng.beta(2, 6, n) + fraud * rng.normal(0.05, 0.1, n), 0, 1), 4),
        "billing_shipping_match": np.where(rng.random(n) < np.where(fraud, 0.75, 0.9), 1.0, 0.0),
        "customer_tenure_orders": tenure.astype(np.float64),
    })
    tx = _add_dirty_rows(rng, tx, dirty_rate)
    log.info("generated %d orders (%d customers, fraud rate %.4f)", len(tx), next_cust,
             float(tx["is_fraud"].mean()))
    return Generated(transactions=tx.reset_index(drop=True), order_features=feats)


def _add_dirty_rows(rng: np.random.Generator, tx: pd.DataFrame, rate: float) -> pd.DataFrame:
    """Corrupt a few rows the ways real feeds do; each kind gets its own ``scenario`` tag."""
    n_bad = int(rate * len(tx))
    if n_bad == 0:
        return tx
    tx = tx.copy()
    idx = rng.choice(len(tx), n_bad * len(DIRTY_KINDS), replace=False).reshape(len(DIRTY_KINDS), n_bad)
    tx.loc[idx[0], "customer_id"] = None
    tx.loc[idx[0], "scenario"] = "dirty_null_customer"
    tx["order_ts"] = tx["order_ts"].astype("datetime64[us, UTC]")
    tx.loc[idx[1], "order_ts"] = pd.NaT
    tx.loc[idx[1], "scenario"] = "dirty_null_time"
    tx.loc[idx[3], "amount"] = np.nan
    tx.loc[idx[3], "scenario"] = "dirty_nan_amount"
    tx.loc[idx[4], "amount"] = -tx.loc[idx[4], "amount"].abs() - 1.0
    tx.loc[idx[4], "scenario"] = "dirty_negative_amount"
    dup = tx.loc[idx[2]].copy()
    dup["amount"] = dup["amount"] + 0.01  # same order id, slightly different payload
    dup["scenario"] = "dirty_duplicate_order"
    return pd.concat([tx, dup], ignore_index=True)


def _merchants(rng: np.random.Generator, mcc: np.ndarray, n_customers: int) -> np.ndarray:
    """A merchant per order: ``M<category>_<k>``, each category with merchants in proportion to its
    share of orders, the first few taking most of them (index ``n * u**2``)."""
    per_cat = np.maximum(3, np.round(MCC_LEGIT_P * n_customers * 0.02)).astype(np.int64)
    idx = np.floor(per_cat[mcc] * rng.random(len(mcc)) ** 2).astype(np.int64)
    return np.char.add(np.char.add(np.char.add("M", np.char.zfill(mcc.astype(str), 2)), "_"),
                       idx.astype(str)).astype(object)


def _compromise(rng: np.random.Generator, merchant: np.ndarray, f: dict[str, np.ndarray], ts: np.ndarray,
                start: int, span: int, n: int) -> None:
    """Compromise ``n`` in-person merchants for 14-28 days each, from a time between day 10 and two
    weeks before the end: ``COMPROMISE_FRAUD_SHARE`` of their orders then become fraud."""
    candidates = np.unique(merchant[np.isin(f["mcc"], COMPROMISED_MCC)])
    chosen = rng.choice(candidates, min(n, len(candidates)), replace=False)
    t0 = rng.integers(start + 10 * 86400, max(start + 10 * 86400 + 1, start + span - 14 * 86400), len(chosen))
    t1 = t0 + rng.integers(14, 29, len(chosen)) * 86400
    pos = pd.Series(np.arange(len(chosen)), index=chosen).reindex(merchant).to_numpy()
    at = ~np.isnan(pos)
    k = np.where(at, pos, 0).astype(np.int64)
    hit = at & (ts >= t0[k]) & (ts < t1[k]) & (f["label"] == 0) & (rng.random(len(ts)) < COMPROMISE_FRAUD_SHARE)
    f["label"] = np.where(hit, 1, f["label"]).astype(f["label"].dtype)
    f["scen"] = np.where(hit, "compromised_merchant", f["scen"]).astype(object)


def _report_times(rng: np.random.Generator, ts: np.ndarray, fraud: np.ndarray) -> pd.Series:
    """When each fraud order's report arrives (UTC, microseconds); NaT for legitimate orders."""
    days = np.minimum(1.0 + rng.exponential(REPORT_DELAY_MEAN_DAYS, len(ts)), REPORT_DELAY_MAX_DAYS)
    us = ts.astype(np.int64) * 1_000_000 + np.round(days * 86400e6).astype(np.int64)
    out = pd.Series(pd.to_datetime(us, unit="us", utc=True)).astype("datetime64[us, UTC]")
    out[~fraud] = pd.NaT
    return out


def _hour_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds into the day with a daytime peak."""
    h = np.clip(rng.normal(14.5, 4.0, n), 0, 23.999)
    return (h * 3600).astype(np.int64)


def _choice_rows(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    """One draw per row from per-row probability vectors ``p`` [n, k]."""
    c = np.cumsum(p, axis=1)
    u = rng.random((len(p), 1)) * c[:, -1:]
    return (u > c).sum(axis=1)


def _amounts(rng: np.random.Generator, level: np.ndarray, mcc: np.ndarray) -> np.ndarray:
    scale = np.array([1.0, .8, 1.1, .15, .12, 1.3, 4.0, .5, 1.5, 6.0, 5.0, .7, 2.0, .9, 8.0])
    return np.round(level * scale[mcc] * np.exp(rng.normal(0, 0.5, len(mcc))), 2).clip(0.5, None)


def _within_group_index(size: np.ndarray) -> np.ndarray:
    """[0..s0-1, 0..s1-1, ...] for group sizes ``size``."""
    ends = np.cumsum(size)
    return np.arange(ends[-1]) - np.repeat(ends - size, size)


def _within_group_cumsum(x: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Cumulative sum of ``x`` restarting at each group, first element of a group -> 0."""
    c = np.cumsum(x)
    starts = np.repeat(np.cumsum(size) - size, size)
    return c - c[starts]
