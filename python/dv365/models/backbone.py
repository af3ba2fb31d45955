"""The backbone simulation network Φ (paper 2.3.1): a DLRM-style multitask ranker around the user tower."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .towers import _check_dropout, _check_int


def _mlp(sizes: Sequence[int], dropout: float) -> nn.Sequential:
    # DLRM's MLPs: Linear + ReLU per layer
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class DLRMBackbone(nn.Module):
    """Φ_ϕ of paper eq. 10, DLRM (Naumov et al., 2019; the paper's production rankers) with one head per task.

    ``forward(user_embedding [B, N_out, D], dense [B, num_dense], sparse [B, K]) -> (logits [B, num_tasks],
    regression [B])``:

    1. Bottom MLP over ``cat(flatten(user_embedding), dense)`` -> an E-dim vector (E = ``embedding_dim``).
       The user embedding enters flattened, as the paper feeds the tower's stacked outputs to the simulation
       network ("stacked and flattened", 2.3.2), so every output token gets its own weights.
    2. One E-dim embedding per sparse feature (``sparse[:, k]`` indexes ``tables[k]``), ``sparse=`` gradients.
    3. Pairwise dot products of the bottom vector and the embeddings (DLRM's interaction, strict upper triangle:
       F(F-1)/2 values for F = K + 1 vectors), concatenated with the bottom vector.
    4. Top MLP, then one linear head per task: ``num_tasks`` logits and one regression output (the heads are
       stacked into one ``nn.Linear(top[-1], num_tasks + 1)``; row k is task k's head).

    ``bottom_mlp`` / ``top_mlp`` are hidden widths; every layer is Linear + ReLU (+ dropout), as in DLRM.
    """

    def __init__(
        self,
        num_user_tokens: int,
        dim: int,
        num_dense: int,
        sparse_features: Mapping[str, int],
        *,
        embedding_dim: int = 16,
        bottom_mlp: Sequence[int] = (64,),
        top_mlp: Sequence[int] = (128, 64),
        num_tasks: int = 9,
        dropout: float = 0.0,
        sparse: bool = True,
    ) -> None:
        super().__init__()
        where = "DLRMBackbone"
        self.num_user_tokens = _check_int(where, "num_user_tokens", num_user_tokens)
        self.dim = _check_int(where, "dim", dim)
        self.num_dense = _check_int(where, "num_dense", num_dense, minimum=0)
        self.embedding_dim = _check_int(where, "embedding_dim", embedding_dim)
        self.num_tasks = _check_int(where, "num_tasks", num_tasks)
        dropout = _check_dropout(where, dropout)
        for name, rows in sparse_features.items():
            _check_int(where, f"sparse_features[{name!r}]", rows)
        for which, sizes in (("bottom_mlp", bottom_mlp), ("top_mlp", top_mlp)):
            for i, s in enumerate(sizes):
                _check_int(where, f"{which}[{i}]", s)
        self.sparse = sparse
        self.bottom = _mlp((num_user_tokens * dim + num_dense, *bottom_mlp, embedding_dim), dropout)
        self.embeddings = nn.ModuleDict(
            {name: nn.Embedding(rows, embedding_dim, sparse=sparse) for name, rows in sparse_features.items()}
        )
        for emb in self.embeddings.values():
            # DLRM's uniform(±1/sqrt(rows)) would give million-row tables near-zero vectors and dot products
            nn.init.normal_(emb.weight, std=embedding_dim**-0.5)
        num_vectors = len(sparse_features) + 1
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("_triu_rows", rows, persistent=False)
        self.register_buffer("_triu_cols", cols, persistent=False)
        interaction = embedding_dim + rows.numel()
        self.top = _mlp((interaction, *top_mlp), dropout)
        self.heads = nn.Linear(top_mlp[-1] if top_mlp else interaction, num_tasks + 1)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.embeddings)

    def extra_repr(self) -> str:
        return (
            f"user={self.num_user_tokens}x{self.dim}, dense={self.num_dense}, sparse={list(self.embeddings)}, "
            f"E={self.embedding_dim}, tasks={self.num_tasks}+1"
        )

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [emb.weight for emb in self.embeddings.values()]

    def lookup(self, sparse: torch.Tensor) -> list[torch.Tensor]:
        """The sparse features' embeddings, ``[B, E]`` each (``sparse[:, k]`` indexes ``tables[k]``)."""
        return [emb(sparse[:, k]) for k, emb in enumerate(self.embeddings.values())]

    def forward(
        self, user_embedding: torch.Tensor, dense: torch.Tensor, sparse: torch.Tensor | None,
        embedded: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``embedded``: :meth:`lookup`'s result, computed by the caller (then ``sparse`` is not read), e.g. outside
        a CUDA graph, which cannot output the tables' sparse gradients."""
        b = user_embedding.shape[0]
        x = torch.cat([user_embedding.reshape(b, -1), dense.to(user_embedding.dtype)], dim=1)
        z = self.bottom(x)  # [B, E]
        vectors = [z] + (self.lookup(sparse) if embedded is None else list(embedded))
        t = torch.stack([v.to(z.dtype) for v in vectors], dim=1)  # [B, F, E]
        dots = torch.bmm(t, t.transpose(1, 2))[:, self._triu_rows, self._triu_cols]
        out = self.heads(self.top(torch.cat([z, dots.to(z.dtype)], dim=1)))
        return out[:, : self.num_tasks], out[:, self.num_tasks]
