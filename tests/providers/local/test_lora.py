"""LoRA adapters on the local engine: PEFT's own adapters, answers checked against PEFT's merged model.

The tiny random Llama (seeded) gets two PEFT adapters with random, non-zero
B (PEFT starts B at zero, which would change nothing): one on q/v at rank 8,
one rsLoRA on every projection at rank 4. Greedy tokens through the engine
must equal transformers' greedy generate on ``merge_and_unload()`` of each,
and differ from the base model's (so the comparison can fail). Then the
same through the gateway, served by uvicorn on a real port, with the openai
SDK calling the adapter's model name: adapters loaded with POST
/v1/load_lora_adapter, and adapters the provider's ``lora_modules`` loads
at start (a bad one failing the provider, as a model that cannot load).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
import yaml
from transformers import LlamaForCausalLM as HFLlama
from transformers import PreTrainedTokenizerBase

from gateway.app import create_app
from gateway.config import ConfigError, load_config, parse_config
from local_engine import (
    EngineConfig,
    InvalidLoraAdapter,
    LLMEngine,
    LoraLimitReached,
    LoraNotLoaded,
    SamplingParams,
)
from local_engine.block_manager import BlockManager
from local_engine.sequence import Sequence
from providers.errors import ModelLoading
from providers.local import LocalProviderConfig
from providers.local.chat import LocalChatProvider
from tests.conftest import TINY_VOCAB
from tests.local_engine.tiny import random_llama, tiny_loaded
from tests.providers.local.conftest import wait_ready
from tests.support.servers import ServedApp

peft = pytest.importorskip("peft", reason="peft is not installed (the test extra)")

MAX_TOKENS = 10
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
ADAPTERS = {
    "sql": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "seed": 1},
    "poet": {
        "r": 4, "lora_alpha": 8, "use_rslora": True, "seed": 2,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
}  # fmt: skip
ADMIN = "sk-admin-lora-0123456789abcdef"
CLIENT = "sk-client-lora-0123456789abcdef"


def peft_model(settings: dict[str, Any]) -> Any:
    """The tiny random Llama under a PEFT adapter whose A and B are both seeded noise."""
    options = {key: value for key, value in settings.items() if key != "seed"}
    config = peft.LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, init_lora_weights=False, **options)
    base = random_llama(TINY_VOCAB)
    torch.manual_seed(settings["seed"])
    model = peft.get_peft_model(base, config)
    with torch.no_grad():  # noise of the size a trained adapter's delta has against these random weights
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {}
    for name, settings in ADAPTERS.items():
        directory = tmp_path_factory.mktemp(f"lora-{name}")
        peft_model(settings).save_pretrained(directory)
        dirs[name] = directory
    return dirs


@pytest.fixture(scope="module")
def merged(adapter_dirs: dict[str, Path]) -> dict[str | None, HFLlama]:
    """What each adapter must answer like: PEFT's merged model; None, the base model."""
    models: dict[str | None, HFLlama] = {None: random_llama(TINY_VOCAB)}
    for name, settings in ADAPTERS.items():
        models[name] = peft_model(settings).merge_and_unload().eval()
    return models


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(100, TINY_VOCAB, (length,), generator=generator).tolist() for length in (5, 11, 19)]


def reference(model: HFLlama, prompt: list[int]) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def expected(merged: dict[str | None, HFLlama], prompts: list[list[int]]) -> dict[str | None, list[list[int]]]:
    return {name: [reference(model, prompt) for prompt in prompts] for name, model in merged.items()}


def make_engine(tokenizer: PreTrainedTokenizerBase, **options: Any) -> LLMEngine:
    settings = {"block_size": 4, "kv_cache_bytes": 1 << 22, "max_num_batched_tokens": 128, **options}
    return LLMEngine(EngineConfig(**settings), tiny_loaded(random_llama(TINY_VOCAB), tokenizer))


def load(engine: LLMEngine, name: str, path: Path) -> None:
    engine.add_lora(engine.read_lora(name, str(path)))


