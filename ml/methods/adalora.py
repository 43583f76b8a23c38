"""AdaLoRA: SVD-shaped adapters (P diag(E) Q) whose rank budget is pruned to where it matters.

It differs from LoRA in training: PEFT adds an orthogonality regulariser on P and Q to the model's
own loss, and `update_and_allocate` must run after every backward pass (before zero_grad) to prune
and finalise the ranks; until the ranks are final an epoch is not kept, or the saved model would be
LoRA with extra steps. A continued adapter keeps its parent's final ranks frozen: re-allocating a
reloaded adapter fails (peft issue 2337). AdaLoRA adapters cannot share a batch with others in PEFT,
so each is merged into a copy of its base to be served.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import AdaLoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model

from ml.architectures import load_base_classifier
from ml.config import ConfigError, TrainConfig, pooling_of
from ml.methods.base import Method, MethodTraining
from ml.methods.lora import ALL_LINEAR, check_target_modules


class AdaLoraMethod(Method):
    """PEFT scales AdaLoRA's update by lora_alpha / init_r and starts it as a product of three small
    factors (E = 0, P and Q at std 0.02): at LoRA's alpha 16 (scale 1.33) and 5e-4 its update grew about
    two orders of magnitude slower than LoRA's, and the validation AUC never left the probe's (relative
    size of the update 0.0003 after 80 steps). Alpha 192 (scale 16, the top of the 5-16 the AdaLoRA
    paper's scripts use), every linear layer and 2e-3 moved it 0.01-0.03 and lifted validation AUC.
    """

    name = "adalora"
    stage_defaults = {
        1: {"lr": 2e-3, "lora_alpha": 192, "target_modules": ALL_LINEAR},
        2: {"lr": 1e-3, "lora_alpha": 192, "target_modules": ALL_LINEAR},
    }

    def check_for_base(self, config: TrainConfig, base_model: str) -> None:
        check_target_modules(config, base_model)

    def start(self, config: TrainConfig, base_model: str, total_steps: int) -> torch.nn.Module:
        tinit, tfinal, delta_t = schedule(config, total_steps)
        peft_config = AdaLoraConfig(
            task_type=TaskType.SEQ_CLS,
            init_r=config.adalora_init_r,
            target_r=config.adalora_target_r,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=delta_t,
            # The real number of optimiser steps, so the rank budget is finalised inside this run.
            total_step=total_steps,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            orth_reg_weight=config.adalora_orth_reg_weight,
        )
        return get_peft_model(load_base_classifier(base_model, config.pooling), peft_config)

    def resume(
        self, parent_dir: Path, config: TrainConfig, base_model: str, total_steps: int
    ) -> torch.nn.Module:
        # The saved config wins over kwargs, so edit the loaded one; tinit = tfinal = 0 and no
        # update_and_allocate: the parent's ranks stay as they are.
        peft_config = PeftConfig.from_pretrained(parent_dir)
        peft_config.total_step = total_steps
        peft_config.tinit, peft_config.tfinal = 0, 0
        return PeftModel.from_pretrained(
            load_base_classifier(base_model, config.pooling),
            parent_dir,
            config=peft_config,
            is_trainable=True,
        )

    def training(self, model: torch.nn.Module, config: TrainConfig, continued: bool) -> MethodTraining:
        allocates = not continued and not config.freeze_encoder
        return AdaLoraTraining(model, allocates)

    def load(self, model_dir: Path, manifest: dict) -> torch.nn.Module:
        base = load_base_classifier(manifest["base_model"], pooling_of(manifest))
        return PeftModel.from_pretrained(base, model_dir)

    def load_for_serving(self, model_dir: Path, manifest: dict) -> torch.nn.Module:
        return self.load(model_dir, manifest).merge_and_unload()


class AdaLoraTraining(MethodTraining):
    # PEFT adds the orthogonal regulariser to outputs.loss only, which it computes from the labels.
    wants_labels = True

    def __init__(self, model: torch.nn.Module, allocates: bool) -> None:
        self.model = model
        self.allocates = allocates
        self.ranks_before = ranks(model)
        self.keep_from_step = self._ranks_final_step() if allocates else 0
        self.adapter_params = [
            p for name, p in model.named_parameters() if "lora_" in name and p.requires_grad
        ]

    def extra_loss(self, outputs, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # outputs.loss = unweighted cross-entropy + regulariser: keep exactly the regulariser, on top
        # of the loop's class-weighted loss.
        return outputs.loss.float() - F.cross_entropy(logits, labels)

    def after_step(self, step: int) -> None:
        if self.allocates:
            # An adapter on a module the forward never reaches (BERT's pooler, which "dense" also names,
            # under sentence pooling) has no gradient, and PEFT's importance update fails on it.
            for param in self.adapter_params:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            self.model.base_model.update_and_allocate(step)

    def remember(self):
        return copy.deepcopy(_rank_pattern(self.model)) if self.allocates else None

    def restore(self, memo) -> None:
        """Apply the kept epoch's rank pattern as a mask: PEFT saves the matrices cut to the config's
        pattern, so pattern and weights must both be the kept epoch's."""
        if memo:
            tuner = self.model.base_model
            tuner.peft_config["default"].rank_pattern = memo
            tuner.rankallocator.mask_using_rank_pattern(tuner.model, memo)

    def epoch_record(self) -> dict:
        return {"nonzero_singular_values": nonzero_singular_values(self.model)}

    def manifest_record(self) -> dict:
        record = {"before": self.ranks_before, "after": ranks(self.model)}
        if self.allocates:
            record["final_from_step"] = self.keep_from_step
        return {"adalora_ranks": record}

    def _ranks_final_step(self) -> int:
        peft_config = self.model.peft_config["default"]
        return peft_config.total_step - peft_config.tfinal


def schedule(config: TrainConfig, total_steps: int) -> tuple[int, int, int]:
    """(tinit, tfinal, deltaT) for a run of `total_steps` optimiser steps.

    AdaLoRA prunes ranks between tinit and total_step - tfinal; PEFT requires tinit < total_step - tfinal.
    Defaults keep 10% warm-up and finish the allocation at half the run: epochs before that are not
    kept, so a later end would leave few epochs to choose the best from.
    """
    tinit = config.adalora_tinit if config.adalora_tinit is not None else max(1, total_steps // 10)
    tfinal = config.adalora_tfinal if config.adalora_tfinal is not None else max(1, total_steps // 2)
    delta_t = config.adalora_delta_t if config.adalora_delta_t is not None else max(1, total_steps // 50)
    if tinit >= total_steps - tfinal:
        raise ConfigError(
            f"AdaLoRA schedule does not fit: tinit ({tinit}) must be < "
            f"total steps ({total_steps}) - tfinal ({tfinal})"
        )
    return tinit, tfinal, delta_t


def ranks(model: torch.nn.Module) -> dict[str, int]:
    """The rank of every AdaLoRA layer: kept singular values per the allocator's rank pattern.

    Before the budget is first allocated there is no pattern and every layer has its initial rank.
    """
    pattern = _rank_pattern(model) or {}
    found = {}
    for name, param in model.named_parameters():
        if name.endswith("lora_E.default"):
            layer = name.removesuffix(".lora_E.default")
            # Pattern keys are module paths inside the wrapped model, with or without the adapter name.
            wanted = layer.removeprefix("base_model.model.") + ".lora_E"
            key = next((k for k in pattern if k.removesuffix(".default").endswith(wanted)), None)
            found[layer] = int(sum(pattern[key])) if key else int(param.shape[0])
    return found


def nonzero_singular_values(model: torch.nn.Module) -> int:
    """How many of the adapters' singular values (E) are not zero: 0 means the adapter adds nothing."""
    return sum(
        int((param.detach() != 0).sum()) for name, param in model.named_parameters() if "lora_E" in name
    )


def _rank_pattern(model) -> dict | None:
    config = getattr(model, "peft_config", {}).get("default")
    return getattr(config, "rank_pattern", None)


METHOD = AdaLoraMethod()
