"""Accuracy: zero-shot COCO evaluation and the agreement of two predictors (INT8 or bf16 against FP32)."""