def run(engine: LLMEngine, requests: dict[str, tuple[list[int], str | None]]) -> dict[str, list[int]]:
    """Add every request at once (so they share steps), step until all finish; each one's tokens."""
    for request_id, (prompt, lora) in requests.items():
        engine.add_request(request_id, {"prompt_token_ids": prompt}, GREEDY, lora)
    tokens: dict[str, list[int]] = {}
    for _ in range(1000):
        if not engine.has_unfinished_requests():
            break
        for output in engine.step():
            if output.finished:
                tokens[output.request_id] = output.outputs[0].token_ids
    return tokens


@pytest.fixture(scope="module")
def engine(smollm2_tokenizer: PreTrainedTokenizerBase, adapter_dirs: dict[str, Path]) -> LLMEngine:
    engine = make_engine(smollm2_tokenizer)
    for name, directory in adapter_dirs.items():
        load(engine, name, directory)
    return engine


def test_an_adapters_greedy_tokens_are_peft_merged_models(
    engine: LLMEngine, prompts: list[list[int]], expected: dict[str | None, list[list[int]]]
) -> None:
    for name in ADAPTERS:
        got = run(engine, {f"{name}-{index}": (prompt, name) for index, prompt in enumerate(prompts)})
        assert [got[f"{name}-{index}"] for index in range(len(prompts))] == expected[name], name
        assert expected[name] != expected[None]  # the adapter changes the answer: the comparison can fail


def test_one_step_serves_two_adapters_and_the_base_model_each_its_own_answer(
    engine: LLMEngine, prompts: list[list[int]], expected: dict[str | None, list[list[int]]]
) -> None:
    requests = {
        f"{name or 'base'}-{index}": (prompt, name)
        for index, prompt in enumerate(prompts) for name in (None, *ADAPTERS)
    }  # fmt: skip
    got = run(engine, requests)  # all added at once: every step mixes the adapters' rows and the base model's
    for index in range(len(prompts)):
        for name in (None, *ADAPTERS):
            assert got[f"{name or 'base'}-{index}"] == expected[name][index], (name, index)


def test_mixed_rows_share_one_step(
    smollm2_tokenizer: PreTrainedTokenizerBase, adapter_dirs: dict[str, Path], prompts: list[list[int]],
    expected: dict[str | None, list[list[int]]],
) -> None:  # fmt: skip
    engine = make_engine(smollm2_tokenizer)
    for name, directory in adapter_dirs.items():
        load(engine, name, directory)
    for name in (None, *ADAPTERS):
        engine.add_request(name or "base", {"prompt_token_ids": prompts[1]}, GREEDY, name)
    outputs = engine.step()  # one step: three prefills, one per adapter and one on the base model
    assert sorted(output.request_id for output in outputs) == ["base", "poet", "sql"]
    first = {output.request_id: output.outputs[0].token_ids[0] for output in outputs}
    assert first == {name or "base": expected[name][1][0] for name in (None, *ADAPTERS)}


def test_the_prefix_cache_is_never_shared_across_adapters(
    smollm2_tokenizer: PreTrainedTokenizerBase, adapter_dirs: dict[str, Path], prompts: list[list[int]],
    expected: dict[str | None, list[list[int]]],
) -> None:  # fmt: skip
    engine = make_engine(smollm2_tokenizer)
    for name, directory in adapter_dirs.items():
        load(engine, name, directory)
    prompt = prompts[2]  # 19 tokens: four full 4-token blocks to cache
    cached: dict[str, int] = {}
    for name in (None, "sql", "poet", "sql"):
        label = f"{name or 'base'}-{len(cached)}"
        engine.add_request(label, {"prompt_token_ids": prompt}, GREEDY, name)
        finished = None
        while engine.has_unfinished_requests():
            finished = next((out for out in engine.step() if out.finished), finished)
        assert finished is not None and finished.outputs[0].token_ids == expected[name][2]
        cached[label] = finished.num_cached_tokens
    # The base model's blocks served neither adapter, nor one adapter's the other; the same adapter reuses its own.
    assert cached == {"base-0": 0, "sql-1": 0, "poet-2": 0, "sql-3": 16}


