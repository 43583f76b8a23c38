"""evaluate_models' hooks: a stop between models, and a caller's threshold in place of the stored one."""

from __future__ import annotations

import numpy as np
import pytest

from ml.evaluate import EvaluationCancelled, EvaluationHooks, EvaluationModel, evaluate_models
from ml.model_cache import Scored
from tests.conftest import synthetic_csv

STORED_THRESHOLD = 0.4


class FakeCache:
    """Scores without a model: a fixed probability per note; remembers which models it scored."""

    def __init__(self) -> None:
        self.scored: list[str | None] = []

    def score(self, model_dir, texts, *, base_model=None) -> Scored:
        self.scored.append(None if model_dir is None else model_dir.name)
        probabilities = np.linspace(0.05, 0.95, len(texts))
        return Scored(probabilities, STORED_THRESHOLD, None)


MODELS = [
    EvaluationModel("base", None, None),
    EvaluationModel("tuned", "tuned-id", None, threshold=0.7),
]


def stops_after(checks: int):
    """A should_stop that says 'stop' from its (checks + 1)-th call on."""
    calls = []

    def should_stop() -> bool:
        calls.append(None)
        return len(calls) > checks

    return should_stop


def test_a_request_threshold_replaces_the_stored_one_and_says_so(tiny_bert):
    report, arrays = evaluate_models(
        synthetic_csv(40, seed=11), MODELS, cache=FakeCache(), base_model=tiny_bert, n_resamples=50
    )
    stored, requested = report["models"]
    assert stored["threshold"] == STORED_THRESHOLD and stored["threshold_source"] == "stored"
    assert requested["threshold"] == 0.7 and requested["threshold_source"] == "request"
    assert float(arrays["threshold:tuned"][0]) == 0.7
    assert float(arrays["threshold:base"][0]) == STORED_THRESHOLD
    assert report["data"]["rows"] == 40


@pytest.mark.parametrize("checks_before_stop", [0, 1, 2])
def test_a_stop_lands_between_models_and_after_the_last(tiny_bert, checks_before_stop):
    cache = FakeCache()
    hooks = EvaluationHooks(should_stop=stops_after(checks_before_stop))
    with pytest.raises(EvaluationCancelled):
        evaluate_models(synthetic_csv(40, seed=12), MODELS, cache=cache, base_model=tiny_bert, hooks=hooks)
    assert len(cache.scored) == checks_before_stop
