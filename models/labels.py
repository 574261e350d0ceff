"""Label side of the model: w = normalize(P · normalize(e − μ)).

μ is a fixed centring mean kept with the model: sentence-embedding vectors are anisotropic (all
labels share a large common direction), and ranking against raw vectors can collapse to constant
scores. P is a learned linear map E→D (no bias) shared by seen and unseen labels, or the
identity when E == D and no projection is asked for.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LabelTransform(nn.Module):
    def __init__(self, embed_dim: int, dim: int, projection: bool | None = None) -> None:
        super().__init__()
        if projection is None:
            projection = embed_dim != dim
        if not projection and embed_dim != dim:
            raise ValueError(f"label vectors have E={embed_dim} but the model needs D={dim}: "
                             f"enable the label projection")
        self.embed_dim, self.dim = embed_dim, dim
        self.register_buffer("mean", torch.zeros(embed_dim))  # [E]; zeros = no centring
        self.projection: nn.Module = (
            nn.Linear(embed_dim, dim, bias=False) if projection else nn.Identity()
        )
        if projection:
            # semi-orthogonal start: keeps the label geometry (angles) as far as D allows
            nn.init.orthogonal_(self.projection.weight)

    @torch.no_grad()
    def fit_mean(self, vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Set μ to the mean of a (broad) set of raw label vectors [N, E]; returns μ."""
        vectors = torch.as_tensor(np.asarray(vectors, dtype=np.float32))
        if vectors.ndim != 2 or vectors.shape[1] != self.embed_dim:
            raise ValueError(f"expected [N, {self.embed_dim}] vectors, got {tuple(vectors.shape)}")
        self.mean.copy_(vectors.mean(dim=0))
        return self.mean.clone()

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = F.normalize(raw - self.mean, dim=-1)  # [N, E]
        return F.normalize(self.projection(x), dim=-1)  # [N, D]
