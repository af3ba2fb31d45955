"""Synthetic UniTi histories with a long-history signal (``dv365 synth``; docs/design.md#uniti-timelines).

Generative model (all draws vectorized with numpy, deterministic by ``seed``):

**Catalogue.** ``num_authors`` authors with Zipf popularity (exponent ``author_zipf``), each with a home topic drawn
with Zipf popularity over ``num_topics`` topics (``topic_zipf``). ``num_items`` items: each item's author is a Zipf
draw over authors; its topic is the author's home topic with probability ``author_topic_loyalty``, else a Zipf
topic. Media type ~ ``media_type_probs`` (video / photo / carousel); ``video_duration`` is log-normal with a
per-media median (``duration_median``) and spread ``duration_sigma`` (for photos and carousels it is the expected
viewing time). Within a topic (and within an author) items are Zipf-popular (``item_zipf``).

**Users.** Each user has ``long_interests`` stable long-term topics with Dirichlet weights ``w`` (the first one, the
*core* interest, always active) and ``favourite_authors`` authors drawn from those topics. Every non-core long-term
interest is *periodic*: active in a fraction ``duty ~ U(duty_range)`` of every period ``P ~ U(period_days)`` days with
a random phase — so a user who loves topic k may not have touched it for weeks. *Emerging* interests are short-lived
topics: episodes with Poisson(``emerging_per_30d`` per 30 days) starts and log-normal durations (median
``emerging_days``), one of them running at the end of the history with probability ``emerging_at_end``.

**Timelines.** A user's total length L is log-normal with mean ``mean_length`` after the cap ``max_length`` (the
log-mean is solved for so that E[min(L, cap)] = ``mean_length``); ``implicit_fraction`` of it is implicit (capped at
``max_implicit``) and the rest explicit (capped at ``max_explicit``). Events cover ``span_days`` before the user's
end time, in sessions (exponential gaps, a session break with probability ``session_break``). Each event picks its
source: a long-term interest (by ``w``, resolved to 1/1024 by a lookup table; falling back to the core interest when the drawn one is in its off phase),
the emerging interest active at that time (else long-term), a favourite author, or exploration (global Zipf over
items); the item is then a Zipf draw within the topic or author. Affinity ``a`` of an event: ``1 + K·w_k`` for
long-term, ``emerging_affinity`` for emerging, ``author_affinity`` for favourite authors, 0 for exploration.
Implicit: ``dwell = duration · r`` with watch ratio ``log r ~ N(log r0 + beta·a, ratio_sigma)`` clipped to
``[0, max_ratio]``. Explicit: the same item model with more weight on interests (``explicit_source_probs``) and
``action_type ~ action_probs`` (rare actions rarer).

**Examples.** ``examples_per_user`` requests per user at times uniform in the last ``request_window_days`` of the
history. The candidate is drawn from: a periodic long-term interest (uniformly, any phase), the emerging interest
active at the request, a favourite author, or global popularity (``candidate_probs``). Its true affinity ``a*`` counts every matching
interest: ``K·w_k`` for each long-term topic match (regardless of phase), ``emerging_affinity`` if it matches the
emerging topic active at the request, ``author_affinity`` for a favourite author. Watch ratio as above gives
``watch_time``, ``video_complete = r >= 0.9``, ``skip = dwell < 2 s``; every other task k is
Bernoulli(sigmoid(``label_bias[k]`` + ``label_coef[k]``·a*)).

**Why the long history matters.** A candidate from a dormant long-term interest has high ``a*`` but its topic is
absent from the last few hundred events (a few days) and present only in the distant history, during that
interest's past on-phases. A model that sees only the last 500 events cannot tell it from a random item;
:func:`topic_share_auc` measures this (at the default size: 0.78 with the whole history, 0.73 with the last 500
events; the tests check the same at 1/10 scale, 4,000 events against the last 50).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from ..timeline import ACTION_TYPES, EXPLICIT, IMPLICIT, MEDIA_TYPES, SURFACES
from .parquet import Columns, Shard
from .schema import LABEL_COLUMNS, TASKS

DAY = 86400


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    # lengths
    mean_length: float = 40_000
    length_sigma: float = 0.35
    max_length: int = 70_000
    implicit_fraction: float = 0.86  # with the 35,000 cap: implicit ≈ 30,000, explicit ≈ 10,000 at the default mean
    max_implicit: int = 35_000
    max_explicit: int = 35_000
    # catalogue
    num_items: int = 1_000_000
    num_authors: int = 200_000
    num_topics: int = 10_000
    item_zipf: float = 1.1
    author_zipf: float = 1.1
    topic_zipf: float = 1.0
    author_topic_loyalty: float = 0.8
    media_type_probs: tuple[float, float, float] = (0.6, 0.25, 0.15)
    duration_median: tuple[float, float, float] = (25.0, 6.0, 12.0)
    duration_sigma: float = 0.9
    surface_probs: tuple[float, float, float, float] = (0.4, 0.35, 0.15, 0.1)
    # time
    end_ts: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    end_jitter_days: float = 30.0
    span_days: float = 365.0
    session_break: float = 0.03
    # interests
    long_interests: int = 8
    dirichlet_alpha: float = 0.7
    favourite_authors: int = 6
    period_days: tuple[float, float] = (30.0, 120.0)
    duty_range: tuple[float, float] = (0.1, 0.35)
    emerging_per_30d: float = 1.0
    emerging_days: float = 8.0
    emerging_at_end: float = 0.5
    # event sources: long-term, emerging, favourite author, exploration
    implicit_source_probs: tuple[float, float, float, float] = (0.5, 0.15, 0.1, 0.25)
    explicit_source_probs: tuple[float, float, float, float] = (0.6, 0.2, 0.15, 0.05)
    emerging_affinity: float = 1.5
    author_affinity: float = 1.0
    # engagement
    ratio_base: float = 0.25
    ratio_beta: float = 0.55
    ratio_sigma: float = 0.6
    max_ratio: float = 4.0
    action_probs: tuple[float, ...] = (0.55, 0.08, 0.08, 0.12, 0.04, 0.1, 0.03)
    # examples
    examples_per_user: int = 4
    request_window_days: float = 7.0
    candidate_probs: tuple[float, float, float, float] = (0.35, 0.15, 0.1, 0.4)
    label_bias: tuple[float, ...] = (0, 0, -4.5, -4.0, -5.5, -5.0, -2.5, -4.5, -5.0)
    label_coef: tuple[float, ...] = (0, 0, 1.2, 1.2, 1.0, 1.0, 1.5, 1.2, 1.0)
    # storage
    users_per_shard: int = 64  # ≈ 2.6 M events per shard at the default lengths (≈ 0.4 GB peak to generate)

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"SynthConfig: {msg}")

        if not self.mean_length > 0:
            bad(f"mean_length must be > 0, got {self.mean_length}")
        if self.mean_length >= self.max_length:
            bad(f"mean_length ({self.mean_length}) must be below max_length ({self.max_length})")
        if self.max_implicit + self.max_explicit < self.max_length:
            bad("max_implicit + max_explicit must be >= max_length")
        if self.num_items < 1 or self.num_authors < 1 or self.num_topics < 1:
            bad("num_items, num_authors and num_topics must be >= 1")
        if self.long_interests < 1 or self.users_per_shard < 1 or self.examples_per_user < 0:
            bad("long_interests and users_per_shard must be >= 1, examples_per_user >= 0")
        if len(self.action_probs) != len(ACTION_TYPES):
            bad(f"action_probs needs {len(ACTION_TYPES)} entries ({ACTION_TYPES})")
        if len(self.label_bias) != len(TASKS) or len(self.label_coef) != len(TASKS):
            bad(f"label_bias and label_coef need {len(TASKS)} entries ({TASKS})")


def _lognormal_mu(mean: float, sigma: float, cap: float) -> float:
    """The log-mean mu with E[min(L, cap)] = mean for L ~ LogNormal(mu, sigma)."""
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731

    def capped_mean(mu: float) -> float:
        lc = math.log(cap)
        return math.exp(mu + sigma**2 / 2) * phi((lc - mu - sigma**2) / sigma) + cap * (1 - phi((lc - mu) / sigma))

    lo, hi = math.log(mean) - 10 * sigma - 1, math.log(cap) + 10 * sigma
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if capped_mean(mid) < mean else (lo, mid)
    return (lo + hi) / 2


def sample_lengths(rng: np.random.Generator, num_users: int, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (implicit, explicit) lengths: total log-normal with capped mean ``mean_length``, split by
    ``implicit_fraction``, each capped; overflow of one timeline goes to the other."""
    mu = _lognormal_mu(cfg.mean_length, cfg.length_sigma, cfg.max_length)
    total = np.minimum(np.rint(rng.lognormal(mu, cfg.length_sigma, num_users)), cfg.max_length).astype(np.int64)
    imp = np.minimum(np.rint(total * cfg.implicit_fraction).astype(np.int64), cfg.max_implicit)
    exp = np.minimum(total - imp, cfg.max_explicit)
    imp = np.minimum(total - exp, cfg.max_implicit)
    return imp, exp


