"""``dv365 demo``: the main job end to end on small data it makes, with the embedded defaults.

synthetic UniTi histories -> Parquet dataset (manifest, checksums) -> loader (histories cut 24 h before each
request) -> fused multi-slice pooling with the default spec (checked against the pure-torch reference) ->
backward to the embedding tables -> funnel token pooling -> int4 rowwise export (checked round trip).
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

INT4_FORMAT = "dv365-int4-rowwise-fp32-scale-bias"


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on small synthetic data", description=__doc__)
    p.add_argument("--out", type=pathlib.Path, default=None,
                   help="output folder (default: a new folder dv365-demo-* in the temp dir, kept and printed)")
    p.add_argument("--users", type=int, default=48, help="number of synthetic users")
    p.add_argument("--mean-length", type=float, default=4000, help="mean history length")
    p.add_argument("--dim", type=int, default=32, help="embedding dim (even, for int4)")
    p.add_argument("--batch-size", type=int, default=16, help="users per batch")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=run)


def _step(name: str, t0: float, detail: str) -> float:
    t1 = time.perf_counter()
    print(f"  {name:<28} {1e3 * (t1 - t0):9.1f} ms   {detail}")
    return t1


def run(args: argparse.Namespace) -> int:
    if args.users < 1 or args.batch_size < 1 or args.dim < 2 or args.dim % 2:
        raise ValueError(f"--users and --batch-size must be >= 1 and --dim even, got {args.users}, "
                         f"{args.batch_size}, {args.dim}")
    # the output outlives the command: the last line prints where it is
    out = args.out if args.out is not None else pathlib.Path(tempfile.mkdtemp(prefix="dv365-demo-"))
    return _run(args, out)


def _run(args: argparse.Namespace, out: pathlib.Path) -> int:
    import torch

    import dv365_ops
    from dv365_ops import reference

    from .data import Loader, SynthConfig, generate, open_dataset
    from .pooling import MultiSlicePooling
    from .spec import load_default_spec

    torch.manual_seed(args.seed)
    print(f"dv365 demo: {args.users} users, mean history {args.mean_length:,.0f} events, dim {args.dim}, out {out}")
    t = time.perf_counter()
    config = SynthConfig(mean_length=args.mean_length, num_items=200_000, num_authors=20_000, num_topics=1_000)
    generated = generate(args.users, seed=args.seed, config=config)
    generated.write(out / "data", overwrite=True)
    dataset = open_dataset(out / "data")
    events = sum(dataset.counts[k] for k in ("explicit", "implicit"))
    t = _step("synth + write Parquet", t, f"{events:,} events, {dataset.num_shards} shards, checksums verified")

    spec = load_default_spec(num_rows=dataset.vocab_sizes)
    pooling = MultiSlicePooling(spec, dim=args.dim)
    loader = Loader(dataset, batch_size=args.batch_size, gap=86_400)
    t = _step("spec + tables", t, f"{len(spec)} slices, {len(pooling.tables)} tables")

    pooled_all, users_all, checked = [], [], False
    pool_time = 0.0
    for batch in loader:
        request_ts = batch.examples.request_ts
        t_pool = time.perf_counter()
        pooled = pooling(batch.explicit, batch.implicit, request_ts)
        pool_time += time.perf_counter() - t_pool
        if not checked:
            _check_against_reference(pooling, batch, request_ts, pooled)
            checked = True
        pooled_all.append(pooled.detach())
        users_all.append(batch.examples.user_id)
    pooled = torch.cat(pooled_all)
    rows = pooled.shape[0]
    t = _step("load + sliced_pool", t, f"{rows} examples -> {tuple(pooled.shape)}, pooling {rows / pool_time:,.0f} users/s")

    batch = next(iter(loader))
    out_b = pooling(batch.explicit, batch.implicit, batch.examples.request_ts)
    probe = torch.nn.Linear(args.dim, 1)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(probe(out_b.mean(1)).squeeze(1), batch.examples.labels[:, 0])
    loss.backward()
    grads = {name: p.grad for name, p in pooling.tables.items() if p.grad is not None}
    touched = sum(int((g.abs().sum(1) > 0).sum()) for g in grads.values())
    t = _step("backward to tables", t, f"loss {loss.item():.4f}, {len(grads)} tables, {touched:,} rows with gradient")

    tokens = pooled.transpose(1, 2)  # [B, D, S]: attention and pooling run over the token axis (paper 2.3.2)
    for _ in range(2):
        tokens = dv365_ops.token_pool(tokens, 2)
    torch.testing.assert_close(tokens, reference.token_pool(reference.token_pool(pooled.transpose(1, 2), 2), 2))
    summary = tokens.transpose(1, 2).contiguous()  # [B, N_out, D]
    t = _step("funnel token pooling", t, f"{tuple(pooled.shape)} -> {tuple(summary.shape)}")

    flat = summary.reshape(-1, args.dim)
    packed = dv365_ops.int4_quantize(flat)
    restored = dv365_ops.int4_dequantize(packed)
    scale = packed[:, -8:-4].contiguous().view(torch.float32)
    err = ((restored - flat).abs() / scale.clamp_min(1e-30)).max().item()
    if err > 0.5 + 1e-3:
        raise SystemExit(f"dv365 demo: int4 round trip error {err:.3f} scales exceeds 1/2")
    # codes [examples, tokens, D/2 + 8], one int4 row per token; the file says how to read it back:
    # dv365_ops.int4_dequantize(f["codes"].flatten(0, 1)).view(-1, f["tokens"], f["dim"])
    torch.save({"format": INT4_FORMAT, "dim": args.dim, "tokens": summary.shape[1], "half_scale_bias": False,
                "user_id": torch.cat(users_all), "codes": packed.view(rows, summary.shape[1], -1)},
               out / "embeddings_int4.pt")
    fp32_bytes = pooled[0].numel() * 4
    int4_bytes = packed.shape[1] * summary.shape[1]
    _step(
        "int4 export",
        t,
        f"{int4_bytes} B/user vs {fp32_bytes:,} B fp32 pooled ({fp32_bytes / int4_bytes:.0f}x), max error {err:.3f} scale",
    )
    print(f"done: embeddings in {out / 'embeddings_int4.pt'} (dataset in {out / 'data'})")
    return 0


def _check_against_reference(pooling, batch, request_ts, pooled) -> None:
    """The fused op must agree with the pure-torch reference on real data."""
    import torch
    from dv365_ops import reference

    kind = "implicit"
    prog = pooling.programs[kind]
    timeline = getattr(batch, kind)
    tables = [pooling.tables[name].detach() for name in prog.tables]
    ref, _ = reference.sliced_pool(
        tables, prog.ids(timeline), timeline.offsets, timeline.ts, timeline.cats, timeline.floats, request_ts,
        prog.prog_i, prog.prog_f,
    )
    torch.testing.assert_close(pooled.detach()[:, prog.slice_index], ref, atol=1e-5, rtol=1e-5)
