"""Optimiser set-up for the training loop: AdamW over parameter groups (weight decay, layer-wise
learning rates), whether to train in bf16, and an exponential moving average of the weights.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_LAYER_INDEX = re.compile(r"\.layer\.(\d+)\.")


def optimizer_for(
    model: torch.nn.Module, lr: float, weight_decay: float, layer_lr_decay: float = 1.0
) -> torch.optim.Optimizer:
    """AdamW over the model's trainable parameters in `parameter_groups`, fused where torch supports
    it (one kernel for all tensors: 4x faster steps on CPU)."""
    groups = scaled_learning_rates(parameter_groups(model, weight_decay, layer_lr_decay), lr)
    try:
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr)


def training_uses_bf16(precision: str, device: torch.device) -> bool:
    """Whether to autocast training to bf16: on CUDA, and on CPUs that do bf16 natively."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or _cpu_has_native_bf16()


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    # Without AMX / AVX512-BF16, CPU bf16 is emulated and slower than fp32.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def parameter_groups(model: torch.nn.Module, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict]:
    """AdamW groups: no decay on biases and LayerNorm; with layer_lr_decay < 1, smaller rates lower down.

    Each group carries `lr_scale`; `scaled_learning_rates` turns it into the group's `lr`, which the
    warm-up/decay scheduler then multiplies, so the layer ratios hold for the whole run.
    """
    depth_of = _depth_function(model)
    top = depth_of.top
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = not (param.ndim < 2 or "LayerNorm" in name)
        groups.setdefault((depth_of(name), decays), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": weight_decay if decays else 0.0,
            "lr_scale": layer_lr_decay ** (top - depth),
        }
        for (depth, decays), params in sorted(groups.items())
    ]


def scaled_learning_rates(groups: list[dict], lr: float) -> list[dict]:
    return [
        {**{k: v for k, v in group.items() if k != "lr_scale"}, "lr": lr * group["lr_scale"]}
        for group in groups
    ]


class _Depth:
    """Depth of a parameter: 0 for embeddings, k for encoder layer k-1, top for everything above."""

    def __init__(self, num_layers: int):
        self.top = num_layers + 1

    def __call__(self, name: str) -> int:
        if "embeddings" in name:
            return 0
        match = _LAYER_INDEX.search(name)
        return int(match.group(1)) + 1 if match and "encoder" in name else self.top


def _depth_function(model: torch.nn.Module) -> _Depth:
    config = getattr(model, "config", None)
    return _Depth(int(getattr(config, "num_hidden_layers", 0) or 0))


class WeightAverage:
    """Exponential moving average of the trainable weights (fp32 shadow copies).

    The decay ramps up as (1 + step) / (10 + step) so the first steps do not drag the random head's
    initial values along for hundreds of steps.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; afterwards its own again."""
        own = [p.detach().clone() for p in self.params]
        _copy_into(self.params, self.shadow)
        try:
            yield
        finally:
            _copy_into(self.params, own)


class WeightAnchor:
    """L2-SP (Li et al., ICML 2018): strength/2 * squared distance of the trainable weights from where
    the run started (the parent's, or the pretrained ones), so a small new data set moves the model
    only as far as it must. The classifier head is left free: LP-FT refits it, and a new head has no
    meaningful starting point.
    """

    def __init__(self, model: torch.nn.Module, strength: float):
        self.strength = strength
        self.params = [
            p for name, p in model.named_parameters() if p.requires_grad and "classifier" not in name
        ]
        self.start = [p.detach().clone() for p in self.params]

    def penalty(self) -> torch.Tensor:
        squared = sum(
            (p.float() - start.float()).pow(2).sum() for p, start in zip(self.params, self.start, strict=True)
        )
        return 0.5 * self.strength * squared


@torch.no_grad()
def _copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
