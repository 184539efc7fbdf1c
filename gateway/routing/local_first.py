"""``routing: local_first``: the engine in this process while it has room, the next deployment once it has not.

Room is read when a request is routed: how many requests are in flight on
the engine's provider is the router's own count, raised before the call is
made, so a hundred requests arriving together see each other (the
engine's counters lag a burst by a step); whether the engine is already
queueing or short of KV cache is read from its counters after its last step.

    not loaded yet                                     -> local_not_ready
    KV cache in use >= KV_CACHE_FULL                   -> local_kv_full
    in flight < max_running, nothing waits in it       -> local         (it runs at once)
    in flight < max_running + max_waiting              -> local_queued  (past max_running)
    otherwise                                          -> local_full

A ``local_queued`` request joins the engine past ``max_running``: it waits
in the engine's queue once the engine runs its own ``max_num_seqs``, and
until then runs in its batch (every token of the batch a little slower).

A local deployment with room goes first; the others keep their listed
order; a local one without room goes last, so a request is queued locally
rather than refused when every hosted deployment is cooling down. Room
decides only where a request starts: one admitted locally is never moved
for load (a failure still falls over as under any routing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from gateway.config import LocalFirstConfig
from gateway.routing.balancer import DeploymentState
from providers.base import EngineStats, ReportsEngineStats

RouteReason = Literal["local", "local_queued", "local_full", "local_kv_full", "local_not_ready"]
# Past this share of KV-cache blocks in use, a new sequence would preempt one already running.
KV_CACHE_FULL = 0.95
HAS_ROOM = frozenset({"local", "local_queued"})


def room(in_flight: int, stats: EngineStats | None, limits: LocalFirstConfig) -> RouteReason:
    """Whether one more request has room on an engine with ``in_flight`` requests on it, and why (see the table)."""
    if stats is None:
        return "local_not_ready"
    if stats.kv_cache_usage >= KV_CACHE_FULL:
        return "local_kv_full"
    if in_flight < limits.max_running and stats.waiting == 0:
        return "local"
    if in_flight < limits.max_running + limits.max_waiting:
        return "local_queued"
    return "local_full"


def local_first_order(
    states: Sequence[DeploymentState], limits: LocalFirstConfig, in_flight: Callable[[DeploymentState], int]
) -> tuple[list[DeploymentState], RouteReason | None]:
    """``states`` in the order to try them, and the first local deployment's verdict (None: the model has none).

    ``in_flight``: the requests in flight on a state's provider, across every model it serves.
    """
    with_room: list[DeploymentState] = []
    hosted: list[DeploymentState] = []
    full: list[DeploymentState] = []
    verdicts: list[RouteReason] = []
    for state in states:
        provider = state.deployment.provider
        if not isinstance(provider, ReportsEngineStats):
            hosted.append(state)
            continue
        verdict = room(in_flight(state), provider.engine_stats(), limits)
        verdicts.append(verdict)
        (with_room if verdict in HAS_ROOM else full).append(state)
    # The reason of the local deployment tried first: one with room, else the first one.
    reason = next((v for v in verdicts if v in HAS_ROOM), verdicts[0] if verdicts else None)
    return [*with_room, *hosted, *full], reason
