"""`/healthz` on a port of its own (NOTETUNE_HEALTH_PORT), for load balancers and orchestrators.

The main port's `/healthz` answers from memory too, but under a flood of predictions its request waits
behind every other request the event loop has to parse. Here a plain thread answers it from the last
probe result, outside the event loop, so the probe sees "busy but alive" in milliseconds.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.services.health import HealthProbe


def health_body(probe: HealthProbe) -> tuple[int, dict]:
    """(status code, body) of a health answer: 200 when every check passed, else 503."""
    checks = {name: {"ok": result.ok, "detail": result.detail} for name, result in probe.latest().items()}
    healthy = all(check["ok"] for check in checks.values())
    return (200 if healthy else 503), {"status": "ok" if healthy else "degraded", "checks": checks}


class HealthPort:
    def __init__(self, probe: HealthProbe, host: str, port: int) -> None:
        self.server = ThreadingHTTPServer((host, port), _handler(probe))
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="notetune-health-port", daemon=True
        )

    def start(self) -> HealthPort:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(probe: HealthProbe) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            if self.path.split("?", 1)[0] != "/healthz":
                self._answer(404, {"error": {"code": "not_found", "message": "only /healthz is served here"}})
                return
            self._answer(*health_body(probe))

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *_args) -> None:  # probes every few seconds would flood the log
            return

    return HealthHandler