def test_a_colliding_hash_never_serves_one_adapters_block_to_another(engine: LLMEngine) -> None:
    """With every block hashing alike, only the salt kept on the block tells adapters apart."""
    manager = BlockManager(num_blocks=8, block_size=4, hash_fn=lambda parent, tokens: 0)
    sql, poet = engine.loras.get("sql"), engine.loras.get("poet")
    first = Sequence("a", 0, list(range(9)), 9, SamplingParams(), lora=sql)
    assert manager.allocate(first, 9)
    first.num_computed_tokens = 9
    manager.cache_full_blocks(first)
    assert manager.cached_prefix(list(range(9)), 8, sql.adapter_id) == first.block_table[:1]
    assert manager.cached_prefix(list(range(9)), 8, poet.adapter_id) == []
    assert manager.cached_prefix(list(range(9)), 8, None) == []


def test_unloading_waits_for_the_adapters_requests_and_its_name_then_refuses(
    smollm2_tokenizer: PreTrainedTokenizerBase, adapter_dirs: dict[str, Path], prompts: list[list[int]],
) -> None:  # fmt: skip
    engine = make_engine(smollm2_tokenizer, max_loras=1)
    load(engine, "sql", adapter_dirs["sql"])
    with pytest.raises(LoraLimitReached):
        engine.read_lora("poet", str(adapter_dirs["poet"]))
    engine.add_request("running", {"prompt_token_ids": prompts[0]}, GREEDY, "sql")
    engine.step()
    assert engine.remove_lora("sql") is False  # busy: still loaded
    engine.abort_request("running")
    assert engine.remove_lora("sql") is True
    with pytest.raises(LoraNotLoaded):
        engine.add_request("late", {"prompt_token_ids": prompts[0]}, GREEDY, "sql")
    with pytest.raises(LoraNotLoaded):
        engine.remove_lora("sql")
    assert not engine.has_unfinished_requests()


def broken_copy(source: Path, target: Path, change: str) -> Path:
    """A copy of the adapter at ``source`` with one thing wrong."""
    from safetensors.torch import load_file, save_file

    target.mkdir()
    config = json.loads((source / "adapter_config.json").read_text())
    tensors = load_file(source / "adapter_model.safetensors")
    if change == "rank":
        config["r"] = 32
        tensors = {key: torch.zeros(32, t.shape[1]) if "lora_A" in key else torch.zeros(t.shape[0], 32)
                   for key, t in tensors.items()}  # fmt: skip
    elif change == "shape":
        key = next(key for key in tensors if "lora_B" in key)
        tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    elif change == "module":
        config["target_modules"] = ["q_proj", "v_proj", "lm_head"]
    elif change == "unknown_tensor":
        tensors["base_model.model.model.layers.0.mlp.w9.lora_A.weight"] = torch.zeros(8, 64)
    (target / "adapter_config.json").write_text(json.dumps(config))
    if change != "missing":
        save_file(tensors, target / "adapter_model.safetensors")
    return target


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("missing", "adapter_model.safetensors"),
        ("shape", "has shape"),
        ("module", "lm_head"),
        ("unknown_tensor", "mlp.w9"),
        ("rank", "max_lora_rank"),
    ],
)
def test_a_bad_adapter_is_refused_naming_what_is_wrong_and_nothing_changes(
    engine: LLMEngine, adapter_dirs: dict[str, Path], tmp_path: Path, change: str, named: str
) -> None:
    before = dict(engine.loras.by_name)
    with pytest.raises(InvalidLoraAdapter) as refused:
        engine.read_lora("broken", str(broken_copy(adapter_dirs["sql"], tmp_path / change, change)))
    assert named in str(refused.value) and refused.value.param == "lora_path"
    assert engine.loras.by_name == before


# --- through the gateway, with the openai SDK ---


