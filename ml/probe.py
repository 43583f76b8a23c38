"""Linear-probe start for a new classifier head (LP-FT: Kumar et al., ICLR 2022).

A random head sends random gradients into the pretrained encoder during the first steps and
distorts the features a small labelled set cannot rebuild. Fitting the head first, as a logistic
regression on the frozen encoder's features, lets fine-tuning start from a sensible classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ml.data import inference_batches, pad_batch

# Inverse regularisation strengths tried; the one with the lowest validation log loss is kept. Not the
# best ROC AUC: AUC ignores scale, so it picked weakly regularised heads that fitted the training notes
# almost exactly (train loss ~0.03, weights of norm ~65 on features that vary little), which left
# fine-tuning no gradient to learn from and turned every small change of the features into a large
# swing of the logits.
PROBE_C = (0.001, 0.01, 0.1, 1.0, 10.0)


@dataclass(frozen=True)
class ProbeFit:
    report: dict  # what was chosen: the regularisation C and the probe's validation ROC AUC
    val_features: np.ndarray  # what the head read for each validation note (frozen encoder)


def fit_head_by_linear_probe(
    model, train_ids, train_labels, val_ids, val_labels, pad_id, class_weight, device, bf16: bool = False
) -> ProbeFit:
    """Set the trainable classifier head to a logistic regression fitted on frozen features.

    `bf16`: read the features under bf16 autocast, as training will (the pass over every note costs
    about a third of a training epoch; in fp32 on a CPU with AMX it cost 40% of one).
    """
    head = trainable_head(model)
    train_x = head_inputs(model, head, train_ids, pad_id, device, bf16=bf16)
    val_x = head_inputs(model, head, val_ids, pad_id, device, bf16=bf16)
    mean, scale = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    weights = {0: 1.0, 1: float(class_weight)}
    best = None
    for c in PROBE_C:
        probe = LogisticRegression(C=c, class_weight=weights, max_iter=2000)
        probe.fit((train_x - mean) / scale, train_labels)
        val_scores = probe.decision_function((val_x - mean) / scale)
        loss = _log_loss(val_labels, val_scores)
        if best is None or loss < best[0]:
            best = (loss, c, probe, _auc(val_labels, val_scores))
    loss, c, probe, auc = best
    coef = probe.coef_[0] / scale
    _set_binary_head(head, coef, float(probe.intercept_[0] - (coef * mean).sum()))
    return ProbeFit({"C": c, "validation_roc_auc": auc, "validation_log_loss": loss}, val_x)


@torch.no_grad()
def apply_head(head: torch.nn.Linear, features: np.ndarray) -> np.ndarray:
    """The head's logits for features captured by `head_inputs` (what a forward pass would give)."""
    inputs = torch.as_tensor(features, dtype=head.weight.dtype, device=head.weight.device)
    return head(inputs).float().cpu().numpy()


def trainable_head(model) -> torch.nn.Linear:
    """The classifier Linear that trains (for PEFT models, the copy in modules_to_save)."""
    for name, module in model.named_modules():
        if "classifier" in name and isinstance(module, torch.nn.Linear) and module.weight.requires_grad:
            return module
    raise ValueError("the model has no trainable classifier head")


@torch.inference_mode()
def head_inputs(
    model, head, token_ids: list[list[int]], pad_id: int, device, batch_size: int = 64, bf16: bool = False
):
    """What the head reads for each note, in input order (encoded under bf16 autocast if `bf16`)."""
    was_training = model.training
    model.eval()
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    features = np.zeros((len(token_ids), head.in_features), dtype=np.float64)
    try:
        for indices in inference_batches([len(ids) for ids in token_ids], batch_size):
            batch = {k: v.to(device) for k, v in pad_batch([token_ids[i] for i in indices], pad_id).items()}
            captured.clear()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(**batch)
            features[indices] = captured[-1].float().cpu().numpy()
    finally:
        hook.remove()
        model.train(was_training)
    return features


@torch.no_grad()
def _set_binary_head(head: torch.nn.Linear, coef: np.ndarray, intercept: float) -> None:
    # Two logits whose difference is the probe's log-odds: softmax gives the probe's probability.
    half = torch.as_tensor(coef / 2, dtype=head.weight.dtype)
    head.weight.copy_(torch.stack([-half, half]))
    head.bias.copy_(torch.tensor([-intercept / 2, intercept / 2], dtype=head.bias.dtype))


def _log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels under log-odds `scores` (unweighted)."""
    signed = np.where(labels == 1, scores, -scores)
    return float(np.mean(np.logaddexp(0.0, -signed)))


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else 0.0
