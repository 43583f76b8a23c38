"""What a fine-tuned model is worth, measured on validation before it is saved: its threshold and
calibration, and its comparisons with the untrained base, the TF-IDF baseline, the parent on the new
notes, and the parent on its own notes (the forgetting check)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ml import metrics as metric_fns
from ml.architectures import load_base_classifier
from ml.baseline import TextBaseline, fit_baseline, verdict
from ml.config import TrainConfig
from ml.data import encode
from ml.forward import logits_for_model_dir, predict_logits
from ml.modeling import load_tokenizer
from ml.probe import apply_head, trainable_head
from ml.report import forgetting_check
from ml.training.inputs import Prepared

FINGERPRINT_NOTES = 4


@dataclass
class ParentScores:
    """The parent's probabilities on this run's validation notes and on its own (when at hand)."""

    new_site: np.ndarray
    parent_site: np.ndarray | None


@dataclass
class Assessment:
    validation_metrics: dict
    threshold: float
    threshold_note: str | None
    temperature: float
    calibration: dict
    comparison: dict
    logit_fingerprint: list[list[float]]
    forgetting_check: dict | None
    baseline: TextBaseline
    baseline_record: dict


def parent_scores(prepared: Prepared) -> ParentScores | None:
    """Score the parent once, for interpolation and the assessment alike."""
    if prepared.parent is None:
        return None
    parent_val = prepared.parent_notes.val.texts if prepared.parent_notes is not None else None
    texts = prepared.split.val.texts + (parent_val or [])
    probabilities = _parent_probabilities(prepared, texts)
    cut = len(prepared.split.val)
    return ParentScores(probabilities[:cut], probabilities[cut:] if parent_val is not None else None)


def assess(model, prepared: Prepared, trained, parent: ParentScores | None) -> Assessment:
    """Threshold and calibration on validation, and the comparisons with the base and the parent.

    `trained` (ml.finetune.Trained) brings the kept model's validation logits, those on the parent's
    notes when interpolation scored them, and the base's validation features when the probe read them.
    """
    val_logits, base_features = trained.validation_logits, trained.base_validation_features
    config, split, device = prepared.config, prepared.split, prepared.device
    temperature = (
        metric_fns.fit_temperature(val_logits, split.val.labels) if config.temperature_scaling else 1.0
    )
    val_prob = metric_fns.softmax_probability(val_logits, temperature)
    threshold, threshold_note = metric_fns.choose_threshold(split.val.labels, val_prob, config.threshold_mode)
    comparison = _base_comparison(prepared, val_prob, threshold, base_features)
    baseline, baseline_record = _baseline_comparison(prepared, comparison)
    forgetting = None
    if parent is not None:
        comparison["parent_vs_fine_tuned"] = forgetting_check(
            split.val.labels, parent.new_site, val_prob, prepared.parent["threshold"], threshold
        )
        if parent.parent_site is not None:
            forgetting = _forgetting_check(
                prepared, model, parent.parent_site, trained.parent_site_logits, temperature, threshold
            )
    return Assessment(
        validation_metrics=metric_fns.binary_metrics(split.val.labels, val_prob, threshold),
        threshold=threshold,
        threshold_note=threshold_note,
        temperature=temperature,
        calibration=metric_fns.calibration_report(split.val.labels, val_logits, temperature),
        comparison=comparison,
        logit_fingerprint=logit_fingerprint(model, prepared.tokenizer, split.val.texts, config, device),
        forgetting_check=forgetting,
        baseline=baseline,
        baseline_record=baseline_record,
    )


def logit_fingerprint(model, tokenizer, texts: list[str], config: TrainConfig, device) -> list[list[float]]:
    """Logits of the first few validation notes, scored alone: a reloaded model must reproduce them."""
    chosen = texts[:FINGERPRINT_NOTES]
    ids = encode(tokenizer, chosen, config.max_length, config.pooling)
    return [[float(x) for x in row] for row in predict_logits(model, ids, tokenizer.pad_token_id, 1, device)]


def _base_comparison(prepared: Prepared, tuned_prob, threshold: float, base_features) -> dict:
    """Untrained base (seeded random head) vs the fine-tuned model on the validation split.

    With the base encoder's features at hand (the probe read them), only its head is applied: the
    same logits as a forward pass of the base, without scoring the notes again."""
    config, val = prepared.config, prepared.split.val
    base = load_base_classifier(prepared.base_model, config.pooling).to(prepared.device).eval()
    if base_features is not None:
        base_logits = apply_head(trainable_head(base), base_features)
    else:
        pad_id = load_tokenizer(prepared.base_model).pad_token_id
        base_logits = predict_logits(
            base, prepared.split.val_ids, pad_id, config.eval_batch_size, prepared.device
        )
    base_prob = metric_fns.softmax_probability(base_logits)
    return {
        "on": "validation split",
        "base_untrained": metric_fns.binary_metrics(val.labels, base_prob, 0.5),
        "fine_tuned": metric_fns.binary_metrics(val.labels, tuned_prob, threshold),
    }


def _baseline_comparison(prepared: Prepared, comparison: dict) -> tuple[TextBaseline, dict]:
    """Fit the TF-IDF baseline on this run's training split and add it, with a verdict, to the
    comparison: does the fine-tuned model beat a classical model on the same validation notes?"""
    split = prepared.split
    baseline, report = fit_baseline(
        split.train.texts, split.train.labels, split.val.texts, split.val.labels, seed=prepared.config.seed
    )
    val_prob = baseline.predict_proba(split.val.texts)
    metrics = metric_fns.binary_metrics(split.val.labels, val_prob, baseline.threshold)
    comparison["baseline"] = metrics
    comparison["verdict"] = verdict(comparison["fine_tuned"]["roc_auc"], metrics["roc_auc"])
    # C, and the fine-tune's best epoch and threshold, were all chosen on these validation notes:
    # both sides of the comparison are a little optimistic, neither more than the other.
    return baseline, {**report, "threshold": baseline.threshold, "validation_metrics": metrics}


def _forgetting_check(
    prepared: Prepared,
    model,
    parent_prob: np.ndarray,
    logits: np.ndarray | None,
    temperature: float,
    threshold: float,
):
    """Parent vs this model on the parent's own validation split: what did the second fine-tune cost?
    `logits`: the kept model's, when interpolation already scored these notes."""
    tokenizer, parent_notes = prepared.tokenizer, prepared.parent_notes
    parent_val = parent_notes.val
    if logits is None:
        ids = encode(tokenizer, parent_val.texts, parent_notes.max_length, parent_notes.pooling)
        logits = predict_logits(model, ids, tokenizer.pad_token_id, 64, prepared.device)
    second_prob = metric_fns.softmax_probability(logits, temperature)
    check = forgetting_check(
        parent_val.labels, parent_prob, second_prob, prepared.parent["threshold"], threshold
    )
    return {"on": "the parent's validation split", "rows": len(parent_val), **check}


@torch.no_grad()
def _parent_probabilities(prepared: Prepared, texts: list[str]) -> np.ndarray:
    parent = prepared.parent
    logits = logits_for_model_dir(prepared.parent_dir, parent, texts, prepared.device)
    return metric_fns.softmax_probability(logits, parent.get("temperature", 1.0))