def _zipf_scale(n: np.ndarray | int, s: float) -> np.ndarray:
    """Per-support constant of :func:`_zipf_rank`: (n + 1)^(1 - s) - 1 (log(n + 1) when s = 1)."""
    n1 = np.asarray(n, dtype=np.float64) + 1.0
    return (np.log(n1) if abs(s - 1.0) < 1e-9 else n1 ** (1.0 - s) - 1.0).astype(np.float32)


def _zipf_rank(u: np.ndarray, n: np.ndarray | int, s: float, scale: np.ndarray | None = None) -> np.ndarray:
    """Inverse CDF of a bounded continuous power law x^-s on [1, n + 1), floored to a rank in [0, n).
    float32 exp/log (SIMD in numpy) keep this at a few ns per draw; ranks stay exact below 2^24."""
    c = _zipf_scale(n, s) if scale is None else scale
    u = u.astype(np.float32, copy=False)
    if abs(s - 1.0) < 1e-9:
        x = np.exp(u * c)
    else:
        x = np.exp(np.log(c * u + np.float32(1.0)) * np.float32(1.0 / (1.0 - s)))
    return np.minimum(x.astype(np.int64) - 1, np.asarray(n, dtype=np.int64) - 1)


@dataclasses.dataclass
class Catalogue:
    """Items, authors and topics, with the indexes the samplers need."""

    item_author: np.ndarray
    item_topic: np.ndarray
    item_media: np.ndarray
    item_duration: np.ndarray
    pop_order: np.ndarray  # items by global popularity rank
    topic_items: np.ndarray  # item ids grouped by topic, popular first
    topic_start: np.ndarray  # [num_topics + 1]
    author_items: np.ndarray
    author_start: np.ndarray
    live_topics: np.ndarray  # topics with >= 1 item, by popularity
    topic_scale: np.ndarray  # _zipf_scale of each topic's and author's item count
    author_scale: np.ndarray
    item_zipf: float

    @classmethod
    def build(cls, cfg: SynthConfig, rng: np.random.Generator) -> Catalogue:
        T, A, N = cfg.num_topics, cfg.num_authors, cfg.num_items
        topic_perm = rng.permutation(T)  # topic popularity rank -> topic id
        author_perm = rng.permutation(A)
        author_home = topic_perm[_zipf_rank(rng.random(A), T, cfg.topic_zipf)]
        item_author = author_perm[_zipf_rank(rng.random(N), A, cfg.author_zipf)]
        loyal = rng.random(N) < cfg.author_topic_loyalty
        item_topic = np.where(loyal, author_home[item_author], topic_perm[_zipf_rank(rng.random(N), T, cfg.topic_zipf)])
        item_media = rng.choice(len(MEDIA_TYPES), size=N, p=np.asarray(cfg.media_type_probs) / sum(cfg.media_type_probs))
        median = np.asarray(cfg.duration_median, dtype=np.float64)[item_media]
        item_duration = (median * np.exp(cfg.duration_sigma * rng.standard_normal(N))).astype(np.float32)
        pop_order = rng.permutation(N)
        # a stable sort by topic keeps the popularity order inside each topic
        topic_items = pop_order[np.argsort(item_topic[pop_order], kind="stable")]
        topic_start = np.zeros(T + 1, dtype=np.int64)
        topic_start[1:] = np.cumsum(np.bincount(item_topic, minlength=T))
        author_items = pop_order[np.argsort(item_author[pop_order], kind="stable")]
        author_start = np.zeros(A + 1, dtype=np.int64)
        author_start[1:] = np.cumsum(np.bincount(item_author, minlength=A))
        sizes = np.diff(topic_start)
        live_topics = topic_perm[sizes[topic_perm] > 0]
        return cls(
            item_author.astype(np.int64), item_topic.astype(np.int64), item_media.astype(np.int8), item_duration,
            pop_order, topic_items, topic_start, author_items, author_start, live_topics,
            _zipf_scale(sizes, cfg.item_zipf), _zipf_scale(np.diff(author_start), cfg.item_zipf), cfg.item_zipf,
        )

    def items_table(self) -> Columns:
        return {
            "item_id": np.arange(self.item_author.size, dtype=np.int64),
            "author_id": self.item_author,
            "topic_id": self.item_topic,
            "media_type": self.item_media,
            "video_duration": self.item_duration,
        }

    def item_in_topic(self, u: np.ndarray, topic: np.ndarray) -> np.ndarray:
        start = self.topic_start[topic]
        rank = _zipf_rank(u, self.topic_start[topic + 1] - start, self.item_zipf, self.topic_scale[topic])
        return self.topic_items[start + rank]

    def item_of_author(self, u: np.ndarray, author: np.ndarray) -> np.ndarray:
        start = self.author_start[author]
        rank = _zipf_rank(u, self.author_start[author + 1] - start, self.item_zipf, self.author_scale[author])
        return self.author_items[start + rank]

    def popular_item(self, u: np.ndarray) -> np.ndarray:
        return self.pop_order[_zipf_rank(u, self.pop_order.size, self.item_zipf)]

    def popular_topic(self, u: np.ndarray, s: float) -> np.ndarray:
        return self.live_topics[_zipf_rank(u, self.live_topics.size, s)]


