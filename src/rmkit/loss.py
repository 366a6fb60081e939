"""Bradley–Terry loss and its centering term: reward tensors in, scalar tensor out; knows nothing of models or data."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Mean of `-log σ(r_c − r_r − margin)` over pairs, plus an optional reward-centering term.

    `logsigmoid` is evaluated as `-softplus(-x)`, finite for any |Δ| (Δ = −1e4 gives 1e4, not inf).
    The centering term `center_coef · mean((r_c + r_r)²)` (Eisenstein et al., 2023) keeps rewards near zero
    so that stored normalisation statistics stay meaningful.

    Args:
        chosen: (B,) rewards of the preferred responses.
        rejected: (B,) rewards of the other responses.
        margin: optional (B,) required gap; 0 where absent.
        center_coef: weight of the centering term; 0 turns it off.

    Returns:
        A scalar tensor. Example: Δ = [0, ln 3] → (ln 2 + ln 4/3) / 2 ≈ 0.4904.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(f"chosen and rejected must be equal 1-D shapes, got {tuple(chosen.shape)} and {tuple(rejected.shape)}")
    delta = chosen - rejected  # (B,)
    if margin is not None:
        delta = delta - margin
    loss = -F.logsigmoid(delta).mean()
    if center_coef:
        loss = loss + center_coef * (chosen + rejected).pow(2).mean()
    return loss
