"""Validate JSON instances against OpenAI's published OpenAPI spec.

The spec is vendored next to this module (see SOURCE.md) and loaded once per
process. Public surface:

    validate(schema_name, instance)  -> None, raises AssertionError if invalid
    properties_of(schema_name)       -> top-level property names (follows allOf/$ref)

Known places where the spec is stricter than what is seen on the wire (we do
not relax them; tests that hit them should build instances the spec accepts):

* CreateCompletionResponse doubles as the legacy ``/completions`` stream chunk,
  but ``choices[].finish_reason`` is not nullable there, so a real mid-stream
  chunk (``"finish_reason": null``) is rejected.
* CreateCompletionResponse's ``logprobs.token_logprobs`` and ``top_logprobs``
  items are not nullable, but with ``echo`` OpenAI (and vLLM) send null for
  the prompt's first token, which nothing precedes.
* CreateChatCompletionResponse requires ``choices[].logprobs`` and
  ``message.refusal`` to be present (null is fine). OpenAI sends both; many
  OpenAI-compatible servers omit them.
* Error requires all of ``message``, ``type``, ``param`` and ``code`` (the last
  two may be null but must be present).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["validate", "properties_of"]

SPEC_PATH = Path(__file__).with_name("openapi.yaml")
# The whole document is one resource; its internal "#/components/..." refs
# resolve against this URI.
SPEC_URI = "urn:switchyard:openai-openapi"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _normalise(node: Any) -> Any:
    """Rewrite OpenAPI 3.0 ``nullable: true`` into JSON Schema 2020-12.

    Wrapping in ``anyOf`` (rather than adding "null" to ``type``) is what keeps
    ``enum`` and ``$ref`` siblings correct: ``{type: string, enum: [a], nullable:
    true}`` must accept null even though null is not in the enum.
    """
    if isinstance(node, list):
        return [_normalise(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _normalise(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _document() -> dict[str, Any]:
    """Parsed and normalised spec, cached on disk by the yaml file's sha256.

    The YAML parse alone takes ~0.8 s even with libyaml; the JSON cache loads in
    a fraction of that. JSON, not pickle, so a file planted in the shared temp
    dir cannot run code.
    """
    raw = SPEC_PATH.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    cache = Path(tempfile.gettempdir()) / f"switchyard-openapi-{digest[:16]}.json"
    try:
        return json.loads(cache.read_bytes())
    except (OSError, ValueError):
        pass
    doc = _normalise(yaml.load(raw, Loader=_Loader))
    # default=str: one example holds a bare YAML date; examples are never validated.
    text = json.dumps(doc, default=str)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, cache)  # atomic, so concurrent test workers never see half a file
    except OSError:
        pass  # read-only temp dir: just parse again next run
    return json.loads(text)  # same value whether it came from disk or not


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(SPEC_URI, Resource(contents=_document(), specification=DRAFT202012))


def _component(schema_name: str) -> dict[str, Any]:
    schemas: dict[str, Any] = _document()["components"]["schemas"]
    if schema_name not in schemas:
        raise KeyError(f"no component schema named {schema_name!r} in {SPEC_PATH.name}")
    return schemas[schema_name]


@functools.cache
def _validator(schema_name: str) -> Draft202012Validator:
    _component(schema_name)  # fail early with a clear KeyError
    # No format_checker: the spec uses OpenAPI formats (unixtime, int64, binary)
    # that are annotations, not assertions.
    return Draft202012Validator(
        {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}, registry=_registry()
    )


def validate(schema_name: str, instance: object) -> None:
    """Raise AssertionError unless ``instance`` matches ``components/schemas/<schema_name>``."""
    error = best_match(_validator(schema_name).iter_errors(instance))
    if error is not None:
        raise AssertionError(f"{schema_name} invalid at {error.json_path}: {error.message}")


def properties_of(schema_name: str) -> set[str]:
    """Top-level property names of a component, merging ``allOf`` parts and following ``$ref``."""
    names: set[str] = set()
    pending: list[dict[str, Any]] = [_component(schema_name)]
    while pending:
        schema = pending.pop()
        names.update(schema.get("properties", {}))
        pending.extend(schema.get("allOf", []))
        ref = schema.get("$ref")
        if ref is not None:
            pending.append(_component(ref.removeprefix("#/components/schemas/")))
    return names
