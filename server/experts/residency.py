"""Adapter residency per expert, for routers and capacity planning: whether the engine holds each
expert's LoRA adapter, how often it dropped one, how long loading took, and whether a request
found its adapter cold or warm.

The engine keeps adapters in an LRU cache of `max_cpu_loras` entries and runs at most
`max_loras` of them in one step (slots). The gateway sees the cache through the engine's list
of adapters (`Engine.list_loras`, looked at by `refresh`): an adapter that was listed and is
not any more was evicted (a later request reloads it from its staged files, a cold start).

A request is *warm* when its adapter was listed at the last look and has served a request
since it was loaded; else *cold* (the first request after a load also waits for the adapter to
be placed in a slot). With slots for every expert (the default `max_loras`) a warm adapter
stays in its slot; with fewer slots than experts in use, a warm request may still wait for one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

from server.metrics import Metrics

COLD = "cold"
WARM = "warm"


@dataclass
class _Adapter:
    expert: str
    version: str
    resident: bool = True
    served: bool = False


class Residency:
    """What the gateway knows of the engine's adapters, by LoRA id; reported to `metrics`."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._adapters: dict[int, _Adapter] = {}

    def loaded(self, expert: str, version: str, lora_id: int, seconds: float) -> None:
        """The engine accepted the adapter (`add_lora`) after `seconds`."""
        self._adapters[lora_id] = _Adapter(expert, version)
        self.metrics.adapter_load.labels(expert).observe(seconds)
        self.metrics.adapter_resident.labels(expert, version).set(1)

    def removed(self, lora_id: int) -> None:
        """The adapter left the engine on purpose (an unload, or an old version drained)."""
        adapter = self._adapters.pop(lora_id, None)
        if adapter is not None:
            with contextlib.suppress(KeyError):  # never reported
                self.metrics.adapter_resident.remove(adapter.expert, adapter.version)

    def refresh(self, listed: Iterable[int], serving: Iterable[int] | None = None) -> None:
        """The engine's adapter ids now: an adapter missing from them was evicted. `serving`:
        the adapters of the experts the gateway serves now; the others left on purpose."""
        now = set(listed)
        if serving is not None:
            keep = set(serving)
            for lora_id in [i for i in self._adapters if i not in keep]:
                self.removed(lora_id)
        for lora_id, adapter in self._adapters.items():
            resident = lora_id in now
            if adapter.resident and not resident:
                self.metrics.adapter_evictions.labels(adapter.expert).inc()
                adapter.served = False
            adapter.resident = resident
            self.metrics.adapter_resident.labels(adapter.expert, adapter.version).set(1 if resident else 0)

    def request(self, lora_id: int) -> str:
        """`cold` or `warm` for a request about to use the adapter; it counts as served from now."""
        adapter = self._adapters.get(lora_id)
        if adapter is None:
            return COLD
        state = WARM if adapter.resident and adapter.served else COLD
        adapter.served = True
        return state

    def first_token(self, expert: str, state: str, seconds: float) -> None:
        self.metrics.adapter_ttft.labels(expert, state).observe(seconds)
