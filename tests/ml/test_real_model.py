"""The one test that loads the real packaged MiniLM: the default base model's loading path."""

from __future__ import annotations

import pytest

from ml.config import TrainConfig, default_base_model
from ml.finetune import finetune
from ml.model_cache import ModelCache


@pytest.mark.slow
def test_packaged_minilm_fine_tunes_and_predicts(tmp_path, narrative_csv):
    config = TrainConfig.for_stage(1, "lora", {"epochs": 1, "max_length": 64, "batch_size": 16})
    manifest = finetune(narrative_csv, config, tmp_path / "m")
    assert manifest["base_model"] == default_base_model()
    assert manifest["trainable_parameters"] < 1_000_000  # adapters + head, not the 22M-parameter encoder
    items = ModelCache().predict(tmp_path / "m", ["Stage IV breast cancer with liver metastases."])
    assert 0.0 < items[0]["probability"] < 1.0
