"""Serving: base and tuned outputs, adapters sharing one base, a bounded cache."""

from __future__ import annotations

import numpy as np
import pytest

from ml.config import TrainConfig
from ml.finetune import finetune
from ml.model_cache import ModelCache
from ml.modeling import load_for_inference
from models_store.layout import read_manifest

FAST = {"epochs": 1, "max_length": 64, "batch_size": 8, "warmup_steps": 1, "lr": 5e-3}
NOTES = ["Stage IV with liver metastases, ECOG 3.", "Stage I, complete response.", "Grade 2, ER positive."]


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_bert, narrative_csv):
    root = tmp_path_factory.mktemp("served")
    for name, method, seed in [
        ("lora_a", "lora", 1),
        ("lora_b", "lora", 2),
        ("ada", "adalora", 1),
        ("full", "full", 1),
    ]:
        config = TrainConfig.for_stage(
            1, method, {**FAST, "seed": seed, "epochs": 2 if method == "adalora" else 1}
        )
        finetune(narrative_csv, config, root / name, model_id=name, base_model=tiny_bert)
    return root


def standalone_probabilities(model_dir, texts):
    from ml.forward import logits_for_model_dir
    from ml.metrics import softmax_probability

    manifest = read_manifest(model_dir)
    import torch

    return softmax_probability(logits_for_model_dir(model_dir, manifest, texts, torch.device("cpu")))


def test_lora_models_share_one_base_and_match_standalone_loads(models):
    cache = ModelCache(max_models=4)
    for name in ("lora_a", "lora_b", "lora_a"):
        shared = cache.score(models / name, NOTES).probabilities
        np.testing.assert_allclose(
            shared, standalone_probabilities(models / name, NOTES), rtol=1e-6, atol=1e-7
        )
    assert len(cache.executors("host")) == 1 and cache.loaded_count() == 2


def test_each_model_gives_its_own_outputs_in_order(models):
    cache = ModelCache(max_models=4)
    outputs = {name: cache.predict(models / name, NOTES) for name in ("lora_a", "lora_b", "ada", "full")}
    for items in outputs.values():
        assert len(items) == len(NOTES)
        assert all(item["label"] == int(item["probability"] >= item["threshold"]) for item in items)
    assert outputs["lora_a"] != outputs["lora_b"]
    single = cache.predict(models / "full", NOTES[1:2])
    assert single[0]["probability"] == pytest.approx(outputs["full"][1]["probability"], abs=1e-6)


def test_the_cache_is_bounded_and_evicts_adapters(models):
    cache = ModelCache(max_models=1)
    first = cache.score(models / "lora_a", NOTES).probabilities
    cache.score(models / "lora_b", NOTES)
    assert cache.loaded_count() == 1
    np.testing.assert_allclose(cache.score(models / "lora_a", NOTES).probabilities, first, rtol=1e-6)


def test_base_outputs_are_repeatable_and_differ_from_tuned(models, tiny_bert):
    one = ModelCache().predict(None, NOTES, base_model=tiny_bert)
    two = ModelCache().predict(None, NOTES, base_model=tiny_bert)
    assert one == two and one[0]["threshold"] == 0.5
    tuned = ModelCache().predict(models / "full", NOTES)
    assert [i["probability"] for i in one] != [i["probability"] for i in tuned]


def test_threshold_override(models):
    items = ModelCache().predict(models / "full", NOTES, threshold=0.0)
    assert all(item["label"] == 1 and item["threshold"] == 0.0 for item in items)


def test_peft_base_logits_equal_the_plain_base(models, tiny_bert):
    """disable_adapter() on a LoRA model gives the untrained base, seeded head included."""
    import torch

    from ml.architectures import load_base_classifier
    from ml.data import encode
    from ml.forward import predict_logits
    from ml.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    ids = encode(tokenizer, NOTES, 64)
    peft_model = load_for_inference(models / "lora_a", read_manifest(models / "lora_a"))
    with peft_model.disable_adapter():
        via_adapter = predict_logits(peft_model, ids, tokenizer.pad_token_id, 8, torch.device("cpu"))
    plain = predict_logits(
        load_base_classifier(tiny_bert), ids, tokenizer.pad_token_id, 8, torch.device("cpu")
    )
    np.testing.assert_allclose(via_adapter, plain, rtol=1e-6, atol=1e-7)


MORE_NOTES = [
    "Node positive. HER2 amplified; treated with trastuzumab. Lives alone",
    "Triple negative; brain metastases. ECOG 4.\nHospice discussed.",
    "pT1N0M0 G1 ER+/PR+",
]


