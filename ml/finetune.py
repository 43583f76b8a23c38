"""First and second fine-tunes, top to bottom: prepare the inputs, build the model through its
method, start the head, train, dial back towards the start (interpolation), assess, and write one
atomic model directory. The parts live in `ml/training/`; the methods in `ml/methods/`.
"""

from __future__ import annotations

import platform
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.baseline import TextBaseline
from ml.data import encode
from ml.methods import method_for
from ml.modeling import trainable_parameter_count
from ml.optim import training_uses_bf16
from ml.probe import fit_head_by_linear_probe
from ml.training.assessment import Assessment, assess, parent_scores
from ml.training.inputs import Prepared, prepare, split_for_training
from ml.training.interpolation import Dial, SiteNotes, interpolate
from ml.training.loop import (
    PHASES,
    Progress,
    TrainHooks,
    TrainingCancelled,
    TrainingRun,
    class_weights,
    freeze_all_but_head,
)
from models_store.layout import atomic_directory, write_manifest

__all__ = [
    "PHASES",
    "Progress",
    "TrainHooks",
    "TrainingCancelled",
    "class_weights",
    "finetune",
    "split_for_training",
]

MANIFEST_VERSION = 1


@dataclass
class Trained:
    history: list[dict]
    best_epoch: int
    steps_run: int
    bf16: bool
    linear_probe: dict | None
    trainable_parameters: int
    method_record: dict
    interpolation: dict
    # The saved model's validation logits (and on the parent's notes, when interpolation scored them),
    # so assessing need not score them again.
    validation_logits: np.ndarray
    parent_site_logits: np.ndarray | None
    # What the untrained base's encoder gives the head on validation, when the probe computed it.
    base_validation_features: np.ndarray | None


def finetune(
    train_csv: Path | bytes,
    config,
    out_dir: Path,
    *,
    model_id: str | None = None,
    base_model: str | None = None,
    parent_dir: Path | None = None,
    parent_train_csv: Path | bytes | None = None,
    hooks: TrainHooks | None = None,
) -> dict:
    """Train a model on `train_csv` and write it to `out_dir`; returns its manifest.

    With `parent_dir`, continue that model (see `TrainConfig.for_parent`: its method, base model and
    architecture are inherited). With `parent_train_csv` (the parent's own training file), the
    parent's notes are rehearsed, its validation split is rebuilt, interpolation keeps what it knew
    and the manifest carries the forgetting check: parent vs this model on the parent's data.
    """
    if Path(out_dir).exists():
        raise FileExistsError(f"{Path(out_dir).name} already exists: models are never overwritten")
    hooks = hooks or TrainHooks()
    hooks.phase("preparing data")
    prepared = prepare(
        train_csv, config, base_model, Path(parent_dir) if parent_dir else None, parent_train_csv
    )
    # The parent is scored before the model is built: loading it draws from torch's generator, which
    # build_model seeds for the run.
    parent = parent_scores(prepared)
    model = build_model(prepared)
    trained = train(model, prepared, hooks, parent)
    hooks.phase("assessing")
    assessment = assess(model, prepared, trained, parent)
    manifest = build_manifest(model_id or uuid.uuid4().hex, prepared, trained, assessment)
    hooks.phase("saving")
    save(model, prepared.tokenizer, manifest, Path(out_dir), assessment.baseline)
    return manifest


def build_model(prepared: Prepared) -> torch.nn.Module:
    config = prepared.config
    _seed_everything(config.seed)
    method = method_for(config.method)
    if prepared.parent_dir is not None:
        model = method.resume(prepared.parent_dir, config, prepared.base_model, prepared.total_steps)
    else:
        model = method.start(config, prepared.base_model, prepared.total_steps)
    if config.freeze_encoder:
        freeze_all_but_head(model)
    return model.to(prepared.device)


def train(model, prepared: Prepared, hooks: TrainHooks, parent=None) -> Trained:
    """The head start, the loop, then interpolation; leaves the model holding the weights to save."""
    probe, base_features = _head_start(model, prepared, hooks)
    hooks.phase("training")
    run = TrainingRun(model, prepared)
    history = run.fit(hooks)
    run.restore_best()
    model.eval()
    hooks.phase("interpolating")
    dial = _interpolate(model, prepared, run, parent)
    return Trained(
        history=history,
        best_epoch=run.best_epoch,
        steps_run=run.global_step,
        bf16=run.bf16,
        linear_probe=probe,
        trainable_parameters=trainable_parameter_count(model),
        method_record=run.method.manifest_record(),
        interpolation=dial.record,
        validation_logits=dial.val_logits,
        parent_site_logits=dial.parent_site_logits,
        base_validation_features=base_features,
    )


