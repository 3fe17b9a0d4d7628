"""The batched corrective-prompt loop against the per-image loop it replaced (kept here as the reference).

The reference is the old ``hard_prompts`` / ``train_step`` structure (one Python loop per image, host
synchronisations, boolean-mask updates), with its random draws coming either from the old generator calls
or from the per-object draws the batched loop uses.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn

from tinysam_edge.models import build_sam
from tinysam_edge.models.training import step as step_module
from tinysam_edge.models.training.bench import SyncCounter
from tinysam_edge.models.training.data import collate
from tinysam_edge.models.training.losses import LossWeights, l1, prompt_losses, supervised_tokens
from tinysam_edge.models.training.prompt_sampling import (
    CELL,
    PromptBatch,
    SamplerConfig,
    draw_objects,
    hard_prompts,
)
from tinysam_edge.models.training.step import StudentStep, select_logits, train_step
from tinysam_edge.prompts import LABEL_EMPTY, LABEL_PAD

# -- the reference: the per-image loop ----------------------------------------------------------------


class GeneratorDraws:
    """The old loop's random numbers: ``torch.multinomial`` over the region, ``randint`` jitter, one generator."""

    def __init__(self, generator: torch.Generator) -> None:
        self.gen = generator

    def cells(self, region, _which):
        flat = region.flatten(1).float()
        found = flat.sum(1) > 0
        idx = torch.multinomial(torch.where(found[:, None], flat, torch.ones_like(flat)), 1, generator=self.gen).squeeze(1)
        return torch.stack([idx % region.shape[-1], idx // region.shape[-1]], 1), found

    def jitter(self, k, _which):
        return torch.randint(0, CELL, (k, 2), generator=self.gen)

    def box(self, k):
        return torch.rand(k, generator=self.gen)

    def noise(self, k):
        return torch.randn(k, 4, generator=self.gen)

    def iterations(self, k, config):
        return torch.randint(config.min_iterations, config.max_iterations + 1, (k,), generator=self.gen)


class InjectedDraws:
    """The batched loop's per-object draws of one image's objects, the cell picked as the ``floor(u * n)``-th True cell."""

    def __init__(self, draws, rows) -> None:
        self.d, self.rows = draws, rows

    def cells(self, region, which):
        uniform = self.d.point[self.rows] if which == "first" else self.d.error[self.rows, which]
        cells, found = [], []
        for mask, u in zip(region, uniform):
            hits = mask.flatten().nonzero().squeeze(1)
            i = int(hits[min(int(u * len(hits)), len(hits) - 1)]) if len(hits) else 0
            cells.append([i % region.shape[-1], i // region.shape[-1]])
            found.append(len(hits) > 0)
        return torch.tensor(cells).reshape(-1, 2), torch.tensor(found, dtype=torch.bool)

    def jitter(self, k, which):
        return self.d.jitter[self.rows, 0 if which == "first" else 1 + which]

    def box(self, k):
        return self.d.box[self.rows]

    def noise(self, k):
        return self.d.noise[self.rows]

    def iterations(self, k, config):
        return self.d.iterations[self.rows]


def reference_hard_prompts(predict, gt, boxes, input_size, config, rng) -> PromptBatch:
    """The per-image loop as it was: rounds up to this image's largest count, boolean-mask updates."""
    k = gt.shape[0]
    coords = torch.zeros(k, config.slots, 2)
    labels = torch.full((k, config.slots), LABEL_EMPTY, dtype=torch.long)
    cells, _ = rng.cells(gt, "first")
    coords[:, 0] = (cells * CELL + rng.jitter(k, "first")).float()
    labels[:, 0], labels[:, 1] = 1, LABEL_PAD
    use_box = rng.box(k) < config.box_prob
    if use_box.any():
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        noise = (rng.noise(k) * config.box_noise * wh).clamp(-20, 20)
        h, w = input_size
        noisy = torch.minimum((boxes + noise).clamp(min=0), torch.tensor([w, h, w, h], dtype=boxes.dtype))
        noisy = torch.cat([torch.minimum(noisy[:, :2], noisy[:, 2:]), torch.maximum(noisy[:, :2], noisy[:, 2:])], dim=1)
        coords[use_box, :2] = noisy[use_box].reshape(-1, 2, 2).float()
        labels[use_box, 0], labels[use_box, 1] = 2, 3
    iterations = rng.iterations(k, config)
    valid = torch.zeros(gt.shape[-2:], dtype=torch.bool)
    valid[: -(-input_size[0] // CELL), : -(-input_size[1] // CELL)] = True
    for step in range(int(iterations.max()) if k else 0):
        pred = predict(PromptBatch(coords, labels))
        cells, found = rng.cells((pred ^ gt) & valid, step)
        point_labels = gt[torch.arange(k), cells[:, 1], cells[:, 0]].long()
        add = found & (iterations > step)
        coords[add, 2 + step] = (cells * CELL + rng.jitter(k, step)).float()[add]
        labels[add, 2 + step] = point_labels[add]
    return PromptBatch(coords, labels)


def stub_logits(prompts: PromptBatch) -> torch.Tensor:
    """A prediction that depends only on each object's own prompts (exact, whatever the batch): discs and the box."""
    centre = torch.arange(256, dtype=torch.float32) * CELL + CELL / 2
    x, y = centre[None, None, None, :], centre[None, None, :, None]
    px, py = prompts.coords[..., 0, None, None], prompts.coords[..., 1, None, None]
    disc = (x - px) ** 2 + (y - py) ** 2 < 60.0**2  # (K, S, 256, 256)
    labels = prompts.labels[..., None, None]
    box = prompts.coords[:, :2]
    inside = (x[:, 0] >= box[:, 0, 0, None, None]) & (x[:, 0] < box[:, 1, 0, None, None])
    inside = inside & (y[:, 0] >= box[:, 0, 1, None, None]) & (y[:, 0] < box[:, 1, 1, None, None])
    positive = (disc & (labels == 1)).any(1) | (inside & (prompts.labels[:, 0, None, None] == 2))
    return torch.where(positive & ~(disc & (labels == 0)).any(1), 1.0, -1.0)


# -- a batch and a cheap model ------------------------------------------------------------------------


class PatchEncoder(nn.Module):
    """A cheap stand-in for TinyViT with the same interface: (B, 3, 1024, 1024) -> (B, 256, 64, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 256, 16, 16)

    def forward(self, x):
        return self.proj(x) * 0.05


def _batch(counts: list[int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    samples = []
    for n, count in enumerate(counts):
        h, w = (1024, 700 + 40 * n) if n % 2 else (680 + 30 * n, 1024)
        masks = torch.zeros(count, 256, 256, dtype=torch.bool)
        boxes = torch.zeros(count, 4)
        for i in range(count):
            x0, y0 = int(rng.integers(0, w // 4 - 60)), int(rng.integers(0, h // 4 - 60))
            x1, y1 = x0 + int(rng.integers(8, 60)), y0 + int(rng.integers(8, 60))
            masks[i, y0:y1, x0:x1] = True
            boxes[i] = torch.tensor([x0 * CELL, y0 * CELL, x1 * CELL, y1 * CELL], dtype=torch.float32)
        image = torch.from_numpy(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        embedding = torch.from_numpy(rng.standard_normal((1, 256, 64, 64)).astype(np.float16) * 0.3)
        samples.append({"key": f"i{n}", "image": image, "input_size": (h, w), "flipped": bool(n % 2), "masks": masks, "boxes": boxes})
        samples[-1]["teacher_embedding"] = embedding
    return collate(samples)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    student = build_sam("vit_t")
    student.image_encoder = PatchEncoder()
    teacher = build_sam("vit_t")
    teacher.image_encoder = nn.Identity()
    return student.train(), teacher.requires_grad_(False)


CONFIG = SamplerConfig(box_prob=0.4, min_iterations=0, max_iterations=3)


def _step(student, teacher, batch, weights=None):
    module = StudentStep(student, CONFIG)
    weights = weights or LossWeights()
    return train_step(batch, module, teacher, "tinysam", weights, torch.device("cpu"), None, torch.Generator().manual_seed(0))


# -- tests --------------------------------------------------------------------------------------------


def test_decoder_calls_per_step_do_not_grow_with_batch_or_objects(models):
    student, teacher = models
    calls = []
    hooks = [m.mask_decoder.register_forward_hook(lambda *_: calls.append(1)) for m in (student, teacher)]
    try:
        for counts in ([1], [2, 0, 3], [2, 2, 2]):
            calls.clear()
            terms = _step(student, teacher, _batch(counts))
            assert len(calls) <= CONFIG.max_iterations + 2, counts
            assert torch.isfinite(terms["total"])
        calls.clear()
        _step(student, teacher, _batch([2, 2]), LossWeights(token=0.0, output=0.0))
        assert len(calls) <= CONFIG.max_iterations + 1  # no teacher decode when its terms are off
    finally:
        for hook in hooks:
            hook.remove()


def test_the_loop_never_waits_on_the_device(models):
    student, _ = models
    batch = _batch([2, 3])
    emb = torch.randn(2, 256, 64, 64)[batch["image_index"]]

    def predict(prompts):
        masks, iou = student.decode(emb[: prompts.labels.shape[0]], prompts.coords, prompts.labels)
        return select_logits(masks, iou, prompts, "tinysam") > 0

    draws = draw_objects(5, CONFIG, torch.Generator().manual_seed(1), torch.device("cpu"))
    sizes = batch["input_size"][batch["image_index"]]
    with torch.no_grad(), SyncCounter() as spy:
        hard_prompts(predict, batch["masks"], batch["boxes"], sizes, CONFIG, draws, CONFIG.max_iterations)
    assert spy.ops == []
    with torch.no_grad(), SyncCounter() as spy:  # the spy sees the old loop's synchronisations
        reference_hard_prompts(predict, batch["masks"][:2], batch["boxes"][:2], (680, 1024), CONFIG, GeneratorDraws(torch.Generator()))
    assert "aten._local_scalar_dense" in spy.ops and "aten.index_put_" in spy.ops  # int(max), boolean-mask updates


def _reference_losses(student, teacher, batch, draws, weights):
    """The old per-image train_step (loss terms averaged per image, then over images) on the same draws."""
    from tinysam_edge.models.training.data import encoder_inputs

    emb = student.image_encoder(encoder_inputs(batch["image"], batch["input_size"], batch["flipped"], torch.device("cpu")))
    t_emb = batch["teacher_embedding"].float()
    per_image, all_prompts = [], []
    for b in range(len(batch["key"])):
        rows = (batch["image_index"] == b).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        gt, size = batch["masks"][rows], tuple(batch["input_size"][b].tolist())
        prompts = reference_hard_prompts(lambda p: stub_logits(p) > 0, gt, batch["boxes"][rows], size, CONFIG, InjectedDraws(draws, rows))
        all_prompts.append(prompts)
        masks, iou, tokens = student.decode_with_tokens(emb[b : b + 1], prompts.coords, prompts.labels)
        t_masks, _, t_tokens = teacher.decode_with_tokens(t_emb[b : b + 1], prompts.coords, prompts.labels)
        student_out, target = {"masks": masks, "iou": iou, "tokens": tokens[:, :5]}, {"masks": t_masks, "tokens": t_tokens[:, :5]}
        terms = prompt_losses(student_out, target, gt, supervised_tokens(prompts.num_points, prompts.has_box, "tinysam"), weights)
        per_image.append({k: v.mean() for k, v in terms.items()})
    losses = {k: torch.stack([p[k] for p in per_image]).mean() for k in per_image[0]}
    losses["embedding"] = l1(emb, t_emb, 3).mean()
    losses["total"] = losses["total"] + weights.embedding * losses["embedding"]
    return losses, PromptBatch(torch.cat([p.coords for p in all_prompts]), torch.cat([p.labels for p in all_prompts]))


def test_batched_loop_equals_the_per_image_loop_on_the_same_draws(models, monkeypatch):
    student, teacher = models
    batch = _batch([3, 0, 5, 2], seed=3)
    draws = draw_objects(10, CONFIG, torch.Generator().manual_seed(7), torch.device("cpu"))
    assert draws.iterations.unique().numel() > 2 and (draws.box < CONFIG.box_prob).any() and (draws.box >= CONFIG.box_prob).any()
    seen = []
    monkeypatch.setattr(step_module, "draw_objects", lambda *_: draws)
    monkeypatch.setattr(step_module, "select_logits", lambda masks, iou, prompts, flavour: stub_logits(prompts))
    real_hard_prompts = step_module.hard_prompts
    monkeypatch.setattr(step_module, "hard_prompts", lambda *a: seen.append(real_hard_prompts(*a)) or seen[-1])
    weights = LossWeights()
    with torch.no_grad():
        terms = _step(student, teacher, batch, weights)
        expected, prompts = _reference_losses(student, teacher, batch, draws, weights)
    assert torch.equal(seen[0].labels, prompts.labels) and torch.equal(seen[0].coords, prompts.coords)
    assert (prompts.labels[:, 2:] >= 0).any() and (prompts.labels[:, 2:] == 0).any()  # corrective points, negative ones too
    for key, value in expected.items():
        assert terms[key].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_batched_and_old_sampler_agree_in_distribution():
    """With their real generators, iteration counts, first-prompt kinds and point labels follow the same distributions."""
    config = SamplerConfig(box_prob=0.5, min_iterations=0, max_iterations=4)
    gen = torch.Generator().manual_seed(0)
    gt = torch.zeros(32, 256, 256, dtype=torch.bool)
    for i in range(32):
        gt[i, 20 + i : 90 + 2 * i, 30 : 100 + i] = True
    boxes = torch.tensor([[120.0, 80.0, 400.0, 360.0]]).repeat(32, 1)

    def predict(prompts):
        return torch.roll(gt, shifts=(9, 5), dims=(1, 2)) | (stub_logits(prompts) > 0)

    stats = {"new": [], "old": []}
    sizes = torch.tensor([[1024, 1024]]).repeat(32, 1)
    for _ in range(8):
        draws = draw_objects(32, config, gen, torch.device("cpu"))
        stats["new"].append(hard_prompts(predict, gt, boxes, sizes, config, draws, config.max_iterations))
        stats["old"].append(reference_hard_prompts(predict, gt, boxes, (1024, 1024), config, GeneratorDraws(gen)))
    summary = {}
    for kind, runs in stats.items():
        labels = torch.cat([p.labels for p in runs])
        added = labels[:, 2:] >= 0
        summary[kind] = (added.sum(1).float(), (labels[:, 0] == 2).float(), labels[:, 2:][added].float())
    for new, old in zip(summary["new"], summary["old"], strict=True):
        spread = np.sqrt(new.var().item() / len(new) + old.var().item() / len(old))
        assert abs(new.mean().item() - old.mean().item()) < 4 * spread + 1e-6
    assert 0.1 < summary["new"][2].mean().item() < 0.9  # both positive and negative points occur
