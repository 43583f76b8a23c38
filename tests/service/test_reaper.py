"""The reaper, retries and stale attempts, with the real state machine on the session's PostgreSQL.

A stale attempt is one the reaper gave up on while it was still alive (a stalled database, a starved
heartbeat, clock skew): whatever it does later must not touch the attempt that took over.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from sqlalchemy import event, text

from tests.service.helpers import (
    SMALL_JOB,
    attempt_dirs,
    bearer,
    default_organisation_id,
    registered_dataset,
    stored_model,
)

QUICK = {**SMALL_JOB, "head_init": "random"}


@pytest.fixture(scope="module")
def dataset_id(database, settings, organisation_id) -> str:
    return registered_dataset(database, settings, organisation_id, seed=501, name="reaper.csv")


def new_job(database, dataset_id: str, **values):
    from core.db.base import new_id, utcnow
    from core.db.models import Job, JobKind, JobStatus

    fields = {
        "id": new_id(),
        "organisation_id": default_organisation_id(database),
        "kind": JobKind.finetune,
        "status": JobStatus.queued,
        "method": "full",
        "stage": 1,
        "train_dataset_id": dataset_id,
        "hyperparameters": QUICK,
        "output_model_id": new_id(),
        "created_at": utcnow(),
    }
    job = Job(**{**fields, **values})
    with database.transaction() as session:
        session.add(job)
    return job


def job_row(database, job_id: str):
    from core.db.models import Job

    with database.session() as session:
        return session.get(Job, job_id)


def make_stale(session, job_id: str, age_s: float = 3600.0) -> None:
    """The job's heartbeat `age_s` old by the database's clock: the reaper's next pass takes it."""
    session.execute(
        text("UPDATE jobs SET heartbeat_at = now() - make_interval(secs => :age) WHERE id = :id"),
        {"id": job_id, "age": age_s},
    )


def stale_only_to_this_test(session, job_id: str, settings):
    """A committed stale job that the session's live worker must not reap first (its monitor reaps
    every second): the heartbeat is just past a shorter limit, which only the test's reaper uses.
    Returns those settings; the live worker sees the job stale only a second and a half later."""
    limit = settings.heartbeat_interval_s * 4
    make_stale(session, job_id, age_s=limit + 0.5)
    assert limit + 1.5 < settings.stale_after_s
    return settings.model_copy(update={"stale_after_s": limit})


@contextmanager
def before_first_job_update(session, action):
    """Run `action` once, just before `session` sends its first UPDATE of the jobs table: a
    concurrent request landing between the reaper's read and its write."""
    fired = []

    def hook(conn, cursor, statement, parameters, context, executemany):
        if not fired and statement.lstrip().upper().startswith("UPDATE JOBS"):
            fired.append(True)
            action()

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield fired
    finally:
        event.remove(engine, "before_cursor_execute", hook)


def test_a_cancel_during_the_requeue_wins(database, settings, dataset_id):
    from core.db.models import JobStatus
    from core.services.jobs import cancel_job, reap_stale_jobs
    from core.services.runs import claim

    job = new_job(database, dataset_id)
    with database.transaction() as session:
        claim(session, job.id, "dead-worker")
        reaper_settings = stale_only_to_this_test(session, job.id, settings)

    def cancel_from_the_api():
        from core.db.session import Database

        api = Database(settings.sqlalchemy_url)
        try:
            with api.transaction() as other:
                assert cancel_job(other, job.id, organisation_id=job.organisation_id).cancel_requested
        finally:
            api.dispose()

    reaper = type(database)(settings.sqlalchemy_url)
    try:
        with reaper.transaction() as session:
            with before_first_job_update(session, cancel_from_the_api) as fired:
                result = reap_stale_jobs(session, reaper_settings)
            assert fired, "the reaper never updated the job"
    finally:
        reaper.dispose()
    row = job_row(database, job.id)
    assert row.status == JobStatus.cancelled and row.cancel_requested and row.finished_at is not None
    assert [j.id for j in result.cancelled] == [job.id] and not result.requeued


