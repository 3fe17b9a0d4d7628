"""Full-stage knowledge distillation of a TinySAM student from a SAM-family teacher (paper section 3.2).

One step, per image of the batch: the student encodes the image; online hard prompt sampling draws K
prompt sets with the student's own (gradient-free) predictions; student and teacher decode the final
prompts; the loss is l1 on embeddings, output tokens and hard-mask-weighted mask logits, plus focal +
dice and IoU losses against the ground truth (``step.py``). Runs on CUDA (AMP, ``torchrun`` DDP) or on
the CPU. This module builds the run and owns its loop, checkpoints and resumable state.
"""

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from tinysam_edge.errors import TinySamError, error_cause
from tinysam_edge.files import atomic_write
from tinysam_edge.weights import resolve_checkpoint, sha256_file

from ..build_sam import build_sam, save_checkpoint
from ..modeling import Sam
from .config import DistillConfig
from .data import SegmentationDataset, make_loader
from .devices import amp_dtype, dist_env, training_device
from .logs import LOG_FIELDS, LOG_FILE, VAL_FIELDS, VAL_FILE, append_csv, best_score, open_tensorboard, plot_log, val_score
from .records import ImageRecord, load_records, split_records
from .step import PhaseMarks, StudentStep, evaluate, teacher_terms_on, train_step
from .stops import StopRequest
from .teacher_cache import TeacherCache

STATE_FILE = "train_state.pt"
LAST_CHECKPOINT = "student_last.pth"
BEST_CHECKPOINT = "student_best.pth"
#: Keys of ``train_state.pt``.
STATE_KEYS = ("student", "optimizer", "scheduler", "scaler", "generator", "step", "epoch", "batch_in_epoch")


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps, then cosine decay to zero at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


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
    """(teacher without its encoder when a cache is used or no term needs it, student in train mode) on ``device``."""
    teacher = build_sam(config.teacher.model, checkpoint=config.teacher.checkpoint)
    if config.teacher.cache or not teacher_terms_on(config.loss)[0]:
        teacher.image_encoder = nn.Identity()  # embeddings come from the cache (or are not needed): free the big encoder
    teacher.requires_grad_(False).eval()
    scratch = config.student.init == "scratch"
    student = build_sam(config.student.model, checkpoint=None if scratch else config.student.init, flavour=config.student.flavour)
    if scratch and config.student.decoder_from_teacher:
        student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
        student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
        log("student: random encoder, prompt encoder and mask decoder copied from the teacher")
    freeze_gradless(student)
    return teacher.to(device), student.to(device).train()


@dataclass
class TrainingData:
    """The held-out split, the datasets and the training loader of a run."""

    train_records: list[ImageRecord]
    val_records: list[ImageRecord]
    train_set: SegmentationDataset
    val_set: SegmentationDataset | None
    loader: torch.utils.data.DataLoader


def _checked_cache(config: DistillConfig, records: list[ImageRecord]) -> TeacherCache | None:
    """The configured teacher cache (None when no term needs the teacher), refused when it is from another teacher or
    lacks an intact embedding of ``records``."""
    if not config.teacher.cache or not teacher_terms_on(config.loss)[0]:
        return None
    cache = TeacherCache(config.teacher.cache)
    if cache.meta.sha256 != sha256_file(resolve_checkpoint(config.teacher.checkpoint)[0]):
        raise TinySamError(
            f"{cache.root} was built from {cache.meta.checkpoint}, not from the configured teacher {config.teacher.checkpoint}"
        )
    missing = cache.missing([r.key for r in records])
    if missing:
        raise TinySamError(
            f"{len(missing)} training images have no intact teacher embedding in {cache.root} (first: {cache.path(missing[0])}, "
            "missing or damaged); rerun cache-teacher, which replaces damaged files"
        )
    return cache


def load_training_data(config: DistillConfig, rank: int = 0, world: int = 1, pin_memory: bool = False) -> TrainingData:
    """Records, held-out split, datasets (with the checked teacher cache) and the loader of this process."""
    records = load_records(config.data.images, config.data.annotations or None)
    if config.data.limit:
        records = records[: config.data.limit]
    train_records, val_records = split_records(records, config.data.val_fraction, config.run.seed)
    cache = _checked_cache(config, train_records)
    data = config.data
    train_set = SegmentationDataset(train_records, data.max_masks, data.min_area, data.flip, cache, config.run.seed)
    val_set = SegmentationDataset(val_records, max_masks=1000, min_area=data.min_area) if val_records else None
    loader = make_loader(train_set, config.optim.batch_size, data.num_workers, True, config.run.seed, rank, world, pin_memory)
    if len(loader) == 0:
        raise TinySamError(f"{len(train_records)} training images are fewer than one batch of {config.optim.batch_size}")
    return TrainingData(train_records, val_records, train_set, val_set, loader)


