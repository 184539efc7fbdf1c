"""A batch made from checked input lines, whichever API asked for it (OpenAI's /v1/batches, Anthropic's Message Batches).

The key must be allowed every model the lines name (403), each served here
(400); a batch for a
model under ``batch: {mode: native}`` is planned for its provider's Batch API
and refused when its key's dollar budget is spent (``BatchRunner.admit_native``).
The batch is kept, then run in the background.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from gateway.batches.input import BatchLine
from gateway.batches.records import COMPLETION_WINDOW_SECONDS, Owner, StoredBatch
from gateway.batches.runner import BatchRunner
from gateway.batches.store import BatchStore
from gateway.keys.keyring import ApiKey
from providers import OpenAIError


async def submit_batch(
    store: BatchStore, runner: BatchRunner, key: ApiKey | None, input_file_id: str, endpoint: str,
    lines: list[BatchLine], unserved: Callable[[BatchLine], OpenAIError], metadata: dict[str, str] | None = None,
    kind: str = "batch_",
) -> StoredBatch:  # fmt: skip
    """Keep and start a batch of ``lines`` for ``endpoint``; ``kind``: its id's prefix (the API that made it).

    ``unserved``: the 400 (in the calling API's words) for the first line naming a model nobody serves here,
    raised once the key is known to be allowed every model (so a key learns nothing of models it may not call).
    """
    models = sorted({line.body["model"] for line in lines})
    if key is not None:
        for model in models:
            key.require(model)
    if (line := runner.unserved(lines)) is not None:
        raise unserved(line)
    native = runner.plan(endpoint, models)
    if native is not None and key is not None:
        await runner.admit_native(key, models[0])
    now = int(time.time())
    owner = Owner(None) if key is None else Owner(key.name, key.team, tuple(sorted(key.token_models)))
    batch = StoredBatch(
        id=f"{kind}{uuid.uuid4().hex}", owner=owner, endpoint=endpoint, input_file_id=input_file_id,
        completion_window="24h", created_at=now, expires_at=now + COMPLETION_WINDOW_SECONDS["24h"], total=len(lines),
        metadata=metadata, model=models[0] if len(models) == 1 else None, native=native,
    )  # fmt: skip
    await store.put_batch(batch)
    runner.run(batch, key)
    return batch
