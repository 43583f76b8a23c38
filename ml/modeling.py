"""Loading models for a process that trains or scores: tokenizers, saved models through their method,
several LoRA adapters in one forward pass, and the device.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging

from ml.architectures import BertSentencePoolingForSequenceClassification, resolve_base_model
from ml.methods import method_for


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


@functools.lru_cache(maxsize=8)
def load_tokenizer(base_model: str | None = None):
    return AutoTokenizer.from_pretrained(resolve_base_model(base_model))


def load_for_inference(model_dir: Path, manifest: dict) -> torch.nn.Module:
    """A saved model on its own (a full model, or an adapter over a fresh copy of its base)."""
    return method_for(manifest["method"]).load(Path(model_dir), manifest).eval()


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


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
