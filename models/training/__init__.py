"""Distillation training: datasets, teacher embedding cache, online hard prompt sampling, losses and the loop."""

from .cache_builder import cache_teacher
from .config import DistillConfig, read_config
from .distill import train
from .step import evaluate

__all__ = ["DistillConfig", "cache_teacher", "evaluate", "read_config", "train"]
