"""Training losses: Bradley–Terry (with centering; hard and soft labels), margin hinge, Plackett–Luce listwise,
ratings regression (MSE or Huber) and the length-decorrelation term, reward tensors in, scalar tensor out; and
last_attended_index, the one rule for where a sequence ends in a mask. Knows nothing of models or data."""

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


def hinge_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Margin ranking loss: mean of `max(0, m − (r_c − r_r))` over pairs.

    Unlike BT it stops pushing once a pair is separated by m, so rewards stay on the margin's scale.

    Args:
        chosen: (B,) rewards of the preferred responses.
        rejected: (B,) rewards of the other responses.
        margin: the required gap m, one float for every pair or a (B,) tensor (per-row margins).

    Returns:
        A scalar tensor. Example: Δ = [2, 0.5, −1], m = 1 → [0, 0.5, 2], mean 0.8333.
    """
    if chosen.shape != rejected.shape or chosen.dim() != 1:
        raise ValueError(f"chosen and rejected must be equal 1-D shapes, got {tuple(chosen.shape)} and {tuple(rejected.shape)}")
    return F.relu(margin - (chosen - rejected)).mean()


def plackett_luce_loss(scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Listwise Plackett–Luce negative log-likelihood of rankings, mean over rows.

    Row i ranks its K responses best first; the likelihood picks the best of all, then the best of the rest, ...:
    −log P = Σ_k [logsumexp(s_k, ..., s_K) − s_k]. With K = 2 it is the Bradley–Terry loss.

    Args:
        scores: (B, K) rewards, each row in ranked order (column 0 the best).
        mask: optional (B, K) bool, False on padding positions of rows with fewer than K responses (a row's real
            responses come first); each row needs at least two.

    Returns:
        A scalar tensor. Example: one row [ln 3, 0, 0] → (ln 5 − ln 3) + (ln 2 − 0) ≈ 0.5108 + 0.6931 = 1.2040.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, K), got shape {tuple(scores.shape)}")
    mask = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    if mask.shape != scores.shape or bool((mask.sum(1) < 2).any()):
        raise ValueError("mask must match scores and leave every row at least two responses")
    masked = scores.masked_fill(~mask, float("-inf"))  # (B, K): padding never wins a place
    tail = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)  # (B, K): logsumexp of positions k..K
    terms = (tail - scores).masked_fill(~mask, 0.0)  # (B, K); the last real position contributes 0
    return terms.sum(1).mean()


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", delta: float = 1.0,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error ('mse') or Huber loss ('huber', quadratic within ±delta, linear beyond) on ratings.

    Args:
        pred: predicted scores, any shape ((B,) for one objective, (B, N) for N objectives).
        target: ratings of the same shape.
        kind: 'mse' or 'huber'.
        delta: the Huber threshold.
        mask: optional bool of the same shape, False where a row has no rating for that objective; the mean is over
            the rated entries only.

    Returns:
        A scalar tensor. Example: pred [0, 0], target [1, 3]: mse (1 + 9) / 2 = 5; huber(δ=1) (0.5 + 2.5) / 2 = 1.5.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have equal shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if kind == "mse":
        per = (pred - target).pow(2)
    elif kind == "huber":
        per = F.huber_loss(pred, target, reduction="none", delta=delta)
    else:
        raise ValueError(f"unknown regression loss {kind!r}; expected 'mse' or 'huber'")
    if mask is None:
        return per.mean()
    mask = mask.to(per.dtype)
    return (per * mask).sum() / mask.sum().clamp(min=1)
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
