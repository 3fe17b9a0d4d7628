"""Full-stage knowledge distillation of a TinySAM student from a SAM-family teacher (paper section 3.2).

One step, per image of the batch: the student encodes the image; online hard prompt sampling draws K
prompt sets with the student's own (gradient-free) predictions; student and teacher decode the final
prompts; the loss is l1 on embeddings, output tokens and hard-mask-weighted mask logits, plus focal +
dice and IoU losses against the ground truth. Runs on CUDA (AMP, ``torchrun`` DDP) or on the CPU.
"""

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tinysam_edge.object_prompts import interior_point
from torch import nn
from tqdm import tqdm

from tinysam_edge.errors import TinySamError
from tinysam_edge.files import atomic_write
from tinysam_edge.weights import resolve_checkpoint, sha256_file

from ..build_sam import build_sam, infer_model_name, save_checkpoint
from ..modeling import Sam
from .config import DistillConfig
from .data import SegmentationDataset, load_records, make_loader, split_records
from .losses import l1, mask_iou, prompt_losses, supervised_tokens
from .prompt_sampling import CELL, PromptBatch, SamplerConfig, hard_prompts
from .teacher_cache import CacheMeta, TeacherCache, build_cache

STATE_FILE = "train_state.pt"
LAST_CHECKPOINT = "student_last.pth"
BEST_CHECKPOINT = "student_best.pth"
LOG_FIELDS = ["step", "epoch", "lr", "total", "embedding", "token", "output", "mask", "iou", "hard_weight", "steps_per_s"]


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
    ):
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


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TinySamError(f"device {name} requested but CUDA is not available (use run.device = 'auto' or 'cpu')")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``run.amp``: auto is bf16 on CUDA (fp16 where bf16 is unsupported) and off on the CPU."""
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if mode not in choices:
        raise ValueError(f"run.amp must be auto, bf16, fp16 or off, got {mode!r}")
    if choices[mode] is torch.float16 and device.type != "cuda":
        raise ValueError("run.amp = 'fp16' needs CUDA; use 'bf16' or 'off' on the CPU")
    return choices[mode]


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps, then cosine decay to zero at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


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


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _check_out_dir(out: Path, resume: bool) -> None:
    state = out / STATE_FILE
    if resume and not state.is_file():
        raise TinySamError(f"cannot resume: {state} not found")
    if not resume and out.exists() and any(out.iterdir()):
        raise TinySamError(f"{out} is not empty; pass --resume to continue that run, or set run.out to a new folder")


def _append_csv(path: Path, fields: list[str], row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in fields})


def freeze_gradless(model: Sam) -> None:
    """Freeze parameters whose gradient is always zero here, so DDP needs no unused-parameter search.

    They are the dense-mask branch (hard prompt sampling feeds no mask prompts) and the key biases of
    token-to-image attention (a per-query constant on the logits, which softmax ignores).
    """
    model.prompt_encoder.mask_downscaling.requires_grad_(False)
    for name, param in model.mask_decoder.named_parameters():
        if name.endswith("token_to_image.k_proj.bias"):
            param.requires_grad_(False)


def build_models(config: DistillConfig, device: torch.device, log: Callable[[str], None]) -> tuple[Sam, Sam]:
    """(teacher without its encoder when a cache is used, student in train mode) on ``device``."""
    teacher = build_sam(config.teacher.model, checkpoint=config.teacher.checkpoint)
    if config.teacher.cache:
        teacher.image_encoder = nn.Identity()  # embeddings come from the cache; free the big encoder
    teacher.requires_grad_(False).eval()
    scratch = config.student.init == "scratch"
    student = build_sam(config.student.model, checkpoint=None if scratch else config.student.init, flavour=config.student.flavour)
    if scratch and config.student.decoder_from_teacher:
        student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
        student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
        log("student: random encoder, prompt encoder and mask decoder copied from the teacher")
    freeze_gradless(student)
    return teacher.to(device), student.to(device).train()


def cache_teacher(
    checkpoint: str,
    images: str,
    out: str,
    annotations: str | None = None,
    model: str = "auto",
    flip: bool = False,
    device: str = "auto",
    amp: str = "auto",
    log: Callable[[str], None] = print,
) -> TeacherCache:
    """Precompute the teacher's embeddings of every image of a COCO or SA-1B dataset into ``out`` (resumable)."""
    path, _ = resolve_checkpoint(checkpoint)
    records = load_records(images, annotations)
    teacher = build_sam(model, checkpoint=path)
    torch_device = resolve_device(device)
    dtype = amp_dtype(amp, torch_device)
    encoder = teacher.image_encoder.to(torch_device).eval()
    log(f"teacher {Path(path).name} on {torch_device} (amp {dtype or 'off'})")

    @torch.inference_mode()
    def encode(image: torch.Tensor) -> torch.Tensor:
        with torch.autocast(torch_device.type, dtype=dtype, enabled=dtype is not None):
            return encoder(image.to(torch_device))

    dataset = SegmentationDataset(records)
    meta = CacheMeta(model=infer_model_name(teacher.state_dict()), checkpoint=Path(path).name, sha256=sha256_file(Path(path)), flips=flip)
    return build_cache(encode, dataset.load_input, [r.key for r in records], out, meta, log)


