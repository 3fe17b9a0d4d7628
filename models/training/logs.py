"""A run's records: ``log.csv`` (loss terms per logged step), ``val.csv`` (held-out mIoU), TensorBoard and ``training.png``."""

import csv
import math
from pathlib import Path

from tinysam_edge.errors import TinySamError

LOG_FILE = "log.csv"
VAL_FILE = "val.csv"
LOG_FIELDS = ["step", "epoch", "lr", "total", "embedding", "token", "output", "mask", "iou", "hard_weight", "steps_per_s"]
VAL_FIELDS = ["step", "point_miou", "box_miou", "box_baseline_miou", "objects"]


def append_csv(path: Path, fields: list[str], row: dict) -> None:
    """Append one row (missing fields empty), writing the header first when the file is new."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in fields})


def val_score(metrics: dict[str, float]) -> float:
    """What "best" means for ``student_best.pth``: the mean of the point and box mIoU."""
    return (float(metrics["point_miou"]) + float(metrics["box_miou"])) / 2


def best_score(val_csv: Path) -> float:
    """The best ``val_score`` recorded so far in ``val.csv`` (-inf without one)."""
    if not val_csv.is_file():
        return -math.inf
    with open(val_csv) as f:
        return max((val_score(r) for r in csv.DictReader(f)), default=-math.inf)


def open_tensorboard(out: Path):
    """A SummaryWriter writing into ``out/tensorboard``, or one clear error without the tensorboard package."""
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

    if not (out / LOG_FILE).is_file():
        return None
    with open(out / LOG_FILE) as f:
        rows = list(csv.DictReader(f))
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [int(r["step"]) for r in rows]
    for key in ("total", "embedding", "token", "output", "mask", "iou"):
        ax_loss.plot(steps, [float(r[key]) for r in rows], label=key)
    ax_loss.set(xlabel="step", ylabel="loss", yscale="log", title="training losses")
    ax_loss.legend(fontsize=8)
    if (out / VAL_FILE).is_file():
        with open(out / VAL_FILE) as f:
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
