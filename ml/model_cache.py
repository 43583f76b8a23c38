"""Serving predictions from any model: the untrained base, a first or a second fine-tune.

`ModelCache` keeps a bounded number of fine-tuned models loaded (least recently used goes first) and
knows how each one runs. Every model is reached through a `Route`: the module that runs it (its
executor), the adapter name its rows carry there, and how its notes are tokenised and its logits
turned into probabilities.

- LoRA models over one base (same base checkpoint and pooling) are adapters side by side on one
  shared host, and one forward pass serves rows of many of them and of the untrained base
  ("__base__"): each extra LoRA model costs its adapter only.
- Full models are whole copies. AdaLoRA adapters, which PEFT cannot mix in one batch, are merged into
  a copy of their base at load, so they run as a plain model (no extra matmuls per layer).

The cache is not thread-safe: in the API one inference thread owns it (ml/serving.py); elsewhere
(evaluation, CLI) one caller uses it at a time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel

from ml.architectures import effective_pooling, load_base_classifier, resolve_base_model
from ml.config import max_length_of, pooling_of
from ml.data import encode
from ml.forward import predict_logits
from ml.methods import method_for
from ml.metrics import softmax_probability
from ml.modeling import load_tokenizer, pick_device
from ml.vocabulary import DEFAULT_MAX_LENGTH, DEFAULT_POOLING
from models_store.layout import read_manifest

BASE_THRESHOLD = 0.5
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch
Executor = tuple[str, ...]


@dataclass(frozen=True)
class Route:
    """How one model's notes are scored."""

    executor: Executor  # the loaded module that runs this model
    adapter: str | None  # the row's adapter on a shared host; None on a module of its own
    base_model: str  # whose tokenizer reads the notes
    max_length: int
    pooling: str
    temperature: float
    threshold: float
    manifest: dict | None  # None for the untrained base

    @property
    def encoding(self) -> tuple[str, int, str]:
        """Routes with the same encoding read the same token ids for a note."""
        return (self.base_model, self.max_length, self.pooling)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax_probability(logits, self.temperature)


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


class ModelCache:
    def __init__(self, max_models: int = 4, device: torch.device | None = None, batch_size: int = 64) -> None:
        self.max_models = max(1, max_models)
        self.device = device or pick_device()
        self.batch_size = batch_size
        self._routes: OrderedDict[str, Route] = OrderedDict()  # loaded fine-tuned models, LRU order
        self._executors: dict[Executor, torch.nn.Module] = {}

    # --- one model at a time (evaluation, CLI) ---------------------------------------------------

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
        route = self.route(model_dir, base_model=base_model)
        ids = self.encode(route, texts)
        logits = self.logits(route.executor, ids, [route.adapter] * len(ids), route.base_model)
        return Scored(route.probabilities(logits), route.threshold, route.manifest)

    # --- the parts a batcher combines ------------------------------------------------------------

    def route(self, model_dir: Path | None, *, base_model: str | None = None) -> Route:
        """Load the model if needed (evicting the least recently used) and say how it runs."""
        if model_dir is None:
            return self._base_route(resolve_base_model(base_model))
        key = str(Path(model_dir).resolve())
        if key in self._routes:
            self._routes.move_to_end(key)
            return self._routes[key]
        while len(self._routes) >= self.max_models:
            self._evict(*self._routes.popitem(last=False))
        self._routes[key] = self._load(Path(model_dir))
        return self._routes[key]

    def encode(self, route: Route, texts: list[str]) -> list[list[int]]:
        return encode(load_tokenizer(route.base_model), texts, route.max_length, route.pooling)

    def logits(
        self, executor: Executor, token_ids: list[list[int]], adapters: list[str | None], base_model: str
    ) -> np.ndarray:
        """Logits (n, 2) of one forward pass over rows that may belong to several adapters."""
        module = self._executors[executor]
        pad_id = load_tokenizer(base_model).pad_token_id
        row_adapters = None if executor[0] != "host" else [name or BASE_ADAPTER for name in adapters]
        return predict_logits(module, token_ids, pad_id, self.batch_size, self.device, row_adapters)

    def module(self, route: Route) -> torch.nn.Module:
        """The loaded module a route runs on (a host serves several adapters: see route.adapter)."""
        return self._executors[route.executor]

    # --- what is loaded --------------------------------------------------------------------------

    def loaded_count(self) -> int:
        return len(self._routes)

    def executors(self, kind: str | None = None) -> list[Executor]:
        """The loaded modules ("host": a base serving LoRA adapters, "model", "base")."""
        return [key for key in self._executors if kind is None or key[0] == kind]

    def loaded_model_ids(self) -> list[str]:
        return [route.manifest["id"] for route in self._routes.values() if route.manifest]

    def _base_route(self, base_model: str) -> Route:
        pooling = effective_pooling(base_model, DEFAULT_POOLING)
        host = ("host", base_model, pooling)
        if host in self._executors:
            # The host's own weights are the base's (same seeded head): its "__base__" rows are the
            # untrained base, so they share forward passes with the LoRA models.
            executor, adapter = host, BASE_ADAPTER
        else:
            executor, adapter = ("base", base_model, pooling), None
            if executor not in self._executors:
                self._executors[executor] = self._on_device(load_base_classifier(base_model, pooling))
        return Route(executor, adapter, base_model, DEFAULT_MAX_LENGTH, pooling, 1.0, BASE_THRESHOLD, None)

    def _load(self, model_dir: Path) -> Route:
        manifest = read_manifest(model_dir)
        pooling = pooling_of(manifest)
        executor: Executor = ("model", str(model_dir.resolve()))
        adapter = None
        method = method_for(manifest["method"])
        if method.shares_serving_host:
            executor, adapter = ("host", manifest["base_model"], pooling), f"m_{manifest['id']}"
            self._add_adapter(executor, model_dir, adapter)
        else:
            self._executors[executor] = self._on_device(method.load_for_serving(model_dir, manifest))
        return Route(
            executor,
            adapter,
            manifest["base_model"],
            max_length_of(manifest),
            pooling,
            float(manifest.get("temperature") or 1.0),
            float(manifest["threshold"]),
            manifest,
        )

    def _add_adapter(self, host_key: Executor, model_dir: Path, adapter: str) -> None:
        host = self._executors.get(host_key)
        if host is None:
            base = load_base_classifier(host_key[1], host_key[2])
            self._executors[host_key] = self._on_device(PeftModel.from_pretrained(base, model_dir, adapter))
        else:
            host.load_adapter(model_dir, adapter_name=adapter)
            self._on_device(host)

    def _evict(self, _key: str, route: Route) -> None:
        if route.adapter is None:
            del self._executors[route.executor]
            return
        host = self._executors[route.executor]
        remaining = [name for name in host.peft_config if name != route.adapter]
        if not remaining:
            # The last adapter on this host: drop the host rather than keep an empty PeftModel.
            del self._executors[route.executor]
            return
        host.set_adapter(remaining[0])
        host.delete_adapter(route.adapter)

    def _on_device(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device).eval()
