"""``GET /v1/usage``: sums over the usage ledger, for admin keys.

Filters: ``api_key`` (a key's name), ``model``, ``start_time`` and
``end_time`` (unix seconds; start inclusive, end exclusive). ``group_by`` is
a comma-separated list of api_key, model, provider, deployment and
endpoint (default ``api_key,model``; empty for one total).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.errors import (
    AdminKeyRequired,
    InvalidApiKey,
    InvalidRequest,
    LedgerDisabled,
)
from gateway.http.responses import json_response
from gateway.keys.keyring import api_key_of, presented_key
from gateway.ledger import LedgerWriter, UsageQuery
from gateway.ledger.records import GROUPABLE, MEANS, SUM_NAMES


def usage_routes(ledger: LedgerWriter | None, admin_keys_configured: bool) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["switchyard"])

    @api.get("/usage")
    async def usage_summary(
        request: Request,
        api_key: Annotated[str | None, Query(description="A key's name.")] = None,
        model: Annotated[str | None, Query(description="A model name as clients ask for it.")] = None,
        start_time: Annotated[float | None, Query(description="Unix seconds, inclusive.")] = None,
        end_time: Annotated[float | None, Query(description="Unix seconds, exclusive.")] = None,
        group_by: Annotated[str, Query(description="Comma-separated: " + ", ".join(GROUPABLE))] = "api_key,model",
    ) -> Response:
        """Requests and tokens summed per group; admin keys only."""
        key = api_key_of(request.scope)
        if key is None and admin_keys_configured:
            raise InvalidApiKey(presented_key(request.scope["headers"]) is not None)
        if key is None or not key.admin:
            raise AdminKeyRequired(admin_keys_configured)
        if ledger is None:
            raise LedgerDisabled()
        query = UsageQuery(api_key, model, start_time, end_time, _groups(group_by))
        rows = await ledger.summarize(query)
        totals = {name: sum(row[name] for row in rows) for name in SUM_NAMES if name not in MEANS}
        for name, weight in MEANS.items():
            scored = sum(row[weight] for row in rows)
            totals[name] = sum(row[name] * row[weight] for row in rows if row[weight]) / scored if scored else None
        body: dict[str, Any] = {
            "object": "usage.summary",
            "filters": {"api_key": api_key, "model": model, "start_time": start_time, "end_time": end_time},
            "group_by": list(query.group_by),
            "totals": totals,
            "data": rows if query.group_by else [],
        }
        return json_response(body)

    return api


def _groups(group_by: str) -> tuple[str, ...]:
    groups = tuple(part.strip() for part in group_by.split(",") if part.strip())
    unknown = [group for group in groups if group not in GROUPABLE]
    if unknown:
        raise InvalidRequest(
            f"Invalid value for 'group_by': {', '.join(unknown)}; expected any of {', '.join(GROUPABLE)}.",
            param="group_by",
        )
    return groups
