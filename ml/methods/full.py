"""Full fine-tuning: every weight of the encoder and the head trains; a saved model is a whole copy."""

from __future__ import annotations

from pathlib import Path

import torch

from ml.architectures import load_base_classifier, load_classifier
from ml.config import TrainConfig, pooling_of
from ml.methods.base import Method


class FullMethod(Method):
    name = "full"
    stage_defaults = {1: {"lr": 2e-5}, 2: {"lr": 5e-5}}

    def start(self, config: TrainConfig, base_model: str, total_steps: int) -> torch.nn.Module:
        return load_base_classifier(base_model, config.pooling)

    def resume(
        self, parent_dir: Path, config: TrainConfig, base_model: str, total_steps: int
    ) -> torch.nn.Module:
        return load_classifier(parent_dir, config.pooling)

    def load(self, model_dir: Path, manifest: dict) -> torch.nn.Module:
        return load_classifier(model_dir, pooling_of(manifest))


METHOD = FullMethod()
