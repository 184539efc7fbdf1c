"""The generation a batch line goes through: the one serving new requests when the line is sent.

A configuration reload (gateway/reload/) swaps the router, keys and relay;
a batch outlives it, so each line asks for the current generation, and is
counted among that generation's requests (a retiring one waits for it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from starlette.types import ASGIApp

from gateway.config import GatewayConfig
from gateway.keys.accounting import Accounting
from gateway.keys.keyring import KeyRing
from gateway.routing.router import Router
from providers import Provider


class Served(Protocol):
    """A generation, as far as batches need one."""

    config: GatewayConfig
    keys: KeyRing
    relay: ASGIApp  # its relay: a line is one of its requests, sent in process
    adapters: Mapping[str, Provider]  # a native batch's provider (its Batch API)
    accounting: Accounting  # a native batch's lines are counted as its requests
    router: Router  # its table: which models a new batch's lines may name

    def request_started(self) -> None: ...

    def request_finished(self) -> None: ...


# The generation serving now (gateway.services.Services.generation).
Serving = Callable[[], Served]