def test_a_cancel_flagged_job_left_queued_is_closed(database, settings, dataset_id):
    from core.db.models import JobStatus
    from core.services.jobs import queued_jobs_to_resend, reap_stale_jobs

    job = new_job(database, dataset_id, cancel_requested=True, attempt=1)
    with database.transaction() as session:
        reap_stale_jobs(session, settings)
        assert job.id not in [j.id for j in queued_jobs_to_resend(session, settings)]
    assert job_row(database, job.id).status == JobStatus.cancelled


def test_a_cancel_lands_whatever_state_the_job_moved_to(database, settings, dataset_id):
    """The API's cancel read the job as running, and the reaper re-queued it before the write."""
    from core.db.models import JobStatus
    from core.services.jobs import cancel_job, reap_stale_jobs
    from core.services.runs import claim

    job = new_job(database, dataset_id)
    with database.transaction() as session:
        claim(session, job.id, "dead-worker")
        reaper_settings = stale_only_to_this_test(session, job.id, settings)

    def reaper_pass():
        reaper = type(database)(settings.sqlalchemy_url)
        try:
            with reaper.transaction() as other:
                assert reap_stale_jobs(other, reaper_settings).requeued
        finally:
            reaper.dispose()

    api = type(database)(settings.sqlalchemy_url)
    try:
        with api.transaction() as session, before_first_job_update(session, reaper_pass):
            cancelled = cancel_job(session, job.id, organisation_id=job.organisation_id)
    finally:
        api.dispose()
    assert cancelled.status == JobStatus.cancelled
    assert job_row(database, job.id).status == JobStatus.cancelled


def test_at_max_attempts_a_dead_workers_job_fails(database, settings, dataset_id):
    from core.db.models import JobStatus
    from core.services.jobs import reap_stale_jobs
    from core.services.runs import claim

    job = new_job(database, dataset_id, attempt=settings.max_attempts - 1)
    with database.transaction() as session:
        claim(session, job.id, "dead-worker")
        make_stale(session, job.id)
        result = reap_stale_jobs(session, settings)
    row = job_row(database, job.id)
    assert [j.id for j in result.failed] == [job.id]
    assert row.status == JobStatus.failed and row.attempt == settings.max_attempts
    assert f"attempt {settings.max_attempts} of {settings.max_attempts}" in row.error


def test_the_reaper_uses_the_database_clock(database, settings, dataset_id):
    """A heartbeat written by a worker whose clock runs an hour slow is still a fresh heartbeat."""
    from core.db.models import JobStatus
    from core.services.jobs import reap_stale_jobs
    from core.services.runs import claim, heartbeat

    job = new_job(database, dataset_id)
    with database.transaction() as session:
        claim(session, job.id, "slow-clock-worker")
        heartbeat(session, job.id, 1)
    with database.transaction() as session:
        assert job.id not in [j.id for j in reap_stale_jobs(session, settings).requeued]
    assert job_row(database, job.id).status == JobStatus.running
    with database.transaction() as session:
        make_stale(session, job.id)
        assert job.id in [j.id for j in reap_stale_jobs(session, settings).requeued]


def reap_and_run_again(runtime, settings, job_id: str) -> None:
    """Inside attempt 1: the reaper gives up on it, and attempt 2 runs to success meanwhile."""
    from core.services.jobs import reap_stale_jobs
    from worker.execution import finetune_body, run_job

    with runtime.database.transaction() as session:
        make_stale(session, job_id)
        assert reap_stale_jobs(session, settings).requeued
    run_job(runtime, job_id, "second-worker", finetune_body)


def published_model(database, settings, job_id: str):
    from core.db.models import Job, JobStatus, Model

    with database.session() as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.succeeded and job.attempt == 2, (job.status, job.attempt, job.error)
        model = session.get(Model, job.output_model_id)
    directory = stored_model(settings, model.path)
    assert (directory / "manifest.json").is_file(), "the winner's model directory is gone"
    return model, directory


