"""The Kubernetes manifests under deploy/: valid objects, wired to each other, to the image and to the config.

No cluster and no kustomize run here. Each object is validated against
Kubernetes' own schemas (kubernetes-validate's bundled copies, strict: an
unknown field is an error), and each kustomization is built as ``kubectl
apply -k`` builds it, but for the hash configMapGenerator adds to a name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError
from yamllint import linter
from yamllint.config import YamlLintConfig

from gateway.config import GatewayConfig, parse_config
from gateway.http.middleware.browser_guard import HostAllowList, host_check_for
from gateway.process.settings import ProcessSettings
from providers.config import HostedProviderConfig
from tests.deploy.files import (
    DEPLOY,
    KUSTOMIZATIONS,
    NOT_MANIFESTS,
    ROOT,
    Kustomization,
    config_variables,
    container_command,
    documented_secret,
    documented_services,
    documented_yaml,
    environment,
    kustomization,
    last,
    manifest_files,
    project_version,
    yaml_documents,
)

# The newest Kubernetes whose schemas kubernetes-validate 1.37 bundles; strict: unknown fields are errors.
KUBERNETES_VERSION = "1.37.0"
# A probe's Host when it names none: the pod's IP and port.
POD_IP_HOST = b"10.1.2.3:8000"


@pytest.fixture(params=KUSTOMIZATIONS, ids=lambda root: str(root.relative_to(ROOT)))
def built(request: pytest.FixtureRequest) -> Kustomization:
    return kustomization(request.param)


def the_container(built: Kustomization) -> dict[str, Any]:
    containers = built.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_path(built: Kustomization) -> Path:
    """The providers.yaml the Deployment's container is given: found through its --config, mount and ConfigMap."""
    args = the_container(built)["args"]
    served = Path(args[args.index("--config") + 1])
    pod = built.one("Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in the_container(built)["volumeMounts"] if Path(m["mountPath"]) == served.parent)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return built.config_maps[volume["configMap"]["name"]][served.name]


def served_config(built: Kustomization) -> GatewayConfig:
    _, secret = documented_secret()
    return parse_config(config_path(built).read_text(), source=str(config_path(built)),
                        environ=environment(the_container(built), secret))  # fmt: skip


def test_every_object_validates_against_the_kubernetes_schemas() -> None:
    objects = [(path, document) for path in manifest_files() for document in yaml_documents(path)]
    objects += [(root / "kustomization.yaml", cm) for root in KUSTOMIZATIONS for cm in kustomization(root).generated()]
    assert {document["kind"] for _, document in objects} >= {
        "Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Namespace"
    }  # fmt: skip
    for path, document in objects:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.relative_to(ROOT)}: {document['kind']}: {'.'.join(map(str, error.path))}: {error.message}")


def test_yamllint_passes_on_deploy_and_compose_warnings_included() -> None:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    files = sorted(DEPLOY.rglob("*.yaml")) + [ROOT / "compose.yaml"]
    problems = [f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.level}: {p.message}"
                for path in files for p in linter.run(path.read_text(), config, str(path))]  # fmt: skip
    assert not problems, "\n".join(problems)


def test_each_kustomization_lists_every_manifest_beside_it(built: Kustomization) -> None:
    here = {path for path in built.root.rglob("*.yaml") if path.name not in NOT_MANIFESTS}
    below = {path for other in KUSTOMIZATIONS if other != built.root and other.is_relative_to(built.root)
             for path in other.rglob("*.yaml")}  # fmt: skip
    assert set(built.resource_files) == here - below
    for files in built.config_maps.values():
        for file in files.values():
            assert file.is_file() and file.is_relative_to(built.root), f"{file}: kustomize reads only below its root"


def test_the_probes_are_readiness_on_ready_and_liveness_on_health_at_the_configs_port(built: Kustomization) -> None:
    container = the_container(built)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = served_config(built)
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/health/ready"
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["startupProbe"]["path"] == "/health", "startup: the process serves, before the models load"
    hosts = host_check_for(config.server.host, config.server.allowed_hosts)
    for kind, probe in probes.items():
        assert ports[probe["port"]] == config.server.port, f"{kind}: not the port providers.yaml binds"
        headers = {header["name"].lower(): header["value"] for header in probe.get("httpHeaders", [])}
        # The kubelet sends the pod's IP as the Host unless told; with allowed_hosts set that is a 421.
        if hosts is not None:
            assert not hosts.allows(POD_IP_HOST)
            assert "host" in headers and hosts.allows(headers["host"].encode()), kind


def test_the_config_parses_with_the_environment_the_deployment_gives(built: Kustomization) -> None:
    config = served_config(built)
    assert config.server.host == "0.0.0.0" and config.models
    required = {name for name, default in config_variables(config_path(built)).items() if default is None}
    given = {variable["name"] for variable in the_container(built)["env"]
             if "value" in variable or not variable["valueFrom"]["secretKeyRef"].get("optional")}  # fmt: skip
    assert required <= given, f"{required - given}: no default, and the Deployment does not always set it"


def test_every_secret_reference_is_a_variable_of_the_config_and_a_key_of_the_documented_secret(
    built: Kustomization,
) -> None:
    variables = config_variables(config_path(built))
    secret_name, secret = documented_secret()
    for variable in the_container(built)["env"]:
        if "value" in variable:
            continue
        reference = variable["valueFrom"]["secretKeyRef"]
        assert reference["name"] == secret_name and reference["key"] == variable["name"]
        assert variable["name"] in variables, f"{variable['name']}: providers.yaml has no ${{{variable['name']}}}"
        assert reference.get("optional", False) == (variables[variable["name"]] is not None), (
            f"{variable['name']}: optional exactly when providers.yaml gives it a default"
        )
        assert variable["name"] in secret, f"the doc's `kubectl create secret` has no {variable['name']}"


