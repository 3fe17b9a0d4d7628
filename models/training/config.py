"""The distillation config: TOML (or YAML with PyYAML) sections mapped onto dataclasses, unknown keys refused."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

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
    """Where results go and how the run is executed. ``amp``: auto, bf16, fp16 or off."""

    out: str = "runs/distill"
    device: str = "auto"
    amp: str = "auto"
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    save_every: int = 500
    tensorboard: bool = False


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


def _section(cls: type, values: dict, name: str):  # noqa: ANN202 - returns an instance of cls
    if not isinstance(values, dict):
        raise ValueError(f"config section [{name}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) in config section [{name}]: {', '.join(unknown)} (known: {', '.join(known)})")
    defaults = cls()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ValueError(f"config [{name}] {key} must be {expected.__name__}, got {value!r}")
    return cls(**values)


def config_from_dict(raw: dict) -> DistillConfig:
    """Validate a nested dict (sections -> keys) into a ``DistillConfig``."""
    sections = {f.name: f.default_factory for f in dataclasses.fields(DistillConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"unknown config section(s): {', '.join(unknown)} (known: {', '.join(sections)})")
    return DistillConfig(**{name: _section(type(factory()), dict(raw.get(name, {})), name) for name, factory in sections.items()})


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values in TOML syntax; bare words are strings)."""
    for item in overrides:
        dotted, sep, text = item.partition("=")
        section, dot, key = dotted.partition(".")
        if not sep or not dot:
            raise ValueError(f"override {item!r} must look like section.key=value")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        raw.setdefault(section, {})[key] = value
    return raw


def read_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """Read a TOML or YAML config file, apply overrides and validate it. Relative paths stay relative to the working directory."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ValueError("YAML configs need PyYAML (pip install 'tinysam-edge[train]'), or use TOML") from exc
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    return config_from_dict(apply_overrides(raw, overrides or []))
