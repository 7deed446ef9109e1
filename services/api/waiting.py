"""Why an invocation waits: functions whose placement no live executor offers.

A function's tasks go to a task topic that only executors whose labels satisfy its placement
(``required_labels``: constraints plus image) consume. When no live executor (one heard from
in the last 30 s, ``StateStore.registry``) satisfies them, its tasks wait, silently, until
one starts. The API says so instead:

* registering such a graph answers with a warning per function (:meth:`PlacementWatch.
  warnings`);
* an invocation with queued tasks of such a function reports ``waiting`` (the invocation and
  each of those tasks, :meth:`PlacementWatch.waiting`), and its progress stream sends
  ``invocation.waiting`` when that starts and when it ends.

The decisions are the pure :func:`unmet`, :func:`unserved` and :func:`describe`. The live
executors' labels are read at most once per second per API process, and graph definitions
(immutable per version) are cached, so a status request whose graph is served costs nothing
more.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from indexify.definition import GraphDefinition
from indexify.engine import InvocationState
from indexify.placement import IMAGE_LABEL, satisfies
from services.common.lru import Lru
from services.common.state_store import StateStore

__all__ = ["InvocationWaiting", "PlacementWatch", "describe", "unmet", "unserved"]

_OFFERS_TTL_SEC = 1.0
_DEFINITIONS = 256


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def unmet(required: Mapping[str, str], offers: Sequence[Mapping[str, str]]) -> str | None:
    """Why no executor with one of ``offers`` (label sets) may run a function that needs
    ``required``; None when one may. Names the labels no executor offers at all, else all of
    them (each is offered, never together)."""
    if any(satisfies(labels, required) for labels in offers):
        return None
    if not required:
        return "no live executor"
    missing = {k: v for k, v in required.items() if not any(o.get(k) == v for o in offers)}
    if missing:
        return f"no live executor offers {_labels(missing)}"
    return f"no live executor offers {_labels(required)} together"


def unserved(definition: GraphDefinition, offers: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """Function -> why no live executor may run it, for the functions of ``definition``
    that none may run."""
    found: dict[str, str] = {}
    for name, node in definition.nodes.items():
        reason = unmet(node.required_labels, offers)
        if reason is not None:
            found[name] = reason
    return found


def describe(waiting: Mapping[str, str], outstanding: Mapping[str, int]) -> str | None:
    """One line for an invocation whose functions in ``waiting`` (function -> reason) have
    ``outstanding`` tasks queued, e.g. ``no live executor offers gpu=h100 (function
    'embed': 1 task)``; None when nothing waits."""
    parts = []
    for function, reason in sorted(waiting.items()):
        count = outstanding.get(function, 0)
        parts.append(f"{reason} (function {function!r}: {count} task{'' if count == 1 else 's'})")
    return "; ".join(parts) or None


def _hint(definition: GraphDefinition, function: str) -> str:
    required = definition.nodes[function].required_labels
    flags = [
        f"--image {v}" if k == IMAGE_LABEL else f"--label {k}={v}" for k, v in required.items()
    ]
    return f" (start one with `indexify-cli executor {' '.join(flags)}`)" if flags else ""


class PlacementWatch:
    """The live executors' labels (read at most once per ``ttl_sec``) and graph definitions
    (cached), for the API's waiting notes (see the module docstring)."""

    def __init__(self, store: StateStore, *, ttl_sec: float = _OFFERS_TTL_SEC) -> None:
        self._store = store
        self.ttl_sec = ttl_sec
        self._offers: list[dict[str, str]] = []
        self._offers_at = float("-inf")
        self._definitions: Lru[tuple[str, str, str], GraphDefinition] = Lru(_DEFINITIONS)

    async def offers(self) -> list[dict[str, str]]:
        """The label sets of the live executors (at most ``ttl_sec`` old)."""
        now = time.monotonic()
        if now - self._offers_at >= self.ttl_sec:
            executors = await self._store.registry.executors()
            self._offers = [dict(e.labels) for e in executors]
            self._offers_at = now
        return self._offers

    async def definition(self, namespace: str, graph: str, version: str) -> GraphDefinition | None:
        """The definition of a graph version (cached: a version never changes)."""
        key = (namespace, graph, version)
        found = self._definitions.get(key)
        if found is not None:
            return found
        record = await self._store.graphs.get_graph_version(namespace, graph, version)
        if record is None:
            return None
        return self._definitions.put(key, record.definition)

    async def warnings(self, definition: GraphDefinition) -> list[str]:
        """A warning per function of a graph being registered that no live executor may run."""
        found = unserved(definition, await self.offers())
        return [
            f"function {name!r}: {reason}; its tasks will wait until an executor that may "
            f"run them is live{_hint(definition, name)}"
            for name, reason in sorted(found.items())
        ]

    async def waiting(self, state: InvocationState) -> dict[str, str]:
        """Function -> why its queued tasks wait, for the functions of a live invocation
        (``state``: its summary) that have queued tasks no live executor may take."""
        if state.terminal or not state.outstanding:
            return {}
        definition = await self.definition(state.namespace, state.graph, state.graph_version)
        if definition is None:
            return {}
        found = unserved(definition, await self.offers())
        return {fn: found[fn] for fn, n in state.outstanding.items() if n > 0 and fn in found}


class InvocationWaiting:
    """The waiting note of one invocation, asked again and again (a progress stream, a long
    poll): its summary is read only while a function of its graph has no live executor."""

    def __init__(
        self,
        watch: PlacementWatch,
        store: StateStore,
        invocation_id: str,
        *,
        state: InvocationState | None = None,
        version: tuple[str, str, str] | None = None,
    ) -> None:
        """``state``: its summary, read just now (the first :meth:`note` uses it);
        ``version``: its ``(namespace, graph, version)``, when known."""
        self._watch = watch
        self._store = store
        self.invocation_id = invocation_id
        self._version = version
        self._state = state
        if state is not None:
            self._version = (state.namespace, state.graph, state.graph_version)

    async def note(self) -> str | None:
        """Why the invocation waits now (:func:`describe`), or None."""
        state, self._state = self._state, None
        if self._version is None:
            state = await self._summary()
            if state is None:
                return None
            self._version = (state.namespace, state.graph, state.graph_version)
        definition = await self._watch.definition(*self._version)
        if definition is None or not unserved(definition, await self._watch.offers()):
            return None
        state = state or await self._summary()
        if state is None:
            return None
        return describe(await self._watch.waiting(state), state.outstanding)

    async def _summary(self) -> InvocationState | None:
        loaded = await self._store.invocations.load_invocation(self.invocation_id)
        return loaded[0] if loaded is not None else None