def test_the_documented_secret_holds_only_keys_a_deployment_reads() -> None:
    _, secret = documented_secret()
    read = {variable["name"] for root in KUSTOMIZATIONS for variable in the_container(kustomization(root))["env"]
            if "valueFrom" in variable}  # fmt: skip
    assert set(secret) == read


def test_the_container_runs_the_documented_command_as_the_images_user(built: Kustomization) -> None:
    container = the_container(built)
    _, gateway_command = documented_services()["gateway"]
    assert container_command(container["args"]) == gateway_command
    pod = built.one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == last("USER").text.split(":")[0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["image"].split(":")[1].startswith(project_version())


def test_service_links_are_off_because_a_service_named_switchyard_sets_switchyard_port(built: Kustomization) -> None:
    pod = built.one("Deployment")["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    # What the kubelet would set for the Service `switchyard` (SWITCHYARD_PORT=tcp://...), the gateway refuses.
    with pytest.raises(ValidationError):
        ProcessSettings.model_validate({"port": "tcp://10.1.2.3:8000"})


def test_the_service_selects_the_pods_and_reaches_the_configs_port_by_its_names(built: Kustomization) -> None:
    service = built.one("Service")
    pod = built.one("Deployment")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert built.one("Deployment")["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"]: port["containerPort"] for port in the_container(built)["ports"]}
    config = served_config(built)
    for port in service["spec"]["ports"]:
        assert ports[port["targetPort"]] == config.server.port
    hosts = HostAllowList(config.server.allowed_hosts)
    name = service["metadata"]["name"]
    for host in (name, f"{name}.{built.namespace}", f"{name}.{built.namespace}.svc",
                 f"{name}.{built.namespace}.svc.cluster.local"):  # fmt: skip
        assert hosts.allows(f"{host}:{service['spec']['ports'][0]['port']}".encode()), f"{host}: a 421"


def test_the_grace_period_outlasts_the_longest_request(built: Kustomization) -> None:
    pod = built.one("Deployment")["spec"]["template"]["spec"]
    pause = the_container(built)["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= served_config(built).router.timeout + float(pause[1])


def test_the_hpa_scales_the_gateway_deployment_on_cpu() -> None:
    built = kustomization(DEPLOY)
    hpa, deployment = built.one("HorizontalPodAutoscaler"), built.one("Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"] if metric["type"] == "Resource"] == ["cpu"]
    assert "cpu" in the_container(built)["resources"]["requests"], "CPU utilization is a share of the request"
    assert hpa["spec"]["minReplicas"] >= 2 and deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"]
    pdb = built.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_torchs_threads_follow_the_cpu_request() -> None:
    container = the_container(kustomization(DEPLOY))
    threads = {v["name"]: v["value"] for v in container["env"] if "value" in v}["OMP_NUM_THREADS"]
    assert threads == container["resources"]["requests"]["cpu"]
    # Read by torch's OpenMP runtime, not by the gateway: found in the library torch ships.
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.origin is not None
    runtimes = list((Path(spec.origin).parent / "lib").glob("libgomp*.so*"))
    assert runtimes and all(b"OMP_NUM_THREADS" in runtime.read_bytes() for runtime in runtimes)


def test_the_gateways_share_redis_and_postgresql_through_the_secret() -> None:
    config = served_config(kustomization(DEPLOY))
    assert config.server.redis_url is not None and config.server.database_url is not None
    assert config.server.usage_ledger and config.server.store_responses


def test_the_gpu_engine_runs_on_a_gpu_node_and_is_reached_as_the_docs_custom_provider() -> None:
    engine = kustomization(DEPLOY / "gpu")
    pod = engine.one("Deployment")["spec"]["template"]["spec"]
    assert the_container(engine)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert the_container(engine)["image"].endswith("-cuda")
    engine_config = served_config(engine)
    assert [getattr(p, "device", None) for p in engine_config.providers.values()] == ["cuda"]
    assert not engine_config.server.usage_ledger, "the gateways record each request once"

    # The doc's lines for the gateways, added to deploy/providers.yaml and their container, parse and reach it.
    gateways = kustomization(DEPLOY)
    raw = yaml_documents(config_path(gateways))[0]
    for section, entries in documented_yaml("add to `deploy/providers.yaml`:").items():
        raw.setdefault(section, {}).update(entries)
    container = the_container(gateways)
    container = {**container, "env": container["env"] + documented_yaml("to its container's `env:`:")["env"]}
    _, secret = documented_secret()
    config = parse_config(yaml.safe_dump(raw), environ=environment(container, secret))
    customs = [provider for provider in config.providers.values() if isinstance(provider, HostedProviderConfig)
               and provider.type == "custom"]  # fmt: skip
    assert len(customs) == 1
    url = urlsplit(customs[0].resolve().base_url)
    service = engine.one("Service")
    assert url.hostname == service["metadata"]["name"] and url.port == service["spec"]["ports"][0]["port"]
    assert HostAllowList(engine_config.server.allowed_hosts).allows(url.netloc.encode()), "the engine's Host check"
    # The key the gateways send is the one the engine takes.
    assert customs[0].api_key is not None
    assert [key.key for key in engine_config.server.api_keys] == [customs[0].api_key]
