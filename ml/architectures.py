"""The classifier architectures: how a BERT encoder's token states become the head's input.

`sentences` (the default) encodes each sentence of a note on its own and averages the sentence
embeddings; `mean` and `max` pool the whole note's token states; `cls` is BERT's own pooler. The
classes keep BertForSequenceClassification's weights and keys, so checkpoints stay interchangeable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from ml.config import default_base_model
from ml.vocabulary import DEFAULT_POOLING

# The untrained base model's classifier head is random; seeding it makes "base" a fixed, repeatable
# baseline (the same logits in every process), independent of the training seed.
BASE_HEAD_SEED = 1234
NUM_LABELS = 2


def resolve_base_model(base_model: str | None) -> str:
    return base_model or default_base_model()


class BertMeanPoolingForSequenceClassification(BertForSequenceClassification):
    """BERT with its classifier on the mean of the token states instead of the [CLS] pooler.

    Sentence-embedding checkpoints such as the packaged MiniLM were trained with mean pooling, so
    their [CLS]/pooler output carries little; averaging the tokens lets a small labelled set use
    what the encoder already knows. Same weights and keys as BertForSequenceClassification (the
    pooler is kept but unused), so checkpoints stay interchangeable.
    """

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        logits = self.classifier(self.dropout(self.pool(hidden, attention_mask)))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class BertMaxPoolingForSequenceClassification(BertMeanPoolingForSequenceClassification):
    """The classifier reads the largest value of each feature over the note's tokens."""

    @staticmethod
    def pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        padding = (attention_mask == 0).unsqueeze(-1)
        return hidden.masked_fill(padding, torch.finfo(hidden.dtype).min).amax(dim=1)


class BertSentencePoolingForSequenceClassification(BertForSequenceClassification):
    """Each sentence is encoded on its own; the classifier reads the mean of the sentence embeddings.

    The note arrives as one id sequence of sentences, each starting with [CLS] (see ml.data.encode
    with pooling "sentences"); the forward pass cuts it back into sentences, so the data path,
    padding and batching stay those of whole notes. Why: a sentence-embedding model was trained on
    sentences, and a fact stated in one sentence ("ER negative", "ECOG 3") should not be read
    differently because of the wording of the others. It also lifts the note-length limit:
    max_length applies to each sentence.
    """

    # Set by mixed_adapters: told which note each encoded sentence belongs to, before each encoder call.
    sentence_router: Callable[[torch.Tensor], None] | None = None

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        sentences = split_sentences(input_ids, attention_mask, self.sentence_start_id)
        per_sentence = self._embed_sentences(sentences)
        per_note = torch.zeros(
            input_ids.shape[0], per_sentence.shape[1], dtype=per_sentence.dtype, device=per_sentence.device
        ).index_add_(0, sentences.note, per_sentence)
        per_note = per_note / sentences.count.clamp(min=1).unsqueeze(-1).to(per_note.dtype)
        logits = self.classifier(self.dropout(per_note))
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _embed_sentences(self, sentences: Sentences) -> torch.Tensor:
        """Mean token state per sentence, encoded in groups of similar length to spare padding."""
        lengths = sentences.attention_mask.sum(dim=1)
        order = torch.argsort(lengths)
        pieces = []
        for group in torch.split(order, length_groups(lengths[order].tolist())):
            longest = int(lengths[group].max())
            ids, mask = sentences.input_ids[group, :longest], sentences.attention_mask[group, :longest]
            if self.sentence_router is not None:
                self.sentence_router(sentences.note[group])
            hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            pieces.append(BertMeanPoolingForSequenceClassification.pool(hidden, mask))
        embedded = torch.cat(pieces)
        return torch.empty_like(embedded).index_copy_(0, order, embedded)

    @property
    def sentence_start_id(self) -> int:
        return int(getattr(self.config, "sentence_start_id", None) or BERT_CLS_ID)


# One encoder call costs about as much as this many padded tokens on top of its real work (measured on
# a 2-core CPU with the packaged MiniLM: ~8 ms per call against ~0.16 ms per token).
CALL_COST_TOKENS = 48
MAX_GROUP_TOKENS = 8192  # padded tokens in one encoder call: bounds its memory
MAX_GROUP_SENTENCES = 256


