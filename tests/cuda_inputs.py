"""Random inputs for the CUDA tests, the sanitizer driver and the GPU benchmark (fresh data on every call)."""

from __future__ import annotations

import torch

from dv365_ops import program as P


def random_offsets(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0).to(device)


def random_program(s_count: int, t_count: int, f_count: int, with_floats: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """S random slices: every filter kind, windows with and without an upper bound, weighted or not."""
    pi = torch.zeros(s_count, P.NUM_INT, dtype=torch.int64)
    pf = torch.zeros(s_count, P.NUM_FLOAT, dtype=torch.float64)
    for s in range(s_count):
        pi[s, P.TABLE] = torch.randint(t_count, ()).item()
        for field_col, mask_col in zip(P.CAT_FIELD, P.CAT_MASK):
            use = f_count > 0 and torch.rand(()).item() < 0.4
            pi[s, field_col] = torch.randint(f_count, ()).item() if use else -1
            pi[s, mask_col] = torch.randint(-(2**62), 2**62, ()).item()
        lo = [-1, 0, 86_400][torch.randint(3, ()).item()]
        hi = [P.NO_UPPER_BOUND, 3 * 86_400, 7 * 86_400, 30 * 86_400][torch.randint(4, ()).item()]
        pi[s, P.WIN_LO], pi[s, P.WIN_HI] = lo, hi
        if with_floats:
            pi[s, P.FLAGS] = torch.randint(8, ()).item()
        pf[s, P.DWELL_LO] = torch.rand(()).item() * 50
        pf[s, P.DWELL_HI] = pf[s, P.DWELL_LO] + torch.rand(()).item() * 400
        pf[s, P.RATIO_LO] = torch.rand(()).item() * 0.3
        pf[s, P.RATIO_HI] = pf[s, P.RATIO_LO] + torch.rand(()).item() * 2
        pf[s, P.BETA] = 0.5 + torch.rand(()).item()
        pf[s, P.GAMMA] = 0.01 + torch.rand(()).item()
        pf[s, P.S0] = torch.rand(()).item() - 0.5
    return pi.to(device), pf.to(device)


def random_timeline(lengths: list[int], f_count: int, with_floats: bool, device, cat_dtype=torch.int8):
    """(offsets, ts, cats, floats, request_ts) for users with the given history lengths, sorted by time."""
    offsets = random_offsets(lengths, device)
    n = sum(lengths)
    b = len(lengths)
    span = 60 * 86_400
    request_ts = torch.randint(10**9, 10**9 + 10**6, (b,), dtype=torch.int64)
    ts = torch.empty(n, dtype=torch.int64)
    start = 0
    for u, length in enumerate(lengths):
        ts[start : start + length] = (request_ts[u] - torch.randint(0, span, (length,))).sort().values
        start += length
    cats = torch.randint(0, 8, (f_count, n)).to(cat_dtype)
    if with_floats:
        dur = torch.rand(n) * 600 + 1
        dwell = torch.rand(n) * 700
        floats = torch.stack([dur, dwell]).float()
    else:
        floats = torch.empty(0, n)
    return offsets, ts.to(device), cats.to(device), floats.to(device), request_ts.to(device)


def random_sliced_inputs(lengths, s_count, t_count, d, dtype, device, f_count=3, with_floats=True, rows=(50, 7, 300)):
    offsets, ts, cats, floats, request_ts = random_timeline(lengths, f_count, with_floats, device)
    n = ts.numel()
    tables = [torch.randn(rows[t % len(rows)], d, device=device).to(dtype) for t in range(t_count)]
    ids = [torch.randint(0, tab.shape[0], (n,), device=device) for tab in tables]
    pi, pf = random_program(s_count, t_count, f_count, with_floats, device)
    return tables, ids, offsets, ts, cats, floats, request_ts, pi, pf
