"""Random valid timelines and slice programs for tests and benchmarks, and the W40K workload (docs/design.md#w40k-workload).

Every builder returns tensors laid out as the slicing ops take them (``dv365_ops.program`` documents the
program; ``python/dv365/timeline.py`` the timeline): ``offsets [B+1]``, ``ts [N]`` ascending per user,
``cats`` int8 ``[C, N]``, ``floats`` float32 ``[F, N]`` (``F`` is 0 or 2: duration, dwell), ``request_ts [B]``,
``ids`` a list of int64 ``[N]`` (one per table).
"""

from __future__ import annotations

import math

import torch

from . import program as P

DAY = 86_400
GAP = DAY  # the paper's 24 h cut for the distant-interest objective
W40K_TABLE_ROWS = (1_000_000, 200_000, 10_000)  # media, author, topic
W40K_CAT_CARDINALITY = (7, 3, 4)  # action_type, media_type, surface
W40K_WINDOWS = ((0, P.NO_UPPER_BOUND), (GAP, 3 * DAY), (GAP, 7 * DAY), (GAP, P.NO_UPPER_BOUND))


def random_timeline(
    lengths: list[int],
    *,
    table_rows: tuple[int, ...] = (97, 31),
    cat_cardinality: tuple[int, ...] = (7, 3, 4),
    with_floats: bool = True,
    span_days: float = 30.0,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> dict:
    """A batch of users with the given history lengths, timestamps ascending per user within ``span_days``
    before each user's request time (with ties, and some events after the request time), and float fields
    that include zero durations and dwell times."""
    g = generator
    b = len(lengths)
    n = int(sum(lengths))
    offsets = torch.zeros(b + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
    request_ts = 1_700_000_000 + torch.randint(0, 10 * DAY, (b,), generator=g)
    span = max(int(span_days * DAY), 1)
    # coarse steps so that equal timestamps and exact window boundaries occur
    back = torch.randint(-2, span // 3600 + 1, (n,), generator=g) * 3600
    back = back + torch.randint(0, 2, (n,), generator=g)
    user = torch.repeat_interleave(torch.arange(b), offsets.diff(), output_size=n)
    ts = request_ts[user] - back
    key = user * (4 * span + 10 * DAY) + (ts - ts.min() if n else ts)
    ts = ts[key.argsort(stable=True)]
    cats = torch.stack([torch.randint(0, c, (n,), generator=g) for c in cat_cardinality]).to(torch.int8) if cat_cardinality else torch.empty(0, n, dtype=torch.int8)
    if with_floats:
        dur = torch.rand(n, generator=g) * 120
        dur = torch.where(torch.rand(n, generator=g) < 0.05, torch.zeros(n), dur.round())
        dwell = dur * torch.rand(n, generator=g) * 2
        dwell = torch.where(torch.rand(n, generator=g) < 0.05, torch.zeros(n), dwell.round())
        floats = torch.stack([dur, dwell]).float()
    else:
        floats = torch.empty(0, n, dtype=torch.float32)
    ids = [torch.randint(0, r, (n,), generator=g) for r in table_rows]
    out = dict(ids=ids, offsets=offsets, ts=ts, cats=cats, floats=floats, request_ts=request_ts)
    return {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in out.items()}


def random_program(
    num_slices: int,
    *,
    num_tables: int = 2,
    cat_cardinality: tuple[int, ...] = (7, 3, 4),
    with_floats: bool = True,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random valid slice program ``(prog_i [S, 10], prog_f [S, 7])``: random tables, up to three
    categorical filters (sometimes two on one field), windows on hour boundaries (with and without the
    24 h gap), and, with floats, dwell / ratio bounds and weighted slices with ``beta`` often exactly 1."""
    g = generator
    s = num_slices
    pi = torch.zeros(s, P.NUM_INT, dtype=torch.int64)
    pf = torch.zeros(s, P.NUM_FLOAT, dtype=torch.float64)

    def r(hi: int) -> int:
        return int(torch.randint(0, hi, (1,), generator=g))

    def u() -> float:
        return float(torch.rand(1, generator=g, dtype=torch.float64))

    for i in range(s):
        pi[i, P.TABLE] = r(num_tables)
        for field_col, mask_col in zip(P.CAT_FIELD, P.CAT_MASK):
            if cat_cardinality and r(3) == 0:
                f = r(len(cat_cardinality))
                pi[i, field_col] = f
                mask = sum(1 << v for v in range(64) if r(2))
                pi[i, mask_col] = mask - (1 << 64) if mask >= 1 << 63 else mask
            else:
                pi[i, field_col] = -1
        lo = (0, GAP, -3600, 5 * 3600)[r(4)]
        hi = (P.NO_UPPER_BOUND, 3 * DAY, 7 * DAY, 12 * 3600, 2 * DAY + 1)[r(5)]
        pi[i, P.WIN_LO], pi[i, P.WIN_HI] = lo, hi
        flags = r(8) if with_floats and r(2) else 0
        pi[i, P.FLAGS] = flags
        if with_floats:
            a = (u() * 150).__round__()
            pf[i, P.DWELL_LO], pf[i, P.DWELL_HI] = a, a + (u() * 100).__round__()
            lo_r = u() * 1.5
            pf[i, P.RATIO_LO], pf[i, P.RATIO_HI] = lo_r, lo_r + u()
            pf[i, P.BETA] = 1.0 if r(2) else (0.5, 0.8, 1.3)[r(3)]
            pf[i, P.GAMMA] = (1.0, 0.5, 2.0)[r(3)]
            pf[i, P.S0] = (0.0, 0.5, 0.9, -1.0)[r(4)]
    return pi.to(device), pf.to(device)


def w40k_program(table_rows: tuple[int, ...] = W40K_TABLE_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The 200 W40K slices (docs/design.md#w40k-workload), 4 windows each: action (7) on media ids, dwell buckets (8) on
    media ids, watch-ratio buckets (4 at beta = 1, 4 at beta = 0.5) on author ids, debiased-score weighted (5)
    on author ids, media type x action (21) on topic ids, and "all" on media ids."""
    rows_i: list[list[int]] = []
    rows_f: list[list[float]] = []
    inf = math.inf

    def add(table: int, cats: tuple[tuple[int, int], ...] = (), flags: int = 0, **f: float) -> None:
        for lo, hi in W40K_WINDOWS:
            ri = [0] * P.NUM_INT
            ri[P.TABLE] = table
            for j in range(P.NUM_CAT_FILTERS):
                ri[P.CAT_FIELD[j]], ri[P.CAT_MASK[j]] = cats[j] if j < len(cats) else (-1, 0)
            ri[P.WIN_LO], ri[P.WIN_HI], ri[P.FLAGS] = lo, hi, flags
            rf = [0.0] * P.NUM_FLOAT
            for name, value in f.items():
                rf[getattr(P, name)] = value
            rows_i.append(ri)
            rows_f.append(rf)

    for a in range(7):
        add(0, ((0, 1 << a),))
    edges = (0, 2, 5, 10, 20, 40, 80, 160, inf)
    for lo, hi in zip(edges[:-1], edges[1:]):
        add(0, flags=P.DWELL_FILTER, DWELL_LO=lo, DWELL_HI=hi)
    for beta, ratio_edges in ((1.0, (0, 0.25, 0.5, 1.0, inf)), (0.5, (0, 1, 3, 10, inf))):
        for lo, hi in zip(ratio_edges[:-1], ratio_edges[1:]):
            add(1, flags=P.RATIO_FILTER, RATIO_LO=lo, RATIO_HI=hi, BETA=beta)
    for gamma, s0 in ((1.0, 0.0), (1.0, 0.5), (1.0, 0.8), (0.5, 0.0), (0.5, 0.8)):
        add(1, flags=P.WEIGHTED, GAMMA=gamma, S0=s0)
    for m in range(3):
        for a in range(7):
            add(2, ((1, 1 << m), (0, 1 << a)))
    add(0)
    return torch.tensor(rows_i, dtype=torch.int64), torch.tensor(rows_f, dtype=torch.float64)


def w40k_workload(
    batch: int = 32,
    dim: int = 256,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> dict:
    """The W40K benchmark workload (docs/design.md#w40k-workload) as the keyword arguments of ``sliced_pool``: ``batch``
    users with histories uniform in [10 000, 70 000] events over a year, ids uniform over tables of
    1 000 000 / 200 000 / 10 000 rows of ``dim`` columns, and the 200-slice :func:`w40k_program`."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10_000, 70_001, (batch,), generator=g).tolist()
    tl = random_timeline(
        lengths, table_rows=W40K_TABLE_ROWS, cat_cardinality=W40K_CAT_CARDINALITY, span_days=365, generator=g
    )
    prog_i, prog_f = w40k_program()
    gd = torch.Generator(device=device).manual_seed(seed + 1)
    tables = [torch.randn(rows, dim, generator=gd, device=device, dtype=torch.float32).to(dtype) for rows in W40K_TABLE_ROWS]
    out = dict(tables=tables, **tl, prog_i=prog_i, prog_f=prog_f)
    return {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in out.items()}


__all__ = ["random_program", "random_timeline", "w40k_program", "w40k_workload"]
