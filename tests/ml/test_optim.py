"""Parameter groups (weight decay, layer-wise learning rates) and the moving average of the weights."""

from __future__ import annotations

import pytest
import torch

from ml.architectures import load_base_classifier
from ml.config import ConfigError, TrainConfig
from ml.finetune import finetune
from ml.optim import WeightAverage, parameter_groups, scaled_learning_rates


def test_layer_wise_decay_gives_lower_layers_smaller_rates(tiny_bert):
    model = load_base_classifier(tiny_bert, "mean")  # 2 encoder layers
    groups = scaled_learning_rates(parameter_groups(model, 0.01, layer_lr_decay=0.5), lr=1.0)
    rate_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate_of[id(named["classifier.weight"])] == 1.0
    assert rate_of[id(named["bert.encoder.layer.1.attention.self.query.weight"])] == 0.5
    assert rate_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == 0.25
    assert rate_of[id(named["bert.embeddings.word_embeddings.weight"])] == 0.125
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decay_of[id(named["classifier.bias"])] == 0.0
    assert decay_of[id(named["bert.embeddings.LayerNorm.weight"])] == 0.0
    assert decay_of[id(named["classifier.weight"])] == 0.01
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_without_decay_every_group_keeps_the_base_rate(tiny_bert):
    model = load_base_classifier(tiny_bert, "mean")
    assert {g["lr"] for g in scaled_learning_rates(parameter_groups(model, 0.01), lr=3e-4)} == {3e-4}


def test_the_average_follows_the_weights_and_is_swapped_in_and_out():
    layer = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(layer.weight)
    average = WeightAverage(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    average.update(step=100)  # decay 0.5: halfway from 0 to 1
    with average.swapped_in():
        assert torch.allclose(layer.weight, torch.full((1, 2), 0.5))
    assert torch.allclose(layer.weight, torch.ones(1, 2))


def test_a_run_with_the_average_saves_the_averaged_weights(tiny_bert, narrative_csv, tmp_path):
    fast = {"epochs": 1, "max_length": 64, "batch_size": 8, "warmup_steps": 2, "lr": 1e-3}
    plain = finetune(
        narrative_csv, TrainConfig.for_stage(1, "full", fast), tmp_path / "a", base_model=tiny_bert
    )
    averaged = finetune(
        narrative_csv,
        TrainConfig.for_stage(1, "full", {**fast, "ema_decay": 0.9, "layer_lr_decay": 0.8}),
        tmp_path / "b",
        base_model=tiny_bert,
    )
    assert averaged["hyperparameters"]["ema_decay"] == 0.9
    assert averaged["logit_fingerprint"] != plain["logit_fingerprint"]


@pytest.mark.parametrize(
    "bad", [{"ema_decay": 1.0}, {"ema_decay": -0.1}, {"layer_lr_decay": 0}, {"layer_lr_decay": 1.5}]
)
def test_out_of_range_values_are_named(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        TrainConfig.for_stage(1, "full", bad)


def test_l2sp_penalty_is_half_the_strength_times_the_squared_distance_from_the_start():
    from ml.optim import WeightAnchor

    model = torch.nn.Sequential()
    model.add_module("encoder", torch.nn.Linear(3, 2))
    model.add_module("classifier", torch.nn.Linear(2, 2))
    anchor = WeightAnchor(model, strength=0.4)
    assert float(anchor.penalty()) == 0.0
    with torch.no_grad():
        model.encoder.weight += 0.5  # 6 entries moved by 0.5
        model.classifier.weight += 3.0  # the head is left free
    assert float(anchor.penalty()) == pytest.approx(0.5 * 0.4 * 6 * 0.25)
    anchor.penalty().backward()
    assert torch.allclose(model.encoder.weight.grad, torch.full((2, 3), 0.4 * 0.5))
    assert model.classifier.weight.grad is None