def length_groups(sorted_lengths: list[int]) -> list[int]:
    """Sizes of consecutive groups of length-sorted sentences, one encoder call each.

    A group grows while padding its members to the next sentence's length costs less than another
    call would; so a few notes' sentences are not all padded to the longest one (what made batches of
    4-8 notes slower than single notes), and many similar sentences still share one call.
    """
    sizes: list[int] = []
    count, longest = 0, 0
    for length in sorted_lengths:
        padding_added = (length - longest) * count
        full = count >= MAX_GROUP_SENTENCES or (count + 1) * length > MAX_GROUP_TOKENS
        if count and (padding_added > CALL_COST_TOKENS or full):
            sizes.append(count)
            count = 0
        count, longest = count + 1, length
    if count:
        sizes.append(count)
    return sizes


BERT_CLS_ID = 101  # [CLS] in the BERT vocabularies (the packaged MiniLM's included)


class Sentences(NamedTuple):
    input_ids: torch.Tensor  # (sentences, longest sentence)
    attention_mask: torch.Tensor
    note: torch.Tensor  # (sentences,): the row of the note each sentence came from
    count: torch.Tensor  # (notes,): sentences per note


def split_sentences(input_ids: torch.Tensor, attention_mask: torch.Tensor, start_id: int) -> Sentences:
    """Cut padded notes of [CLS]-led sentences into one padded batch of sentences (vectorised)."""
    real = attention_mask.bool()
    starts = (input_ids == start_id) & real
    starts[:, 0] |= real[:, 0]  # a note that does not open with [CLS] still has a first sentence
    count = starts.sum(dim=1)
    first_sentence_of_note = torch.cumsum(count, 0) - count
    sentence_in_note = torch.cumsum(starts.long(), dim=1) - 1
    sentence = (first_sentence_of_note.unsqueeze(1) + sentence_in_note)[real]
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    start_position = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=1).values
    offset = (positions - start_position)[real]
    total = int(count.sum())
    longest = int(offset.max()) + 1 if total else 1
    ids = torch.zeros((total, longest), dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros((total, longest), dtype=attention_mask.dtype, device=input_ids.device)
    ids[sentence, offset] = input_ids[real]
    mask[sentence, offset] = 1
    note = torch.repeat_interleave(torch.arange(input_ids.shape[0], device=input_ids.device), count)
    return Sentences(ids, mask, note, count)


HEAD_INPUT_DROPOUT = 0.0

POOLING_CLASSES = {
    "mean": BertMeanPoolingForSequenceClassification,
    "max": BertMaxPoolingForSequenceClassification,
    "sentences": BertSentencePoolingForSequenceClassification,
}


@functools.lru_cache(maxsize=8)
def module_names(base_model: str) -> frozenset[str]:
    """The dotted names of the base classifier's modules, from its configuration alone: built on the
    meta device, so no weights are read and no memory is used."""
    config = AutoConfig.from_pretrained(resolve_base_model(base_model))
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return frozenset(name for name, _ in model.named_modules() if name)


def load_classifier(source: str | Path, pooling: str) -> torch.nn.Module:
    """A 2-label classifier from a base checkpoint or a saved full model, with the given pooling."""
    source = str(source)
    pooling = effective_pooling(source, pooling)
    if pooling in POOLING_CLASSES:
        # No dropout on what the head reads: pooled features are far from zero-mean and vary little
        # between notes, so zeroing 10% of them moves a probe-fitted head's logits by many times the
        # gap between notes, and training spent its steps fighting that noise instead of learning.
        model = POOLING_CLASSES[pooling].from_pretrained(
            source, num_labels=NUM_LABELS, classifier_dropout=HEAD_INPUT_DROPOUT
        )
        if pooling == "sentences":
            model.config.sentence_start_id = AutoTokenizer.from_pretrained(source).cls_token_id
        return model
    return AutoModelForSequenceClassification.from_pretrained(source, num_labels=NUM_LABELS)


def effective_pooling(source: str | Path, pooling: str) -> str:
    """The pooling a base supports: ours need BERT's module layout; other architectures use their own
    sequence-classification head, which reads the whole note ("cls")."""
    return pooling if pooling == "cls" or _model_type(str(source)) == "bert" else "cls"


@functools.lru_cache(maxsize=64)
def _model_type(source: str) -> str:
    # Cached: base scoring asks on every request, and a checkpoint's architecture does not change.
    return AutoConfig.from_pretrained(source).model_type


def load_base_classifier(base_model: str | None = None, pooling: str = DEFAULT_POOLING) -> torch.nn.Module:
    """The base encoder with a fresh 2-label head initialised from BASE_HEAD_SEED."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(BASE_HEAD_SEED)
        return load_classifier(resolve_base_model(base_model), pooling)
