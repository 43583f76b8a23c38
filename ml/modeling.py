"""Loading base models and building the three fine-tuning methods (a small registry).

Each method knows how to start a first fine-tune from the base model and how to continue a saved
model of its own kind. PEFT details that break silently are handled here (see shared PEFT_NOTES):
`task_type="SEQ_CLS"` so the head is trained and saved, `is_trainable=True` when continuing, and a
continued AdaLoRA adapter keeps its learned ranks frozen.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from peft import AdaLoraConfig, LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging as hf_logging

from ml.config import TrainConfig, adalora_schedule, default_base_model, pooling_of
from ml.vocabulary import DEFAULT_POOLING

# The untrained base model's classifier head is random; seeding it makes "base" a fixed, repeatable
# baseline (the same logits in every process), independent of the training seed.
BASE_HEAD_SEED = 1234
NUM_LABELS = 2


@functools.cache
def quiet_library_logs() -> None:
    """Silence library chatter for a process that trains or scores (called by the entry points).

    Deprecations inside transformers/peft, PEFT's note that AdaLoRA's saved rank pattern keys are
    not module names, and the "newly initialised head" notice say nothing about our run and drown
    the progress output.
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    warnings.filterwarnings("ignore", message=r".*rank_pattern keys did not match.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def resolve_base_model(base_model: str | None) -> str:
    return base_model or default_base_model()


@functools.lru_cache(maxsize=8)
def load_tokenizer(base_model: str | None = None):
    return AutoTokenizer.from_pretrained(resolve_base_model(base_model))


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


class Method(Protocol):
    name: str

    def start(self, config: TrainConfig, base_model: str, total_steps: int) -> torch.nn.Module: ...

    def resume(
        self, parent_dir: Path, config: TrainConfig, base_model: str, total_steps: int
    ) -> torch.nn.Module: ...


class FullMethod:
    name = "full"

    def start(self, config: TrainConfig, base_model: str, total_steps: int) -> torch.nn.Module:
        return load_base_classifier(base_model, config.pooling)

    def resume(
        self, parent_dir: Path, config: TrainConfig, base_model: str, total_steps: int
    ) -> torch.nn.Module:
        return load_classifier(parent_dir, config.pooling)


class LoraMethod:
    name = "lora"

    def start(self, config: TrainConfig, base_model: str, total_steps: int) -> torch.nn.Module:
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
        )
        return get_peft_model(load_base_classifier(base_model, config.pooling), peft_config)

    def resume(
        self, parent_dir: Path, config: TrainConfig, base_model: str, total_steps: int
    ) -> torch.nn.Module:
        base = load_base_classifier(base_model, config.pooling)
        return PeftModel.from_pretrained(base, parent_dir, is_trainable=True)


class AdaLoraMethod:
    name = "adalora"

    def start(self, config: TrainConfig, base_model: str, total_steps: int) -> torch.nn.Module:
        tinit, tfinal, delta_t = adalora_schedule(config, total_steps)
        peft_config = AdaLoraConfig(
            task_type=TaskType.SEQ_CLS,
            init_r=config.adalora_init_r,
            target_r=config.adalora_target_r,
            tinit=tinit,
            tfinal=tfinal,
            deltaT=delta_t,
            # The real number of optimiser steps, so the rank budget is finalised inside this run.
            total_step=total_steps,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            orth_reg_weight=config.adalora_orth_reg_weight,
        )
        return get_peft_model(load_base_classifier(base_model, config.pooling), peft_config)

    def resume(
        self, parent_dir: Path, config: TrainConfig, base_model: str, total_steps: int
    ) -> torch.nn.Module:
        # The saved config wins over kwargs, so edit the loaded config. Ranks stay frozen: re-running
        # update_and_allocate on a reloaded adapter fails (peft issue 2337).
        peft_config = PeftConfig.from_pretrained(parent_dir)
        peft_config.total_step = total_steps
        peft_config.tinit, peft_config.tfinal = 0, 0
        return PeftModel.from_pretrained(
            load_base_classifier(base_model, config.pooling),
            parent_dir,
            config=peft_config,
            is_trainable=True,
        )


METHOD_REGISTRY: dict[str, Method] = {m.name: m for m in (FullMethod(), LoraMethod(), AdaLoraMethod())}


def load_for_inference(model_dir: Path, manifest: dict) -> torch.nn.Module:
    """A saved model on its own (a full model, or an adapter over a fresh copy of its base)."""
    if manifest["method"] == "full":
        model = load_classifier(model_dir, pooling_of(manifest))
    else:
        base = load_base_classifier(manifest["base_model"], pooling_of(manifest))
        model = PeftModel.from_pretrained(base, model_dir)
    return model.eval()


class _AdapterRouting:
    """Which adapter each row of the encoder's input and of the head's input belongs to."""

    def __init__(self, note_adapters: list[str]) -> None:
        self.notes = note_adapters
        self.rows = note_adapters  # whole-note poolings: the encoder's rows are the notes

    def route_sentences(self, note_of_sentence: torch.Tensor) -> None:
        self.rows = [self.notes[index] for index in note_of_sentence.tolist()]

    def inject_rows(self, _module, args, kwargs):
        return args, {**kwargs, "adapter_names": self.rows}

    def inject_notes(self, _module, args, kwargs):
        return args, {**kwargs, "adapter_names": self.notes}


@contextlib.contextmanager
def mixed_adapters(host: torch.nn.Module, note_adapters: list[str]) -> Iterator[None]:
    """Run each note of the next forward pass through its own LoRA adapter of `host` ("__base__":
    none, the untrained base), all in one pass: the shared weights multiply every row once.

    PEFT's `adapter_names` argument assumes the encoder sees the batch's rows; with sentence pooling
    it sees sentences regrouped by length, so the names are routed per encoder call here (LoRA
    layers get one name per sentence, the classifier head one per note).
    """
    routing = _AdapterRouting(list(note_adapters))
    handles = []
    for module in host.modules():
        if isinstance(module, LoraLayer):
            handles.append(module.register_forward_pre_hook(routing.inject_rows, with_kwargs=True))
        elif isinstance(module, AuxiliaryTrainingWrapper):  # the head, saved with each adapter
            handles.append(module.register_forward_pre_hook(routing.inject_notes, with_kwargs=True))
    classifier = host.get_base_model()
    if isinstance(classifier, BertSentencePoolingForSequenceClassification):
        classifier.sentence_router = routing.route_sentences
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        if isinstance(classifier, BertSentencePoolingForSequenceClassification):
            classifier.sentence_router = None


def trainable_parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adalora_ranks(model: torch.nn.Module) -> dict[str, int]:
    """The rank of every AdaLoRA layer: kept singular values per the allocator's rank pattern.

    Before the budget is first allocated there is no pattern and every layer has its initial rank.
    """
    config = model.peft_config["default"] if hasattr(model, "peft_config") else None
    pattern = getattr(config, "rank_pattern", None) or {}
    ranks = {}
    for name, param in model.named_parameters():
        if name.endswith("lora_E.default"):
            layer = name.removesuffix(".lora_E.default")
            # Pattern keys are module paths inside the wrapped model, with or without the adapter name.
            wanted = layer.removeprefix("base_model.model.") + ".lora_E"
            key = next((k for k in pattern if k.removesuffix(".default").endswith(wanted)), None)
            ranks[layer] = int(sum(pattern[key])) if key else int(param.shape[0])
    return ranks


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
