"""Online hard prompt sampling (TinySAM section 3.2): a first prompt on the object, then points from the error region.

Prompts live in the decoder's fixed-slot layout of the 1024-input frame: slots 0-1 hold the box corners
(labels 2, 3) or the first point plus SAM's padding point (labels 1, -1); slots 2.. hold the points
added by the iterations, and unused slots carry the empty label -2, which the decoder masks out.
Points **accumulate**: iteration i decodes with every point sampled so far, as in SAM's interactive
training. Masks are compared on the decoder's 256x256 low-res grid; one cell covers 4x4 input pixels.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinysam_edge.prompts import LABEL_EMPTY, LABEL_PAD

#: Input pixels per low-res mask cell (1024 / 256).
CELL = 4


@dataclass(frozen=True)
class SamplerConfig:
    """How prompts are drawn. ``iterations`` is the inclusive range of extra points per prompt (paper: 0..9)."""

    box_prob: float = 0.5
    box_noise: float = 0.1
    min_iterations: int = 0
    max_iterations: int = 9

    def __post_init__(self) -> None:
        if not 0 <= self.min_iterations <= self.max_iterations:
            raise ValueError(f"sampler iterations must satisfy 0 <= min <= max, got {self.min_iterations}..{self.max_iterations}")
        if not 0.0 <= self.box_prob <= 1.0:
            raise ValueError(f"sampler box_prob must be in [0, 1], got {self.box_prob}")

    @property
    def slots(self) -> int:
        """Prompt slots per prompt set: the first prompt (2) plus one per iteration."""
        return 2 + self.max_iterations


@dataclass
class PromptBatch:
    """K prompt sets in decoder layout: ``coords`` (K, S, 2) float, ``labels`` (K, S) long."""

    coords: torch.Tensor
    labels: torch.Tensor

    @property
    def num_points(self) -> torch.Tensor:
        """(K,) number of clicked points (positive or negative) per prompt set."""
        return ((self.labels == 0) | (self.labels == 1)).sum(1)

    @property
    def has_box(self) -> torch.Tensor:
        """(K,) whether the prompt set holds a box."""
        return (self.labels == 2).any(1)


def sample_cells(region: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly drawn True cell per mask of ``region`` (K, H, W) -> ((K, 2) x/y cell index, (K,) found)."""
    flat = region.flatten(1).float()
    found = flat.sum(1) > 0
    weights = torch.where(found[:, None], flat, torch.ones_like(flat))  # rows without cells draw anything; masked by found
    idx = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    w = region.shape[-1]
    return torch.stack([idx % w, idx // w], dim=1), found


def cells_to_coords(cells: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Input-frame pixel coordinates of a random pixel inside each low-res cell (floor(coord / 4) == cell)."""
    jitter = torch.randint(0, CELL, cells.shape, generator=generator, device=cells.device)
    return (cells * CELL + jitter).float()


def first_prompts(
    gt: torch.Tensor, boxes: torch.Tensor, input_size: tuple[int, int], config: SamplerConfig, generator: torch.Generator
) -> PromptBatch:
    """The first prompt of each of K objects: a noisy GT box (probability ``box_prob``) or a point inside the GT mask.

    ``gt`` (K, 256, 256) bool low-res masks, ``boxes`` (K, 4) XYXY in the input frame, ``input_size`` the
    resized (h, w) before padding (box noise is clipped to it).
    """
    k, device = gt.shape[0], gt.device
    coords = torch.zeros(k, config.slots, 2, device=device)
    labels = torch.full((k, config.slots), LABEL_EMPTY, dtype=torch.long, device=device)

    cells, _ = sample_cells(gt, generator)
    coords[:, 0] = cells_to_coords(cells, generator)
    labels[:, 0] = 1
    labels[:, 1] = LABEL_PAD

    use_box = torch.rand(k, generator=generator, device=device) < config.box_prob
    if use_box.any():
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        # SAM's box jitter: std of 10% of the side, at most 20 pixels per corner
        noise = (torch.randn(k, 4, generator=generator, device=device) * config.box_noise * wh).clamp(-20, 20)
        h, w = input_size
        limit = torch.tensor([w, h, w, h], device=device, dtype=boxes.dtype)
        noisy = torch.minimum((boxes + noise).clamp(min=0), limit)
        noisy = torch.cat([torch.minimum(noisy[:, :2], noisy[:, 2:]), torch.maximum(noisy[:, :2], noisy[:, 2:])], dim=1)
        coords[use_box, :2] = noisy[use_box].reshape(-1, 2, 2).float()
        labels[use_box, 0] = 2
        labels[use_box, 1] = 3
    return PromptBatch(coords, labels)


def error_points(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One corrective point per mask from the error region ``pred xor gt`` inside the valid (unpadded) area.

    A point on a missed cell is positive (label 1), one on a false-positive cell negative (label 0).
    Returns coords (K, 2), labels (K,) and found (K,): False where the prediction is already exact.
    """
    error = (pred ^ gt) & valid
    cells, found = sample_cells(error, generator)
    labels = gt[torch.arange(gt.shape[0], device=gt.device), cells[:, 1], cells[:, 0]].long()
    return cells_to_coords(cells, generator), labels, found


def hard_prompts(
    predict: Callable[[PromptBatch], torch.Tensor],
    gt: torch.Tensor,
    boxes: torch.Tensor,
    input_size: tuple[int, int],
    config: SamplerConfig,
    generator: torch.Generator,
) -> PromptBatch:
    """Online hard prompt sampling for K objects of one image.

    Each object draws its iteration count uniformly from ``config``'s range. Every iteration
    ``predict`` (the student, without gradients) maps the prompts so far to (K, 256, 256) bool masks and
    each still-iterating object gains one point from its error region; points accumulate.
    """
    prompts = first_prompts(gt, boxes, input_size, config, generator)
    k, device = gt.shape[0], gt.device
    iterations = torch.randint(config.min_iterations, config.max_iterations + 1, (k,), generator=generator, device=device)
    valid = torch.zeros(gt.shape[-2:], dtype=torch.bool, device=device)
    h, w = input_size
    valid[: -(-h // CELL), : -(-w // CELL)] = True
    for step in range(int(iterations.max()) if k else 0):
        pred = predict(prompts)
        coords, labels, found = error_points(pred, gt, valid, generator)
        add = found & (iterations > step)
        prompts.coords[add, 2 + step] = coords[add]
        prompts.labels[add, 2 + step] = labels[add]
    return prompts
