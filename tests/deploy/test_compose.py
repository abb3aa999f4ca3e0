"""deploy/compose/compose.yaml and the Dockerfile: the YAML parses, every file
and directory it refers to exists, and the services get the ports, settings
and health checks the product needs. (Docker itself is not needed: when the
`docker compose` plugin is installed, `docker compose config` is run too.)"""

from __future__ import annotations

import base64
import fnmatch
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from crm_runtime import tls
from crm_runtime.settings import SERVICES, Settings
from tests.deploy.conftest import ROOT
from tests.deploy.settings_env import known_variables, settings_from

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DEFAULTS = Settings()
#: Values for the variables example.env leaves for the operator to fill in.
SAMPLE_ENV = {
    "POSTGRES_PASSWORD": "0123456789abcdef",
    "GRAFANA_ADMIN_PASSWORD": "0123456789abcdef",
    "CRM_SERVICE_TOKEN": "a-service-token-of-32-characters",
    "CRM_API_TOKENS": '[{"system": "crm-services", "scopes": ["customers:*"], '
                      '"token": "a-service-token-of-32-characters"}]',
}
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return doc


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} with ``env``."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return arg or ""
    return _VARIABLE.sub(one, value)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping, please"
    return {k: interpolate(str(v), SAMPLE_ENV) for k, v in env.items()}


def test_compose_file_parses_and_has_the_production_like_stack() -> None:
    services = compose()["services"]
    assert set(services) == {"kafka", "postgres", "crm-init", *SERVICES, "prometheus",
                             "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image = interpolate(service["image"], {})
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin the image version ({image})"


def test_referenced_files_and_directories_exist() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in doc["volumes"], f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in doc["services"], f"{name} depends on unknown {dependency}"
    assert (COMPOSE_DIR / "example.env").is_file()


def test_crm_services_wait_for_the_init_job_which_waits_for_healthy_servers() -> None:
    services = compose()["services"]
    init = services["crm-init"]
    assert init["entrypoint"] == ["sh", "-c", "crm migrate && crm topics"]
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"},
                                  "postgres": {"condition": "service_healthy"}}
    for name in ("kafka", "postgres"):
        assert services[name]["healthcheck"]["test"]
    for name in SERVICES:
        assert services[name]["depends_on"] == {
            "crm-init": {"condition": "service_completed_successfully"}}


def test_crm_services_serve_their_ports_with_a_grpc_health_check() -> None:
    services = compose()["services"]
    for name in SERVICES:
        service = services[name]
        port = DEFAULTS.grpc_port(name)
        assert service["command"] == ["serve", name]
        assert service["ports"] == [f"{port}:{port}"]
        # crm health: localhost at the service's port, TLS as the settings say.
        assert service["healthcheck"]["test"] == ["CMD", "python", "-m", "crm_app.health",
                                                  name]


def test_settings_are_known_variables_and_load() -> None:
    services = compose()["services"]
    for name in ("crm-init", *SERVICES):
        env = service_env(services[name])
        unknown = sorted(set(env) - known_variables())
        assert not unknown, f"{name}: not settings of the product: {unknown}"
        settings = settings_from(env)
        assert settings.grpc_host == "0.0.0.0"
        assert settings.kafka_bootstrap_servers == "kafka:9092"
        assert settings.database_url and "@postgres:5432/" in settings.database_url
        assert settings.customers_target() == f"customers:{DEFAULTS.grpc_port('customers')}"
        assert tls.mode(settings) == "TLS" and tls.client_enabled(settings)
        assert tls.mode(settings_from({**env, "CRM_GRPC_TLS_CLIENT_CA_FILE": "/x/ca.crt"})) == \
            "mutual TLS"


