"""Serving predictions from any model: the untrained base, a first or a second fine-tune.

`ModelCache` keeps a bounded number of fine-tuned models loaded. Full models are whole copies;
LoRA/AdaLoRA models are adapters loaded side by side onto one shared base per (base model, adapter
type), selected with `set_adapter`, so many adapter models cost one BERT in memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from ml.config import max_length_of, pooling_of
from ml.forward import logits_for_texts
from ml.metrics import softmax_probability
from ml.modeling import (
    effective_pooling,
    load_base_classifier,
    load_classifier,
    load_tokenizer,
    pick_device,
    resolve_base_model,
)
from ml.vocabulary import DEFAULT_MAX_LENGTH, DEFAULT_POOLING
from models_store.store import read_manifest

BASE_THRESHOLD = 0.5


@dataclass
class Scored:
    probabilities: np.ndarray
    threshold: float
    manifest: dict | None

    def as_items(self, threshold: float | None = None) -> list[dict]:
        cut = self.threshold if threshold is None else threshold
        return [
            {"probability": float(p), "label": int(p >= cut), "threshold": float(cut)}
            for p in self.probabilities
        ]


@dataclass
class _Loaded:
    manifest: dict
    module: torch.nn.Module | None  # a full model; None for an adapter living on a shared host
    host_key: tuple[str, str, str] | None
    adapter_name: str | None


class ModelCache:
    def __init__(self, max_models: int = 4, device: torch.device | None = None) -> None:
        self.max_models = max(1, max_models)
        self.device = device or pick_device()
        self._lock = threading.RLock()
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._hosts: dict[tuple[str, str, str], PeftModel] = {}
        self._bases: dict[str, torch.nn.Module] = {}

    def predict(
        self,
        model_dir: Path | None,
        texts: list[str],
        *,
        base_model: str | None = None,
        threshold: float | None = None,
    ) -> list[dict]:
        """[{"probability", "label", "threshold"}] per note; threshold None = the model's own."""
        return self.score(model_dir, texts, base_model=base_model).as_items(threshold)

    def score(self, model_dir: Path | None, texts: list[str], *, base_model: str | None = None) -> Scored:
        with self._lock:
            if model_dir is None:
                base = resolve_base_model(base_model)
                pooling = effective_pooling(base, DEFAULT_POOLING)
                logits = self._logits(self._base(base), base, texts, DEFAULT_MAX_LENGTH, pooling)
                return Scored(softmax_probability(logits), BASE_THRESHOLD, None)
            loaded = self._get(Path(model_dir))
            manifest = loaded.manifest
            module = loaded.module if loaded.module is not None else self._activate(loaded)
            logits = self._logits(
                module, manifest["base_model"], texts, max_length_of(manifest), pooling_of(manifest)
            )
            probabilities = softmax_probability(logits, manifest.get("temperature", 1.0))
            return Scored(probabilities, float(manifest["threshold"]), manifest)

    def loaded_count(self) -> int:
        return len(self._loaded)

    def _logits(self, module, base_model: str, texts: list[str], max_length: int, pooling: str) -> np.ndarray:
        tokenizer = load_tokenizer(base_model)
        return logits_for_texts(module, tokenizer, texts, max_length, self.device, pooling=pooling)

    def _base(self, base_model: str) -> torch.nn.Module:
        if base_model not in self._bases:
            self._bases[base_model] = load_base_classifier(base_model).to(self.device).eval()
        return self._bases[base_model]

    def _activate(self, loaded: _Loaded) -> torch.nn.Module:
        host = self._hosts[loaded.host_key]
        host.set_adapter(loaded.adapter_name)
        return host

    def _get(self, model_dir: Path) -> _Loaded:
        key = str(model_dir.resolve())
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        while len(self._loaded) >= self.max_models:
            self._evict(*self._loaded.popitem(last=False))
        loaded = self._load(model_dir)
        self._loaded[key] = loaded
        return loaded

    def _load(self, model_dir: Path) -> _Loaded:
        manifest = read_manifest(model_dir)
        if manifest["method"] == "full":
            module = load_classifier(model_dir, pooling_of(manifest)).to(self.device).eval()
            return _Loaded(manifest, module, None, None)
        host_key = (manifest["base_model"], manifest["method"], pooling_of(manifest))
        adapter_name = f"m_{manifest['id']}"
        host = self._hosts.get(host_key)
        if host is None:
            base = load_base_classifier(manifest["base_model"], pooling_of(manifest))
            self._hosts[host_key] = PeftModel.from_pretrained(base, model_dir, adapter_name=adapter_name)
            self._hosts[host_key].to(self.device).eval()
        else:
            host.load_adapter(model_dir, adapter_name=adapter_name)
            host.to(self.device).eval()
        return _Loaded(manifest, None, host_key, adapter_name)

    def _evict(self, key: str, loaded: _Loaded) -> None:
        if loaded.host_key is None:
            return
        host = self._hosts[loaded.host_key]
        remaining = [name for name in host.peft_config if name != loaded.adapter_name]
        if not remaining:
            # The last adapter on this base: drop the whole host rather than leave an empty PeftModel.
            del self._hosts[loaded.host_key]
            return
        host.set_adapter(remaining[0])
        host.delete_adapter(loaded.adapter_name)
