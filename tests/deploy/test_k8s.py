"""deploy/k8s/: the Kustomize base and the example overlay render, every
manifest validates against the Kubernetes schemas (kubernetes-validate ships
them, so this runs offline), and the manifests agree with the product: ports,
probes, settings, scaling limits."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from crm_runtime import tls
from crm_runtime.settings import SERVICES, Settings
from tests.deploy import kustomize
from tests.deploy.kustomize import Manifest
from tests.deploy.settings_env import known_variables, settings_from

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
TREES = {"base": BASE, "overlay": OVERLAY}
#: Oldest Kubernetes the manifests target and the newest kubernetes-validate
#: knows.
K8S_VERSIONS = ["1.27", kubernetes_validate.utils.latest_version()]
DEFAULTS = Settings()


@pytest.fixture(scope="module", params=list(TREES))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    name: str = request.param
    return name, kustomize.render(TREES[name])


def one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def env_of(objects: list[Manifest]) -> dict[str, str]:
    """The variables every service container gets (its ConfigMap and Secret)."""
    env: dict[str, str] = {}
    deployment = one(objects, "Deployment", SERVICES[0])
    for source in deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]:
        if "configMapRef" in source:
            env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(one(objects, "Secret", source["secretRef"]["name"])["stringData"])
    return env


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(
        rendered: tuple[str, list[Manifest]], version: str) -> None:
    _, objects = rendered
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)


def test_renderer_matches_kubectl_kustomize() -> None:
    """The Python renderer the other tests use gives what kubectl does."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; the Python renderer alone is used")
    for tree in TREES.values():
        out = subprocess.run([kubectl, "kustomize", str(tree)], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        expected = {kustomize.key(d): d for d in yaml.safe_load_all(out) if d}
        ours = {kustomize.key(d): d for d in kustomize.render(tree)}
        assert sorted(ours) == sorted(expected)
        for k, obj in ours.items():
            assert obj == expected[k], f"{tree.name}: {k} differs from kubectl kustomize"


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(kustomize.Unsupported, match="namePrefix"):
        kustomize.render(tmp_path)


def test_each_service_has_deployment_service_autoscaler_and_disruption_budget(
        rendered: tuple[str, list[Manifest]]) -> None:
    _, objects = rendered
    for name in SERVICES:
        deployment = one(objects, "Deployment", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
        assert "replicas" not in deployment["spec"], \
            f"{name}: the HorizontalPodAutoscaler owns the replica count"
        assert matches(one(objects, "Service", name)["spec"]["selector"], pod_labels)
        assert matches(one(objects, "PodDisruptionBudget", name)["spec"]["selector"]
                       ["matchLabels"], pod_labels)
        hpa = one(objects, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1",
                                                 "kind": "Deployment", "name": name}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # The pod disruption budget must leave room to evict one pod.
        assert hpa["spec"]["minReplicas"] >= 2
    job = one(objects, "Job", "crm-migrate")
    spec = job["spec"]["template"]["spec"]
    assert [c["args"] for c in spec["initContainers"]] == [["migrate"]]
    assert [c["args"] for c in spec["containers"]] == [["topics"]]


def test_containers_use_the_service_ports_and_grpc_health_probes_over_tls(
        rendered: tuple[str, list[Manifest]]) -> None:
    _, objects = rendered
    for name in SERVICES:
        deployment = one(objects, "Deployment", name)
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        grpc_port, metrics_port = DEFAULTS.grpc_port(name), DEFAULTS.metrics_port(name)
        assert container["args"] == ["serve", name]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == \
            {"grpc": grpc_port, "metrics": metrics_port}
        # crm health at localhost:<grpc port>, TLS as the settings say (the
        # kubelet's gRPC probe cannot speak TLS).
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["exec"] == {
                "command": ["python", "-m", "crm_app.health", name]}, f"{name} {probe}"
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
        service = one(objects, "Service", name)
        assert {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == \
            {"grpc": (grpc_port, "grpc"), "metrics": (metrics_port, "metrics")}


def test_pods_run_as_non_root_on_a_read_only_filesystem(
        rendered: tuple[str, list[Manifest]]) -> None:
    _, objects = rendered
    for obj in objects:
        spec = kustomize.pod_spec(obj)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert {"name": "tmp", "emptyDir": {}} in spec["volumes"]
        for container in kustomize.containers(obj):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert ctx["capabilities"] == {"drop": ["ALL"]}
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert container["resources"]["requests"]["cpu"], "HPAs need a CPU request"


def test_settings_are_known_variables_and_load(rendered: tuple[str, list[Manifest]]) -> None:
    _, objects = rendered
    env = env_of(objects)
    unknown = sorted(set(env) - known_variables())
    assert not unknown, f"not settings of the product (typo?): {unknown}"
    settings = settings_from(env)
    assert settings.grpc_host == "0.0.0.0", "gRPC and /metrics must listen on the pod address"
    assert settings.database_url and settings.kafka_bootstrap_servers
    host, _, port = settings.customers_target().rpartition(":")
    service = one(objects, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    for obj in objects:  # every envFrom reference exists
        for container in kustomize.containers(obj):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source["secretRef"]
                one(objects, "ConfigMap" if "configMapRef" in source else "Secret", ref["name"])


def test_service_pods_mount_the_tls_secret_where_the_settings_point(
        rendered: tuple[str, list[Manifest]]) -> None:
    _, objects = rendered
    settings = settings_from(env_of(objects))
    assert tls.mode(settings) == "TLS" and tls.client_enabled(settings)
    files = [settings.grpc_tls_cert_file, settings.grpc_tls_key_file, settings.grpc_tls_ca_file]
    assert [f.name for f in files if f] == ["tls.crt", "tls.key", "ca.crt"]  # the Secret's keys
    for name in SERVICES:
        spec = one(objects, "Deployment", name)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        for path in files:
            assert path is not None
            mount = mounts.get(str(path.parent))
            assert mount and mount.get("readOnly") is True, f"{name}: {path} not mounted"
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == "crm-grpc-tls"
            # Readable by the pod's group only (fsGroup), not by everyone.
            assert secret["defaultMode"] == 0o440
            assert spec["securityContext"]["fsGroup"] == 10001


def test_autoscalers_stay_within_the_topic_partitions(
        rendered: tuple[str, list[Manifest]]) -> None:
    """Consumer-group members beyond a topic's partitions get no partition."""
    _, objects = rendered
    settings = settings_from(env_of(objects))
    fewest = min(settings.partitions_for(t) for t in _topics())
    for name in SERVICES:
        hpa = one(objects, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["maxReplicas"] <= fewest, \
            f"{name}: maxReplicas {hpa['spec']['maxReplicas']} > {fewest} partitions"


def _topics() -> tuple[str, ...]:
    from crm_contracts.topics import ALL
    return ALL


def test_example_overlay_sets_namespace_image_and_a_service_token_that_customers_accepts(
) -> None:
    objects = kustomize.render(OVERLAY)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "crm"
        for container in kustomize.containers(obj):
            assert container["image"] == "registry.example.com/open-crm:0.1.0"
    settings = settings_from(env_of(objects))
    assert settings.service_token is not None
    grant = settings.token_table().get(hashlib.sha256(settings.service_token.encode()).hexdigest())
    assert grant is not None, "CRM_API_TOKENS must contain the service token's SHA-256"
    assert {"customers:read", "customers:write", "contacts:reserve"} <= set(grant.scopes)


def test_base_images_are_left_for_the_overlay_to_name() -> None:
    for obj in kustomize.render(BASE):
        for container in kustomize.containers(obj):
            assert container["image"] == "open-crm"