def test_mixed_adapter_batches_equal_one_model_at_a_time(models, tiny_bert):
    """Rows of two LoRA models and the untrained base in one forward give each model's own answers."""
    cache = ModelCache(max_models=4)
    texts = NOTES + MORE_NOTES
    alone = {
        "lora_a": cache.score(models / "lora_a", texts).probabilities,
        "lora_b": cache.score(models / "lora_b", texts).probabilities,
        "base": cache.score(None, texts, base_model=tiny_bert).probabilities,
    }
    routes = {
        "lora_a": cache.route(models / "lora_a"),
        "lora_b": cache.route(models / "lora_b"),
        "base": cache.route(None, base_model=tiny_bert),
    }
    assert len({route.executor for route in routes.values()}) == 1, "base and LoRA share the host"
    # Interleave: row i of the batch belongs to model i % 3, note i // 3 % len(texts).
    names = list(routes)
    rows = [(names[i % 3], texts[(i // 3) % len(texts)]) for i in range(3 * len(texts))]
    ids = [cache.encode(routes[name], [text])[0] for name, text in rows]
    route = routes["lora_a"]
    logits = cache.logits(route.executor, ids, [routes[name].adapter for name, _ in rows], route.base_model)
    for row, (name, text) in enumerate(rows):
        expected = alone[name][texts.index(text)]
        got = routes[name].probabilities(logits[row : row + 1])[0]
        assert got == pytest.approx(expected, abs=1e-5), (name, row)
    assert not np.allclose(alone["lora_a"], alone["lora_b"])


def test_adalora_is_merged_and_matches_a_standalone_load(models):
    cache = ModelCache(max_models=4)
    merged = cache.score(models / "ada", NOTES).probabilities
    np.testing.assert_allclose(merged, standalone_probabilities(models / "ada", NOTES), atol=1e-5)
    assert cache.route(models / "ada").adapter is None


def test_the_batcher_answers_concurrent_callers_exactly_and_forms_batches(models, tiny_bert):
    from concurrent.futures import ThreadPoolExecutor

    from ml.serving import BatchingOptions, MicroBatcher, ModelRequest

    texts = NOTES + MORE_NOTES
    cache = ModelCache(max_models=4)
    expected = {
        name: cache.score(models / name if name else None, texts, base_model=tiny_bert).probabilities
        for name in ("lora_a", "lora_b", "full", None)
    }
    batcher = MicroBatcher(cache, BatchingOptions(max_wait_ms=50, max_batch_notes=64)).start()
    try:

        def ask(index: int) -> tuple[int, list[np.ndarray]]:
            note = index % len(texts)
            primary = ("lora_a", "lora_b", "full")[index % 3]
            requests = [ModelRequest(models / primary), ModelRequest(None, tiny_bert)]
            futures = batcher.submit(requests, [texts[note]])
            return index, [future.result(timeout=60).probabilities[0] for future in futures]

        with ThreadPoolExecutor(max_workers=12) as pool:
            answers = list(pool.map(ask, range(36)))
    finally:
        batcher.stop()
    for index, (primary_p, base_p) in answers:
        note, primary = index % len(texts), ("lora_a", "lora_b", "full")[index % 3]
        assert primary_p == pytest.approx(expected[primary][note], abs=1e-5)
        assert base_p == pytest.approx(expected[None][note], abs=1e-5)
    assert batcher.stats.batches < 36, "concurrent requests were batched together"


def test_the_batcher_refuses_work_beyond_its_queue_bound(models):
    from ml.serving import BatchingOptions, MicroBatcher, ModelRequest, ServingBusy

    batcher = MicroBatcher(ModelCache(), BatchingOptions(max_queued_notes=4))  # not started: nothing drains
    batcher.submit([ModelRequest(models / "full")], NOTES)
    with pytest.raises(ServingBusy) as busy:
        batcher.submit([ModelRequest(models / "full")], NOTES)
    assert busy.value.retry_after_s >= 1
    assert batcher.queued_notes() == len(NOTES)


def test_a_flooding_tenant_gets_its_share_and_the_others_are_served_in_turn(models):
    """Tenant A fills its share of the queue and is refused (TenantBusy) while B is still admitted;
    once the thread runs, B's single job goes in the first batches, not after all of A's."""
    from ml.serving import BatchingOptions, MicroBatcher, ModelRequest, TenantBusy

    options = BatchingOptions(max_batch_notes=1, max_queued_notes=64, max_queued_notes_per_tenant=4)
    batcher = MicroBatcher(ModelCache(), options)  # not started yet: the queue holds what is admitted
    request = [ModelRequest(models / "full")]
    flood = [batcher.submit(request, [NOTES[index % len(NOTES)]], tenant="A") for index in range(4)]
    with pytest.raises(TenantBusy) as busy:
        batcher.submit(request, [NOTES[0]], tenant="A")
    assert busy.value.retry_after_s >= 1
    finished: list[str] = []
    single = batcher.submit(request, [NOTES[1]], tenant="B")
    for tenant, futures in (("A", flood), ("B", [single])):
        for (future,) in futures:
            future.add_done_callback(lambda _, tenant=tenant: finished.append(tenant))
    batcher.start()
    try:
        single[0].result(timeout=60)
        for (future,) in flood:
            future.result(timeout=60)
    finally:
        batcher.stop()
    assert finished.index("B") <= 1, f"B waited behind A's flood: {finished}"
    assert batcher.queued_notes() == 0


def test_a_missing_model_fails_only_its_own_caller(models, tmp_path):
    from ml.serving import BatchingOptions, MicroBatcher, ModelRequest
    from models_store.layout import ModelNotFound

    batcher = MicroBatcher(ModelCache(), BatchingOptions(max_wait_ms=50)).start()
    try:
        missing, present = batcher.submit(
            [ModelRequest(tmp_path / "gone"), ModelRequest(models / "full")], NOTES
        )
        with pytest.raises(ModelNotFound):
            missing.result(timeout=60)
        assert len(present.result(timeout=60).probabilities) == len(NOTES)
    finally:
        batcher.stop()


def test_the_batcher_runs_calls_in_its_own_thread_between_batches(models):
    import threading

    from ml.serving import BatchingOptions, MicroBatcher

    batcher = MicroBatcher(ModelCache(), BatchingOptions()).start()
    try:
        thread_name = batcher.call(lambda cache: threading.current_thread().name).result(timeout=30)
        loaded = batcher.call(lambda cache: cache.route(models / "full").adapter).result(timeout=30)
        failing = batcher.call(lambda cache: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=30)
    finally:
        batcher.stop()
    assert thread_name == "notetune-inference" and loaded is None
