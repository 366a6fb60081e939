"""Bradley–Terry losses (hard and soft labels), the centering and length terms: reward tensors in, scalar tensor out;
and last_attended_index, the one rule for where a sequence ends in a mask. Knows nothing of models or data."""

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


def soft_bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    prob: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Bradley–Terry with soft labels: mean of `-[p·log σ(Δ) + (1 − p)·log σ(−Δ)]`, Δ = r_c − r_r − margin.

    The cross-entropy between the label's P(chosen is better) = p and the model's σ(Δ); it is smallest at
    Δ = logit(p), so a judge's 0.7 asks for a smaller gap than its 0.99. p = 1 is `bradley_terry_loss`; a constant
    p = 1 − ε is label smoothing (Δ can no longer grow without bound on a pair the labellers may have got wrong).

    Args:
        chosen: (B,) rewards of the responses labelled better.
        rejected: (B,) rewards of the other responses.
        prob: (B,) probability that `chosen` is better, each in [0, 1].
        margin: optional (B,) required gap; 0 where absent.
        center_coef: weight of the centering term mean((r_c + r_r)²), as in `bradley_terry_loss`.

    Returns:
        A scalar tensor. Example: Δ = [0, ln 3], p = 0.75 → (ln 2 + [0.75·ln(4/3) + 0.25·ln 4]) / 2 ≈ 0.6277.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1 or prob.shape != chosen.shape:
        raise ValueError(f"chosen, rejected and prob must be equal 1-D shapes, got {tuple(chosen.shape)}, "
                         f"{tuple(rejected.shape)} and {tuple(prob.shape)}")
    delta = chosen - rejected  # (B,)
    if margin is not None:
        delta = delta - margin
    prob = prob.to(delta.dtype)
    loss = -(prob * F.logsigmoid(delta) + (1 - prob) * F.logsigmoid(-delta)).mean()
    if center_coef:
        loss = loss + center_coef * (chosen + rejected).pow(2).mean()
    return loss


def length_correlation_penalty(delta: torch.Tensor, length_delta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Squared covariance of reward gaps with standardised length gaps over a batch of pairs: the squared slope of
    r_c − r_r regressed on (len_c − len_r) / std.

    Added to the Bradley–Terry loss it discourages response length as the signal (in the spirit of ODIN, Chen et al.,
    2024, with a batch statistic instead of a separate length head). Not the correlation itself: that is scale-free,
    and its gradient, ∝ 1 / std(delta), explodes at the start of training when every gap is near 0. The slope grows
    with the rewards, so the term is negligible until the model starts to lean on length.

    Args:
        delta: (B,) r_chosen − r_rejected.
        length_delta: (B,) len_chosen − len_rejected in tokens.

    Returns:
        A scalar tensor, 0 when the batch's length gaps are all equal. Example: delta = [1, 2, 3], length_delta =
        [3, 2, 1] → standardised lengths [1.22, 0, −1.22], covariance −0.816 → 0.667.
    """
    if delta.shape != length_delta.shape or delta.dim() != 1:
        raise ValueError(f"delta and length_delta must be equal 1-D shapes, got {tuple(delta.shape)} and "
                         f"{tuple(length_delta.shape)}")
    y = (length_delta - length_delta.mean()).to(delta.dtype)
    spread = y.pow(2).mean().sqrt()
    if delta.numel() < 2 or spread < eps:
        return 0.0 * delta.sum()  # no length signal in this batch; keeps the graph
    return ((delta - delta.mean()) * (y / spread)).mean().pow(2)


def last_attended_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of an (N, T) mask, any padding side: [[1,1,0],[0,1,1]] → [1, 2]."""
    return attention_mask.size(1) - 1 - attention_mask.long().flip(1).argmax(1)  # argmax: first maximum
