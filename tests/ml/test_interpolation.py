"""The forgetting dial: weight 0 is the head-only start, 1 the fine-tuned weights, and `auto` keeps
the best new-notes AUC that forgets at most `max_forgetting` of the parent's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ml.config import ConfigError, TrainConfig
from ml.finetune import finetune
from ml.training.interpolation import WEIGHTS, _choose

QUICK = {"epochs": 2, "max_length": 32, "batch_size": 8, "lr": 1e-3, "precision": "fp32"}


def saved_tensors(model_dir) -> dict[str, torch.Tensor]:
    name = (
        "adapter_model.safetensors"
        if (model_dir / "adapter_model.safetensors").exists()
        else "model.safetensors"
    )
    return load_file(model_dir / name)


def test_weight_zero_saves_the_start_and_one_the_fine_tuned_weights(tiny_bert, narrative_csv, tmp_path):
    runs = {}
    for setting in ("0", "1", "off"):
        config = TrainConfig.for_stage(1, "lora", {**QUICK, "interpolation": setting})
        runs[setting] = finetune(narrative_csv, config, tmp_path / setting, base_model=tiny_bert)
        assert runs[setting]["interpolation"]["weight"] == (0.0 if setting == "0" else 1.0)
    start, one, off = (saved_tensors(tmp_path / s) for s in ("0", "1", "off"))
    lora_b = [key for key in start if "lora_B" in key]
    assert lora_b and all(float(start[key].abs().max()) == 0 for key in lora_b), "weight 0: LoRA adds nothing"
    assert any(float(one[key].abs().max()) > 0 for key in lora_b), "weight 1: the adapter trained"
    assert all(torch.equal(one[key], off[key]) for key in one)
    # Weight 0's head is the linear probe's: the saved model scores validation as the probe did.
    assert runs["0"]["validation_metrics"]["roc_auc"] == pytest.approx(
        runs["0"]["linear_probe"]["validation_roc_auc"], abs=1e-3
    )


def test_auto_keeps_the_best_new_notes_auc_within_the_allowed_forgetting(
    tiny_bert, narrative_csv, terse_csv, tmp_path
):
    first = finetune(
        narrative_csv, TrainConfig.for_stage(1, "full", QUICK), tmp_path / "first", base_model=tiny_bert
    )
    second = finetune(
        terse_csv,
        TrainConfig.for_parent(first, {**QUICK, "max_forgetting": 0.02}),
        tmp_path / "second",
        parent_dir=tmp_path / "first",
        parent_train_csv=narrative_csv,
    )
    dial = second["interpolation"]
    assert [point["weight"] for point in dial["curve"]] == list(WEIGHTS)
    assert all("parent_site_roc_auc" in point for point in dial["curve"])
    chosen = next(point for point in dial["curve"] if point["weight"] == dial["weight"])
    allowed = [p for p in dial["curve"] if p["parent_site_roc_auc"] >= dial["parent_roc_auc"] - 0.02]
    if allowed:
        assert chosen["new_site_roc_auc"] == max(p["new_site_roc_auc"] for p in allowed)
    # The model saved is the one at the chosen weight: its validation and forgetting figures are its own.
    assert second["validation_metrics"]["roc_auc"] == pytest.approx(chosen["new_site_roc_auc"], abs=1e-9)
    assert second["forgetting_check"]["second"]["roc_auc"] == pytest.approx(
        chosen["parent_site_roc_auc"], abs=1e-6
    )


def curve(points):
    return [{"weight": w, "new_site_roc_auc": new, "parent_site_roc_auc": old} for w, new, old in points]


def test_choice_rules():
    points = curve([(0.0, 0.70, 0.90), (0.5, 0.80, 0.895), (1.0, 0.85, 0.85)])
    assert _choose(points, parent_auc=0.90, max_forgetting=0.01)["weight"] == 0.5
    assert _choose(points, parent_auc=0.90, max_forgetting=0.10)["weight"] == 1.0
    # Nothing keeps the parent's AUC within the limit: the weight that forgets least.
    assert _choose(points, parent_auc=0.99, max_forgetting=0.01)["weight"] == 0.0
    # No parent notes: the best new-notes AUC; a tie goes to more of the fine-tune.
    tied = [{"weight": w, "new_site_roc_auc": a} for w, a in ((0.0, 0.8), (0.5, 0.9), (1.0, 0.9))]
    assert _choose(tied, parent_auc=None, max_forgetting=0.01)["weight"] == 1.0


@pytest.mark.parametrize("value", ["sometimes", "1.5", "-0.1", "nan", ""])
def test_bad_interpolation_settings_are_refused(value):
    with pytest.raises(ConfigError, match="interpolation"):
        TrainConfig.for_stage(1, "lora", {"interpolation": value})


def test_interpolation_settings_are_normalised():
    assert TrainConfig.for_stage(1, "lora", {"interpolation": " AUTO "}).interpolation == "auto"
    assert TrainConfig.for_stage(1, "lora", {"interpolation": 0.5}).interpolation == "0.5"
    assert np.isclose(float(TrainConfig.for_stage(1, "lora", {"interpolation": "1"}).interpolation), 1.0)
