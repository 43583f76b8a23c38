"""Settings whose defaults belong to ml are unset in the settings and resolved by the services."""

from __future__ import annotations

from core.services.datasets import token_limit
from core.services.models import allowed_base_models, configured_base_model
from core.settings import Settings
from ml.vocabulary import DEFAULT_MAX_LENGTH


def test_an_unset_base_model_is_the_packaged_minilm():
    from ml.config import default_base_model

    unset = Settings(base_model=None, allowed_base_models=["other"])
    assert configured_base_model(unset) == default_base_model()
    assert allowed_base_models(unset) == [default_base_model(), "other"]
    assert configured_base_model(Settings(base_model="/models/bert")) == "/models/bert"


def test_an_unset_token_limit_is_the_ml_default():
    assert token_limit(Settings(dataset_max_length=None)) == DEFAULT_MAX_LENGTH
    assert token_limit(Settings(dataset_max_length=128)) == 128
