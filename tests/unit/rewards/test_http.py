"""The reward service and its client: round trip on an ephemeral port, errors, retries, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from nemo_rpo.rewards import HTTPRewardModel, RewardError, synthetic_task_reward
from nemo_rpo.rewards import http as http_module
from nemo_rpo.rewards.server import main, make_server

PROMPTS = ["reverse: abc\n", "sort: 3 1 2\n", "upper: ab\n"]
RESPONSES = ["cbx", "1 2 3", "Ab"]


def flaky_judge(prompts: list[str], responses: list[str]) -> list[float]:
    if responses[0] == "boom":
        raise ValueError("cannot judge boom")
    if responses[0] == "slow":
        time.sleep(0.5)
    return synthetic_task_reward(prompts, responses)


@pytest.fixture()
def url() -> Iterator[str]:
    server = make_server(flaky_judge, port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_module, "_BACKOFF_S", 0.01)


def test_round_trip_matches_the_judge_in_process(url: str) -> None:
    rewards = HTTPRewardModel(url, timeout=10.0, retries=0).score(PROMPTS, RESPONSES)
    assert rewards.tolist() == pytest.approx(synthetic_task_reward(PROMPTS, RESPONSES)) == [0.6667, 1.0, 0.5]
    assert HTTPRewardModel(url + "/", timeout=10.0, retries=0).score([], []).shape == (0,)
    with urllib.request.urlopen(url + "/health", timeout=10) as reply:
        assert json.loads(reply.read())["status"] == "ok"


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/score", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_requests_get_400_with_a_message(url: str) -> None:
    assert post(url, b"not json")[0] == 400
    code, reply = post(url, json.dumps({"prompts": ["a"], "responses": ["a", "b"]}).encode())
    assert code == 400 and reply["error"] == "1 prompts but 2 responses"
    code, reply = post(url, json.dumps({"prompts": ["a"], "responses": [1]}).encode())
    assert code == 400 and "'responses' must be a list of strings" in reply["error"]


def test_judge_failure_is_reported_not_retried(url: str) -> None:
    with pytest.raises(RewardError, match="answered 500: ValueError: cannot judge boom"):
        HTTPRewardModel(url, timeout=10.0, retries=3).score(["reverse: a\n"], ["boom"])


def test_timeout_is_retried_then_reported(url: str) -> None:
    with pytest.raises(RewardError, match=r"unreachable after 2 attempt\(s\) \(.*timed out"):
        HTTPRewardModel(url, timeout=0.1, retries=1).score(["reverse: a\n"], ["slow"])


def test_unreachable_server() -> None:
    with socket.socket() as sock:  # a port that was just free and now has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = HTTPRewardModel(f"http://127.0.0.1:{port}", timeout=2.0, retries=2)
    with pytest.raises(
        RewardError, match=r"is unreachable after 3 attempt\(s\).*nemo_rpo.rewards.server"
    ) as err:
        client.score(["reverse: a\n"], ["a"])
    assert "\n" not in str(err.value)


def test_cli_rejects_a_bad_judge(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--judge", "nemo_rpo.rewards.judges:nope", "--port", "0"])
    assert exit_info.value.code == 2
    assert (
        "error: --judge: module 'nemo_rpo.rewards.judges' has no attribute 'nope'" in capsys.readouterr().err
    )


def test_cli_serves_on_localhost() -> None:
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, "-m", "nemo_rpo.rewards.server", "--judge",
           "nemo_rpo.rewards.judges:synthetic_task_reward", "--port", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        line = proc.stdout.readline()
        address = line.rsplit(" on ", 1)[-1].strip()
        assert address.startswith("http://127.0.0.1:"), line
        assert HTTPRewardModel(address, timeout=30.0, retries=0).score(
            PROMPTS, RESPONSES
        ).tolist() == pytest.approx([0.6667, 1.0, 0.5])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