def _check_out_dir(out: Path, resume: bool) -> None:
    state = out / STATE_FILE
    if resume and not state.is_file():
        raise TinySamError(f"cannot resume: {state} not found")
    if not resume and out.exists() and any(out.iterdir()):
        raise TinySamError(f"{out} is not empty; pass --resume to continue that run, or set run.out to a new folder")


class Distiller:
    """The models, optimiser and bookkeeping of one run; ``run()`` trains up to ``total_steps``.

    Only the main process (rank 0) writes files and logs; every process steps.
    """

    def __init__(
        self, config: DistillConfig, data: TrainingData, device: torch.device, rank: int, world: int, log: Callable[[str], None]
    ) -> None:
        self.config, self.data, self.device, self.world, self.log = config, data, device, world, log
        self.main = rank == 0
        self.amp = amp_dtype(config.run.amp, device)
        self.out = Path(config.run.out)
        self.total_steps = config.optim.max_steps or config.optim.epochs * len(data.loader)
        self.teacher, self.student = build_models(config, device, log)
        if config.run.channels_last:
            self.student.image_encoder.to(memory_format=torch.channels_last)
        if config.run.compile:  # in place, so state_dict keys keep the official names
            self.student.image_encoder.compile()
            self.teacher.image_encoder.compile()
        self.marks = PhaseMarks()
        self.step_module: nn.Module = StudentStep(self.student, config.sampler, config.run.channels_last, self.marks)
        if world > 1:
            if device.type == "cuda":  # TinyViT's BatchNorm sees 1-4 images per GPU: share the statistics
                self.step_module = nn.SyncBatchNorm.convert_sync_batchnorm(self.step_module)
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.optim.lr, weight_decay=config.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(config.optim.warmup_steps, self.total_steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp is torch.float16)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.run.seed * 1000 + rank)
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best = best_score(self.out / VAL_FILE)
        self.writer = None

    def state(self) -> dict:
        """Everything ``restore`` needs to continue exactly where the run stopped (``STATE_KEYS``)."""
        return {
            "student": self.student.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
        }

    def restore(self) -> None:
        """Load ``train_state.pt``; a truncated, foreign or mismatched file is one ``TinySamError``."""
        path = self.out / STATE_FILE
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            if not isinstance(state, dict) or not set(STATE_KEYS) <= set(state):
                raise TinySamError(f"it lacks {', '.join(k for k in STATE_KEYS if not isinstance(state, dict) or k not in state)}")
            self.student.load_state_dict(state["student"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self.generator.set_state(state["generator"].cpu())
        except Exception as exc:  # torch raises many types for truncated files and mismatched states
            raise TinySamError(f"cannot resume from {path}: it is damaged or from another setup ({error_cause(exc)})") from exc
        self.step, self.epoch, self.batch_in_epoch = (int(state[k]) for k in ("step", "epoch", "batch_in_epoch"))
        self.log(f"resuming {self.out} at step {self.step} (epoch {self.epoch})")

    def save(self, tag: str) -> None:
        """Write ``student_last.pth`` (official layout) and the resumable state, atomically."""
        if not self.main:
            return
        save_checkpoint(self.student, self.out / LAST_CHECKPOINT)
        with atomic_write(self.out / STATE_FILE) as tmp:
            torch.save(self.state(), tmp)
        self.log(f"saved {tag} checkpoint at step {self.step}: {self.out / LAST_CHECKPOINT}")

    def validate(self) -> None:
        """Held-out mIoU into ``val.csv``; a new best score also saves ``student_best.pth``."""
        if self.data.val_set is None or not self.main:
            return
        metrics = evaluate(self.student, self.data.val_set, self.device, self.config.data.val_max_images, self.amp)
        append_csv(self.out / VAL_FILE, VAL_FIELDS, {"step": self.step, **metrics})
        self.log(
            f"step {self.step}: held-out mIoU point {metrics['point_miou']:.4f} box {metrics['box_miou']:.4f} ({metrics['objects']} objects)"
        )
        if self.writer is not None:
            self.writer.add_scalars("val", {k: v for k, v in metrics.items() if k != "objects"}, self.step)
        if val_score(metrics) > self.best:
            self.best = val_score(metrics)
            save_checkpoint(self.student, self.out / BEST_CHECKPOINT)

    def update(self, batch: dict) -> dict[str, torch.Tensor]:
        """One optimiser step on ``batch``; returns its loss terms (on the device: reading them waits for it)."""
        self.marks.mark("start")
        terms = train_step(
            batch, self.step_module, self.teacher, self.student.flavour, self.config.loss, self.device, self.amp, self.generator
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["total"]).backward()
        self.marks.mark("backward_end")
        if self.config.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.marks.mark("optimizer_end")
        self.step += 1
        self.batch_in_epoch += 1
        return terms

    def record(self, terms: dict[str, torch.Tensor], steps_per_s: float) -> None:
        """Append the loss terms of this step to ``log.csv`` (and TensorBoard)."""
        row = {"step": self.step, "epoch": self.epoch, "lr": self.scheduler.get_last_lr()[0], "steps_per_s": steps_per_s}
        row |= {k: v.item() for k, v in terms.items()}
        append_csv(self.out / LOG_FILE, LOG_FIELDS, row)
        if self.writer is not None:
            for k, v in row.items():
                self.writer.add_scalar(f"train/{k}", v, self.step)

    def start(self) -> None:
        """Create the output folder with ``config.json`` (and TensorBoard), and say what the run will do."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=1))
            self.writer = open_tensorboard(self.out) if self.config.run.tensorboard else None
        c = self.config
        self.log(
            f"distilling on {self.device} (amp {self.amp or 'off'}, {self.world} process(es)): {len(self.data.train_records)} train / "
            f"{len(self.data.val_records)} val images, {self.total_steps} steps of {c.optim.batch_size} images x up to {c.data.max_masks} objects"
        )

    def after_step(self, terms: dict[str, torch.Tensor], clock: list[float]) -> None:
        """Log, validate and save on the configured schedule. ``clock`` is (time, step) of the last log line."""
        run, last = self.config.run, self.step == self.total_steps
        if self.main and (self.step % run.log_every == 0 or last):  # reading the losses waits for the device: only here
            self.record(terms, (self.step - clock[1]) / (time.perf_counter() - clock[0]))
            clock[:] = [time.perf_counter(), self.step]
        if self.step % run.val_every == 0 or last:
            self.validate()
        if self.step % run.save_every == 0 or last:
            self.save("final" if last else "periodic")

    def stopping(self, stop: StopRequest) -> bool:
        """Whether a stop signal arrived (in any process: under DDP every process stops at the same step)."""
        flag = stop.signum is not None
        if self.world > 1:
            shared = torch.tensor([float(flag)], device=self.device)
            dist.all_reduce(shared, op=dist.ReduceOp.MAX)
            flag = bool(shared.item())
        return flag

    def run(self) -> None:
        """Train up to ``total_steps``, logging, validating and saving on the configured schedule; then plot the logs.

        Ctrl-C or SIGTERM: the state is saved after the step in progress, then the signal takes its course
        (under the CLI: one line, exit 130 / 143); ``--resume`` continues from that step.
        """
        if self.step == 0:
            self.validate()
        progress = tqdm(total=self.total_steps, initial=self.step, desc="distill", unit="step", disable=not self.main)
        clock, stopped = [time.perf_counter(), float(self.step)], False
        sampler = self.data.loader.sampler
        with StopRequest() as stop:
            while self.step < self.total_steps and not stopped:
                sampler.set_epoch(self.epoch, self.batch_in_epoch * self.config.optim.batch_size)
                for batch in self.data.loader:
                    self.after_step(self.update(batch), clock)
                    progress.update(1)
                    stopped = self.stopping(stop)
                    if self.step == self.total_steps or stopped:
                        break
                else:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            progress.close()
            if self.writer is not None:
                self.writer.close()
            if stopped:
                self.save("stop")
                self.log(f"stopped at step {self.step}; continue with --resume")
                if stop.signum is not None:
                    stop.deliver()
                return
        if self.main:
            plot_log(self.out)


def _silent(*_: object) -> None:
    """A logger that drops everything (the processes other than rank 0)."""


def train(config: DistillConfig, resume: bool = False, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a distillation; returns the output folder with ``student_last.pth`` in the official layout."""
    rank, _, world = dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if rank != 0:
        log = _silent  # only rank 0 speaks
    out = Path(config.run.out)
    if rank == 0:
        _check_out_dir(out, resume)
    device = training_device(config.run.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(config.run.seed + rank)
    distiller = Distiller(config, load_training_data(config, rank, world, device.type == "cuda"), device, rank, world, log)
    if resume:
        distiller.restore()
    distiller.start()
    distiller.run()
    if world > 1:
        dist.destroy_process_group()
    return out
