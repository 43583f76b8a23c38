"""A tiny random BERT that tests (and demos without weights) can use as a base model.

It keeps the real loading path: the directory it writes looks exactly like a hub checkpoint
(config.json, model.safetensors, tokenizer files), so code under test loads it with the same
`from_pretrained` calls it uses for the packaged MiniLM or `bert-base-uncased`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from ml.config import default_base_model

TINY_BERT_SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
}


def make_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """Write a randomly initialised 2-layer BERT with the packaged uncased vocabulary."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id, **TINY_BERT_SHAPE
    )
    torch.manual_seed(seed)
    # A bare encoder, like a hub base checkpoint: the classifier head is added when it is loaded.
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
