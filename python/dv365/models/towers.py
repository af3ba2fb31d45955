"""The user towers η of paper table 1: pooled slice tokens ``[B, N, D]`` -> user embedding ``[B, N_out, D]``.

Two views of the pooled tokens (paper 3.4): *dim-wise* treats the N slices as tokens with D features; *token-wise*
transposes to ``[B, D, N]`` so that every embedding dimension is a position whose features are the N slice
values, which shares parameters across the D dimensions and keeps each output token in the embedding space of
the input tokens (paper 2.3.2). Every tower has ``num_tokens`` (N in), ``num_out`` (N_out) and ``dim`` (D).

| name (``TOWERS``) | class | N_out |
| --- | --- | --- |
| ``pass_thru`` | :class:`PassThrough` | N |
| ``LCE`` | :class:`LinearCompression` | ``num_out`` (58) |
| ``MLP_d`` | :class:`MLPDimWise` | ``num_out`` (58) |
| ``MLP_t`` | :class:`MLPTokenWise` | ``num_out`` (58) |
| ``T-L_d`` | :class:`TransformerDimWise` | ``num_out`` (58) |
| ``T-L_t`` | :class:`TransformerTokenWise` | ``num_out`` (58) |
| ``FSA`` | :class:`FunnelSummarization` (``dv365.models.fsa``) | funnel tokens + ``lce_tokens``, or ``num_out`` |
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _check_int(where: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_dropout(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{where}: dropout must be a number in [0, 1), got {value!r}")
    return float(value)


def _activation(where: str, name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def _hidden(where: str, hidden, default: tuple[int, ...]) -> tuple[int, ...]:
    if hidden is None:
        return default
    if isinstance(hidden, int):
        hidden = (hidden,)
    hidden = tuple(hidden)
    for i, h in enumerate(hidden):
        _check_int(where, f"hidden[{i}]", h)
    return hidden


class UserTower(nn.Module):
    """Base of the user towers η (paper eq. 10): ``forward(x [B, num_tokens, dim]) -> [B, num_out, dim]``."""

    name: str = ""

    def __init__(self, num_tokens: int, dim: int, num_out: int) -> None:
        super().__init__()
        where = type(self).__name__
        self.num_tokens = _check_int(where, "num_tokens", num_tokens)
        self.dim = _check_int(where, "dim", dim)
        self.num_out = _check_int(where, "num_out", num_out)

    def extra_repr(self) -> str:
        return f"tokens={self.num_tokens} -> {self.num_out}, dim={self.dim}"

    def _check_input(self, x: torch.Tensor) -> None:
        # shapes are static under torch.compile, so this check costs nothing in the compiled graph
        if x.dim() != 3 or x.shape[1] != self.num_tokens or x.shape[2] != self.dim:
            raise ValueError(
                f"{type(self).__name__}: input must be [B, {self.num_tokens}, {self.dim}], got {list(x.shape)}"
            )


class PassThrough(UserTower):
    """``pass_thru`` (table 1): no compression, the pooled tokens are the user embedding (N_out = N)."""

    name = "pass_thru"

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__(num_tokens, dim, num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return x


class LinearCompression(UserTower):
    """``LCE`` (table 1), the linear compression encoder: one learned linear map over the token axis,
    ``out[b, o, :] = Σ_n W[o, n] x[b, n, :] + bias[o]``, shared by all D dimensions (token-wise view).

    N_out = ``num_out`` (default 58, the paper's output size). ``self.proj`` is ``nn.Linear(N, N_out)``.
    """

    name = "LCE"

    def __init__(self, num_tokens: int, dim: int, num_out: int = 58, bias: bool = True) -> None:
        super().__init__(num_tokens, dim, num_out)
        self.proj = nn.Linear(num_tokens, num_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.proj(x.transpose(1, 2)).transpose(1, 2)


def _mlp(where: str, sizes: Sequence[int], activation: str, dropout: float, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(_activation(where, activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MLPDimWise(UserTower):
    """``MLP_d`` (table 1), dim-wise MLP: an MLP over the D features of each token (weights shared by the N
    tokens), ``D -> hidden... -> D``, then :class:`LinearCompression` to N_out tokens.

    N_out = ``num_out`` (58). ``hidden`` defaults to ``(2 * dim,)``; activation after every hidden layer.
    """

    name = "MLP_d"

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_out: int = 58,
        hidden: Sequence[int] | int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_tokens, dim, num_out)
        where = "MLPDimWise"
        self.hidden = _hidden(where, hidden, (2 * dim,))
        self.mlp = _mlp(where, (dim, *self.hidden, dim), activation, _check_dropout(where, dropout), False)
        self.lce = LinearCompression(num_tokens, dim, num_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.lce(self.mlp(x))


class MLPTokenWise(UserTower):
    """``MLP_t`` (table 1), token-wise MLP: an MLP over the N slice values of each embedding dimension (view
    ``[B, D, N]``, weights shared by the D dimensions), ``N -> hidden...`` with an activation after every layer,
    then :class:`LinearCompression` from the last hidden width to N_out tokens (the LCE is the MLP's linear
    output layer on the same axis).

    N_out = ``num_out`` (58). ``hidden`` defaults to ``(num_tokens,)``.
    """

    name = "MLP_t"

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_out: int = 58,
        hidden: Sequence[int] | int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__(num_tokens, dim, num_out)
        where = "MLPTokenWise"
        self.hidden = _hidden(where, hidden, (num_tokens,))
        self.mlp = _mlp(where, (num_tokens, *self.hidden), activation, _check_dropout(where, dropout), True)
        self.lce = LinearCompression(self.hidden[-1], dim, num_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.lce(self.mlp(x.transpose(1, 2)).transpose(1, 2))


class SelfAttention(nn.Module):
    """Multi-head self-attention ``Att(q, k, v = U)`` of eq. 11 over the positions of ``U [B, L, width]``.

    The heads' inner width ``heads * head_dim`` need not equal ``width``: ``head_dim`` defaults to
    ``ceil(width / heads)``. The token-wise towers run at width N (193 with the default spec, a prime, and the
    funnel's 97 -> 49 after it), which no head count > 1 divides; separate q/k/v/output projections (as in T5's
    ``d_kv``) keep the residual stream at exactly N, as eq. 11 and Algorithm 1 have it, for any head count.
    When ``heads * head_dim == width`` this is exactly ``nn.MultiheadAttention`` (``qkv`` = ``in_proj``,
    ``out`` = ``out_proj``).
    """

    def __init__(self, width: int, heads: int, head_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        where = "SelfAttention"
        self.width = _check_int(where, "width", width)
        self.heads = _check_int(where, "heads", heads)
        self.head_dim = -(-width // heads) if head_dim is None else _check_int(where, "head_dim", head_dim)
        self.dropout = _check_dropout(where, dropout)
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(width, 3 * inner)
        self.out = nn.Linear(inner, width)

    def extra_repr(self) -> str:
        return f"width={self.width}, heads={self.heads}, head_dim={self.head_dim}"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, length, _ = u.shape
        q, k, v = self.qkv(u).view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(a.transpose(1, 2).reshape(b, length, self.heads * self.head_dim))


class EncoderLayer(nn.Module):
    """The transformer encoder layer of eq. 11, post-norm: ``H = Norm(U + Att(U))``, ``Norm(H + FF(H))``.

    Eq. 11 prints the outer residual as ``U``; we read it as the standard (Vaswani et al.) layer, whose outer
    residual is the attention sub-layer's output ``H`` — the layer ``nn.TransformerEncoderLayer(norm_first=False)``
    computes, to which this one is identical when ``heads * head_dim == width`` (tests check it).
    ``FF`` is ``Linear(width, ffn_dim) -> activation -> dropout -> Linear(ffn_dim, width)``.
    """

    def __init__(
        self,
        width: int,
        heads: int,
        ffn_dim: int,
        head_dim: int | None = None,
        dropout: float = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        where = "EncoderLayer"
        _check_int(where, "ffn_dim", ffn_dim)
        self.attn = SelfAttention(width, heads, head_dim, dropout)
        self.ff = nn.Sequential(
            nn.Linear(width, ffn_dim), _activation(where, activation), nn.Dropout(dropout), nn.Linear(ffn_dim, width)
        )
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.norm1(u + self.drop1(self.attn(u)))
        return self.norm2(h + self.drop2(self.ff(h)))


def _ffn_dim(where: str, width: int, ffn_multiplier) -> int:
    if isinstance(ffn_multiplier, bool) or not isinstance(ffn_multiplier, (int, float)) or not ffn_multiplier > 0:
        raise ValueError(f"{where}: ffn_multiplier must be a number > 0, got {ffn_multiplier!r}")
    return max(1, round(ffn_multiplier * width))


class _Transformer(UserTower):
    """Both vanilla transformer towers run ``layers`` :class:`EncoderLayer` s (eq. 11), then keep N_out tokens.

    Paper 3.4 says the vanilla transformer towers "take the last N_out output embeddings" while table 1 calls
    them "Transformer + LCE". We default to ``compress="lce"``: a :class:`LinearCompression` over all N outputs,
    because the slices have no natural order (the "last" N_out would be whichever slices the spec happens to list
    last) and it is what table 1 names. ``compress="last"`` keeps the last N_out output tokens instead (slice
    order for ``T-L_d``; for ``T-L_t`` the positions are the D dimensions, so "last" there has to mean the last
    N_out of the N token features, i.e. the last N_out slices after the layers have mixed them).
    """

    token_wise: bool = False

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        num_out: int = 58,
        layers: int = 2,
        heads: int = 4,
        head_dim: int | None = None,
        ffn_multiplier: float = 4.0,
        dropout: float = 0.0,
        activation: str = "relu",
        compress: str = "lce",
        position_embedding: bool | None = None,
    ) -> None:
        super().__init__(num_tokens, dim, num_out)
        where = type(self).__name__
        _check_int(where, "layers", layers)
        dropout = _check_dropout(where, dropout)
        if compress not in ("lce", "last"):
            raise ValueError(f"{where}: compress must be 'lce' or 'last', got {compress!r}")
        if compress == "last" and num_out > num_tokens:
            raise ValueError(f"{where}: compress='last' keeps at most num_tokens={num_tokens} tokens, got num_out={num_out}")
        self.compress = compress
        width, positions = (num_tokens, dim) if self.token_wise else (dim, num_tokens)
        ffn_dim = _ffn_dim(where, width, ffn_multiplier)
        # Dim-wise, the positions are the slices: pooled tokens of different slices share tables and so look
        # alike, and a learned per-slice embedding tells them apart. Token-wise, the positions are the D
        # embedding coordinates, which carry no order or identity worth learning (the layer stays equivariant
        # to permuting them, as the pooled embedding space is).
        if position_embedding is None:
            position_embedding = not self.token_wise
        self.position = nn.Parameter(torch.zeros(positions, width)) if position_embedding else None
        self.layers = nn.ModuleList(
            EncoderLayer(width, heads, ffn_dim, head_dim, dropout, activation) for _ in range(layers)
        )
        self.lce = LinearCompression(num_tokens, dim, num_out) if compress == "lce" else None

    def extra_repr(self) -> str:
        view = "token-wise [B, D, N]" if self.token_wise else "dim-wise [B, N, D]"
        return f"{super().extra_repr()}, {view}, compress={self.compress!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        u = x.transpose(1, 2) if self.token_wise else x
        if self.position is not None:
            u = u + self.position
        for layer in self.layers:
            u = layer(u)
        tokens = u.transpose(1, 2) if self.token_wise else u  # [B, N, D]
        if self.lce is not None:
            return self.lce(tokens)
        return tokens[:, self.num_tokens - self.num_out :]


class TransformerDimWise(_Transformer):
    """``T-L_d`` (table 1): vanilla transformer encoder dim-wise — positions are the N slices, features the D
    dimensions (model width D) — then N_out tokens (``compress``; see below). N_out = ``num_out`` (58).
    """

    __doc__ = f"{__doc__}\n{_Transformer.__doc__}"
    name = "T-L_d"
    token_wise = False


class TransformerTokenWise(_Transformer):
    """``T-L_t`` (table 1): vanilla transformer encoder token-wise — view ``[B, D, N]``, positions are the D
    dimensions, features the N slice values (model width N) — then N_out tokens. N_out = ``num_out`` (58).
    """

    __doc__ = f"{__doc__}\n{_Transformer.__doc__}"
    name = "T-L_t"
    token_wise = True


def tower_arguments(cls: type[UserTower]) -> dict[str, inspect.Parameter]:
    """The keyword arguments a tower class accepts beyond ``num_tokens`` and ``dim``."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k not in ("self", "num_tokens", "dim")}