@dataclasses.dataclass
class Users:
    """Latent state of a chunk of users (see the module docstring)."""

    end_ts: np.ndarray  # [U]
    topics: np.ndarray  # [U, K] long-term topics, column 0 = core
    weights: np.ndarray  # [U, K] Dirichlet
    period: np.ndarray  # [U, K] seconds
    phase: np.ndarray  # [U, K] in [0, 1)
    duty: np.ndarray  # [U, K]; 1 for the core interest
    authors: np.ndarray  # [U, M]
    em_user: np.ndarray  # emerging episodes, sorted by (user, start)
    em_start: np.ndarray
    em_end: np.ndarray
    em_topic: np.ndarray

    def active(self, flat: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Whether long-term interest ``flat = u * K + k`` is in its on phase at ``ts``."""
        p = self.period.reshape(-1)[flat]
        return np.mod(ts / p + self.phase.reshape(-1)[flat], 1.0) < self.duty.reshape(-1)[flat]

    def emerging_at(self, user: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Topic of the emerging interest of ``user`` active at ``ts``, or -1."""
        if self.em_user.size == 0:
            return np.full(user.shape, -1, dtype=np.int64)
        base = int(self.em_start.min()) - 1
        key_e = (self.em_user << 34) + (self.em_start - base)
        key = (user << 34) + np.clip(ts - base, 0, (1 << 34) - 1)
        i = np.searchsorted(key_e, key, side="right") - 1
        ic = np.maximum(i, 0)
        ok = (i >= 0) & (self.em_user[ic] == user) & (ts < self.em_end[ic])
        return np.where(ok, self.em_topic[ic], -1)

    def emerging_along(self, starts: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """:meth:`emerging_at` for a timeline sorted by (user, ts) with user offsets ``starts``: each episode's
        event range comes from two binary searches into the timeline, then one cumulative sum labels the events."""
        n = ts.size
        if self.em_user.size == 0 or n == 0:
            return np.full(n, -1, dtype=np.int64)
        base = min(int(self.em_start.min()), int(ts.min())) - 1
        user = np.repeat(np.arange(starts.size - 1, dtype=np.int64), np.diff(starts))
        key = (user << 34) + (ts - base)  # sorted, since ts ascends within each user
        clip = lambda t: np.clip(t - base, 0, (1 << 34) - 1)  # noqa: E731
        a = np.searchsorted(key, (self.em_user << 34) + clip(self.em_start))
        b = np.searchsorted(key, (self.em_user << 34) + clip(self.em_end))
        eid = np.arange(1, self.em_user.size + 1, dtype=np.int64)
        mark = np.zeros(n + 1, dtype=np.int64)
        np.add.at(mark, a, eid)
        np.add.at(mark, b, -eid)
        idx = np.cumsum(mark[:n])
        return np.where(idx > 0, self.em_topic[np.maximum(idx - 1, 0)], -1)

    def interest_table(self, q: int) -> np.ndarray:
        """``[U, q]`` quantized inverse CDF of the interest weights: entry j is the interest drawn by r in
        [j/q, (j+1)/q) (weights resolved to 1/q, one gather per draw instead of a search)."""
        cum = np.cumsum(self.weights, axis=1)
        mid = (np.arange(q) + 0.5) / q
        return np.minimum((mid[None, :, None] >= cum[:, None, :]).sum(-1), cum.shape[1] - 1).astype(np.int64)


def _make_users(cat: Catalogue, cfg: SynthConfig, rng: np.random.Generator, U: int) -> Users:
    K, M = cfg.long_interests, cfg.favourite_authors
    end_ts = cfg.end_ts - (rng.random(U) * cfg.end_jitter_days * DAY).astype(np.int64)
    topics = cat.popular_topic(rng.random((U, K)), cfg.topic_zipf)
    weights = rng.dirichlet(np.full(K, cfg.dirichlet_alpha), size=U)
    period = rng.uniform(*cfg.period_days, size=(U, K)) * DAY
    phase = rng.random((U, K))
    duty = rng.uniform(*cfg.duty_range, size=(U, K))
    duty[:, 0] = 1.0
    fav_topic = topics[np.arange(U)[:, None], rng.integers(0, K, size=(U, M))]
    authors = cat.item_author[cat.item_in_topic(rng.random((U, M)), fav_topic)]
    # emerging episodes: Poisson starts over the span, plus one running at the end with some probability
    span = cfg.span_days * DAY
    n_em = rng.poisson(cfg.emerging_per_30d * cfg.span_days / 30.0, size=U)
    em_user = np.repeat(np.arange(U, dtype=np.int64), n_em)
    em_start = end_ts[em_user] - (rng.random(em_user.size) * span).astype(np.int64)
    at_end = np.flatnonzero(rng.random(U) < cfg.emerging_at_end)
    em_user = np.concatenate([em_user, at_end])
    em_start = np.concatenate([em_start, end_ts[at_end] - (rng.uniform(3, 20, at_end.size) * DAY).astype(np.int64)])
    em_len = (cfg.emerging_days * DAY * np.exp(0.5 * rng.standard_normal(em_user.size))).astype(np.int64)
    em_len[n_em.sum():] = np.maximum(em_len[n_em.sum():], 40 * DAY)  # the end episode runs past the requests
    em_topic = cat.popular_topic(rng.random(em_user.size), cfg.topic_zipf)
    order = np.lexsort((em_start, em_user))
    em_user, em_start, em_len, em_topic = em_user[order], em_start[order], em_len[order], em_topic[order]
    # episodes of one user do not overlap: each ends at the latest when the next starts
    nxt = np.append(em_start[1:], np.iinfo(np.int64).max)
    same = np.append(em_user[1:] == em_user[:-1], False)
    em_end = np.where(same, np.minimum(em_start + em_len, nxt), em_start + em_len)
    return Users(end_ts, topics, weights, period, phase, duty, authors, em_user, em_start, em_end, em_topic)


def _timeline(cat: Catalogue, users: Users, cfg: SynthConfig, rng: np.random.Generator, lengths: np.ndarray,
              first_user: int, kind: str) -> Columns:
    U, K = users.topics.shape
    n = int(lengths.sum())
    uid = np.repeat(np.arange(U, dtype=np.int64), lengths)
    starts = np.zeros(U + 1, dtype=np.int64)
    starts[1:] = np.cumsum(lengths)
    # session-structured times: exponential gaps, rare long breaks, scaled so each user spans span_days
    gaps = rng.standard_exponential(n, dtype=np.float32)
    gaps[rng.random(n, dtype=np.float32) < cfg.session_break] *= 200.0
    cum = np.cumsum(gaps, dtype=np.float64)
    base = np.concatenate([[0.0], cum])[starts[:-1]]
    total = cum[np.maximum(starts[1:] - 1, 0)] - base
    pos = (cum - base[uid]) / np.maximum(total, 1e-12)[uid]
    span = cfg.span_days * DAY
    ts = users.end_ts[uid] - np.rint((1.0 - pos) * span).astype(np.int64)

    probs = cfg.implicit_source_probs if kind == IMPLICIT else cfg.explicit_source_probs
    c = (np.cumsum(probs) / sum(probs)).astype(np.float32)
    r = rng.random(n, dtype=np.float32)
    src = (r >= c[0]).astype(np.int8) + (r >= c[1]) + (r >= c[2])  # 0 long, 1 emerging, 2 author, 3 explore
    Q = 1024
    table = users.interest_table(Q).reshape(-1)
    q = (rng.random(n, dtype=np.float32) * np.float32(Q)).astype(np.int64)
    flat = uid * K + table[uid * Q + np.minimum(q, Q - 1)]
    flat = np.where(users.active(flat, ts), flat, uid * K)  # off phase -> core interest
    topic = users.topics.reshape(-1)[flat]
    aff = (1.0 + K * users.weights.reshape(-1)[flat]).astype(np.float32)
    em = users.emerging_along(starts, ts)
    use_em = (src == 1) & (em >= 0)
    topic = np.where(use_em, em, topic)
    aff = np.where(use_em, cfg.emerging_affinity, aff)
    u2 = rng.random(n, dtype=np.float32)
    item = cat.item_in_topic(u2, topic)
    is_author = src == 2
    if is_author.any():
        fav = users.authors[uid[is_author], rng.integers(0, users.authors.shape[1], int(is_author.sum()))]
        item[is_author] = cat.item_of_author(u2[is_author], fav)
        aff[is_author] = cfg.author_affinity
    explore = src == 3
    if explore.any():
        item[explore] = cat.popular_item(u2[explore])
        aff[explore] = 0.0
    sp = np.cumsum(cfg.surface_probs) / sum(cfg.surface_probs)
    cols: Columns = {
        "user_id": uid + first_user,
        "ts": ts,
        "media_id": item,
        "author_id": cat.item_author[item],
        "topic_id": cat.item_topic[item],
    }
    surface = np.minimum(np.searchsorted(sp, rng.random(n), side="right"), len(SURFACES) - 1).astype(np.int8)
    if kind == EXPLICIT:
        ap = np.cumsum(cfg.action_probs) / sum(cfg.action_probs)
        cols["action_type"] = np.minimum(np.searchsorted(ap, rng.random(n), side="right"), len(ACTION_TYPES) - 1).astype(np.int8)
        cols["media_type"] = cat.item_media[item]
        cols["surface"] = surface
    else:
        cols["media_type"] = cat.item_media[item]
        cols["surface"] = surface
        dur = cat.item_duration[item]
        cols["video_duration"] = dur
        cols["dwell_time"] = (dur * _watch_ratio(rng, aff, cfg)).astype(np.float32)
    return cols


def _watch_ratio(rng: np.random.Generator, aff: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    z = np.float32(math.log(cfg.ratio_base)) + np.float32(cfg.ratio_beta) * aff.astype(np.float32)
    z += np.float32(cfg.ratio_sigma) * rng.standard_normal(aff.size, dtype=np.float32)
    return np.minimum(np.exp(z), np.float32(cfg.max_ratio))


def _examples(cat: Catalogue, users: Users, cfg: SynthConfig, rng: np.random.Generator, first_user: int) -> Columns:
    U, K = users.topics.shape
    E = cfg.examples_per_user
    uid = np.repeat(np.arange(U, dtype=np.int64), E)
    n = uid.size
    req = users.end_ts[uid] - (rng.random(n) * cfg.request_window_days * DAY).astype(np.int64)
    req = np.sort(req.reshape(U, E), axis=1).reshape(-1) if E else req
    c = np.cumsum(cfg.candidate_probs) / sum(cfg.candidate_probs)
    src = np.searchsorted(c, rng.random(n), side="right")
    # long-term candidates come uniformly from the periodic (non-core) interests: the ones that may be dormant
    flat = uid * K + (rng.integers(1, K, n) if K > 1 else 0)
    topic = users.topics.reshape(-1)[flat]
    em = users.emerging_at(uid, req)
    topic = np.where((src == 1) & (em >= 0), em, topic)
    u2 = rng.random(n)
    item = cat.item_in_topic(u2, topic)
    a = src == 2
    if a.any():
        item[a] = cat.item_of_author(u2[a], users.authors[uid[a], rng.integers(0, users.authors.shape[1], int(a.sum()))])
    x = src == 3
    item[x] = cat.popular_item(u2[x])
    it_topic, it_author = cat.item_topic[item], cat.item_author[item]
    # true affinity: every matching interest counts, long-term ones regardless of their phase
    aff = (K * users.weights[uid] * (users.topics[uid] == it_topic[:, None])).sum(axis=1)
    aff += cfg.emerging_affinity * ((em >= 0) & (em == it_topic))
    aff += cfg.author_affinity * (users.authors[uid] == it_author[:, None]).any(axis=1)
    dur = cat.item_duration[item]
    ratio = _watch_ratio(rng, aff, cfg)
    watch = (dur * ratio).astype(np.float32)
    labels = 1.0 / (1.0 + np.exp(-(np.asarray(cfg.label_bias)[None, :] + np.asarray(cfg.label_coef)[None, :] * aff[:, None])))
    labels = (rng.random(labels.shape) < labels).astype(np.float32)
    labels[:, TASKS.index("video_complete")] = ratio >= 0.9
    labels[:, TASKS.index("skip")] = watch < 2.0
    cols: Columns = {
        "user_id": uid + first_user,
        "request_ts": req,
        "item_id": item,
        "author_id": it_author,
        "topic_id": it_topic,
        "media_type": cat.item_media[item],
        "video_duration": dur,
    }
    cols.update({name: np.ascontiguousarray(labels[:, i]) for i, name in enumerate(LABEL_COLUMNS)})
    cols["watch_time"] = watch
    return cols


class Generated:
    """The lazy result of :func:`generate`: iterate for the shards (generated on demand, deterministic), or
    write them with :meth:`write`. ``catalogue`` and ``items`` are built eagerly."""

    def __init__(self, num_users: int, seed: int, config: SynthConfig, catalogue_seed: int | None = None):
        self.num_users, self.seed, self.config = num_users, seed, config
        self.catalogue_seed = seed if catalogue_seed is None else catalogue_seed
        self.catalogue = Catalogue.build(config, np.random.default_rng([self.catalogue_seed, 0]))
        self.num_shards = -(-num_users // config.users_per_shard)

    def __len__(self) -> int:
        return self.num_shards

    @property
    def items(self) -> Columns:
        return self.catalogue.items_table()

    def shard(self, k: int) -> Shard:
        cfg = self.config
        first = k * cfg.users_per_shard
        end = min(first + cfg.users_per_shard, self.num_users)
        if not 0 <= first < end:
            raise IndexError(f"generate: shard {k} out of range [0, {self.num_shards})")
        rng = np.random.default_rng([self.seed, 1, k])
        U = end - first
        n_imp, n_exp = sample_lengths(rng, U, cfg)
        users = _make_users(self.catalogue, cfg, rng, U)
        return Shard(
            first,
            end,
            explicit=_timeline(self.catalogue, users, cfg, rng, n_exp, first, EXPLICIT),
            implicit=_timeline(self.catalogue, users, cfg, rng, n_imp, first, IMPLICIT),
            examples=_examples(self.catalogue, users, cfg, rng, first),
        )

    def __iter__(self) -> Iterator[Shard]:
        return (self.shard(k) for k in range(self.num_shards))

    def source(self) -> dict:
        return {"generator": "dv365.data.synth", "seed": self.seed, "catalogue_seed": self.catalogue_seed,
                "num_users": self.num_users,
                "config": dataclasses.asdict(self.config)}

    def write(self, path, overwrite: bool = False, progress=None) -> dict:
        from .parquet import write_dataset

        return write_dataset(path, _ahead(iter(self)), items=self.items, source=self.source(), overwrite=overwrite,
                             progress=progress)


def _ahead(shards: Iterator[Shard]) -> Iterator[Shard]:
    """Generate the next shard in a thread while the current one is written (numpy and Parquet release the GIL)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=1)
    done = object()

    def produce() -> None:
        try:
            for shard in shards:
                q.put(shard)
            q.put(done)
        except BaseException as e:  # re-raised in the writer
            q.put(e)

    threading.Thread(target=produce, name="dv365-synth", daemon=True).start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def generate(num_users: int, seed: int = 0, config: SynthConfig | None = None,
             catalogue_seed: int | None = None) -> Generated:
    """Synthetic UniTi data for ``num_users`` users (module docstring); shards are generated lazily.

    ``catalogue_seed`` (default: ``seed``) draws the items, authors and topics. Held-out users for evaluating a
    model trained on another generated dataset need that dataset's catalogue (``seed`` different,
    ``catalogue_seed`` the same): item 17 is then the same item, with the same topic and author, in both."""
    if num_users < 1:
        raise ValueError(f"generate: num_users must be >= 1, got {num_users}")
    return Generated(num_users, seed, config or SynthConfig(), catalogue_seed)


def topic_share_auc(history_topics: list[np.ndarray], candidate_topic: np.ndarray, label: np.ndarray) -> float:
    """AUC of "share of the history on the candidate's topic" as a score for ``label`` — the simple interest
    model used to check that the full history carries signal the last 500 events do not."""
    score = np.array([(h == t).mean() if h.size else 0.0 for h, t in zip(history_topics, candidate_topic)])
    pos, neg = score[label > 0.5], score[label <= 0.5]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(order.size)
    allv = np.concatenate([pos, neg])[order]
    # average ranks of ties
    _, inv, cnt = np.unique(allv, return_inverse=True, return_counts=True)
    csum = np.cumsum(cnt)
    avg = csum - (cnt - 1) / 2.0
    ranks[order] = avg[inv]
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))
