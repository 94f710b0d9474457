"""Client of a reward service: ``POST {url}/score`` with ``{"prompts", "responses"}`` -> ``{"rewards"}``.

The service is :mod:`nemo_rpo.rewards.server` or anything that speaks the same JSON. Connection
failures, timeouts and 502/503/504 answers are retried with exponential backoff; any other error answer
is raised at once with the service's message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import torch

from nemo_rpo.rewards.base import RewardError, check_rewards, rewards_tensor

__all__ = ["HTTPRewardModel"]

_RETRY_STATUS = (502, 503, 504)
_BACKOFF_S = 0.5  # first pause between attempts; doubles after each


class HTTPRewardModel:
    """A :class:`~nemo_rpo.rewards.base.RewardModel` backed by a reward service."""

    def __init__(self, url: str, *, timeout: float, retries: int) -> None:
        """Args:
        url: the service's base address, e.g. ``http://127.0.0.1:8000`` (``/score`` is appended).
        timeout: seconds per attempt.
        retries: further attempts after the first fails to connect or times out.
        """
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """``[N]`` float32 rewards.

        Raises:
            RewardError: the service is unreachable after every attempt, answers with an error, or
                returns something other than ``N`` finite rewards.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
        if not responses:
            return rewards_tensor([])
        body = json.dumps({"prompts": list(prompts), "responses": list(responses)}).encode("utf-8")
        reply = self._post(f"{self.url}/score", body)
        if not isinstance(reply, dict) or "rewards" not in reply:
            raise RewardError(f"reward service {self.url}: the reply has no 'rewards' field")
        return rewards_tensor(check_rewards(reply["rewards"], len(responses), f"reward service {self.url}"))

    def _post(self, endpoint: str, body: bytes) -> object:
        request = urllib.request.Request(endpoint, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                if err.code not in _RETRY_STATUS or attempt + 1 == attempts:
                    raise RewardError(
                        f"reward service {self.url} answered {err.code}: {_error_text(err)}"
                    ) from err
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                failure = str(getattr(err, "reason", err)) or type(err).__name__
                if attempt + 1 == attempts:
                    raise RewardError(f"reward service {self.url} is unreachable after {attempts} attempt(s) "
                                      f"({failure}); start it with `python -m nemo_rpo.rewards.server --judge "
                                      "pkg.module:function --port N` or fix reward.url") from err  # fmt: skip
            except json.JSONDecodeError as err:
                raise RewardError(f"reward service {self.url}: the reply is not JSON ({err})") from err
            time.sleep(_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(err.read().decode("utf-8"))["error"])
    except Exception:  # not our server's JSON error body: fall back to the status reason
        return str(err.reason)
