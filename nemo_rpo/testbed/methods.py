"""The grid of §6: each method as (objective, K, offline/online, ground-truth or learnt RM, iterations)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MethodSpec", "method_spec"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    loss: str  # a key of TestbedConfig.losses
    k: int
    online: bool
    rm: str = "gt"  # gt (the judge) | learnt (the RM trained on the preference dataset)
    iterations: int = 1  # > 1: Alg. 3 (offline) / Alg. 4 (online)

    @property
    def responses(self) -> str:
        return "Online" if self.online else "Offline"


def method_spec(name: str, iterations: int) -> MethodSpec:
    """The spec of a method named in :data:`nemo_rpo.config.testbed_schema.METHODS`."""
    if name.startswith("iter_"):
        online = name.startswith("iter_online_")
        return MethodSpec(name, "rpo_bwd", 4, online, iterations=iterations)
    if name.startswith("online_"):
        loss, rm = name[len("online_") :].rsplit("_", 1)
        return MethodSpec(name, loss, 4, True, rm=rm)
    if name.endswith(("_k2", "_k4")):
        return MethodSpec(name, name[:-3], int(name[-1]), False)
    return MethodSpec(name, name, 2, False)  # the pairwise baselines: dpo, simpo, kto
