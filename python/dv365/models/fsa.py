"""The Funnel Summarization Arch (FSA, paper 2.3.2 and Algorithm 1): DV365's user tower."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import dv365_ops

from .towers import EncoderLayer, LinearCompression, UserTower, _check_dropout, _check_int, _ffn_dim

DEFAULT_LCE_TOKENS = 8  # the paper's 200 -> 50 funnel plus 8 LCE tokens = 58


class FunnelBlock(nn.Module):
    """One funnel block of Algorithm 1: ``Pool(U, stride)`` over the token axis (skipped when ``stride == 1``,
    as before the first block), then ``layers`` :class:`EncoderLayer` s of model width ``width`` (the token
    count after the pooling)."""

    def __init__(self, stride: int, width_in: int, layers: nn.ModuleList) -> None:
        super().__init__()
        self.stride = stride
        self.width_in = width_in
        self.width = -(-width_in // stride)
        self.layers = layers

    def extra_repr(self) -> str:
        pool = f"pool stride {self.stride}: {self.width_in} -> {self.width}" if self.stride > 1 else "no pool"
        return f"{pool}, width={self.width}"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            # mean over windows of `stride` slice values; an odd count's last window averages what it has
            # (193 -> 97 -> 49); the op reads U's layout as it is, so no contiguous copy is needed
            u = dv365_ops.token_pool(u, self.stride)
        for layer in self.layers:
            u = layer(u)
        return u


class FunnelSummarization(UserTower):
    """``FSA`` (table 1), paper Algorithm 1 with an LCE branch in parallel.

    1. Token-wise view ``U = x.transpose(1, 2)`` ``[B, D, N]``: attention runs over the D positions, each
       position's features are its N slice values, so all parameters are shared by the D dimensions.
    2. ``blocks`` funnel blocks of ``layers_per_block`` encoder layers (eq. 11). Before every block but the
       first, the token axis is mean-pooled with that block's stride (``dv365_ops.token_pool``), so the model
       width shrinks block by block: N = 200 -> 100 -> 50 in the paper, 193 -> 97 -> 49 with dv365's default
       spec. Each block's layers are as wide as its token count; ``heads`` need not divide that width (see
       :class:`~dv365.models.towers.SelfAttention`: ``head_dim`` defaults to ``ceil(width / heads)``).
       The FFN width of a block is ``round(ffn_multiplier * width)``.
    3. An LCE branch (:class:`LinearCompression`) maps the input tokens to ``lce_tokens`` more tokens.
    4. Output: the funnel's tokens (transposed back to ``[B, N_final, D]``) followed by the LCE tokens.

    N_out rule: ``N_final + lce_tokens``, N_final = N after ``ceil(n / stride)`` per pooled block. Give either
    ``lce_tokens`` (default 8: the paper's 50 + 8 = 58; 49 + 8 = 57 with the default spec) or ``num_out`` (then
    ``lce_tokens = num_out - N_final``, e.g. ``num_out=58`` for 49 + 9); ``lce_tokens = 0`` drops the branch.

    ``strides``: an int (the stride before every block but the first) or one entry per block, the first 1
    (Algorithm 1 does not pool before the first block), e.g. ``(1, 2, 2)``.

    Algorithm 1 writes the pooling as ``Pool(U, stride)``; as in the Funnel Transformer (Dai et al., 2020) it
    pools the previous block's output ``U'``, which is what the funnel (one block's output feeding the next) needs.
    """

    name = "FSA"

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        blocks: int = 3,
        layers_per_block: int = 1,
        strides: int | Sequence[int] = 2,
        heads: int = 4,
        head_dim: int | None = None,
        ffn_multiplier: float = 4.0,
        dropout: float = 0.0,
        activation: str = "relu",
        lce_tokens: int | None = None,
        num_out: int | None = None,
    ) -> None:
        where = "FunnelSummarization"
        _check_int(where, "num_tokens", num_tokens)
        _check_int(where, "blocks", blocks)
        _check_int(where, "layers_per_block", layers_per_block)
        dropout = _check_dropout(where, dropout)
        if isinstance(strides, int) and not isinstance(strides, bool):
            _check_int(where, "strides", strides)
            strides = (1,) + (strides,) * (blocks - 1)
        else:
            if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence):
                raise ValueError(f"{where}: strides must be an int or a list of ints, got {strides!r}")
            strides = tuple(strides)
            if len(strides) != blocks:
                raise ValueError(f"{where}: strides {list(strides)} must have one entry per block (blocks={blocks})")
            for i, s in enumerate(strides):
                _check_int(where, f"strides[{i}]", s)
            if strides[0] != 1:
                raise ValueError(
                    f"{where}: strides[0] must be 1 (Algorithm 1 does not pool before the first block), got {strides[0]}"
                )
        widths = [num_tokens]
        for s in strides[1:]:
            widths.append(-(-widths[-1] // s))
        final = widths[-1]
        if num_out is not None:
            _check_int(where, "num_out", num_out)
            if num_out < final:
                raise ValueError(
                    f"{where}: num_out={num_out} is below the funnel's {final} output tokens "
                    f"({' -> '.join(map(str, widths))}); use num_out >= {final} or larger strides"
                )
            if lce_tokens is not None and lce_tokens != num_out - final:
                raise ValueError(
                    f"{where}: lce_tokens={lce_tokens} and num_out={num_out} disagree: the funnel gives {final} tokens, "
                    f"so num_out={num_out} means lce_tokens={num_out - final}; give only one of them"
                )
            lce_tokens = num_out - final
        elif lce_tokens is None:
            lce_tokens = DEFAULT_LCE_TOKENS
        _check_int(where, "lce_tokens", lce_tokens, minimum=0)
        super().__init__(num_tokens, dim, final + lce_tokens)
        self.strides = strides
        self.widths = tuple(widths)
        self.funnel_tokens = final
        self.lce_tokens = lce_tokens
        self.blocks = nn.ModuleList()
        for s, w_in, w in zip(strides, [num_tokens, *widths[:-1]], widths):
            ffn_dim = _ffn_dim(where, w, ffn_multiplier)
            layers = nn.ModuleList(
                EncoderLayer(w, heads, ffn_dim, head_dim, dropout, activation) for _ in range(layers_per_block)
            )
            self.blocks.append(FunnelBlock(s, w_in, layers))
        self.lce = LinearCompression(num_tokens, dim, lce_tokens) if lce_tokens else None

    def extra_repr(self) -> str:
        funnel = " -> ".join(map(str, self.widths))
        return (
            f"tokens={self.num_tokens} -> {self.num_out} (funnel {funnel} + {self.lce_tokens} LCE), dim={self.dim}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        u = x.transpose(1, 2)  # U [B, D, N], a view
        for block in self.blocks:
            u = block(u)
        out = u.transpose(1, 2)  # [B, N_final, D]
        if self.lce is None:
            return out
        return torch.cat([out, self.lce(x)], dim=1)