def test_a_stale_attempts_failure_keeps_the_winners_model(database, settings, runtime, dataset_id):
    from worker.execution import run_job

    job = new_job(database, dataset_id)

    def stale_attempt_that_fails(runtime, running):
        reap_and_run_again(runtime, settings, running.id)
        raise RuntimeError("the stale attempt fails late")

    run_job(runtime, job.id, "first-worker", stale_attempt_that_fails)
    published_model(database, settings, job.id)
    assert not attempt_dirs(runtime.store, job.output_model_id)


def test_a_stale_attempts_late_success_is_refused(database, settings, runtime, dataset_id):
    import json

    from worker.execution import finetune_body, run_job

    job = new_job(database, dataset_id, hyperparameters={**QUICK, "seed": 7})

    def stale_attempt_that_succeeds(runtime, running):
        reap_and_run_again(runtime, settings, running.id)
        finetune_body(runtime, running)  # trains to the end, then finds the job is no longer its own

    run_job(runtime, job.id, "first-worker", stale_attempt_that_succeeds)
    model, directory = published_model(database, settings, job.id)
    on_disk = json.loads((directory / "manifest.json").read_text())
    assert on_disk["logit_fingerprint"] == model.manifest["logit_fingerprint"]
    assert not attempt_dirs(runtime.store, job.output_model_id)


def test_a_run_reports_its_phase_from_the_claim(database, settings, runtime, dataset_id):
    from core.db.models import JobEvent
    from core.services.runs import claim
    from ml.finetune import PHASES
    from worker.execution import finetune_body, run_job

    job = new_job(database, dataset_id, hyperparameters={**SMALL_JOB, "head_init": "linear_probe"})
    seen = []

    def body(runtime, running):
        seen.append(job_row(database, running.id).progress)
        finetune_body(runtime, running)

    run_job(runtime, job.id, "phase-worker", body)
    assert seen == [{"phase": "starting"}]
    with database.session() as session:
        events = session.query(JobEvent).filter(JobEvent.job_id == job.id, JobEvent.kind == "phase")
        phases = [e.data["phase"] for e in events.order_by(JobEvent.id)]
    assert phases == list(PHASES)
    final = job_row(database, job.id).progress
    assert final["phase"] == "saving" and final["percent"] == 100.0

    # A job that cannot be claimed shows nothing new.
    with database.transaction() as session:
        assert claim(session, job.id, "late-redelivery") is None


# The configuration a run trains with: resolved once at submit, stored with the job.


def test_the_worker_trains_with_the_configuration_stored_at_submit(database, settings, runtime, dataset_id):
    from core.db.models import Job, JobStatus, Model
    from ml.config import TrainConfig
    from worker.execution import finetune_body, run_job

    resolved = TrainConfig.for_stage(1, "full", QUICK).to_dict()
    # Settings that resolving the row's (empty) hyperparameters again would not give: the stored ones
    # must win (a default changed between submit and run changes nothing either).
    stored = {**resolved, "epochs": 1, "max_length": 48, "seed": 7}
    job = new_job(database, dataset_id, hyperparameters={}, run_config=stored)
    run_job(runtime, job.id, "config-worker", finetune_body)
    with database.session() as session:
        row = session.get(Job, job.id)
        assert row.status == JobStatus.succeeded, row.error
        trained = session.get(Model, row.output_model_id).hyperparameters
    assert {name: trained[name] for name in ("epochs", "max_length", "seed")} == {
        "epochs": 1,
        "max_length": 48,
        "seed": 7,
    }


def test_a_submitted_fine_tune_stores_its_whole_configuration(client, keys, database, dataset_id):
    from core.db.models import Job
    from ml.config import TrainConfig

    body = {"method": "lora", "train_dataset_id": dataset_id, "hyperparameters": SMALL_JOB}
    response = client.post("/jobs/finetune", json=body, headers=bearer(keys["trainer"]))
    assert response.status_code == 202, response.text
    with database.session() as session:
        row = session.get(Job, response.json()["id"])
    assert row.run_config == TrainConfig.for_stage(1, "lora", SMALL_JOB).to_dict()
    assert set(row.hyperparameters) == set(SMALL_JOB)  # what the request set, as it set it
