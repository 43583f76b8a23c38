"""The linear-probe start: the head becomes a logistic regression on the frozen encoder's features."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from ml.architectures import load_base_classifier
from ml.config import TrainConfig
from ml.data import encode, parse_labeled_csv
from ml.finetune import finetune, split_for_training
from ml.forward import predict_logits
from ml.modeling import load_tokenizer
from ml.probe import PROBE_C, apply_head, fit_head_by_linear_probe, trainable_head

CPU = torch.device("cpu")


def test_the_fitted_head_scores_like_the_probe(tiny_bert, narrative_csv):
    config = TrainConfig.for_stage(1, "full", {"max_length": 64, "pooling": "sentences"})
    train, val = split_for_training(parse_labeled_csv(narrative_csv.read_bytes()), config)
    tokenizer = load_tokenizer(tiny_bert)
    train_ids, val_ids = (encode(tokenizer, part.texts, 64, "sentences") for part in (train, val))
    model = load_base_classifier(tiny_bert, "sentences")
    before = predict_logits(model, val_ids, tokenizer.pad_token_id, 16, CPU)
    fitted = fit_head_by_linear_probe(
        model, train_ids, train.labels, val_ids, val.labels, tokenizer.pad_token_id, 1.5, CPU
    )
    chosen = fitted.report
    after = predict_logits(model, val_ids, tokenizer.pad_token_id, 16, CPU)
    assert chosen["C"] in PROBE_C
    # The features the probe read give the base's own logits through the base's head (what a fine-tune
    # reports as the untrained base without scoring the notes again).
    base_head = trainable_head(load_base_classifier(tiny_bert, "sentences"))
    np.testing.assert_allclose(apply_head(base_head, fitted.val_features), before, atol=1e-5)
    assert not np.allclose(before, after)
    log_odds = after[:, 1] - after[:, 0]
    assert roc_auc_score(val.labels, log_odds) == chosen["validation_roc_auc"]


def test_a_first_fine_tune_can_start_from_the_probe(tiny_bert, narrative_csv, tmp_path):
    fast = {"epochs": 1, "max_length": 64, "batch_size": 8, "warmup_steps": 2, "head_init": "linear_probe"}
    manifest = finetune(
        narrative_csv, TrainConfig.for_stage(1, "full", fast), tmp_path / "m", base_model=tiny_bert
    )
    assert manifest["linear_probe"]["C"] in PROBE_C
    plain = finetune(
        narrative_csv,
        TrainConfig.for_stage(1, "full", {**fast, "head_init": "random"}),
        tmp_path / "p",
        base_model=tiny_bert,
    )
    assert plain["linear_probe"] is None
    assert plain["logit_fingerprint"] != manifest["logit_fingerprint"]


def test_a_continued_fine_tune_refits_its_head_by_default_or_keeps_it_when_asked(
    tiny_bert, narrative_csv, terse_csv, tmp_path
):
    fast = {"epochs": 1, "max_length": 64, "batch_size": 8, "warmup_steps": 2}
    finetune(narrative_csv, TrainConfig.for_stage(1, "lora", fast), tmp_path / "first", base_model=tiny_bert)
    kept = finetune(
        terse_csv,
        TrainConfig.for_stage(2, "lora", {**fast, "refit_head": False}),
        tmp_path / "kept",
        parent_dir=tmp_path / "first",
    )
    refit = finetune(
        terse_csv,
        TrainConfig.for_stage(2, "lora", fast),
        tmp_path / "refit",
        parent_dir=tmp_path / "first",
    )
    assert kept["linear_probe"] is None
    assert refit["linear_probe"]["C"] in PROBE_C
    assert refit["logit_fingerprint"] != kept["logit_fingerprint"]
