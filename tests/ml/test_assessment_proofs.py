"""Proofs about what a fine-tune stores after training, recomputed here from the saved model alone:
temperature, threshold and validation metrics; what serving does with them; and the forgetting
check's numbers for the parent and for the second fine-tune.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.config import TrainConfig
from ml.data import encode, parse_labeled_csv
from ml.finetune import finetune, split_for_training
from ml.forward import predict_logits
from ml.metrics import METRIC_NAMES, binary_metrics, choose_threshold, fit_temperature, softmax_probability
from ml.model_cache import ModelCache
from ml.modeling import load_for_inference, load_tokenizer
from tests.service.helpers import notes_csv

QUICK = {"max_length": 48, "batch_size": 8, "warmup_steps": 0, "lr": 1e-3, "pooling": "mean"}
CPU = torch.device("cpu")


def saved_logits(model_dir, manifest: dict, texts: list[str]) -> np.ndarray:
    """Logits of the saved model loaded on its own (no cache, no shared host, no merge)."""
    model = load_for_inference(model_dir, manifest)
    tokenizer = load_tokenizer(manifest["base_model"])
    hyper = manifest["hyperparameters"]
    ids = encode(tokenizer, texts, hyper["max_length"], hyper["pooling"])
    return predict_logits(model, ids, tokenizer.pad_token_id, 64, CPU)


def validation_split(raw: bytes, manifest: dict):
    config = TrainConfig.for_stage(manifest["stage"], manifest["method"], manifest["hyperparameters"])
    return split_for_training(parse_labeled_csv(raw), config)[1]


def assert_same_metrics(got: dict, expected: dict) -> None:
    for name in METRIC_NAMES:
        if expected[name] is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(expected[name], abs=1e-6), name
    assert got["confusion"] == expected["confusion"]
    assert (got["n"], got["positives"]) == (expected["n"], expected["positives"])
    assert got["threshold"] == pytest.approx(expected["threshold"], abs=1e-9)


# ------------------------------------------------------------------ temperature and thresholds, end to end


@pytest.mark.parametrize(
    ("method", "mode"),
    [("full", "youden"), ("adalora", "sensitivity>=0.8")],
    ids=["full-youden", "adalora-sens"],
)
def test_stored_temperature_and_threshold_are_refitted_from_the_saved_model_and_served(
    method, mode, tiny_bert, tmp_path
):
    raw = notes_csv(40, seed=21)
    config = TrainConfig.for_stage(
        1, method, {**QUICK, "epochs": 2, "temperature_scaling": True, "threshold_mode": mode}
    )
    manifest = finetune(raw, config, tmp_path / "m", base_model=tiny_bert)
    val = validation_split(raw, manifest)
    logits = saved_logits(tmp_path / "m", manifest, val.texts)

    temperature = manifest["temperature"]
    assert temperature == pytest.approx(fit_temperature(logits, val.labels), rel=1e-4)
    assert abs(temperature - 1.0) > 1e-2, "a temperature of 1 would not show whether it is applied"
    prob = softmax_probability(logits, temperature)
    threshold, _ = choose_threshold(val.labels, prob, mode)
    assert manifest["threshold"] == pytest.approx(threshold, abs=1e-6)
    assert manifest["threshold_mode"] == mode
    assert_same_metrics(
        manifest["validation_metrics"], binary_metrics(val.labels, prob, manifest["threshold"])
    )
    if mode.startswith("sensitivity"):
        assert manifest["validation_metrics"]["sensitivity"] >= 0.8

    # Serving: probabilities are softmax(logits / T) with the stored T, labels use the stored threshold.
    # More notes than the training set, so that some lie between 0.5 and the stored threshold however
    # the run's arithmetic (thread count) turns out.
    texts = parse_labeled_csv(raw).texts + parse_labeled_csv(notes_csv(200, seed=22)).texts
    expected = softmax_probability(saved_logits(tmp_path / "m", manifest, texts), temperature)
    items = ModelCache(max_models=2, device=CPU).predict(tmp_path / "m", texts)
    served = np.array([item["probability"] for item in items])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    at_one = softmax_probability(saved_logits(tmp_path / "m", manifest, texts), 1.0)
    assert np.abs(served - at_one).max() > 1e-3, "served without the temperature"
    assert [item["label"] for item in items] == [int(p >= manifest["threshold"]) for p in served]
    assert {item["threshold"] for item in items} == {manifest["threshold"]}
    assert any((p >= manifest["threshold"]) != (p >= 0.5) for p in served), (
        "no note lies between 0.5 and the stored threshold: the labels would not show which was used"
    )


# ------------------------------------------------------------------------------------ forgetting check


@pytest.mark.parametrize("method", ["lora", "full"])
def test_forgetting_check_reproduces_the_parents_own_validation_metrics(method, tiny_bert, tmp_path):
    parent_raw, child_raw = notes_csv(40, seed=31), notes_csv(40, seed=32)
    parent_config = TrainConfig.for_stage(
        1, method, {**QUICK, "epochs": 2, "temperature_scaling": True, "threshold_mode": "youden"}
    )
    parent = finetune(parent_raw, parent_config, tmp_path / "parent", model_id="parent", base_model=tiny_bert)
    # The child splits its own data differently: the check must still use the parent's split.
    child_config = TrainConfig.for_stage(
        2, method, {**QUICK, "epochs": 1, "seed": 7, "val_fraction": 0.3, "threshold_mode": "youden"}
    )
    child = finetune(
        child_raw,
        child_config,
        tmp_path / "child",
        parent_dir=tmp_path / "parent",
        parent_train_csv=parent_raw,
    )
    check = child["forgetting_check"]
    assert check["rows"] == parent["data"]["validation_rows"]
    assert parent["temperature"] != pytest.approx(1.0, abs=1e-2), "the parent's temperature must matter"
    assert_same_metrics(check["parent"], parent["validation_metrics"])

    # The second model's side: the child loaded on its own, on the parent's split, its own T and threshold.
    val = validation_split(parent_raw, parent)
    child_prob = softmax_probability(saved_logits(tmp_path / "child", child, val.texts), child["temperature"])
    assert_same_metrics(check["second"], binary_metrics(val.labels, child_prob, child["threshold"]))
