"""Batched forward passes: sorted by length, padded per batch, results returned in input order."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ml.config import max_length_of, pooling_of
from ml.data import encode, inference_batches, pad_batch
from ml.modeling import load_for_inference, load_tokenizer, mixed_adapters
from ml.vocabulary import DEFAULT_POOLING


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    token_ids: list[list[int]],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    row_adapters: list[str] | None = None,
) -> np.ndarray:
    """Logits (n, 2) for already-tokenised notes, in the order given.

    `row_adapters` names each row's adapter when `model` is a PEFT host serving several LoRA models
    in one pass (see ml.modeling.mixed_adapters); None runs the model as it is.
    """
    model.eval()
    logits = np.zeros((len(token_ids), 2), dtype=np.float32)
    lengths = [len(ids) for ids in token_ids]
    for indices in inference_batches(lengths, batch_size):
        batch = pad_batch([token_ids[i] for i in indices], pad_id)
        batch = {key: value.to(device) for key, value in batch.items()}
        routing = (
            mixed_adapters(model, [row_adapters[i] for i in indices])
            if row_adapters is not None
            else contextlib.nullcontext()
        )
        with routing, torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = model(**batch).logits
        logits[indices] = output.float().cpu().numpy()
    return logits


def logits_for_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: list[str],
    max_length: int,
    device: torch.device,
    batch_size: int = 64,
    pooling: str = DEFAULT_POOLING,
) -> np.ndarray:
    ids = encode(tokenizer, texts, max_length, pooling)
    return predict_logits(model, ids, tokenizer.pad_token_id, batch_size, device)


def logits_for_model_dir(
    model_dir: Path, manifest: dict, texts: list[str], device: torch.device
) -> np.ndarray:
    """Load a saved model on its own and score `texts` (used for one-off comparisons)."""
    model = load_for_inference(Path(model_dir), manifest).to(device)
    tokenizer = load_tokenizer(manifest["base_model"])
    return logits_for_texts(
        model, tokenizer, texts, max_length_of(manifest), device, pooling=pooling_of(manifest)
    )
