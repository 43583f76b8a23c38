"""Celery tasks: a job id in, everything else read from the database (see worker/execution.py)."""

from __future__ import annotations

from typing import Any

from worker.celery_app import app, runtime_holder
from worker.execution import take_turn
from worker.runtime import worker_name


@app.task(name="training.run", bind=True, ignore_result=True)
def run_training(self: Any, job_id: str) -> None:
    take_turn(runtime_holder.get(), job_id, worker_name(self.request.hostname))


@app.task(name="evaluation.run", bind=True, ignore_result=True)
def run_evaluation(self: Any, job_id: str) -> None:
    take_turn(runtime_holder.get(), job_id, worker_name(self.request.hostname))
