"""TrainConfig: the limits in its field metadata, the rule for continuing a parent, the generated schema."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from ml.config import (
    ARCHITECTURE_FIELDS,
    ConfigError,
    MethodMismatchError,
    TrainConfig,
    hyperparameter_fields,
    hyperparameters_json_schema,
    value_type,
)
from ml.vocabulary import DEFAULT_MAX_LENGTH, METHODS, POOLINGS


def parent_manifest(method: str = "lora", stage: int = 1, **hyperparameters) -> dict:
    config = TrainConfig.for_stage(stage, method, {"pooling": "mean", "lora_r": 4, **hyperparameters})
    return {"method": method, "stage": stage, "hyperparameters": config.to_dict()}


def test_a_continued_fine_tune_inherits_method_stage_and_architecture():
    parent = parent_manifest(
        "adalora", stage=2, target_modules=["query"], adalora_init_r=6, adalora_target_r=3
    )
    asked = {"epochs": 3, "pooling": "max", "lora_r": 16, "adalora_init_r": 10, "target_modules": "key"}
    config = TrainConfig.for_parent(parent, asked)
    assert (config.method, config.stage, config.epochs) == ("adalora", 3, 3)
    for name in ARCHITECTURE_FIELDS:
        assert getattr(config, name) == parent["hyperparameters"][name], name
    assert config.lr == TrainConfig.for_stage(2, "adalora").lr


def test_a_continued_fine_tune_may_name_its_parents_method_but_no_other():
    parent = parent_manifest("lora")
    assert TrainConfig.for_parent(parent, {}, method="lora").method == "lora"
    with pytest.raises(MethodMismatchError) as caught:
        TrainConfig.for_parent(parent, {}, method="full")
    assert "'lora'" in caught.value.message and "'full'" in caught.value.message
    assert caught.value.code == "method_mismatch"
    assert caught.value.details == {"parent_method": "lora", "requested_method": "full"}


def test_a_continued_fine_tune_still_refuses_bad_values():
    with pytest.raises(ConfigError, match="lora_r"):
        TrainConfig.for_parent(parent_manifest(), {"lora_r": 1000})
    with pytest.raises(ConfigError, match="epochz"):
        TrainConfig.for_parent(parent_manifest(), {"epochz": 1})


def test_a_parent_saved_before_pooling_was_configurable_used_cls():
    parent = {"method": "full", "stage": 1, "hyperparameters": {"epochs": 2}}
    assert TrainConfig.for_parent(parent, {}).pooling == "cls"


def test_every_bound_in_the_metadata_is_enforced_and_named():
    for spec in hyperparameter_fields():
        step = 1 if value_type(spec) is int else 0.01
        outside = {"ge": -step, "gt": 0, "le": step, "lt": 0}
        for key, offset in outside.items():
            if key in spec.metadata:
                with pytest.raises(ConfigError, match=f"^{spec.name} must be .*, got "):
                    TrainConfig.for_stage(1, "full", {spec.name: spec.metadata[key] + offset})


def test_choices_name_the_allowed_values():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.for_stage(1, "full", {"pooling": "attention"})
    assert str(caught.value) == f"pooling must be one of {', '.join(POOLINGS)}, got 'attention'"


def test_defaults_come_from_the_shared_vocabulary():
    assert TrainConfig().max_length == DEFAULT_MAX_LENGTH
    assert dataclasses.fields(TrainConfig)[0].metadata["choices"] == METHODS


def test_the_json_schema_lists_every_hyperparameter_with_its_limits():
    schema = hyperparameters_json_schema()
    names = [spec.name for spec in hyperparameter_fields()]
    assert list(schema["properties"]) == names and "method" not in names and "stage" not in names
    assert schema["additionalProperties"] is False
    for name, prop in schema["properties"].items():
        assert prop["description"], name
        assert "type" in prop or "anyOf" in prop, name
    assert schema["properties"]["epochs"] | {"description": ""} == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "description": "",
    }
    assert schema["properties"]["pooling"]["enum"] == list(POOLINGS)
    assert schema["properties"]["lr"]["exclusiveMinimum"] == 0
    assert schema["properties"]["adalora_tinit"]["anyOf"][1] == {"type": "null"}
    assert schema["properties"]["max_length"]["default"] == DEFAULT_MAX_LENGTH


def test_importing_the_config_stays_light():
    code = "import sys, ml.config; print(sorted({'torch', 'numpy', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
