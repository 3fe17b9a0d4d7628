"""Distillation training: datasets, teacher embedding cache, online hard prompt sampling, losses and the loop."""

from .config import DistillConfig, read_config
from .distill import cache_teacher, train
from .step import evaluate

__all__ = ["DistillConfig", "cache_teacher", "evaluate", "read_config", "train"]
