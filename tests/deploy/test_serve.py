"""deploy/providers.yaml served as a replica serves it, outside a container (no Docker engine runs here).

The Dockerfile's conversion step runs into an empty home, then ``switchyard
serve --config deploy/providers.yaml`` starts with that home and the
variables the Deployment gives, against a real Redis and PostgreSQL. It
answers the probes' requests as the kubelet sends them, the Dockerfile's
health check, a chat and an embeddings request; its ledger lands in
PostgreSQL and its limits in Redis. It binds 127.0.0.1, not the config's
0.0.0.0: with ``allowed_hosts`` set the Host check is the same on both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
import redis

from gateway.keys.redis_limits import redis_keys
from local_engine.default_model import default_embedding_model_path, default_model_path
from tests.deploy import dockerfile
from tests.deploy.files import DEPLOY, environment, image_instructions, kustomization, last
from tests.support.processes import GatewayProcess, free_port

ADMIN_KEY = "admin-key-for-the-deploy-test"
TEAM_A_KEY = "team-a-key-for-the-deploy-test"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        default_model_path() is None or default_embedding_model_path() is None, reason="the bundled models are not installed"
    ),
]


def auto_dtype() -> str:
    """What `dtype: auto` loads on this CPU (local_engine/device.py)."""
    import torch

    from local_engine.device import resolve_dtype

    return str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")


def health_check() -> list[str]:
    """The Dockerfile's HEALTHCHECK command, with this interpreter for the image's `python`."""
    _, rest = last("HEALTHCHECK").flags()
    command = json.loads(rest.removeprefix("CMD "))
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def convert_as_the_image_does(home: Path) -> None:
    """The Dockerfile's conversion step, for the dtype this CPU loads, which must be one the image bakes."""
    arg = next(i for i in image_instructions() if i.keyword == "ARG" and "CONVERT_DTYPES" in i.text)
    assert auto_dtype() in str(dockerfile.assignments(arg)["CONVERT_DTYPES"]).split()
    run = next(i for i in image_instructions() if i.keyword == "RUN" and "bake.py convert" in i.text)
    ((python, script, *command, dtypes),) = dockerfile.run_commands(run)
    assert (python, dtypes) == ("python", "$CONVERT_DTYPES")
    subprocess.run([sys.executable, str(DEPLOY / script), *command, auto_dtype()], env={"HOME": str(home)},
                   check=True, capture_output=True, timeout=300)  # fmt: skip


def test_a_replica_serves_the_deploy_config_against_redis_and_postgresql(
    tmp_path: Path, redis_url: str, postgres_url: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    convert_as_the_image_does(home)
    container = kustomization(DEPLOY).one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    secret = {"DATABASE_URL": postgres_url, "REDIS_URL": redis_url, "SWITCHYARD_ADMIN_KEY": ADMIN_KEY,
              "TEAM_A_KEY": TEAM_A_KEY}  # fmt: skip
    env = environment(container, secret) | {"HOME": str(home), "SWITCHYARD_HOST": "127.0.0.1"}
    port, started = free_port(), int(time.time())
    with GatewayProcess(DEPLOY / "providers.yaml", env, cwd=tmp_path, port=port) as gateway:
        deadline = time.monotonic() + 180
        while (ready := httpx.get(f"{gateway.url}/health/ready", headers={"Host": "localhost"})).status_code != 200:
            assert ready.json()["status"] == "loading" and time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        assert "using the cached conversion" in gateway.log and "converting to" not in gateway.log

        # The kubelet's requests: its own Host is the pod's IP (refused), the probes say localhost.
        assert httpx.get(f"{gateway.url}/health", headers={"Host": "10.1.2.3:8000"}).status_code == 421
        for host in ("localhost", "switchyard.switchyard.svc.cluster.local:8000", "gateway:8000"):
            assert httpx.get(f"{gateway.url}/health", headers={"Host": host}).status_code == 200, host
        assert subprocess.run(health_check(), env={"SWITCHYARD_PORT": str(port)}, timeout=30).returncode == 0

        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TEAM_A_KEY, max_retries=0)
        reply = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0
        )  # fmt: skip
        assert reply.choices[0].message.content
        assert len(client.embeddings.create(model="all-MiniLM-L6-v2", input="Paris").data[0].embedding) == 384
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        usage = httpx.get(f"{gateway.url}/v1/usage?group_by=api_key&start_time={started}", headers=admin).json()
        assert [group["requests"] for group in usage["data"] if group["api_key"] == "team-a"] == [2]
        assert redis.Redis.from_url(redis_url).exists(redis_keys("team-a")[0]), "the rpm window is in Redis"
    assert subprocess.run(health_check(), env={"SWITCHYARD_PORT": str(port)}, timeout=30).returncode != 0

    with psycopg.connect(postgres_url) as db:
        query = "SELECT count(*) FROM usage_records WHERE api_key = 'team-a' AND time >= %s"
        rows = db.execute(query, (started,)).fetchone()
    assert rows is not None and rows[0] == 2, "the ledger is PostgreSQL's"
    assert not (tmp_path / "switchyard-data").exists(), "with database_url nothing is written to data_dir"