def train(config: DistillConfig, resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a distillation; returns the output folder with ``student_last.pth`` in the official layout."""
    rank, local_rank, world = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    main_process = rank == 0
    log = log if main_process else (lambda *_: None)
    out = Path(config.run.out)
    if main_process:
        _check_out_dir(out, resume)
    device = resolve_device(config.run.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp = amp_dtype(config.run.amp, device)
    torch.manual_seed(config.run.seed + rank)

    records = load_records(config.data.images, config.data.annotations or None)
    if config.data.limit:
        records = records[: config.data.limit]
    train_records, val_records = split_records(records, config.data.val_fraction, config.run.seed)
    cache = TeacherCache(config.teacher.cache) if config.teacher.cache else None
    if cache is not None and cache.meta.sha256 != sha256_file(resolve_checkpoint(config.teacher.checkpoint)[0]):
        raise TinySamError(
            f"{cache.root} was built from {cache.meta.checkpoint}, not from the configured teacher {config.teacher.checkpoint}"
        )
    if cache is not None and (missing := cache.missing([r.key for r in train_records])):
        raise TinySamError(
            f"{len(missing)} training images have no teacher embedding in {cache.root} (first: {missing[0]}); rerun cache-teacher"
        )
    train_set = SegmentationDataset(train_records, config.data.max_masks, config.data.min_area, config.data.flip, cache, config.run.seed)
    val_set = SegmentationDataset(val_records, max_masks=1000, min_area=config.data.min_area) if val_records else None
    loader = make_loader(train_set, config.optim.batch_size, config.data.num_workers, True, config.run.seed, rank, world)
    if len(loader) == 0:
        raise TinySamError(f"{len(train_records)} training images are fewer than one batch of {config.optim.batch_size}")
    total_steps = config.optim.max_steps or config.optim.epochs * len(loader)

    teacher, student = build_models(config, device, log)
    step_module: nn.Module = StudentStep(student, config.sampler)
    if world > 1:
        if device.type == "cuda":  # TinyViT's BatchNorm sees 1-4 images per GPU: share the statistics
            step_module = nn.SyncBatchNorm.convert_sync_batchnorm(step_module)
        step_module = nn.parallel.DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.optim.warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.run.seed * 1000 + rank)

    step, epoch, batch_in_epoch = 0, 0, 0
    if resume:
        state = torch.load(out / STATE_FILE, map_location=device, weights_only=True)
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"].cpu())
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        log(f"resuming {out} at step {step} (epoch {epoch})")
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    writer = _tensorboard(out) if config.run.tensorboard and main_process else None
    log(
        f"distilling on {device} (amp {amp or 'off'}, {world} process(es)): {len(train_records)} train / {len(val_records)} val images, "
        f"{total_steps} steps of {config.optim.batch_size} images x up to {config.data.max_masks} objects"
    )

    def save(tag: str) -> None:
        if not main_process:
            return
        save_checkpoint(student, out / LAST_CHECKPOINT)
        state = {
            "student": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "generator": generator.get_state(),
            "step": step,
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
        }
        with atomic_write(out / STATE_FILE) as tmp:
            torch.save(state, tmp)
        log(f"saved {tag} checkpoint at step {step}: {out / LAST_CHECKPOINT}")

    best = _best_score(out / "val.csv")

    def validate() -> None:
        nonlocal best
        if val_set is None or not main_process:
            return
        metrics = evaluate(student, val_set, device, config.data.val_max_images, amp)
        _append_csv(out / "val.csv", ["step", "point_miou", "box_miou", "objects"], {"step": step, **metrics})
        log(f"step {step}: held-out mIoU point {metrics['point_miou']:.4f} box {metrics['box_miou']:.4f} ({metrics['objects']} objects)")
        if writer is not None:
            writer.add_scalars("val", {k: v for k, v in metrics.items() if k != "objects"}, step)
        score = (metrics["point_miou"] + metrics["box_miou"]) / 2
        if score > best:
            best = score
            save_checkpoint(student, out / BEST_CHECKPOINT)

    if step == 0:
        validate()
    progress = tqdm(total=total_steps, initial=step, desc="distill", unit="step", disable=not main_process)
    tic = time.perf_counter()
    last_logged = step
    while step < total_steps:
        train_set.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        for batch in islice(loader, batch_in_epoch, None):
            terms = _train_step(batch, step_module, teacher, student.flavour, config, device, amp, generator)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            if config.optim.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            batch_in_epoch += 1
            progress.update(1)
            progress.set_postfix(loss=f"{terms['total'].item():.4f}")
            if main_process and (step % config.run.log_every == 0 or step == total_steps):
                rate = (step - last_logged) / (time.perf_counter() - tic)
                row = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], "steps_per_s": rate}
                row |= {k: v.item() for k, v in terms.items()}
                _append_csv(out / "log.csv", LOG_FIELDS, row)
                if writer is not None:
                    for k, v in row.items():
                        writer.add_scalar(f"train/{k}", v, step)
                tic, last_logged = time.perf_counter(), step
            if step % config.run.val_every == 0 or step == total_steps:
                validate()
            if step % config.run.save_every == 0 or step == total_steps:
                save("periodic" if step < total_steps else "final")
            if step >= total_steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    progress.close()
    if writer is not None:
        writer.close()
    if main_process:
        plot_log(out)
    if world > 1:
        dist.destroy_process_group()
    return out


def _train_step(
    batch: dict, step_module: nn.Module, teacher: Sam, flavour: str, config: DistillConfig, device: torch.device, amp, generator
) -> dict:
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
            per_image.append(prompt_losses(student_out, {"masks": t_masks, "tokens": t_tokens[:, :5]}, gts[b], candidates, config.loss))
    for key in ("token", "output", "mask", "iou", "hard_weight", "total"):
        terms[key] = torch.stack([p[key] for p in per_image]).mean() if per_image else torch.zeros((), device=device)
    terms["total"] = terms["total"] + config.loss.embedding * terms["embedding"]
    return terms


def _best_score(val_csv: Path) -> float:
    if not val_csv.is_file():
        return -math.inf
    with open(val_csv) as f:
        scores = [(float(r["point_miou"]) + float(r["box_miou"])) / 2 for r in csv.DictReader(f)]
    return max(scores, default=-math.inf)


def _tensorboard(out: Path):  # noqa: ANN202 - SummaryWriter is optional
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TinySamError(
            "run.tensorboard = true needs the tensorboard package (pip install tensorboard); log.csv is always written"
        ) from exc
    return SummaryWriter(str(out / "tensorboard"))


def plot_log(out: Path) -> Path | None:
    """Plot the loss terms of ``log.csv`` and the held-out mIoU of ``val.csv`` into ``training.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (out / "log.csv").is_file():
        return None
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [int(r["step"]) for r in rows]
    for key in ("total", "embedding", "token", "output", "mask", "iou"):
        ax_loss.plot(steps, [float(r[key]) for r in rows], label=key)
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    ax_loss.legend(fontsize=8)
    if (out / "val.csv").is_file():
        with open(out / "val.csv") as f:
            vals = list(csv.DictReader(f))
        for key in ("point_miou", "box_miou"):
            ax_val.plot([int(r["step"]) for r in vals], [float(r[key]) for r in vals], marker="o", label=key)
        ax_val.legend(fontsize=8)
    ax_val.set(xlabel="step", ylabel="mIoU", title="held-out mask IoU")
    fig.tight_layout()
    path = out / "training.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
