"""A stand-in policy server (standard library HTTP): answers queued (status, JSON) pairs and
records what it was sent; for client and runtime tests that need no model and no Ray."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from vla_cache_ros.serving.wire import SESSION_HEADER


def answer(steps: int, restarted: str | None, session: str = "robot") -> dict:
    stats = {"mode": "fixed", "target_ratio": 0.5, "actual_ratio": 0.0, "reused_tokens": 0,
             "recomputed_tokens": 256, "times_ms": {"total": 5.0}, "flops": 1.0, "flops_uncached": 1.0,
             "prefill_flops": 1.0, "prefill_flops_uncached": 1.0, "token_layer_computations": 1,
             "reuse_indices": [], "action_tokens": [1] * 7, "cache_reset": restarted is not None}
    return {"action": [0.1] * 7, "stats": stats,
            "session": {"session_id": session, "restarted": restarted, "replica": "r", "steps": steps}}


class StandIn:
    """An HTTP server answering queued (status, JSON) pairs and recording request bodies."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict]] = []
        self.requests: list[tuple[str, dict | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                outer.requests.append((self.headers.get(SESSION_HEADER), body))
                status, data = outer.answers.pop(0)
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _reply

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
