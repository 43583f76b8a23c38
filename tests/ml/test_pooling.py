"""How the classifier reads a note: whole-note mean/max pooling, or sentence by sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml.architectures import load_base_classifier, split_sentences
from ml.config import TrainConfig
from ml.data import encode, pad_batch, sentences_of
from ml.finetune import finetune
from ml.forward import predict_logits
from ml.model_cache import ModelCache
from ml.modeling import load_for_inference, load_tokenizer

NOTES = [
    "67-year-old woman with stage IIIA IDC. ER negative, PR negative.\nECOG 2; she lives alone.",
    "Stage I, node negative",
    "",
    "PMH: COPD. Restaging shows a complete response! Follow up in 3 months?",
]


def test_sentences_end_at_punctuation_and_line_breaks():
    assert sentences_of("One. Two; three!\nFour? Five") == ["One.", "Two;", "three!", "Four?", "Five"]
    assert sentences_of("ER+/PR- 3.5 cm") == ["ER+/PR- 3.5 cm"]  # a decimal point ends nothing
    assert sentences_of("") == [""]


def test_each_sentence_is_its_own_run_and_max_length_applies_per_sentence(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    long_note = " ".join(["The tumour was grade 3 and ER negative."] * 20)  # ~200 tokens in all
    [ids] = encode(tokenizer, [long_note], max_length=16, pooling="sentences")
    assert ids.count(tokenizer.cls_token_id) == 20 == ids.count(tokenizer.sep_token_id)
    assert len(ids) > 16  # the note is not cut at max_length, only each sentence is
    [whole] = encode(tokenizer, [long_note], max_length=16, pooling="mean")
    assert len(whole) == 16


def test_notes_are_cut_back_into_their_sentences(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    ids = encode(tokenizer, NOTES, 64, pooling="sentences")
    batch = pad_batch(ids, tokenizer.pad_token_id)
    sentences = split_sentences(batch["input_ids"], batch["attention_mask"], tokenizer.cls_token_id)
    expected = [sentences_of(note) for note in NOTES]
    assert sentences.count.tolist() == [len(s) for s in expected]
    decoded = tokenizer.batch_decode(sentences.input_ids, skip_special_tokens=True)
    flat = [s.lower() for note in expected for s in note]
    assert [d.replace(" ", "") for d in decoded] == [s.replace(" ", "") for s in flat]
    assert sentences.note.tolist() == [i for i, s in enumerate(expected) for _ in s]


@pytest.mark.parametrize("pooling", ["mean", "max", "sentences", "cls"])
def test_a_batch_scores_each_note_as_if_alone(tiny_bert, pooling):
    tokenizer = load_tokenizer(tiny_bert)
    model = load_base_classifier(tiny_bert, pooling).eval()
    ids = encode(tokenizer, NOTES, 64, pooling)
    together = predict_logits(model, ids, tokenizer.pad_token_id, 8, torch.device("cpu"))
    alone = predict_logits(model, ids, tokenizer.pad_token_id, 1, torch.device("cpu"))
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_sentence_pooling_differs_from_whole_note_pooling(tiny_bert):
    tokenizer = load_tokenizer(tiny_bert)
    logits = {}
    for pooling in ("mean", "sentences"):
        model = load_base_classifier(tiny_bert, pooling).eval()
        ids = encode(tokenizer, NOTES[:1], 64, pooling)
        logits[pooling] = predict_logits(model, ids, tokenizer.pad_token_id, 1, torch.device("cpu"))
    assert not np.allclose(logits["mean"], logits["sentences"])


@pytest.mark.parametrize(
    ("method", "pooling"), [("full", "sentences"), ("lora", "sentences"), ("full", "max")]
)
def test_fine_tune_reload_and_serve_with_each_pooling(
    tiny_bert, narrative_csv, terse_csv, tmp_path, method, pooling
):
    fast = {"epochs": 1, "max_length": 64, "batch_size": 8, "warmup_steps": 2, "lr": 1e-3, "pooling": pooling}
    first = finetune(
        narrative_csv, TrainConfig.for_stage(1, method, fast), tmp_path / "first", base_model=tiny_bert
    )
    second = finetune(
        terse_csv,
        TrainConfig.for_stage(2, method, {**fast, "pooling": "mean"}),
        tmp_path / "second",
        parent_dir=tmp_path / "first",
    )
    assert first["hyperparameters"]["pooling"] == second["hyperparameters"]["pooling"] == pooling
    tokenizer = load_tokenizer(tiny_bert)
    model = load_for_inference(tmp_path / "second", second)
    notes = NOTES[:2]
    ids = encode(tokenizer, notes, 64, pooling)
    reloaded = predict_logits(model, ids, tokenizer.pad_token_id, 1, torch.device("cpu"))
    served = ModelCache(max_models=1).score(tmp_path / "second", notes).probabilities
    expected = torch.softmax(torch.as_tensor(reloaded), dim=-1)[:, 1].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-7)


def test_length_groups_cover_every_sentence_and_split_where_padding_would_cost_more():
    from ml.architectures import CALL_COST_TOKENS, MAX_GROUP_TOKENS, length_groups

    lengths = sorted([5, 6, 6, 7, 30, 31, 33, 60, 61, 120] * 3)
    sizes = length_groups(lengths)
    assert sum(sizes) == len(lengths)
    start = 0
    for size in sizes:
        group = lengths[start : start + size]
        assert size * group[-1] <= MAX_GROUP_TOKENS
        start += size
    assert len(sizes) > 1, "short and long sentences are not padded to one length"
    # Sentences of equal length always share a call (no padding to save).
    assert length_groups([12] * 40) == [40]
    # Adding a slightly longer sentence to a small group is cheaper than a new call.
    assert length_groups([10, 10 + CALL_COST_TOKENS // 2]) == [2]
