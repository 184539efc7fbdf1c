"""A provider's own Batch API (OpenAI's Files and Batches endpoints), for batches passed to it whole.

What the gateway's batch runner needs of it (``gateway/batches/native.py``)::

    upload(content, filename)        POST   {base}/files (multipart, purpose=batch)   -> the file's id
    create(file_id, endpoint, tag)   POST   {base}/batches                            -> the Batch object
    find(tag)                        GET    {base}/batches?limit=100                  -> the Batch made with that tag, if any
    retrieve(batch_id)               GET    {base}/batches/{id}
    cancel(batch_id)                 POST   {base}/batches/{id}/cancel
    content(file_id)                 GET    {base}/files/{id}/content                 -> the output or error file's bytes
    delete(file_id)                  DELETE {base}/files/{id}

OpenAI, Groq and custom servers take these under their ``base_url``
(``.../v1/files``); Azure under ``{endpoint}/openai/files?api-version=...``,
where a line's ``url`` has no ``/v1`` (``/chat/completions``). The session,
key, timeouts and error mapping are the provider's adapter's, so a failure
is the same ``ProviderError`` a chat request would get.
"""

from __future__ import annotations

import io
from typing import Any

import orjson
from yarl import URL

from providers.errors import UpstreamProtocolError
from providers.http_upstream import HTTPUpstream
from providers.media import MultipartBody, Upload

# The metadata key a gateway batch's id is kept under at the provider, so a create whose answer was lost is found.
TAG_KEY = "switchyard_batch_id"
_JSON = {"content-type": "application/json"}


class UpstreamBatches:
    def __init__(self, upstream: HTTPUpstream, base_url: str, azure_api_version: str | None) -> None:
        self._upstream = upstream
        self._name = upstream.name
        self._base = f"{base_url}/openai" if azure_api_version is not None else base_url
        self._query = {"api-version": azure_api_version} if azure_api_version is not None else {}

    def line_url(self, endpoint: str) -> str:
        """A line's ``url`` (and the batch's ``endpoint``) as this provider takes it: Azure's has no ``/v1``."""
        return endpoint.removeprefix("/v1") if self._query else endpoint

    async def upload(self, content: bytes, filename: str) -> str:
        spool = Upload(filename, "application/jsonl", io.BytesIO(content), len(content))
        form = MultipartBody({"purpose": "batch", "file": spool})
        return str(_field(await self._call("POST", "files", form, form.headers), "id", self._name))

    async def create(self, file_id: str, endpoint: str, tag: str) -> dict[str, Any]:
        body = {"input_file_id": file_id, "endpoint": self.line_url(endpoint), "completion_window": "24h",
                "metadata": {TAG_KEY: tag}}  # fmt: skip
        return await self._call("POST", "batches", orjson.dumps(body), _JSON)

    async def find(self, tag: str) -> dict[str, Any] | None:
        """The newest batch (of the first 100) made with ``tag``: a create whose answer never came may have landed."""
        page = await self._call("GET", "batches", query={"limit": "100"})
        found = [batch for batch in page.get("data") or [] if isinstance(batch, dict)
                 and isinstance(batch.get("metadata"), dict) and batch["metadata"].get(TAG_KEY) == tag]  # fmt: skip
        return found[0] if found else None

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return await self._call("GET", f"batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return await self._call("POST", f"batches/{batch_id}/cancel")

    async def content(self, file_id: str) -> bytes:
        _, body = await self._upstream.call("GET", self._url(f"files/{file_id}/content"))
        return body

    async def delete(self, file_id: str) -> None:
        await self._upstream.call("DELETE", self._url(f"files/{file_id}"))

    def _url(self, path: str, query: dict[str, str] | None = None) -> URL:
        url = URL(f"{self._base}/{path}")
        return url.with_query({**self._query, **(query or {})}) if self._query or query else url

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        _, answer = await self._upstream.call(method, self._url(path, query), body, headers)
        try:
            parsed = orjson.loads(answer)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamProtocolError(f"provider '{self._name}' answered its Batch API with a body that is not a JSON object",
                                        provider=self._name)  # fmt: skip
        return parsed


def _field(answer: dict[str, Any], name: str, provider: str) -> Any:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise UpstreamProtocolError(f"provider '{provider}' answered its Batch API without a `{name}`", provider=provider)
    return value
