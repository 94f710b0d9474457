"""A small HTTP reward service around a judge function (standard library only).

Launch::

    python -m nemo_rpo.rewards.server --judge nemo_rpo.rewards.judges:synthetic_task_reward --port 8000

then point training at it with ``reward.kind=http reward.url=http://127.0.0.1:8000``. It binds
127.0.0.1 unless ``--host`` says otherwise (there is no authentication). API:

* ``POST /score`` ``{"prompts": [str], "responses": [str]}`` -> ``{"rewards": [float]}``
* ``GET /health`` -> ``{"status": "ok", "judge": "<path>"}``

Errors come back as ``{"error": "<message>"}`` with 400 (bad request), 404 (unknown path) or 500 (the
judge raised or returned bad values). Requests are served on threads; the judge must be thread-safe.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nemo_rpo.config.schema import ConfigError
from nemo_rpo.rewards.judges import Judge, load_judge, score_with_judge

__all__ = ["main", "make_server"]

logger = logging.getLogger(__name__)

_MAX_BODY = 64 * 1024 * 1024


def make_server(
    judge: Judge, host: str = "127.0.0.1", port: int = 0, name: str | None = None
) -> ThreadingHTTPServer:
    """A server (not yet serving) that scores with ``judge``; ``port=0`` picks a free port.

    Call ``serve_forever()`` (in a thread for tests), then ``shutdown()`` and ``server_close()``.
    ``server.server_address`` holds the bound ``(host, port)``.
    """
    judge_name = name or getattr(judge, "__qualname__", repr(judge))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") == "/health":
                self._reply(HTTPStatus.OK, {"status": "ok", "judge": judge_name})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"unknown path {self.path}; use POST /score"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/score":
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"unknown path {self.path}; use POST /score"})
                return
            try:
                prompts, responses = self._read_request()
            except ValueError as err:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(err)})
                return
            try:
                rewards = score_with_judge(judge, prompts, responses, judge_name)
            except Exception as err:  # the judge is user code: report anything it raises to the client
                logger.exception("judge %s failed", judge_name)
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(err).__name__}: {err}"})
                return
            self._reply(HTTPStatus.OK, {"rewards": rewards})

        def _read_request(self) -> tuple[list[str], list[str]]:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= _MAX_BODY:
                raise ValueError(f"a JSON body of 1 to {_MAX_BODY} bytes is required")
            try:
                payload = json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ValueError(f"the body is not JSON ({err})") from err
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object {prompts, responses}")
            prompts, responses = payload.get("prompts"), payload.get("responses")
            for key, value in (("prompts", prompts), ("responses", responses)):
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"'{key}' must be a list of strings")
            if len(prompts) != len(responses):
                raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
            return prompts, responses

        def _reply(self, status: HTTPStatus, payload: dict) -> None:
            body = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - overrides the base
            logger.debug("%s " + format, self.address_string(), *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    """Serve a judge until interrupted; prints the address it listens on."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--judge", required=True, help="pkg.module:function (prompts, responses) -> list[float]"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: 8000)")
    args = parser.parse_args(argv)
    try:
        judge = load_judge(args.judge, field_name="--judge")
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = make_server(judge, args.host, args.port, name=args.judge)
    host, port = server.server_address[:2]
    print(f"nemo_rpo reward server: judge {args.judge} on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(main())
