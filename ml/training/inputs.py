"""Everything a run needs before a model exists: the final config, the checked data and its split, the
parent's own notes (rehearsal, forgetting check), and where to run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.architectures import effective_pooling, resolve_base_model
from ml.config import ConfigError, TrainConfig, pooling_of
from ml.data import (
    DatasetSummary,
    LabeledNotes,
    check_trainable,
    encode,
    inspect_csv,
    steps_per_epoch,
    stratified_split,
)
from ml.modeling import load_tokenizer, pick_device
from models_store.layout import read_manifest


@dataclass
class Split:
    train: LabeledNotes
    val: LabeledNotes
    train_ids: list[list[int]]
    val_ids: list[list[int]]


@dataclass
class ParentNotes:
    """The parent's own training file, split as the parent split it."""

    train: LabeledNotes
    val: LabeledNotes
    pooling: str
    max_length: int


@dataclass
class Prepared:
    config: TrainConfig
    base_model: str
    tokenizer: Any
    summary: DatasetSummary
    split: Split
    total_steps: int
    device: torch.device
    parent: dict | None
    parent_dir: Path | None
    parent_notes: ParentNotes | None
    rehearsal: dict | None
    # Where the training file was read from, when it was a file: recorded so that a continued
    # fine-tune can find its parent's notes again.
    source_path: str | None = None


def prepare(
    train_csv, config: TrainConfig, base_model: str | None, parent_dir: Path | None, parent_train_csv=None
) -> Prepared:
    """The final config (a continued fine-tune's from its parent), the checked data and its split,
    with the parent's rehearsed notes mixed into the training part."""
    parent = read_manifest(parent_dir) if parent_dir else None
    if parent is not None:
        config = TrainConfig.for_parent(parent, config.to_dict(), method=config.method)
        base_model = parent["base_model"]
    base_model = resolve_base_model(base_model)
    config = dataclasses.replace(config, pooling=effective_pooling(base_model, config.pooling))
    tokenizer = load_tokenizer(base_model)
    notes, summary = inspect_csv(
        train_csv, max_length=config.max_length, base_model=base_model, pooling=config.pooling
    )
    check_trainable(summary, config.min_rows)
    parent_notes = (
        parent_notes_of(parent, parent_train_csv) if parent and parent_train_csv is not None else None
    )
    train, val = split_for_training(notes, config)
    train, rehearsal = _with_rehearsal(train, parent, parent_notes, config)
    split = Split(
        train,
        val,
        encode(tokenizer, train.texts, config.max_length, config.pooling),
        encode(tokenizer, val.texts, config.max_length, config.pooling),
    )
    total_steps = config.epochs * steps_per_epoch(len(split.train), config.batch_size)
    source = str(Path(train_csv).resolve()) if isinstance(train_csv, str | Path) else None
    return Prepared(
        config, base_model, tokenizer, summary, split, total_steps, pick_device(), parent, parent_dir,
        parent_notes, rehearsal, source,
    )  # fmt: skip


def split_for_training(notes: LabeledNotes, config: TrainConfig) -> tuple[LabeledNotes, LabeledNotes]:
    """The exact train/validation split a fine-tune with `config` uses (also for forgetting checks)."""
    train_idx, val_idx = stratified_split(notes.labels, config.val_fraction, config.seed)
    return notes.subset(train_idx), notes.subset(val_idx)


def parent_notes_of(parent: dict, parent_train_csv) -> ParentNotes:
    """The parent's training file (checked against its manifest), split exactly as the parent split it."""
    notes, summary = inspect_csv(parent_train_csv, base_model=parent["base_model"])
    if summary.sha256 != parent["data"]["sha256"]:
        raise ConfigError("the parent's training file does not match the sha256 in the parent's manifest")
    parent_config = TrainConfig.for_stage(parent["stage"], parent["method"], parent["hyperparameters"])
    train, val = split_for_training(notes, parent_config)
    return ParentNotes(train, val, pooling_of(parent), parent_config.max_length)


def _with_rehearsal(
    train: LabeledNotes, parent: dict | None, parent_notes: ParentNotes | None, config: TrainConfig
) -> tuple[LabeledNotes, dict | None]:
    """The training notes with a seeded sample of the parent's own TRAINING notes added (never its
    validation notes: those judge forgetting). Returns the notes and what was mixed in."""
    if parent is None:
        return train, None
    wanted = round(config.rehearsal * len(train))
    if wanted == 0:
        return train, {"notes": 0, "share": config.rehearsal}
    if parent_notes is None:
        reason = "the parent's training file is not available: trained on the new notes alone"
        return train, {"notes": 0, "share": config.rehearsal, "skipped": reason}
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.permutation(len(parent_notes.train))[: min(wanted, len(parent_notes.train))])
    replayed = parent_notes.train.subset(chosen)
    mixed = LabeledNotes(train.texts + replayed.texts, np.concatenate([train.labels, replayed.labels]))
    return mixed, {"notes": len(replayed), "share": config.rehearsal, "from_model": parent["id"]}
