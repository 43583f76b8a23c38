"""Service commands for the `notetune` CLI: migrate, orgs, keys, serve, worker."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from core.settings import Settings


def add_service_commands(subparsers: argparse._SubParsersAction) -> None:
    migrate = subparsers.add_parser("migrate", help="apply database migrations (Alembic upgrade head)")
    migrate.set_defaults(func=migrate_command)

    orgs = subparsers.add_parser("orgs", help="manage organisations (tenants)")
    org_commands = orgs.add_subparsers(dest="orgs_command", required=True)
    create_org = org_commands.add_parser(
        "create", help="create an organisation and print its first admin key (shown once)"
    )
    create_org.add_argument("name", help="a name unique on this deployment, e.g. the hospital's")
    create_org.set_defaults(func=create_organisation_command)

    keys = subparsers.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create an API key and print it (shown once)")
    from core.db.models import DEFAULT_ORGANISATION, Role

    create.add_argument("--role", choices=[role.value for role in Role], required=True)
    create.add_argument("--name", default="")
    create.add_argument(
        "--org",
        default=DEFAULT_ORGANISATION,
        help=f"the organisation's name (default: {DEFAULT_ORGANISATION!r}, the single-hospital one)",
    )
    create.set_defaults(func=create_key_command)

    serve = subparsers.add_parser("serve", help="migrate, then run the API and a worker (Ctrl-C stops both)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="run the API only")
    serve.set_defaults(func=serve_command)

    worker = subparsers.add_parser("worker", help="run a Celery worker (one job at a time)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=worker_command)


def migrate_command(_args: argparse.Namespace) -> int:
    from core.db.migrations import upgrade
    from core.settings import Settings

    upgrade(Settings())
    print("database is at the latest migration")
    return 0


def create_organisation_command(args: argparse.Namespace) -> int:
    from core.services.auth import create_organisation
    from core.settings import Settings

    with _transaction(Settings()) as session:
        organisation, plaintext = create_organisation(session, args.name)
        organisation_id = organisation.id
    print(f"created organisation {organisation_id}; its first admin key (store it now, not shown again):")
    print(plaintext)
    return 0


def create_key_command(args: argparse.Namespace) -> int:
    from core.db.models import DEFAULT_ORGANISATION, Role
    from core.services.auth import create_key, default_organisation, organisation_by_name
    from core.settings import Settings

    with _transaction(Settings()) as session:
        if args.org == DEFAULT_ORGANISATION:
            organisation = default_organisation(session)
        else:
            organisation = organisation_by_name(session, args.org)
        key, plaintext = create_key(session, Role(args.role), args.name, organisation_id=organisation.id)
        key_id = key.id
    print(
        f"created {args.role} key {key_id} in organisation {args.org!r}; store it now, it is not shown again:"
    )
    print(plaintext)
    return 0


def worker_argv(loglevel: str = "INFO") -> list[str]:
    from core.settings import Settings

    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "--concurrency", "1", "--pool", "prefork", "--queues", Settings().queue_name,
        "--loglevel", loglevel, "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def worker_command(args: argparse.Namespace) -> int:
    os.execv(sys.executable, worker_argv(args.loglevel))
    return 0  # not reached: execv replaces this process


def serve_command(args: argparse.Namespace) -> int:
    from core.db.migrations import upgrade
    from core.settings import Settings

    settings = Settings()
    upgrade(settings)
    _print_first_admin_key(settings)
    worker = None if args.no_worker else _start_worker()
    url = f"http://{args.host}:{args.port}"
    print(f"notetune API on {url}  (docs: {url}/docs)", flush=True)
    if settings.embedded:
        print(f"embedded mode: SQLite and broker files in {settings.data_dir.resolve()}", flush=True)
    # uvicorn stops on SIGTERM (systemctl stop, docker stop, kill) and then raises the signal again;
    # without a handler of ours that would end this process before the `finally` stops the worker.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        return _run_api(args.host, args.port)
    finally:
        if worker is not None:
            _stop(worker)


def _exit_quietly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _start_worker() -> subprocess.Popen:
    """The worker in a process group of its own (it and its pool are stopped together), and told to
    stop if this process dies without stopping it (kill -9)."""
    return subprocess.Popen(worker_argv(), start_new_session=True, preexec_fn=_stop_when_parent_dies)


def _stop_when_parent_dies() -> None:
    # Linux's PR_SET_PDEATHSIG: SIGTERM to this child when its parent exits. Elsewhere, nothing.
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@contextlib.contextmanager
def _transaction(settings: Settings) -> Iterator[Session]:
    """One committed transaction on a database engine of its own, disposed of afterwards."""
    from core.db.session import Database

    database = Database(settings.sqlalchemy_url)
    try:
        with database.transaction() as session:
            yield session
    finally:
        database.dispose()


def _print_first_admin_key(settings: Settings) -> None:
    from core.services.auth import create_first_admin_key

    with _transaction(settings) as session:
        plaintext = create_first_admin_key(session)
    if plaintext is not None:
        print("first run: created an admin API key; store it now, it is not shown again:", flush=True)
        print(f"  {plaintext}", flush=True)


def _run_api(host: str, port: int) -> int:
    import uvicorn

    uvicorn.run("api.main:create_app", factory=True, host=host, port=port)
    return 0


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the worker's group (Celery's warm shutdown: the running job may finish), then
    SIGKILL after 30 s; a job cut short is re-queued by the reaper, as after any lost worker."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
