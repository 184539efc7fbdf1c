"""The contract between the gateway and a provider adapter.

A provider sends one OpenAI-shaped request to one upstream and answers with
the upstream's bytes, or raises a :class:`~providers.errors.ProviderError`.
It does not retry or fall back: those are the gateway's layers around it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from providers.wire import Door, Endpoint, RequestTimings, Usage

if TYPE_CHECKING:
    from providers.batch_api import UpstreamBatches

UnsupportedPolicy = Literal["drop", "reject"]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    endpoint: Endpoint
    # The client's JSON body with ``model`` already set to the upstream's name.
    # Fields the gateway does not know are kept: they are for the upstream.
    payload: dict[str, Any]
    request_id: str | None = None
    # What to do with a parameter the provider does not take (see providers.params).
    unsupported_params: UnsupportedPolicy = "drop"
    # Client request headers (lower-case names) a provider may forward: only those its preset's
    # ``forwarded_headers`` names are sent (Anthropic's ``anthropic-beta``).
    headers: Mapping[str, str] = field(default_factory=dict)
    # Set when ``payload`` is in that door's own API (Anthropic's Messages, OpenAI's Responses), passed
    # through untranslated: the router sends it so only to a provider that speaks it (``SpeaksDoor``),
    # whose answer and events are then in that API too.
    door: Door | None = None
    # Headers the gateway sends on this call as they are, to any HTTP upstream: W3C trace context
    # (traceparent, tracestate) when tracing is on.
    propagated: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A complete non-streamed 2xx answer, passed to the client unchanged."""

    status: int
    body: bytes
    # Headers for the client's response (such as x-switchyard-dropped-params).
    headers: dict[str, str] = field(default_factory=dict)
    usage: Usage | None = None  # reported by the upstream, or estimated
    timings: tuple[RequestTimings, ...] = ()  # from an engine in this process, one per engine request


class UpstreamStream(Protocol):
    """An open event stream whose status was 2xx.

    Iterating yields, for each read from the upstream, the ``data`` payloads
    of the events it completed (without the ``data:`` framing), never an
    empty list. Events that arrive together are relayed together: on this
    path a write is a system call, and a burst of tokens should cost one.
    Iteration ends normally only when the upstream sent ``[DONE]``; a stream
    that ends or breaks before it raises
    :class:`~providers.errors.StreamInterrupted` (or another ProviderError).
    """

    # Headers for the client's response (such as x-switchyard-dropped-params).
    headers: dict[str, str]

    @property
    def usage(self) -> Usage | None:
        """The usage the upstream reported, else an estimate of what was streamed.

        A stream cut short (the client left, the upstream broke) is still
        counted for what it used. An estimate may be counted off the event
        loop, so it is final once ``aclose()`` returned (and, for a client
        that asked for usage, once iteration ended).
        """
        ...

    @property
    def usage_reported(self) -> bool:
        """Whether the upstream sent a usage chunk (the client already has it)."""
        ...

    @property
    def timings(self) -> tuple[RequestTimings, ...]:
        """An engine in this process: its timings, once the stream finished; () for an HTTP upstream."""
        ...

    def usage_chunk(self) -> bytes | None:
        """Once finished: a last event carrying the estimated usage, for a client that asked for usage; None if the upstream sent it."""
        ...

    def __aiter__(self) -> AsyncIterator[list[bytes]]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    name: str

    @property
    def state(self) -> str:
        """``ready``; a local model is ``loading`` first, or ``failed``."""
        ...

    async def start(self) -> None:
        """Called once the event loop runs: a local model starts loading here (HTTP providers do nothing)."""
        ...

    def offers(self, endpoint: Endpoint) -> bool:
        """Whether the provider has ``endpoint`` at all (the router skips deployments that do not)."""
        ...

    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def open_stream(self, request: UpstreamRequest) -> UpstreamStream: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SpeaksDoor(Protocol):
    """A provider whose upstream speaks another API than chat completions natively (``UpstreamRequest.door``)."""

    def speaks(self, door: Door) -> bool:
        """Whether a request in ``door``'s API can be passed through to this upstream as it is."""
        ...


@runtime_checkable
class HasBatchAPI(Protocol):
    """A provider whose upstream runs whole batches itself (OpenAI's Batch API): ``batch: {mode: native}``."""

    def batches(self) -> UpstreamBatches | None:
        """Its Batch API, or None when its preset has none."""
        ...


@runtime_checkable
class LoadsModel(Protocol):
    """A provider whose model loads in this process (``type: local``): readiness waits for it."""

    name: str

    @property
    def state(self) -> str:
        """``loading``, ``ready``, ``failed`` or ``stopped``."""
        ...

    @property
    def error(self) -> str | None:
        """Why the load failed (one line), once ``state`` is ``failed``."""
        ...

    async def wait_loaded(self) -> None:
        """Return once the model is loaded or has failed for good."""
        ...


@runtime_checkable
class Tokenizes(Protocol):
    """A provider that tokenizes with its model's own tokenizer (``/tokenize``, ``/detokenize``)."""

    name: str

    async def tokenize(
        self, prompt: str | None, messages: list[dict[str, Any]] | None, add_generation_prompt: bool,
        add_special_tokens: bool | None,
    ) -> tuple[list[int], list[str], int]:
        """(token ids, their texts, the model's context length) for a prompt or a chat."""
        ...

    async def detokenize(self, tokens: list[int]) -> str: ...


class EngineStats(Protocol):
    """What an inference engine in this process reports when scraped (``/metrics``, ``/health/ready``)."""

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def kv_cache_usage(self) -> float: ...

    @property
    def prefix_cache_queries(self) -> int: ...

    @property
    def prefix_cache_hits(self) -> int: ...

    @property
    def preemptions(self) -> int: ...


@runtime_checkable
class ManagesEngine(Protocol):
    """An engine in this process whose KV cache an operator may reset, release and take back (vLLM's endpoints)."""

    name: str

    @property
    def sleeping(self) -> bool:
        """Between ``sleep`` and ``wake_up``: its requests are refused as for a model not ready."""
        ...

    async def reset_prefix_cache(self) -> bool:
        """Forget the cached prefixes; False (nothing changed) while requests run."""
        ...

    async def sleep(self) -> bool:
        """Release the KV cache's memory and refuse requests; False (nothing changed) while requests run."""
        ...

    async def wake_up(self) -> None:
        """Take the KV cache's memory again and serve."""
        ...


@runtime_checkable
class ServesLoraAdapters(Protocol):
    """An engine in this process that serves LoRA adapters, each as a model name of its own (vLLM's endpoints).

    A request whose upstream ``model`` is a loaded adapter's name runs through that adapter; any other, the base model.
    """

    name: str

    async def load_lora_adapter(self, lora_name: str, lora_path: str) -> None:
        """Check the PEFT adapter directory ``lora_path`` against the base model and serve it as ``lora_name``.

        Raises an OpenAIError, changing nothing: 400 naming ``lora_path`` or ``lora_name``, 409 ``lora_limit_reached``.
        """
        ...

    async def unload_lora_adapter(self, lora_name: str) -> bool:
        """Stop serving the adapter; False (nothing changed) while its requests run, an OpenAIError 404 if not loaded."""
        ...


@runtime_checkable
class ReportsEngineStats(Protocol):
    """A provider that runs an inference engine in this process."""

    name: str

    def engine_stats(self) -> EngineStats | None:
        """The engine's counters; None while it loads (or for an engine with none, such as an embedder)."""
        ...
