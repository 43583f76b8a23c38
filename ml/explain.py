"""Why a sentence-pooling model scored a note as it did: each sentence's exact share of the logit.

With sentence pooling the classifier reads the mean of the sentence embeddings, and its head is
linear: logit_difference = (w1 - w0) . mean(e_i) + (b1 - b0) = sum_i (w1 - w0) . e_i / n + (b1 - b0).
So sentence i contributes exactly (w1 - w0) . e_i / n, and the bias is one more term; the shares and
the bias add up to the model's logit difference (class 1, died, minus class 0), before any
temperature. A positive share raised the predicted risk, a negative one lowered it.

The head is evaluated, not read: head(e_i) - head(0) is (W e_i) for an affine head whatever wraps
it (a PEFT adapter's copy of the head included), so no weight layout is assumed.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ml.architectures import BertSentencePoolingForSequenceClassification, split_sentences
from ml.data import pad_batch, sentences_of
from ml.errors import UserError
from ml.modeling import mixed_adapters


class ExplanationUnavailable(UserError):
    """Only a sentence-pooling model's score splits exactly into sentences."""

    code = "explanation_unavailable"


@dataclass(frozen=True)
class SentenceShare:
    start: int  # character offsets of the sentence in the note: note[start:end]
    end: int
    contribution: float  # its share of the logit difference


@dataclass(frozen=True)
class Explanation:
    sentences: list[SentenceShare]
    bias: float  # the head's own term (b1 - b0)
    logit_difference: float  # the model's logit for died minus survived: sum of the shares + bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explain(
    module: torch.nn.Module,
    token_ids: list[int],
    text: str,
    *,
    pad_id: int,
    adapter: str | None = None,
    device: torch.device | None = None,
) -> Explanation:
    """Each sentence's share of `module`'s logit difference for one note.

    `token_ids` is the note as ml.data.encode(..., pooling="sentences") gives it. `module` is a
    sentence-pooling classifier, or a PEFT model around one (its active adapter is used); on a host
    serving several adapters, `adapter` names the one to use (see ml.modeling.mixed_adapters).
    """
    classifier = module.get_base_model() if hasattr(module, "get_base_model") else module
    if not isinstance(classifier, BertSentencePoolingForSequenceClassification):
        raise ExplanationUnavailable(
            "an explanation needs a model with sentence pooling; this model pools the note as a whole"
        )
    device = device or next(module.parameters()).device
    batch = {key: value.to(device) for key, value in pad_batch([token_ids], pad_id).items()}
    sentences = split_sentences(batch["input_ids"], batch["attention_mask"], classifier.sentence_start_id)
    count = int(sentences.count[0])
    module.eval()
    with torch.no_grad():
        with _routed(module, adapter, rows=1):
            embeddings = classifier._embed_sentences(sentences).float()
        head_input = torch.cat([embeddings, torch.zeros_like(embeddings[:1])])
        with _routed(module, adapter, rows=count + 1):
            outputs = classifier.classifier(head_input.to(next(classifier.classifier.parameters()).dtype))
    differences = (outputs[:, 1] - outputs[:, 0]).double().cpu()
    bias = float(differences[-1])
    shares = [(float(value) - bias) / count for value in differences[:-1]]
    spans = sentence_spans(text)
    if len(spans) != count:
        raise ExplanationUnavailable("the note's sentences could not be matched to the model's input")
    return Explanation(
        sentences=[
            SentenceShare(start, end, share) for (start, end), share in zip(spans, shares, strict=True)
        ],
        bias=bias,
        logit_difference=sum(shares) + bias,
    )


def explain_cached(
    cache: Any, model_dir: Path | None, text: str, *, base_model: str | None = None
) -> Explanation:
    """The explanation of one note by a model of a ml.model_cache.ModelCache. Touches the models: run
    it where the cache's models may be run (the serving thread)."""
    from ml.modeling import load_tokenizer

    route = cache.route(model_dir, base_model=base_model)
    if route.pooling != "sentences":
        raise ExplanationUnavailable(
            "an explanation needs a model with sentence pooling; this model pools the note as a whole"
        )
    (token_ids,) = cache.encode(route, [text])
    module = cache.module(route)
    adapter = route.adapter if route.executor[0] == "host" else None
    pad_id = load_tokenizer(route.base_model).pad_token_id
    return explain(module, token_ids, text, pad_id=pad_id, adapter=adapter, device=cache.device)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence ml.data.sentences_of finds, in the order it finds them."""
    spans, position = [], 0
    for sentence in sentences_of(text):
        start = text.find(sentence, position)
        if start < 0:  # cannot happen for a sentence cut from this text; kept honest rather than wrong
            start = position
        end = start + len(sentence)
        spans.append((start, end))
        position = end
    return spans


def _routed(module: torch.nn.Module, adapter: str | None, rows: int):
    """On a host serving several adapters, run every row through `adapter`; else the module as it is."""
    if adapter is None:
        return contextlib.nullcontext()
    return mixed_adapters(module, [adapter] * rows)
