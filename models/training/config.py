"""The distillation config: TOML (or YAML with PyYAML) sections mapped onto dataclasses, unknown keys refused."""

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from tinysam_edge.errors import TinySamError
from tinysam_edge.masks import FLAVOURS

from ..build_sam import sam_model_registry
from .losses import LossWeights
from .prompt_sampling import SamplerConfig


@dataclass(frozen=True)
class DataConfig:
    """Training images: COCO when ``annotations`` is set, else the SA-1B layout (JSON next to each image)."""

    images: str = ""
    annotations: str = ""
    val_fraction: float = 0.05
    max_masks: int = 16
    min_area: float = 64.0
    flip: bool = True
    limit: int = 0
    num_workers: int = 2
    val_max_images: int = 50


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher: a checkpoint (file or registry name), its model (``auto`` infers it) and an optional embedding cache."""

    checkpoint: str = "sam_vit_h"
    model: str = "auto"
    cache: str = ""


@dataclass(frozen=True)
class StudentConfig:
    """The student: ``init`` is ``scratch`` or a checkpoint; its decoder can start as a copy of the teacher's."""

    model: str = "vit_t"
    init: str = "scratch"
    decoder_from_teacher: bool = True
    flavour: str = "tinysam"


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay; ``max_steps`` > 0 overrides ``epochs``."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 250
    epochs: int = 8
    max_steps: int = 0
    batch_size: int = 2
    grad_clip: float = 1.0


@dataclass(frozen=True)
class RunConfig:
    """Where results go and how the run is executed. ``amp``: auto, bf16, fp16 or off.

    ``channels_last`` runs the student's encoder on channels-last tensors; ``compile`` compiles the
    encoders with ``torch.compile`` (both off by default: see docs/training.md for when they pay).
    """

    out: str = "runs/distill"
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    save_every: int = 500
    tensorboard: bool = False
    channels_last: bool = False
    compile: bool = False


@dataclass(frozen=True)
class DistillConfig:
    """All sections of a distillation run."""

    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


class ConfigError(TinySamError, ValueError):
    """A config file or override that cannot be read or has a value out of its type, range or choices."""


#: Closed ranges of the numeric settings, per section (None: no upper bound).
RANGES: dict[str, dict[str, tuple[float, float | None]]] = {
    "data": {
        "val_fraction": (0, 1),
        "max_masks": (1, None),
        "min_area": (0, None),
        "limit": (0, None),
        "num_workers": (0, None),
        "val_max_images": (0, None),
    },
    "optim": {
        "lr": (0, None),
        "weight_decay": (0, None),
        "warmup_steps": (0, None),
        "epochs": (1, None),
        "max_steps": (0, None),
        "batch_size": (1, None),
        "grad_clip": (0, None),
    },
    "run": {"seed": (0, None), "log_every": (1, None), "val_every": (1, None), "save_every": (1, None)},
    "sampler": {"box_prob": (0, 1), "box_noise": (0, None), "min_iterations": (0, None), "max_iterations": (0, None)},
    "loss": {name: (0, None) for name in ("embedding", "token", "output", "focal", "dice", "iou")},
}
#: Allowed values of the settings that name a mode.
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "run": {"amp": ("auto", "bf16", "fp16", "off")},
    "student": {"flavour": FLAVOURS, "model": tuple(sam_model_registry)},
    "teacher": {"model": ("auto", *sam_model_registry)},
}


def _toml() -> ModuleType:
    """The TOML parser: ``tomllib`` (Python >= 3.11) or the ``tomli`` package it was taken from (3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError as exc:
            raise TinySamError(
                "reading TOML needs Python >= 3.11 or the tomli package (pip install 'tinysam-edge[train]'); or use a YAML config"
            ) from exc
    return tomllib


def _check_value(section: str, key: str, value: object) -> None:
    low, high = RANGES.get(section, {}).get(key, (None, None))
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config [{section}] {key} must be a finite number, got {value!r}")
    if low is not None and (value < low or (high is not None and value > high)):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"config [{section}] {key} must be {bound}, got {value!r}")
    choices = CHOICES.get(section, {}).get(key)
    if choices is not None and value not in choices:
        raise ConfigError(f"config [{section}] {key} must be one of {', '.join(choices)}, got {value!r}")


def _section(cls: type, values: dict, name: str):
    if not isinstance(values, dict):
        raise ConfigError(f"config section [{name}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) in config section [{name}]: {', '.join(unknown)} (known: {', '.join(known)})")
    defaults = cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = value = float(value)
        elif not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ConfigError(f"config [{name}] {key} must be {expected.__name__}, got {value!r}")
        _check_value(name, key, value)
    return cls(**values)


def config_from_dict(raw: dict) -> DistillConfig:
    """Validate a nested dict (sections -> keys) into a ``DistillConfig``: types, ``RANGES`` and ``CHOICES``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a table of sections, got {type(raw).__name__}")
    sections = {f.name: f.default_factory for f in dataclasses.fields(DistillConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown config section(s): {', '.join(unknown)} (known: {', '.join(sections)})")
    return DistillConfig(**{name: _section(type(factory()), dict(raw.get(name, {})), name) for name, factory in sections.items()})


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values in TOML syntax; bare words are strings)."""
    for item in overrides:
        dotted, sep, text = item.partition("=")
        section, dot, key = dotted.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        toml = _toml()
        try:
            value = toml.loads(f"v = {text}")["v"]
        except toml.TOMLDecodeError:
            value = text
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config section [{section}] must be a table")
        table[key] = value
    return raw


def _parse(path: Path, text: str) -> dict:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError("YAML configs need PyYAML (pip install 'tinysam-edge[train]'), or use TOML") from exc
        try:
            return yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    toml = _toml()
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def read_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """Read a TOML or YAML config file, apply overrides and validate it. Relative paths stay relative to the working directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a text file ({exc.reason})") from exc
    raw = _parse(path, text)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a table of sections, got {type(raw).__name__}")
    return config_from_dict(apply_overrides(raw, overrides or []))
