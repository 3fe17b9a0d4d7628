"""One distillation step (student forward with online hard prompt sampling, teacher targets, loss terms) and held-out evaluation.

A step works on every object of every image of the batch at once: one student decode per sampling
round, one final student decode and at most one teacher decode, whatever the batch and object count.
"""

import math

import numpy as np
import torch
from torch import nn

from tinysam_edge.object_prompts import interior_point

from ..modeling import Sam
from .data import SegmentationDataset, collate, encoder_inputs
from .losses import LossWeights, l1, mask_iou, prompt_losses, supervised_tokens
from .prompt_sampling import CELL, PromptBatch, SamplerConfig, draw_objects, hard_prompts

#: Loss terms averaged over the prompts of a batch (``embedding`` is per image).
PROMPT_TERMS = ("token", "output", "mask", "iou", "hard_weight", "total")


class PhaseMarks:
    """Where a step is (``start``, ``loop_start``, ``loop_end``, ``backward_end``, ``optimizer_end``); training ignores them, ``bench`` times them."""

    def mark(self, name: str) -> None:
        """Called when the step reaches phase boundary ``name``."""


def select_logits(masks: torch.Tensor, iou: torch.Tensor, prompts: PromptBatch, flavour: str) -> torch.Tensor:
    """(K, 256, 256): the mask the flavour's inference would return (highest predicted IoU among its tokens)."""
    candidates = supervised_tokens(prompts.num_points, prompts.has_box, flavour)
    best = iou.masked_fill(~candidates, -math.inf).argmax(dim=1)
    return masks[torch.arange(masks.shape[0], device=masks.device), best]


class StudentStep(nn.Module):
    """The student's part of a step as one ``forward`` (so DistributedDataParallel sees every parameter use)."""

    def __init__(self, model: Sam, sampler: SamplerConfig, channels_last: bool = False, marks: PhaseMarks | None = None) -> None:
        super().__init__()
        self.model = model
        self.sampler = sampler
        self.channels_last = channels_last
        self.marks = marks or PhaseMarks()

    def forward(
        self,
        inputs: torch.Tensor,
        gt: torch.Tensor,
        boxes: torch.Tensor,
        image_index: torch.Tensor,
        sizes: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, PromptBatch | None, dict[str, torch.Tensor] | None]:
        """(B, 256, 64, 64) embeddings of the (B, 3, 1024, 1024) inputs, and for the P objects (``gt`` (P, 256, 256),
        ``boxes`` (P, 4), ``image_index`` (P,); ``sizes`` (B, 2)) their final prompts and {masks, iou, tokens}
        (None, None without objects)."""
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        embeddings = self.model.image_encoder(inputs)
        if gt.shape[0] == 0:
            return embeddings, None, None
        self.marks.mark("loop_start")
        draws = draw_objects(gt.shape[0], self.sampler, generator, gt.device)
        frozen = embeddings.detach()[image_index]

        @torch.no_grad()
        def predict(prompts: PromptBatch) -> torch.Tensor:
            masks, iou = self.model.decode(frozen, prompts.coords, prompts.labels)
            return select_logits(masks, iou, prompts, self.model.flavour) > 0

        # an accelerator runs every round rather than wait for the largest count; the CPU has nothing to wait for
        rounds = self.sampler.max_iterations if gt.device.type != "cpu" else int(draws.iterations.max())
        prompts = hard_prompts(predict, gt, boxes, sizes[image_index], self.sampler, draws, rounds)
        self.marks.mark("loop_end")
        # index_select, not embeddings[image_index]: its backward (index_add) sums in a fixed order on the CPU
        masks, iou, tokens = self.model.decode_with_tokens(embeddings.index_select(0, image_index), prompts.coords, prompts.labels)
        return embeddings, prompts, {"masks": masks, "iou": iou, "tokens": tokens[:, :5]}


def teacher_terms_on(weights: LossWeights) -> tuple[bool, bool]:
    """(whether the teacher's embedding is needed, whether its decoder is): the work that counts for these weights."""
    decode = weights.token > 0 or weights.output > 0
    return decode or weights.embedding > 0, decode


