"""The forgetting dial: weight interpolation between where a run started and where it ended (WiSE-FT,
Wortsman et al., CVPR 2022), chosen on validation.

The start is the model after its head start: for a first fine-tune the frozen base with its linear-
probe head, for a continued one the parent with its refitted head. So weight 0 is the head-only
model, weight 1 the fine-tuned one, and the curve between them trades the new notes against the
first hospital's (a continued fine-tune is scored on the parent's own validation notes too). Only
the trainable tensors move (for LoRA/AdaLoRA the adapter and the head): the rest is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ml import metrics as metric_fns
from ml.config import TrainConfig
from ml.forward import predict_logits

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class Dial:
    """What interpolation chose, and the model's validation logits there."""

    record: dict
    val_logits: np.ndarray
    # The kept model's logits on the parent's validation notes, when they were scored: the forgetting
    # check reuses them instead of scoring those notes again.
    parent_site_logits: np.ndarray | None = None


@dataclass
class SiteNotes:
    """Notes to score at each weight: token ids, labels, and the pooling that reads them."""

    ids: list[list[int]]
    labels: np.ndarray


def weights_to_try(setting: str) -> tuple[float, ...]:
    """ "auto": the grid; a number: that weight alone; "off": the fine-tuned model as it is."""
    if setting == "auto":
        return WEIGHTS
    if setting == "off":
        return ()
    return (float(setting),)


@torch.no_grad()
def interpolate(
    model: torch.nn.Module,
    start: dict[str, torch.Tensor],
    config: TrainConfig,
    new_site: SiteNotes,
    fine_tuned_logits: np.ndarray,
    pad_id: int,
    device: torch.device,
    parent_site: SiteNotes | None = None,
    parent_probabilities: np.ndarray | None = None,
) -> Dial:
    """Score the weights `config.interpolation` asks for and leave `model` at the chosen one.

    Chosen: the best new-site ROC AUC among the weights whose parent-site AUC stays within
    `config.max_forgetting` of the parent's own (when the parent's notes are at hand); if no weight
    keeps that, the one that forgets least. Ties go to the larger weight (more of the fine-tune).
    """
    weights = weights_to_try(config.interpolation)
    if not weights:
        return Dial({"setting": "off", "weight": 1.0}, fine_tuned_logits)
    params = {name: param for name, param in model.named_parameters() if name in start}
    end = {name: param.detach().clone() for name, param in params.items()}
    parent_site_auc = None
    if parent_site is not None and parent_probabilities is not None:
        parent_site_auc = roc_auc(parent_site.labels, parent_probabilities)
    curve, logits_at, parent_logits_at = [], {}, {}
    for weight in weights:
        _mix(params, start, end, weight)
        logits = fine_tuned_logits if weight == 1.0 else _logits(model, new_site, config, pad_id, device)
        point = {"weight": weight, "new_site_roc_auc": _auc(new_site.labels, logits)}
        if parent_site is not None:
            parent_logits_at[weight] = _logits(model, parent_site, config, pad_id, device)
            point["parent_site_roc_auc"] = _auc(parent_site.labels, parent_logits_at[weight])
        curve.append(point)
        logits_at[weight] = logits
    chosen = _choose(curve, parent_site_auc, config.max_forgetting)
    _mix(params, start, end, chosen["weight"])
    record = {
        "setting": config.interpolation,
        "weight": chosen["weight"],
        "curve": curve,
        "max_forgetting": config.max_forgetting if parent_site is not None else None,
        "parent_roc_auc": parent_site_auc,
    }
    return Dial(record, logits_at[chosen["weight"]], parent_logits_at.get(chosen["weight"]))


def _choose(curve: list[dict], parent_auc: float | None, max_forgetting: float) -> dict:
    if parent_auc is not None and "parent_site_roc_auc" in curve[0]:
        kept = [p for p in curve if p["parent_site_roc_auc"] >= parent_auc - max_forgetting]
        if not kept:
            return max(curve, key=lambda p: (p["parent_site_roc_auc"], p["weight"]))
        curve = kept
    return max(curve, key=lambda p: (round(p["new_site_roc_auc"], 9), p["weight"]))


def _mix(params: dict, start: dict, end: dict, weight: float) -> None:
    for name, param in params.items():
        param.copy_(torch.lerp(start[name].to(param.dtype), end[name], weight))


def _logits(model, notes: SiteNotes, config: TrainConfig, pad_id: int, device) -> np.ndarray:
    return predict_logits(model, notes.ids, pad_id, config.eval_batch_size, device)


def _auc(labels: np.ndarray, logits: np.ndarray) -> float:
    return roc_auc(labels, metric_fns.softmax_probability(logits))


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """NaN when one class is missing (a curve point then never wins)."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, probabilities))
