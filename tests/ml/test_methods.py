"""Each method owns its behaviour: one registry, an unknown name refused at lookup, and no branch on
a method's name outside ml/methods/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ml.methods import UnknownMethodError, method_for, stage_defaults
from ml.vocabulary import METHODS

ROOT = Path(__file__).resolve().parents[2]


def test_every_method_is_registered_under_its_own_name():
    assert [method_for(name).name for name in METHODS] == list(METHODS)


@pytest.mark.parametrize("name", ["bogus", "LORA", "", "lora "])
def test_an_unknown_method_fails_at_lookup(name):
    with pytest.raises(UnknownMethodError, match="unknown fine-tuning method"):
        method_for(name)


def test_a_saved_model_of_an_unknown_method_is_refused_not_loaded_as_lora(tmp_path):
    from ml.modeling import load_for_inference

    with pytest.raises(UnknownMethodError):
        load_for_inference(tmp_path, {"method": "prefix", "base_model": "x"})


def test_the_model_cache_refuses_an_unknown_method(tmp_path):
    import json

    from ml.model_cache import ModelCache

    (tmp_path / "manifest.json").write_text(json.dumps({"id": "m", "method": "prefix", "base_model": "x"}))
    with pytest.raises(UnknownMethodError):
        ModelCache().route(tmp_path)


def test_stage_defaults_come_from_the_method():
    from ml.config import TrainConfig

    for name in METHODS:
        for stage in (1, 2, 3):
            assert TrainConfig.for_stage(stage, name).lr == stage_defaults(name, stage)["lr"]


def test_nothing_outside_ml_methods_branches_on_a_method_name():
    branching = re.compile(r"""(method|\.name)\s*(==|!=|in)\s*\(?\s*["'](full|lora|adalora)["']""")
    offenders = []
    for folder in ("ml", "core", "worker", "api", "cli"):
        for path in (ROOT / folder).rglob("*.py"):
            if "methods" in path.relative_to(ROOT).parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if branching.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_adalora_trains_with_an_adapter_on_a_module_the_forward_never_reaches(
    tiny_bert, narrative_csv, tmp_path
):
    """ "dense" also names BERT's pooler, which sentence pooling never runs: no gradient reaches its
    adapter, and PEFT's rank allocation used to fail on it with a TypeError."""
    from ml.config import TrainConfig
    from ml.finetune import finetune

    config = TrainConfig.for_stage(
        1,
        "adalora",
        {"epochs": 2, "max_length": 32, "target_modules": "query,value,dense", "interpolation": "off"},
    )
    manifest = finetune(narrative_csv, config, tmp_path / "m", base_model=tiny_bert)
    assert any("pooler" in layer for layer in manifest["adalora_ranks"]["before"])
    assert sum(manifest["adalora_ranks"]["after"].values()) < sum(
        manifest["adalora_ranks"]["before"].values()
    )