def _head_start(model, prepared: Prepared, hooks: TrainHooks) -> tuple[dict | None, np.ndarray | None]:
    """Fit the head as a linear probe first: a new model's if head_init asks, a continued one's if
    refit_head does. Returns the probe's report (or None) and, for a new model, the validation
    features it read: the untrained base's, since a new adapter or encoder starts as the base."""
    config, split = prepared.config, prepared.split
    wants_probe = config.refit_head if prepared.parent is not None else config.head_init == "linear_probe"
    if not wants_probe:
        return None, None
    hooks.phase("fitting the linear probe")
    weight = class_weights(split.train.labels, config.weight_multiplier)[1]
    bf16 = training_uses_bf16(config.precision, prepared.device)
    fitted = fit_head_by_linear_probe(
        model, split.train_ids, split.train.labels, split.val_ids, split.val.labels,
        prepared.tokenizer.pad_token_id, weight, prepared.device, bf16,
    )  # fmt: skip
    # Under bf16 the features (and so the base's scores drawn from them) round differently from an
    # fp32 forward pass, by far less than the untrained base's distance from chance.
    return fitted.report, fitted.val_features if prepared.parent is None else None


def _interpolate(model, prepared: Prepared, run: TrainingRun, parent) -> Dial:
    split, tokenizer = prepared.split, prepared.tokenizer
    parent_site, parent_probabilities = None, None
    if parent is not None and parent.parent_site is not None:
        notes = prepared.parent_notes
        ids = encode(tokenizer, notes.val.texts, notes.max_length, notes.pooling)
        parent_site = SiteNotes(ids, notes.val.labels)
        parent_probabilities = parent.parent_site
    return interpolate(
        model,
        run.start_weights,
        prepared.config,
        SiteNotes(split.val_ids, split.val.labels),
        run.best_val_logits,
        tokenizer.pad_token_id,
        prepared.device,
        parent_site,
        parent_probabilities,
    )


def build_manifest(model_id: str, prepared: Prepared, trained: Trained, assessment: Assessment) -> dict:
    """The model's manifest.json: what was trained on what, how, and how well."""
    config, parent = prepared.config, prepared.parent
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "id": model_id,
        "parent_id": parent["id"] if parent else None,
        "base_model": prepared.base_model,
        "method": config.method,
        "stage": config.stage,
        "hyperparameters": config.to_dict(),
        "data": _data_record(prepared),
        "seed": config.seed,
        "versions": _library_versions(),
        "device": str(prepared.device),
        "training_precision": "bf16 autocast" if trained.bf16 else "fp32",
        "total_steps": prepared.total_steps,
        "steps_run": trained.steps_run,
        "trainable_parameters": trained.trainable_parameters,
        "rehearsal": prepared.rehearsal,
        "linear_probe": trained.linear_probe,
        "best_epoch": trained.best_epoch,
        "epochs_run": len(trained.history),
        "stopped_early": len(trained.history) < config.epochs,
        "history": trained.history,
        "interpolation": trained.interpolation,
        "validation_metrics": assessment.validation_metrics,
        "threshold": assessment.threshold,
        "threshold_mode": config.threshold_mode,
        "threshold_note": assessment.threshold_note,
        "temperature": assessment.temperature,
        "calibration": assessment.calibration,
        "comparison": assessment.comparison,
        "baseline": assessment.baseline_record,
        "logit_fingerprint": assessment.logit_fingerprint,
        **trained.method_record,
    }
    if assessment.forgetting_check is not None:
        manifest["forgetting_check"] = assessment.forgetting_check
    return manifest


def _data_record(prepared: Prepared) -> dict:
    """The uploaded file's split; rehearsed parent notes (appended after the new ones) are counted apart."""
    split, summary = prepared.split, prepared.summary
    replayed = (prepared.rehearsal or {}).get("notes", 0)
    new_train_labels = split.train.labels[: len(split.train) - replayed]
    return {
        **summary.to_dict(),
        # Where the notes were read from (a file given by path), so a continued fine-tune can find
        # them again for rehearsal and the forgetting check; None when they came as bytes.
        "path": prepared.source_path,
        "train_rows": int(new_train_labels.size),
        "validation_rows": len(split.val),
        "rehearsed_rows": replayed,
        "train_class_counts": {
            "0": int((new_train_labels == 0).sum()),
            "1": int((new_train_labels == 1).sum()),
        },
        "validation_class_counts": {
            "0": int((split.val.labels == 0).sum()),
            "1": int((split.val.labels == 1).sum()),
        },
    }


def save(model, tokenizer, manifest: dict, out_dir: Path, baseline: TextBaseline) -> None:
    with atomic_directory(out_dir) as temporary:
        # PEFT models save the adapter and the classifier head only; the manifest names the base.
        model.save_pretrained(temporary, safe_serialization=True)
        tokenizer.save_pretrained(temporary)
        baseline.save(temporary)
        write_manifest(temporary, manifest)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _library_versions() -> dict:
    import peft
    import sklearn
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
    }