def train_step(
    batch: dict,
    step_module: nn.Module,
    teacher: Sam,
    flavour: str,
    weights: LossWeights,
    device: torch.device,
    amp: torch.dtype | None,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The loss terms (scalars) of one ``collate`` batch; ``total`` is the weighted sum to back-propagate."""
    inputs = encoder_inputs(batch["image"], batch["input_size"], batch["flipped"], device)
    gt, boxes, image_index, object_weight, sizes = (
        batch[k].to(device, non_blocking=True) for k in ("masks", "boxes", "image_index", "object_weight", "input_size")
    )
    need_embedding, need_decode = teacher_terms_on(weights)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        embeddings, prompts, student_out = step_module(inputs, gt, boxes, image_index, sizes, generator)
        with torch.no_grad():
            if "teacher_embedding" in batch:
                t_embeddings = batch["teacher_embedding"].to(device, non_blocking=True).float()
            else:
                t_embeddings = teacher.image_encoder(inputs) if need_embedding else None
        zero = torch.zeros((), device=device)
        terms = {"embedding": zero if t_embeddings is None else l1(embeddings.float(), t_embeddings.float(), 3).mean()}
        if prompts is None:  # no object in the batch: a zero loss that still reaches the encoder, so backward works
            terms |= {key: zero for key in PROMPT_TERMS} | {"total": 0.0 * embeddings.float().mean()}
        else:
            target = None
            if need_decode:
                with torch.no_grad():
                    t_masks, _, t_tokens = teacher.decode_with_tokens(t_embeddings[image_index], prompts.coords, prompts.labels)
                target = {"masks": t_masks, "tokens": t_tokens[:, :5]}
            candidates = supervised_tokens(prompts.num_points, prompts.has_box, flavour)
            per_object = prompt_losses(student_out, target, gt, candidates, weights)
            terms |= {key: (object_weight * per_object[key]).sum() for key in PROMPT_TERMS}
    terms["total"] = terms["total"] + weights.embedding * terms["embedding"]
    return terms


def _slot_prompts(coords: list[list[float]], labels: list[int], device: torch.device) -> PromptBatch:
    return PromptBatch(torch.tensor(coords, dtype=torch.float32, device=device), torch.tensor(labels, dtype=torch.long, device=device))


def box_masks(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """(K, grid, grid) bool: the low-res cells whose centre lies inside each (K, 4) XYXY input-frame box ("mask = the filled box")."""
    centre = torch.arange(grid, device=boxes.device) * CELL + CELL / 2
    inside_x = (centre[None] >= boxes[:, 0, None]) & (centre[None] < boxes[:, 2, None])
    inside_y = (centre[None] >= boxes[:, 1, None]) & (centre[None] < boxes[:, 3, None])
    return inside_y[:, :, None] & inside_x[:, None, :]


@torch.no_grad()
def evaluate(
    model: Sam, dataset: SegmentationDataset, device: torch.device, max_images: int, amp: torch.dtype | None = None
) -> dict[str, float]:
    """Mean mask IoU on held-out images: one prompt set per object, its interior point and (separately) its box.

    IoU is measured on the 256x256 low-res grid of the padded input, against the same GT the loss sees.
    ``box_baseline_miou`` scores the filled box itself as the mask (what a model must beat).
    """
    was_training = model.training
    model.eval()
    ious: dict[str, list[float]] = {"point": [], "box": [], "box_baseline": []}
    for index in range(min(len(dataset), max_images)):
        batch = collate([dataset[index]])
        gt = batch["masks"].to(device)
        if gt.shape[0] == 0:
            continue
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            emb = model.image_encoder(encoder_inputs(batch["image"], batch["input_size"], batch["flipped"], device))
        points = [[[x * CELL, y * CELL], [0.0, 0.0]] for x, y in (interior_point(m) for m in gt.cpu().numpy())]
        boxes = batch["boxes"].reshape(-1, 2, 2).tolist()
        for kind, prompts in (
            ("point", _slot_prompts(points, [[1, -1]] * len(points), device)),
            ("box", _slot_prompts(boxes, [[2, 3]] * len(boxes), device)),
        ):
            masks, iou = model.decode(emb.float(), prompts.coords, prompts.labels)
            pred = select_logits(masks, iou, prompts, model.flavour) > 0
            ious[kind] += mask_iou(pred, gt).tolist()
        ious["box_baseline"] += mask_iou(box_masks(batch["boxes"].to(device), gt.shape[-1]), gt).tolist()
    model.train(was_training)
    return {f"{kind}_miou": float(np.mean(v)) if v else float("nan") for kind, v in ious.items()} | {"objects": len(ious["point"])}
