"""What every fine-tuning method provides, and the no-op training behaviour most of them share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from ml.config import TrainConfig


class MethodTraining:
    """What a method adds to one training run; the default adds nothing.

    The loop calls these in order each step: forward (with labels when `wants_labels`), the task
    loss plus `extra_loss`, backward, optimiser step, `after_step`. An epoch that ends before
    `keep_from_step` is validated but neither kept nor counted by early stopping.
    """

    wants_labels = False
    keep_from_step = 0

    def extra_loss(self, outputs: Any, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        return None

    def after_step(self, step: int) -> None:
        return None

    def remember(self) -> Any:
        """State beyond the weights that the kept epoch needs (restored with `restore`)."""
        return None

    def restore(self, memo: Any) -> None:
        return None

    def epoch_record(self) -> dict:
        """Extra per-epoch facts for the manifest's history."""
        return {}

    def manifest_record(self) -> dict:
        """Extra top-level manifest entries, once training is over."""
        return {}


class Method:
    """A fine-tuning method: subclasses set `name` and `stage_defaults` and build their models."""

    name: ClassVar[str]
    # Defaults per stage (1: a first fine-tune, 2: every continued one), on top of ml.config's.
    stage_defaults: ClassVar[dict[int, dict[str, Any]]]
    # Served as an adapter beside others on one shared base (see ml.model_cache), or as a module alone.
    shares_serving_host: ClassVar[bool] = False

    def check_for_base(self, config: TrainConfig, base_model: str) -> None:
        """Refuse (ConfigError), before any work is queued, settings this method cannot apply to the
        base model: by default there are none."""

    def start(self, config: TrainConfig, base_model: str, total_steps: int) -> torch.nn.Module:
        raise NotImplementedError

    def resume(
        self, parent_dir: Path, config: TrainConfig, base_model: str, total_steps: int
    ) -> torch.nn.Module:
        raise NotImplementedError

    def training(self, model: torch.nn.Module, config: TrainConfig, continued: bool) -> MethodTraining:
        return MethodTraining()

    def load(self, model_dir: Path, manifest: dict) -> torch.nn.Module:
        """A saved model on its own, as it was trained (adapters not merged)."""
        raise NotImplementedError

    def load_for_serving(self, model_dir: Path, manifest: dict) -> torch.nn.Module:
        """A saved model as a module of its own in the serving cache (not for shared-host methods)."""
        return self.load(model_dir, manifest)
