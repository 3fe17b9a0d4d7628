"""One distillation step (student forward with online hard prompt sampling, teacher targets, loss terms) and held-out evaluation."""

import math

import numpy as np
import torch
from torch import nn

from tinysam_edge.object_prompts import interior_point

from ..modeling import Sam
from .data import SegmentationDataset
from .losses import LossWeights, l1, mask_iou, prompt_losses, supervised_tokens
from .prompt_sampling import CELL, PromptBatch, SamplerConfig, hard_prompts

#: Loss terms averaged over the prompts of a batch (``embedding`` is per image).
PROMPT_TERMS = ("token", "output", "mask", "iou", "hard_weight", "total")


def select_logits(masks: torch.Tensor, iou: torch.Tensor, prompts: PromptBatch, flavour: str) -> torch.Tensor:
    """(K, 256, 256): the mask the flavour's inference would return (highest predicted IoU among its tokens)."""
    candidates = supervised_tokens(prompts.num_points, prompts.has_box, flavour)
    best = iou.masked_fill(~candidates, -math.inf).argmax(dim=1)
    return masks[torch.arange(masks.shape[0], device=masks.device), best]


class StudentStep(nn.Module):
    """The student's part of a step as one ``forward`` (so DistributedDataParallel sees every parameter use)."""

    def __init__(self, model: Sam, sampler: SamplerConfig) -> None:
        super().__init__()
        self.model = model
        self.sampler = sampler

    def forward(
        self,
        images: torch.Tensor,
        gts: list[torch.Tensor],
        boxes: list[torch.Tensor],
        sizes: list[tuple[int, int]],
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, list]:
        """Returns the (B, 256, 64, 64) embeddings and per image (prompts, {masks, iou, tokens}) or None without objects."""
        embeddings = self.model.image_encoder(images)
        outputs = []
        for b, (gt, box, size) in enumerate(zip(gts, boxes, sizes, strict=True)):
            if gt.shape[0] == 0:
                outputs.append(None)
                continue
            emb = embeddings[b : b + 1]

            @torch.no_grad()
            def predict(prompts: PromptBatch, emb: torch.Tensor = emb) -> torch.Tensor:
                masks, iou = self.model.decode(emb.detach(), prompts.coords, prompts.labels)
                return select_logits(masks, iou, prompts, self.model.flavour) > 0

            prompts = hard_prompts(predict, gt, box, size, self.sampler, generator)
            masks, iou, tokens = self.model.decode_with_tokens(emb, prompts.coords, prompts.labels)
            outputs.append((prompts, {"masks": masks, "iou": iou, "tokens": tokens[:, :5]}))
        return embeddings, outputs


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
    """The loss terms (scalars) of one batch; ``total`` is the weighted sum to back-propagate."""
    images = batch["image"].to(device, non_blocking=True)
    gts = [m.to(device) for m in batch["masks"]]
    boxes = [b.to(device) for b in batch["boxes"]]
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        embeddings, outputs = step_module(images, gts, boxes, batch["input_size"], generator)
        with torch.no_grad():
            if "teacher_embedding" in batch:
                t_embeddings = batch["teacher_embedding"].to(device).reshape(embeddings.shape)
            else:
                t_embeddings = teacher.image_encoder(images)
        terms = {"embedding": l1(embeddings.float(), t_embeddings.float(), 3).mean()}
        per_image = []
        for b, output in enumerate(outputs):
            if output is None:
                continue
            prompts, student_out = output
            with torch.no_grad():
                t_masks, _, t_tokens = teacher.decode_with_tokens(t_embeddings[b : b + 1], prompts.coords, prompts.labels)
            candidates = supervised_tokens(prompts.num_points, prompts.has_box, flavour)
            per_image.append(prompt_losses(student_out, {"masks": t_masks, "tokens": t_tokens[:, :5]}, gts[b], candidates, weights))
    for key in PROMPT_TERMS:
        terms[key] = torch.stack([p[key] for p in per_image]).mean() if per_image else torch.zeros((), device=device)
    terms["total"] = terms["total"] + weights.embedding * terms["embedding"]
    return terms


def _slot_prompts(coords: list[list[float]], labels: list[int], device: torch.device) -> PromptBatch:
    return PromptBatch(torch.tensor(coords, dtype=torch.float32, device=device), torch.tensor(labels, dtype=torch.long, device=device))


@torch.no_grad()
def evaluate(
    model: Sam, dataset: SegmentationDataset, device: torch.device, max_images: int, amp: torch.dtype | None = None
) -> dict[str, float]:
    """Mean mask IoU on held-out images: one prompt set per object, its interior point and (separately) its box.

    IoU is measured on the 256x256 low-res grid of the padded input, against the same GT the loss sees.
    """
    was_training = model.training
    model.eval()
    ious: dict[str, list[float]] = {"point": [], "box": []}
    for index in range(min(len(dataset), max_images)):
        sample = dataset[index]
        gt = sample["masks"].to(device)
        if gt.shape[0] == 0:
            continue
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            emb = model.image_encoder(sample["image"][None].to(device))
        points = [[[x * CELL, y * CELL], [0.0, 0.0]] for x, y in (interior_point(m) for m in gt.cpu().numpy())]
        boxes = sample["boxes"].reshape(-1, 2, 2).tolist()
        for kind, prompts in (
            ("point", _slot_prompts(points, [[1, -1]] * len(points), device)),
            ("box", _slot_prompts(boxes, [[2, 3]] * len(boxes), device)),
        ):
            masks, iou = model.decode(emb.float(), prompts.coords, prompts.labels)
            pred = select_logits(masks, iou, prompts, model.flavour) > 0
            ious[kind] += mask_iou(pred, gt).tolist()
    model.train(was_training)
    return {f"{kind}_miou": float(np.mean(v)) if v else float("nan") for kind, v in ious.items()} | {"objects": len(ious["point"])}
