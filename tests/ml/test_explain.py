"""Sentence contributions: each sentence's share plus the bias is exactly the model's logit difference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from ml.architectures import load_base_classifier
from ml.config import TrainConfig
from ml.data import encode, sentences_of
from ml.explain import ExplanationUnavailable, explain, explain_cached
from ml.finetune import finetune
from ml.forward import predict_logits
from ml.model_cache import ModelCache
from ml.modeling import load_tokenizer

NOTES = [
    "67-year-old woman with stage IIIA IDC. ER negative, PR negative.\nECOG 2; she lives alone.",
    "Stage I, node negative",
    "PMH: COPD.   Restaging shows a complete response! Follow up in 3 months?",
]
FAST = {"epochs": 1, "batch_size": 8, "max_length": 32, "warmup_steps": 0, "min_rows": 10}


def logit_differences(model, tokenizer, notes) -> np.ndarray:
    ids = encode(tokenizer, notes, 64, "sentences")
    logits = predict_logits(model, ids, tokenizer.pad_token_id, 8, torch.device("cpu"))
    return logits[:, 1] - logits[:, 0]


def explained(model, tokenizer, note: str):
    [ids] = encode(tokenizer, [note], 64, "sentences")
    return explain(model, ids, note, pad_id=tokenizer.pad_token_id)


def assert_exact(explanation, expected: float, note: str) -> None:
    total = sum(item.contribution for item in explanation.sentences) + explanation.bias
    assert total == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert explanation.logit_difference == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert [note[item.start : item.end] for item in explanation.sentences] == sentences_of(note)


def test_shares_and_bias_add_up_to_the_logit_difference(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    model = load_base_classifier(tiny_bert, "sentences").eval()
    expected = logit_differences(model, tokenizer, NOTES)
    for note, difference in zip(NOTES, expected, strict=True):
        explanation = explained(model, tokenizer, note)
        assert_exact(explanation, float(difference), note)
        assert len({round(item.contribution, 6) for item in explanation.sentences}) == len(
            explanation.sentences
        )  # each sentence has its own share


def test_a_peft_model_is_explained_through_its_active_adapter(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    base = load_base_classifier(tiny_bert, "sentences").eval()
    before = explained(base, tokenizer, NOTES[0])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    model = get_peft_model(load_base_classifier(tiny_bert, "sentences"), config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    expected = logit_differences(model, tokenizer, NOTES)
    for note, difference in zip(NOTES, expected, strict=True):
        assert_exact(explained(model, tokenizer, note), float(difference), note)
    after = explained(model, tokenizer, NOTES[0])
    assert after.bias != pytest.approx(before.bias)
    assert after.sentences[0].contribution != pytest.approx(before.sentences[0].contribution)


def test_models_sharing_a_host_are_each_explained_with_their_own_adapter(tmp_path, tiny_bert, narrative_csv):
    for name, seed in (("a", 1), ("b", 2)):
        config = TrainConfig.for_stage(1, "lora", {**FAST, "seed": seed})
        finetune(narrative_csv, config, tmp_path / name, model_id=name, base_model=tiny_bert)
    cache = ModelCache(max_models=4, device=torch.device("cpu"))
    note = NOTES[0]
    for model_dir in (tmp_path / "a", tmp_path / "b", None):
        route = cache.route(model_dir, base_model=tiny_bert)
        [ids] = cache.encode(route, [note])
        logits = cache.logits(route.executor, [ids], [route.adapter], route.base_model)
        explanation = explain_cached(cache, model_dir, note, base_model=tiny_bert)
        assert_exact(explanation, float(logits[0, 1] - logits[0, 0]), note)
    assert cache.route(tmp_path / "a").executor == cache.route(tmp_path / "b").executor  # one shared host


def test_a_whole_note_pooling_model_cannot_be_explained(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    model = load_base_classifier(tiny_bert, "mean").eval()
    [ids] = encode(tokenizer, [NOTES[0]], 64, "mean")
    with pytest.raises(ExplanationUnavailable, match="sentence pooling"):
        explain(model, ids, NOTES[0], pad_id=tokenizer.pad_token_id)
