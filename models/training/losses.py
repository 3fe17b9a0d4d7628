"""TinySAM's full-stage distillation losses with hard mask weighting, plus the ground-truth mask and IoU losses.

All functions take low-res mask logits of shape (..., 256, 256) and return one value per mask, so the
caller decides how prompts and mask tokens are combined.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss per mask (mean over pixels), as in SAM's training recipe.

    Written here rather than taken from torchvision, which is not a dependency of this project.
    """
    target = target.to(logits.dtype)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss per mask: ``1 - (2 |p * t| + s) / (|p| + |t| + s)``."""
    prob = torch.sigmoid(logits).flatten(-2)
    target = target.to(prob.dtype).flatten(-2)
    inter = (prob * target).sum(-1)
    return 1 - (2 * inter + smooth) / (prob.sum(-1) + target.sum(-1) + smooth)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU per mask of boolean masks (..., H, W); two empty masks count as IoU 1."""
    pred, target = pred.flatten(-2), target.flatten(-2)
    inter = (pred & target).sum(-1).float()
    union = (pred | target).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def hard_mask_weights(iou_teacher: torch.Tensor, iou_student: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """TinySAM's hard mask weights ``H = sigmoid(IoU(teacher, gt) / (IoU(student, gt) + eps) - 1)``.

    H is 0.5 where the student matches the teacher and grows towards 1 where the student lags it.
    """
    return torch.sigmoid(iou_teacher / (iou_student + eps) - 1)


def l1(student: torch.Tensor, teacher: torch.Tensor, dims: int) -> torch.Tensor:
    """Mean absolute difference over the last ``dims`` axes."""
    return (student - teacher).abs().flatten(-dims).mean(-1)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms. The paper publishes none of them; these defaults are our choice.

    ``embedding``, ``token`` and ``output`` are the paper's alpha, beta, gamma; ``focal``:``dice`` is
    SAM's 20:1; the IoU head gets weight 1. ``hard_mask_weighting=False`` sets every H to 1.
    """

    embedding: float = 1.0
    token: float = 1.0
    output: float = 1.0
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    hard_mask_weighting: bool = True


def supervised_tokens(num_points: torch.Tensor, has_box: torch.Tensor, flavour: str) -> torch.Tensor:
    """(K, 4) bool: which mask tokens the ground-truth loss may pick from (the lowest-loss one is trained).

    ``tinysam``: tokens 1..3 for every prompt (TinySAM picks its single mask among them). ``sam``:
    SAM's rule, tokens 1..3 for one ambiguous point and token 0 for boxes and several points.
    """
    k = num_points.shape[0]
    multi = torch.zeros(k, 4, dtype=torch.bool, device=num_points.device)
    multi[:, 1:] = True
    if flavour == "tinysam":
        return multi
    single = torch.zeros_like(multi)
    single[:, 0] = True
    ambiguous = (num_points == 1) & ~has_box
    return torch.where(ambiguous[:, None], multi, single)


def prompt_losses(
    student: dict[str, torch.Tensor],
    teacher: dict[str, torch.Tensor] | None,
    gt: torch.Tensor,
    candidates: torch.Tensor,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """The loss terms of each of P prompts, (P,) each (the embedding term is ``l1`` on the images).

    ``student``/``teacher`` hold ``tokens`` (P, 5, 256) (the IoU and mask output tokens of the two-way
    transformer) and ``masks`` (P, 4, 256, 256) logits, the student also ``iou`` (P, 4); ``gt`` is
    (P, 256, 256) bool; ``candidates`` (P, 4) from ``supervised_tokens``. Returns the weighted
    ``total`` of token, output (hard-mask weighted), mask (focal + dice on the best candidate token)
    and IoU terms, each term unweighted, and the mean hard weight. Without ``teacher`` (its terms are
    off) the token and output terms are 0 and the hard weights 1.
    """
    s_masks = student["masks"].float()
    gt4 = gt[:, None].expand_as(s_masks)
    with torch.no_grad():
        iou_s = mask_iou(s_masks > 0, gt4)
    if teacher is None:
        zero = s_masks.new_zeros(s_masks.shape[0])
        terms, hmw = {"token": zero, "output": zero}, torch.ones_like(iou_s)
    else:
        t_masks = teacher["masks"].float()
        with torch.no_grad():
            iou_t = mask_iou(t_masks > 0, gt4)
            hmw = hard_mask_weights(iou_t, iou_s) if weights.hard_mask_weighting else torch.ones_like(iou_s)
        terms = {
            "token": l1(student["tokens"].float(), teacher["tokens"].float(), 2),
            "output": (hmw * l1(s_masks, t_masks, 2)).mean(1),
        }
    per_token = weights.focal * sigmoid_focal_loss(s_masks, gt4) + weights.dice * dice_loss(s_masks, gt4)
    best = per_token.masked_fill(~candidates, float("inf")).argmin(dim=1)
    terms["mask"] = per_token.gather(1, best[:, None]).squeeze(1)
    terms["iou"] = (student["iou"].float() - iou_s).abs().mean(1)
    terms["total"] = weights.token * terms["token"] + weights.output * terms["output"] + terms["mask"] + weights.iou * terms["iou"]
    terms["hard_weight"] = hmw.mean(1)
    return terms
