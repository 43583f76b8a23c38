"""Micro-batching: concurrent prediction requests share forward passes.

A request puts one job per model it asks for on a bounded queue and waits on the jobs' futures. One
inference thread, the only thread that touches the models and the tokenizers (fast tokenizers are
not safe to share between threads with different truncation settings), takes jobs until a batch is
full (`max_batch_notes`, or `max_batch_tokens` of note tokens) or `max_wait_ms` has passed since the
first job of the batch arrived. It then groups the batch's rows by the module that runs them (the
LoRA models and the untrained base on one shared base ride in one pass, each row with its adapter),
runs each group sorted by length, and hands every caller its probabilities.

Trade-offs of the options: a longer wait and larger batches raise throughput under load but add
latency at low load (a lone request waits at most `max_wait_ms`); the token budget bounds the memory
of one pass; the queue bound turns overload into a prompt "busy, retry" instead of a growing backlog.
With `enabled=False` each job runs alone, as soon as the thread is free (one forward per request).

Sharing between tenants (organisations): each has a queue of its own, the inference thread takes
their jobs in turn (round robin), and one tenant may hold at most `max_queued_notes_per_tenant`
notes in the queues. So a tenant that floods the service is told to slow down (TenantBusy) while
another tenant's request waits for at most one of the flood's jobs per batch, not for all of them.
While several tenants are active (waiting, or served within `contended_window_s`), a batch is also
cut short once its estimated work reaches `contended_pass_ms`: on a CPU, where a pass costs about
the same per note however large it is, a full batch of the flood's notes would otherwise keep the
other tenant waiting for the whole pass and then again for its own. Alone, a tenant gets full
batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.model_cache import ModelCache, Route, Scored

log = logging.getLogger("notetune.serving")


@dataclass(frozen=True)
class BatchingOptions:
    enabled: bool = True
    max_batch_notes: int = 32
    max_batch_tokens: int = 16_384
    max_wait_ms: float = 5.0
    max_queued_notes: int = 1024
    max_queued_notes_per_tenant: int = 256
    # While more than one tenant has work waiting, a pass is cut once it holds this much estimated
    # work, so that nobody waits behind a long pass of another's notes (0: never cut).
    contended_pass_ms: float = 50.0
    # A tenant served this recently counts as waiting: a closed-loop caller is between two requests
    # for a moment, and a full pass of another's notes must not start in that moment.
    contended_window_s: float = 1.0


class ServingBusy(Exception):
    """The queue is full: the caller should retry after `retry_after_s`."""

    what = "the prediction queue is full"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"{self.what}; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class TenantBusy(ServingBusy):
    """This tenant already holds its share of the queue; others may still be admitted."""

    what = "this organisation's share of the prediction queue is full"


@dataclass(frozen=True)
class ModelRequest:
    """One model a request wants scores from: a saved model directory, or None for the base."""

    model_dir: Path | None
    base_model: str | None = None


@dataclass
class _Job:
    model: ModelRequest
    texts: list[str]
    future: Future
    request: int  # jobs of one submit() share it
    tenant: str = ""
    queued_at: float = field(default_factory=time.monotonic)
    route: Route | None = None
    token_ids: list[list[int]] | None = None

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids or ())


@dataclass
class BatchStats:
    """What an operator watches; updated by the inference thread only."""

    batches: int = 0
    notes: int = 0
    last_batch_notes: int = 0
    on_batch: Callable[[int, int], None] | None = None  # (notes in one pass, jobs in it)

    def record(self, notes: int, jobs: int) -> None:
        self.batches += 1
        self.notes += notes
        self.last_batch_notes = notes
        if self.on_batch is not None:
            self.on_batch(notes, jobs)


class MicroBatcher:
    def __init__(self, cache: ModelCache, options: BatchingOptions, stats: BatchStats | None = None) -> None:
        self.cache = cache
        self.options = options
        self.stats = stats or BatchStats()
        # Each tenant's waiting jobs, the tenant whose turn it is first (see _pop_next).
        self._queues: dict[str, deque[_Job]] = {}
        self._queued_by_tenant: dict[str, int] = {}
        self._last_served: dict[str, float] = {}  # tenant: when its last job was taken (monotonic)
        self._calls: deque[tuple[Callable[[ModelCache], Any], Future]] = deque()
        self._queued_notes = 0
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="notetune-inference", daemon=True)
        self._seconds_per_note = 0.05  # a running estimate, for Retry-After
        self._loaded: frozenset[str] = frozenset()  # a snapshot other threads may read
        self._overlapping = True  # whether requests arrived together lately (see _max_wait_s)
        self._submitted = 0

    # --- callers ---------------------------------------------------------------------------------

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand; callers still queued are told the service is going away."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout=timeout_s)
        with self._condition:
            for queue in self._queues.values():
                while queue:
                    queue.popleft().future.set_exception(ServingBusy(1))
            self._queues.clear()
            self._queued_by_tenant.clear()
            while self._calls:
                self._calls.popleft()[1].set_exception(ServingBusy(1))
            self._queued_notes = 0

    def submit(self, models: list[ModelRequest], texts: list[str], tenant: str = "") -> list[Future]:
        """Queue `texts` once per model; all or nothing, so a request is never half admitted."""
        needed = len(texts) * len(models)
        with self._condition:
            if self._stopping:
                raise ServingBusy(self._retry_after_s(self._queued_notes))
            held = self._queued_by_tenant.get(tenant, 0)
            if held + needed > self.options.max_queued_notes_per_tenant and held > 0:
                raise TenantBusy(self._retry_after_s(held))
            if self._queued_notes + needed > self.options.max_queued_notes and self._queued_notes > 0:
                raise ServingBusy(self._retry_after_s(self._queued_notes))
            self._submitted += 1
            jobs = [_Job(model, texts, Future(), self._submitted, tenant) for model in models]
            self._queues.setdefault(tenant, deque()).extend(jobs)
            self._queued_by_tenant[tenant] = held + needed
            self._queued_notes += needed
            self._condition.notify()
        return [job.future for job in jobs]

    def call(self, function: Callable[[ModelCache], Any]) -> Future:
        """Run `function(cache)` in the inference thread between batches (e.g. an explanation)."""
        future: Future = Future()
        with self._condition:
            if self._stopping:
                raise ServingBusy(self._retry_after_s(self._queued_notes))
            self._calls.append((function, future))
            self._condition.notify()
        return future

    def queued_notes(self) -> int:
        return self._queued_notes

    def loaded_models(self) -> frozenset[str]:
        """Ids of the fine-tuned models loaded, as of the last batch."""
        return self._loaded

    def _retry_after_s(self, notes: int) -> int:
        return max(1, round(notes * self._seconds_per_note))

    # --- the inference thread --------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            self._run_calls()
            batch = self._collect()
            if batch is None:
                if self._stopping:
                    return
                continue
            started = time.monotonic()
            self._run(batch)
            self._loaded = frozenset(self.cache.loaded_model_ids())
            self._overlapping = len({job.request for job in batch}) > 1 or bool(self._queues)
            notes = sum(len(job.texts) for job in batch)
            elapsed = time.monotonic() - started
            self._seconds_per_note = 0.8 * self._seconds_per_note + 0.2 * elapsed / max(1, notes)

    def _collect(self) -> list[_Job] | None:
        """Jobs for one batch: the first waiting job, then more until full or the wait is over."""
        batch: list[_Job] = []
        notes = tokens = 0
        while True:
            job = self._next_job(deadline=batch[0].queued_at + self._max_wait_s() if batch else None)
            if job is None:  # the batch is due, or (with none begun) a call is waiting or we stop
                return batch or None
            self._prepare(job)
            batch.append(job)
            notes += len(job.texts)
            tokens += job.tokens
            if self._full(notes, tokens) or self._cut_for_others(batch, notes):
                return batch

    def _next_job(self, deadline: float | None) -> _Job | None:
        with self._condition:
            while not self._queues:
                if self._stopping or (self._calls and deadline is None):
                    return None
                if deadline is None:
                    self._condition.wait(timeout=1.0)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._condition.wait(timeout=remaining):
                    return None
            return self._pop_next()

    def _pop_next(self) -> _Job:
        """The first job of the tenant whose turn it is; that tenant then goes to the back of the line
        (a tenant with nothing left waiting leaves it). Called with the condition held."""
        tenant = next(iter(self._queues))
        queue = self._queues.pop(tenant)
        job = queue.popleft()
        if queue:
            self._queues[tenant] = queue
        self._queued_notes -= len(job.texts)
        self._last_served[tenant] = time.monotonic()
        if len(self._last_served) > 4 * len(self._queued_by_tenant) + 64:  # forget long-gone tenants
            cutoff = time.monotonic() - self.options.contended_window_s
            self._last_served = {name: at for name, at in self._last_served.items() if at >= cutoff}
        left = self._queued_by_tenant[tenant] - len(job.texts)
        if left > 0:
            self._queued_by_tenant[tenant] = left
        else:
            self._queued_by_tenant.pop(tenant, None)
        return job

    def _cut_for_others(self, batch: list[_Job], notes: int) -> bool:
        """Whether this pass is long enough while another tenant has work waiting, in it, or was served
        within the last `contended_window_s`."""
        if self.options.contended_pass_ms <= 0:
            return False
        now = time.monotonic()
        with self._condition:
            recent = {
                tenant
                for tenant, at in self._last_served.items()
                if now - at < self.options.contended_window_s
            }
            tenants = {job.tenant for job in batch} | set(self._queues) | recent
        return len(tenants) > 1 and notes * self._seconds_per_note * 1000 >= self.options.contended_pass_ms

    def _full(self, notes: int, tokens: int) -> bool:
        if not self.options.enabled:
            return True
        return notes >= self.options.max_batch_notes or tokens >= self.options.max_batch_tokens

    def _max_wait_s(self) -> float:
        """Wait for company only while requests overlap: a lone caller (the last batch was one job and
        nothing queued behind it) would wait for nobody."""
        if not self.options.enabled or not self._overlapping:
            return 0.0
        return self.options.max_wait_ms / 1000.0

    def _run_calls(self) -> None:
        while True:
            with self._condition:
                if not self._calls:
                    return
                function, future = self._calls.popleft()
            try:
                future.set_result(function(self.cache))
            except Exception as error:
                future.set_exception(error)

    def _prepare(self, job: _Job) -> None:
        """Load the job's model and tokenise its notes (here, in the inference thread)."""
        try:
            job.route = self.cache.route(job.model.model_dir, base_model=job.model.base_model)
            job.token_ids = self.cache.encode(job.route, job.texts)
        except Exception as error:  # a missing model fails its own callers only
            job.future.set_exception(error)

    def _run(self, batch: list[_Job]) -> None:
        ready = [job for job in batch if not job.future.done()]
        groups: dict[tuple, list[_Job]] = {}
        for job in ready:
            assert job.route is not None
            groups.setdefault(job.route.executor, []).append(job)
        for executor, jobs in groups.items():
            self._run_group(executor, jobs)
        self.stats.record(sum(len(job.texts) for job in ready), len(ready))

    def _run_group(self, executor: tuple, jobs: list[_Job]) -> None:
        ids = [row for job in jobs for row in job.token_ids or ()]
        adapters = [job.route.adapter for job in jobs for _ in job.texts]
        try:
            logits = self.cache.logits(executor, ids, adapters, jobs[0].route.base_model)
        except Exception as error:
            log.error("a forward pass failed with %s", type(error).__name__)
            for job in jobs:
                job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            rows = logits[start : start + len(job.texts)]
            start += len(job.texts)
            route = job.route
            job.future.set_result(
                Scored(route.probabilities(np.asarray(rows)), route.threshold, route.manifest)
            )