def gateway_config(
    tiny_model_dir: Path, attempts: int = 1, lora_modules: dict[str, Path] | None = None
) -> dict[str, Any]:
    per_block = 2 * 2 * 4 * 2 * 16 * 4  # k+v, layers, block, kv heads, head dim, float32
    engine = {"type": "local", "model": str(tiny_model_dir), "dtype": "float32", "kv_cache_bytes": per_block * 256,
              "block_size": 4, "max_loras": 2}  # fmt: skip
    if lora_modules is not None:
        engine["lora_modules"] = [{"name": name, "path": str(path)} for name, path in lora_modules.items()]
    return {
        "server": {"usage_ledger": False, "admin_keys": [ADMIN], "api_keys": [{"key": CLIENT, "name": "client"}]},
        "providers": {"engine": engine},
        "models": {"tiny": {"deployments": [{"provider": "engine", "model": "tiny"}]}},
        "router": {"retries": {"attempts": attempts}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("lora-config") / "providers.yaml"
    path.write_text(yaml.safe_dump(gateway_config(tiny_model_dir)))
    return path


@pytest.fixture(scope="module")
def gateway(config_file: Path) -> Iterator[ServedApp]:
    with ServedApp(create_app(load_config(config_file), reload_from=lambda: load_config(config_file))) as served:
        wait_ready(served.url)
        yield served


def admin(url: str, path: str, body: dict[str, Any], key: str = ADMIN) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)


def completion(client: openai.OpenAI, model: str, prompt: list[int]) -> str:
    """The greedy completion of ``prompt`` (token ids)."""
    answer = client.completions.create(
        model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    return answer.choices[0].text


def test_load_serve_and_unload_through_the_gateway(
    gateway: ServedApp, adapter_dirs: dict[str, Path], prompts: list[list[int]],
    expected: dict[str | None, list[list[int]]], smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:  # fmt: skip
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
    loaded = admin(gateway.url, "/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": str(adapter_dirs["sql"])})
    assert loaded.status_code == 200, loaded.text
    assert loaded.text == "Success: LoRA adapter 'sql' added successfully."  # vLLM's words
    listed = {model.id: model for model in client.models.list()}
    assert "sql" in listed and listed["sql"].model_extra == {"parent": "tiny"}
    assert completion(client, "sql", prompts[1]) == smollm2_tokenizer.decode(expected["sql"][1])
    # The base model is untouched beside it.
    assert completion(client, "tiny", prompts[1]) == smollm2_tokenizer.decode(expected[None][1])
    again = admin(gateway.url, "/v1/load_lora_adapter", {"lora_name": "sql", "lora_path": str(adapter_dirs["sql"])})
    assert again.status_code == 400 and again.json()["error"]["param"] == "lora_name"
    unloaded = admin(gateway.url, "/v1/unload_lora_adapter", {"lora_name": "sql"})
    assert unloaded.status_code == 200 and unloaded.text == "Success: LoRA adapter 'sql' removed successfully."
    assert "sql" not in {model.id for model in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="sql", prompt="hello", max_tokens=2)
    gone = admin(gateway.url, "/v1/unload_lora_adapter", {"lora_name": "sql"})
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "lora_name"


def test_the_gateway_refuses_bad_requests_and_needs_an_admin_key(
    gateway: ServedApp, adapter_dirs: dict[str, Path], tmp_path: Path
) -> None:
    body = {"lora_name": "poet", "lora_path": str(adapter_dirs["poet"])}
    assert admin(gateway.url, "/v1/load_lora_adapter", body, key=CLIENT).status_code == 403
    assert httpx.post(f"{gateway.url}/v1/load_lora_adapter", json=body).status_code == 401
    missing = admin(gateway.url, "/v1/load_lora_adapter", {"lora_name": "poet"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "lora_path"
    taken = admin(gateway.url, "/v1/load_lora_adapter", {"lora_name": "tiny", "lora_path": str(adapter_dirs["poet"])})
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "lora_name"
    bad = broken_copy(adapter_dirs["poet"], tmp_path / "shape", "shape")
    refused = admin(gateway.url, "/v1/load_lora_adapter", {"lora_name": "bad", "lora_path": str(bad)})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "lora_path"
    assert "has shape" in refused.json()["error"]["message"]
    unknown = admin(gateway.url, "/v1/load_lora_adapter?provider=nope", body)
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "provider"
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
    assert {model.id for model in client.models.list()} == {"tiny"}  # nothing was loaded


def test_unloading_an_adapter_with_a_running_stream_is_refused_and_the_stream_unharmed(
    gateway: ServedApp, adapter_dirs: dict[str, Path]
) -> None:
    body = {"lora_name": "poet", "lora_path": str(adapter_dirs["poet"])}
    assert admin(gateway.url, "/v1/load_lora_adapter", body).status_code == 200
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
    started = threading.Event()
    texts: list[str] = []

    def stream() -> None:
        events = client.completions.create(
            model="poet", prompt="Once upon a time", max_tokens=150, temperature=0, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        for chunk in events:
            started.set()
            texts.append(chunk.choices[0].text if chunk.choices else "")

    neighbour = threading.Thread(target=stream)
    neighbour.start()
    assert started.wait(30)
    busy = admin(gateway.url, "/v1/unload_lora_adapter", {"lora_name": "poet"})
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "engine_busy"
    neighbour.join(60)
    assert len(texts) > 100  # the stream ran to its end
    assert admin(gateway.url, "/v1/unload_lora_adapter", {"lora_name": "poet"}).status_code == 200


def test_a_loaded_adapter_stays_served_across_a_configuration_reload(
    gateway: ServedApp, config_file: Path, tiny_model_dir: Path, adapter_dirs: dict[str, Path],
    prompts: list[list[int]], expected: dict[str | None, list[list[int]]], smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:  # fmt: skip
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
    assert admin(gateway.url, "/v1/load_lora_adapter", {"lora_name": "poet", "lora_path": str(adapter_dirs["poet"])}).status_code == 200
    config_file.write_text(yaml.safe_dump(gateway_config(tiny_model_dir, attempts=2)))
    reloaded = admin(gateway.url, "/admin/reload", {})
    assert reloaded.status_code == 200 and reloaded.json()["providers"]["kept"] == ["engine"], reloaded.text
    listed = {model.id: model for model in client.models.list()}
    assert listed["poet"].model_extra == {"parent": "tiny"}  # the engine, kept, still holds it: so does the table
    assert completion(client, "poet", prompts[0]) == smollm2_tokenizer.decode(expected["poet"][0])
    assert admin(gateway.url, "/v1/unload_lora_adapter", {"lora_name": "poet"}).status_code == 200
    assert "poet" not in {model.id for model in client.models.list()}


# --- adapters the provider's lora_modules names, loaded at start ---


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def test_configured_adapters_are_models_from_the_start_answer_as_peft_merged_models_and_follow_reloads(
    tmp_path: Path, tiny_model_dir: Path, adapter_dirs: dict[str, Path], prompts: list[list[int]],
    expected: dict[str | None, list[list[int]]], smollm2_tokenizer: PreTrainedTokenizerBase,
) -> None:  # fmt: skip
    # The model's directory fills only after the first load attempt failed: until then the provider is loading.
    late = tmp_path / "arrives-late"
    late.mkdir()
    config = gateway_config(late, lora_modules=adapter_dirs)
    config["providers"]["engine"]["load_retries"] = 3
    path = write_config(tmp_path / "providers.yaml", config)
    first_attempt_failed = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "attempt 1 of 4" in record.getMessage():
                first_attempt_failed.set()

    seen = Seen()
    logging.getLogger("local_engine.worker").addHandler(seen)
    app = create_app(load_config(path), reload_from=lambda: load_config(path))
    with ServedApp(app) as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
        try:
            assert first_attempt_failed.wait(30)
        finally:
            logging.getLogger("local_engine.worker").removeHandler(seen)
        # Models from the start, before anything is loaded, listed as vLLM lists adapters; a request is answered
        # as the loading model's: never a 404, never the base model's answer.
        listed = {model.id: model for model in client.models.list()}
        assert sorted(listed) == ["poet", "sql", "tiny"]
        assert listed["sql"].model_extra == {"parent": "tiny"} and listed["poet"].model_extra == {"parent": "tiny"}
        with pytest.raises(openai.APIStatusError) as loading:
            completion(client, "sql", prompts[1])
        assert loading.value.status_code == 503 and loading.value.code == "model_loading", loading.value.message
        shutil.copytree(tiny_model_dir, late, dirs_exist_ok=True)  # the retry after 1 s finds it
        # Until the adapters too are loaded, the same answer; then the adapter's own.
        sql_text = smollm2_tokenizer.decode(expected["sql"][1])
        deadline = time.monotonic() + 60
        while httpx.get(f"{served.url}/health/ready").json()["status"] == "loading":
            assert time.monotonic() < deadline
            try:
                assert completion(client, "sql", prompts[1]) == sql_text
            except openai.APIStatusError as refused:
                assert refused.status_code == 503 and refused.code == "model_loading", refused.message
        assert httpx.get(f"{served.url}/health/ready").status_code == 200
        for name in (None, *ADAPTERS):
            for index, prompt in enumerate(prompts):
                got = completion(client, name or "tiny", prompt)
                assert got == smollm2_tokenizer.decode(expected[name][index]), (name, index)

        # Unloaded like an adapter loaded by POST: gone.
        assert admin(served.url, "/v1/unload_lora_adapter", {"lora_name": "sql"}).status_code == 200
        assert sorted(model.id for model in client.models.list()) == ["poet", "tiny"]
        with pytest.raises(openai.NotFoundError):
            completion(client, "sql", prompts[0])
        # A reload that leaves the entry alone keeps the engine as it is: poet served, sql still unloaded.
        config["router"]["retries"]["attempts"] = 2
        write_config(path, config)
        kept = admin(served.url, "/admin/reload", {})
        assert kept.status_code == 200 and kept.json()["providers"]["kept"] == ["engine"], kept.text
        assert {model.id: model.model_extra for model in client.models.list() if model.id != "tiny"} == {
            "poet": {"parent": "tiny"}
        }
        assert completion(client, "poet", prompts[0]) == smollm2_tokenizer.decode(expected["poet"][0])
        # A reload that changes lora_modules changes the entry: the provider is built again, with its adapters;
        # one that cannot load refuses the reload, naming it, and nothing changes.
        bad = broken_copy(adapter_dirs["sql"], tmp_path / "rank", "rank")
        write_config(path, gateway_config(late, lora_modules={"sql": adapter_dirs["sql"], "wide": bad}))
        refused = admin(served.url, "/admin/reload", {})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "model_load_failed", refused.text
        assert "'wide'" in refused.json()["error"]["message"] and "max_lora_rank" in refused.json()["error"]["message"]
        assert sorted(model.id for model in client.models.list()) == ["poet", "tiny"]
        write_config(path, gateway_config(late, lora_modules={"sql": adapter_dirs["sql"]}))
        rebuilt = admin(served.url, "/admin/reload", {})
        assert rebuilt.status_code == 200 and rebuilt.json()["providers"]["started"] == ["engine"], rebuilt.text
        assert httpx.get(f"{served.url}/health/ready").status_code == 200  # the reload waited for the adapters
        assert sorted(model.id for model in client.models.list()) == ["sql", "tiny"]
        assert completion(client, "sql", prompts[2]) == smollm2_tokenizer.decode(expected["sql"][2])


@pytest.mark.parametrize(("change", "named"), [("rank", "max_lora_rank"), ("absent", "does not exist")])
def test_a_configured_adapter_that_cannot_load_fails_the_provider_naming_it(
    tmp_path: Path, tiny_model_dir: Path, adapter_dirs: dict[str, Path], change: str, named: str
) -> None:
    bad = tmp_path / "no-such-adapter" if change == "absent" else broken_copy(adapter_dirs["sql"], tmp_path / change, change)
    config = gateway_config(tiny_model_dir, lora_modules={"sql": adapter_dirs["sql"], "wide": bad})
    reported: list[str] = []  # what `switchyard serve` is told of a model that failed to load (it then exits)
    with ServedApp(create_app(load_config(write_config(tmp_path / "providers.yaml", config)),
                              on_load_failure=reported.append)) as served:  # fmt: skip
        wait_ready(served.url)
        ready = httpx.get(f"{served.url}/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed", ready.text
        reason = ready.json()["local_models"]["engine"]["error"]
        assert "'wide' (lora_modules[1])" in reason and named in reason and "\n" not in reason
        deadline = time.monotonic() + 10
        while not reported and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reported == [reason]
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=CLIENT, max_retries=0, timeout=60)
        for model in ("tiny", "sql", "wide"):  # the base model, the adapter that loaded, the one that did not
            with pytest.raises(openai.APIStatusError) as caught:
                client.completions.create(model=model, prompt="hello", max_tokens=2)
            assert caught.value.status_code == 503 and caught.value.code == "model_load_failed", model
            assert "'wide'" in caught.value.message and named in caught.value.message


def test_the_provider_stays_loading_until_its_configured_adapters_are_loaded(
    tiny_model_dir: Path, adapter_dirs: dict[str, Path]
) -> None:
    entry = gateway_config(tiny_model_dir, lora_modules={"poet": adapter_dirs["poet"]})["providers"]["engine"]
    provider = LocalChatProvider("engine", LocalProviderConfig.model_validate(entry))

    async def scenario() -> None:
        await provider.start()
        try:
            # Waiting before the provider's own wait: this wakes first, the model loaded and the adapter not yet.
            await provider.engine.wait_loaded()
            assert provider.engine.state == "ready" and provider.state == "loading"
            with pytest.raises(ModelLoading):
                await provider.detokenize([1])
            await provider.wait_loaded()
            assert provider.state == "ready" and provider.error is None
            assert provider.engine.engine is not None and list(provider.engine.engine.loras.by_name) == ["poet"]
        finally:
            await provider.aclose()

    asyncio.run(scenario())


def config_problems(tiny_model_dir: Path, **change: Any) -> str:
    """The config error for ``gateway_config`` with the engine's entry (``engine``) or ``models`` changed."""
    config = gateway_config(tiny_model_dir)
    config["providers"]["engine"].update(change.get("engine", {}))
    config["models"].update(change.get("models", {}))
    return config_problems_of(config)


@pytest.mark.parametrize(
    ("engine", "models", "named"),
    [
        ({"lora_modules": [{"name": "sql", "path": "/a"}, {"name": "sql", "path": "/b"}]}, {},
         "providers.engine.lora_modules: Value error, the adapter name 'sql' is given twice"),
        ({"lora_modules": [{"name": n, "path": f"/{n}"} for n in ("a", "b", "c")]}, {},
         "providers.engine.lora_modules: Value error, 3 adapters, more than max_loras (2)"),
        ({"lora_modules": [{"name": "tiny", "path": "/a"}]}, {},
         "providers.engine.lora_modules[0].name: 'tiny' is already a model under `models:`"),
        ({"lora_modules": [{"name": "base", "path": "/a"}]}, {"chat": {"deployments": [{"provider": "engine", "model": "base"}]}},
         "providers.engine.lora_modules[0].name: 'base' is the model a deployment sends to 'engine'"),
        ({"lora_modules": [{"name": "", "path": "/a"}]}, {}, "providers.engine.lora_modules[0].name: String should have at least 1"),
        ({"lora_modules": [{"name": "sql"}]}, {}, "providers.engine.lora_modules[0].path: required field is missing"),
        ({"model": "all-minilm-l6-v2", "lora_modules": [{"name": "sql", "path": "/a"}]}, {},
         "providers.engine.lora_modules: an embedding model serves no LoRA adapters"),
    ],
    ids=["duplicate", "over-max-loras", "a-model-name", "an-upstream-name", "empty-name", "no-path", "encoder"],
)  # fmt: skip
def test_lora_modules_config_errors_name_the_field(
    tiny_model_dir: Path, engine: dict[str, Any], models: dict[str, Any], named: str
) -> None:
    assert named in config_problems(tiny_model_dir, engine=engine, models=models)


def test_a_configured_adapter_is_a_model_a_key_may_be_limited_to(tiny_model_dir: Path) -> None:
    config = gateway_config(tiny_model_dir, lora_modules={"sql": Path("/adapters/sql")})
    config["server"]["api_keys"] = [{"key": CLIENT, "name": "client", "models": ["sql"]}]
    parsed = parse_config(yaml.safe_dump(config), source="providers.yaml", environ={})
    entry = parsed.providers["engine"]
    assert isinstance(entry, LocalProviderConfig) and [module.name for module in entry.lora_modules] == ["sql"]
    config["server"]["api_keys"][0]["models"] = ["nope"]
    assert "server.api_keys[0].models[0]: 'nope' is not a model here" in config_problems_of(config)


def config_problems_of(config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as refused:
        parse_config(yaml.safe_dump(config), source="providers.yaml", environ={})
    return str(refused.value)


def test_two_providers_may_not_serve_adapters_of_one_name(tiny_model_dir: Path) -> None:
    config = gateway_config(tiny_model_dir, lora_modules={"sql": Path("/adapters/sql")})
    config["providers"]["second"] = {**config["providers"]["engine"]}
    problems = config_problems_of(config)
    assert "providers.engine.lora_modules[0].name: 'sql' is also an adapter of provider 'second'" in problems
