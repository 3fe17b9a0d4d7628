"""Online hard prompt sampling (TinySAM section 3.2): a first prompt on the object, then points from the error region.

Every object of every image of a batch is sampled at once (P objects in all), as tensor work on the
training device: each round decodes all objects in one call, draws one point per object from its
error region and never waits on the host. All randomness of a step is drawn up front, per object
(``ObjectDraws``), so the number of rounds run does not change the result.

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


@dataclass(frozen=True)
class ObjectDraws:
    """The random numbers of one step for P objects (R = ``max_iterations`` rounds).

    ``point`` (P,) uniform: which GT cell holds the first point; ``box`` (P,) uniform: below
    ``box_prob`` the first prompt is the box; ``noise`` (P, 4) normal: box jitter; ``iterations`` (P,)
    corrective points; ``error`` (P, R) uniform: which error cell each round picks; ``jitter``
    (P, 1 + R, 2) in [0, CELL): the pixel inside the picked cell (first point, then each round).
    """

    point: torch.Tensor
    box: torch.Tensor
    noise: torch.Tensor
    iterations: torch.Tensor
    error: torch.Tensor
    jitter: torch.Tensor


def draw_objects(count: int, config: SamplerConfig, generator: torch.Generator, device: torch.device) -> ObjectDraws:
    """Draw ``ObjectDraws`` for ``count`` objects on ``device`` (six generator calls, whatever the count)."""
    rounds = config.max_iterations
    return ObjectDraws(
        point=torch.rand(count, generator=generator, device=device),
        box=torch.rand(count, generator=generator, device=device),
        noise=torch.randn(count, 4, generator=generator, device=device),
        iterations=torch.randint(config.min_iterations, rounds + 1, (count,), generator=generator, device=device),
        error=torch.rand(count, rounds, generator=generator, device=device),
        jitter=torch.randint(0, CELL, (count, 1 + rounds, 2), generator=generator, device=device),
    )


def sample_cells(region: torch.Tensor, uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``floor(u * n)``-th of the n True cells of each mask of ``region`` (K, H, W) -> ((K, 2) x/y cell, (K,) found).

    Inverse-CDF sampling with one uniform per mask (``torch.multinomial`` would draw its own numbers);
    rows without a True cell return cell (0, 0) and found False.
    """
    flat = region.flatten(1)
    ranks = flat.cumsum(1, dtype=torch.int32)  # (K, HW), non-decreasing
    count = ranks[:, -1]
    pick = torch.minimum((uniform * count).to(torch.int32), count - 1) + 1  # 1-based rank of the chosen cell
    idx = torch.searchsorted(ranks, pick[:, None]).squeeze(1).clamp(max=flat.shape[1] - 1)
    w = region.shape[-1]
    return torch.stack([idx % w, idx // w], dim=1), count > 0


def cells_to_coords(cells: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Input-frame pixel coordinates of the pixel ``jitter`` (K, 2) in [0, CELL) inside each low-res cell."""
    return (cells * CELL + jitter).float()


def valid_cells(sizes: torch.Tensor, grid: int) -> torch.Tensor:
    """(K, grid, grid) bool: the low-res cells inside each object's resized image, (K, 2) ``sizes`` (h, w) before padding."""
    cells = torch.div(sizes + CELL - 1, CELL, rounding_mode="floor")
    index = torch.arange(grid, device=sizes.device)
    return (index[None, :, None] < cells[:, 0, None, None]) & (index[None, None, :] < cells[:, 1, None, None])


def first_prompts(gt: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor, config: SamplerConfig, draws: ObjectDraws) -> PromptBatch:
    """The first prompt of each of P objects: a noisy GT box (``draws.box < box_prob``) or a point inside the GT mask.

    ``gt`` (P, 256, 256) bool low-res masks, ``boxes`` (P, 4) XYXY in the input frame, ``sizes`` (P, 2)
    the resized (h, w) of each object's image before padding (box noise is clipped to it).
    """
    k, device = gt.shape[0], gt.device
    coords = torch.zeros(k, config.slots, 2, device=device)
    labels = torch.full((k, config.slots), LABEL_EMPTY, dtype=torch.long, device=device)
    cells, _ = sample_cells(gt, draws.point)
    point = torch.stack([cells_to_coords(cells, draws.jitter[:, 0]), torch.zeros(k, 2, device=device)], dim=1)
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    # SAM's box jitter: std of 10% of the side, at most 20 pixels per corner
    noise = (draws.noise * config.box_noise * wh).clamp(-20, 20)
    limit = sizes.flip(1).repeat(1, 2).to(boxes.dtype)  # (w, h, w, h)
    noisy = torch.minimum((boxes + noise).clamp(min=0), limit)
    noisy = torch.cat([torch.minimum(noisy[:, :2], noisy[:, 2:]), torch.maximum(noisy[:, :2], noisy[:, 2:])], dim=1)
    use_box = draws.box < config.box_prob
    coords[:, :2] = torch.where(use_box[:, None, None], noisy.reshape(-1, 2, 2).float(), point)
    labels[:, 0] = torch.where(use_box, 2, 1)
    labels[:, 1] = torch.where(use_box, 3, LABEL_PAD)
    return PromptBatch(coords, labels)


def error_points(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, uniform: torch.Tensor, jitter: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One corrective point per mask from the error region ``pred xor gt`` inside the valid (unpadded) area.

    A point on a missed cell is positive (label 1), one on a false-positive cell negative (label 0).
    Returns coords (K, 2), labels (K,) and found (K,): False where the prediction is already exact.
    """
    error = (pred ^ gt) & valid
    cells, found = sample_cells(error, uniform)
    labels = gt[torch.arange(gt.shape[0], device=gt.device), cells[:, 1], cells[:, 0]].long()
    return cells_to_coords(cells, jitter), labels, found


def hard_prompts(
    predict: Callable[[PromptBatch], torch.Tensor],
    gt: torch.Tensor,
    boxes: torch.Tensor,
    sizes: torch.Tensor,
    config: SamplerConfig,
    draws: ObjectDraws,
    rounds: int,
) -> PromptBatch:
    """Online hard prompt sampling for P objects (of any number of images) in ``rounds`` calls of ``predict``.

    Each object makes ``draws.iterations`` corrective iterations. Every round ``predict`` (the student,
    without gradients) maps all prompts so far to (P, 256, 256) bool masks and each object still
    iterating gains one point from its error region; the others keep their prompts. ``rounds`` must be
    at least the largest iteration count (``max_iterations`` is, without asking the device).
    """
    prompts = first_prompts(gt, boxes, sizes, config, draws)
    valid = valid_cells(sizes, gt.shape[-1])
    for step in range(rounds):
        pred = predict(prompts)
        coords, labels, found = error_points(pred, gt, valid, draws.error[:, step], draws.jitter[:, 1 + step])
        add = found & (draws.iterations > step)
        prompts.coords[:, 2 + step] = torch.where(add[:, None], coords, prompts.coords[:, 2 + step])
        prompts.labels[:, 2 + step] = torch.where(add, labels, prompts.labels[:, 2 + step])
    return prompts