def test_the_services_get_the_certificates_their_settings_name() -> None:
    """./certs is mounted read-only where the CRM_GRPC_TLS_* files are, and
    holds nothing in git (make-certs.sh or the operator fills it)."""
    services = compose()["services"]
    for name in SERVICES:
        env = service_env(services[name])
        mounts = {v.split(":")[1]: v.split(":")[0] for v in services[name]["volumes"]}
        for variable in ("CRM_GRPC_TLS_CERT_FILE", "CRM_GRPC_TLS_KEY_FILE",
                         "CRM_GRPC_TLS_CA_FILE"):
            folder = str(Path(env[variable]).parent)
            assert mounts.get(folder) == "./certs", f"{name}: {variable} is not in ./certs"
        assert "./certs:/etc/crm/tls:ro" in services[name]["volumes"]
    ignored = (COMPOSE_DIR / "certs" / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignored


def test_make_certs_makes_what_the_services_serve_and_call_with(tmp_path: Path) -> None:
    """deploy/compose/make-certs.sh: the files load as the compose settings
    name them (key matching its certificate, CA), and name the services and
    localhost for the health checks."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["sh", str(COMPOSE_DIR / "make-certs.sh"), str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    settings = Settings(grpc_tls_cert_file=tmp_path / "tls.crt",
                        grpc_tls_key_file=tmp_path / "tls.key",
                        grpc_tls_ca_file=tmp_path / "ca.crt",
                        grpc_tls_client_ca_file=tmp_path / "ca.crt")
    tls.check(settings)
    text = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "tls.crt"), "-noout",
                           "-ext", "subjectAltName,extendedKeyUsage"], check=True,
                          capture_output=True, text=True, timeout=30).stdout
    for name in (*SERVICES, "localhost"):
        assert f"DNS:{name}" in text
    assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" in text
    subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"),
                    str(tmp_path / "tls.crt")], check=True, capture_output=True, timeout=30)


def test_kafka_cluster_id_is_a_base64url_uuid() -> None:
    value = interpolate(compose()["services"]["kafka"]["environment"]["CLUSTER_ID"], {})
    assert len(base64.urlsafe_b64decode(value + "==")) == 16


def test_prometheus_and_grafana_get_the_provisioning_files() -> None:
    services = compose()["services"]
    prometheus = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"]}
    config = yaml.safe_load((COMPOSE_DIR / prometheus["/etc/prometheus/prometheus.yml"])
                            .read_text(encoding="utf-8"))
    for rule_file in config["rule_files"]:  # relative to the configuration's folder
        assert f"/etc/prometheus/{rule_file}" in prometheus
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert (COMPOSE_DIR / grafana["/etc/grafana/dashboards"]).resolve() == \
        ROOT / "deploy" / "grafana" / "dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()


def test_docker_compose_config_when_available(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True,
                                        timeout=30).returncode != 0:
        pytest.skip("the docker compose plugin is not installed; the checks above stand")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}='{v}'\n" for k, v in SAMPLE_ENV.items()))
    subprocess.run([docker, "compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
                    "config", "--quiet"], check=True, timeout=60)


def dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_installs_the_package_pinned_and_runs_crm_as_non_root() -> None:
    lines = dockerfile()
    assert all(line == "FROM python:3.11-slim" or line == "FROM python:3.11-slim AS build"
               for line in lines if line.startswith("FROM"))
    assert any("pip install -c constraints.txt ." in line for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert lines.count('ENTRYPOINT ["crm"]') == 1
    assert 'CMD ["serve", "customers"]' in lines
    assert any("CRM_GRPC_HOST=0.0.0.0" in line for line in lines)


def test_dockerfile_copies_only_what_exists_and_dockerignore_keeps() -> None:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text(encoding="utf-8")
                .splitlines() if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, body) or fnmatch.fnmatch(path.split("/")[0], body):
                result = not negate
        return result

    for line in dockerfile():
        if line.startswith("COPY") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
                assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    # The package build needs these (pyproject.toml: readme, packages).
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "crm_runtime", "services",
                   "crm"):
        assert not ignored(needed), needed
    for unwanted in (".venv", ".local", "tests", ".git"):
        assert ignored(unwanted), unwanted
