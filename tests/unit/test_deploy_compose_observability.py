"""docker-compose.yml's observability stack against the files it mounts and the code.

Prometheus scrapes every worker replica on the port it serves /metrics on and
loads the alert rules test_deploy_observability checks; Grafana is provisioned
with the compose Prometheus and with the dashboard whose queries that module
checks; the workers' traces go to the Jaeger in the stack, on the port where it
receives OTLP/HTTP, at the address the tracing code posts to.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from tests.unit.test_deploy_compose import ROOT, host_file, mounts, rendered
from tests.unit.test_deploy_observability import DASHBOARD, RULES
from tether.config import Settings
from tether.dev.stack import SERVICES
from tether.observability import tracing

# Prometheus ------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DnsSd(Strict):
    names: list[str]
    type: Literal["A"]
    port: int
    refresh_interval: str = "30s"


class ScrapeJob(Strict):
    job_name: str
    metrics_path: str = "/metrics"
    dns_sd_configs: list[DnsSd]


class PrometheusConfig(Strict):
    global_: dict[str, str] = Field(alias="global")
    rule_files: list[str]
    scrape_configs: list[ScrapeJob]


def prometheus() -> tuple[dict[str, Any], PrometheusConfig]:
    service = rendered()["services"]["prometheus"]
    # The image's own command reads its config from here.
    config = host_file(service, "/etc/prometheus/prometheus.yml")
    assert config is not None and config.is_file()
    return service, PrometheusConfig.model_validate(yaml.safe_load(config.read_text()))


def test_prometheus_scrapes_every_replica_of_every_worker_on_its_metrics_port() -> None:
    serving = {
        name: int(service["environment"]["TETHER_METRICS_PORT"])
        for name, service in rendered()["services"].items()
        if "TETHER_METRICS_PORT" in service.get("environment", {})
    }
    assert set(serving) == set(SERVICES), "each worker serves /metrics"
    _, config = prometheus()
    scraped = {}
    for job in config.scrape_configs:
        assert job.metrics_path == "/metrics", job.job_name
        for sd in job.dns_sd_configs:
            for name in sd.names:
                scraped[name] = sd.port
    assert scraped == serving


def test_prometheus_loads_the_checked_alert_rules() -> None:
    service, config = prometheus()
    files = [host_file(service, path) for path in config.rule_files]
    assert files == [RULES], "the rules Prometheus loads are those test_deploy_observability checks"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    service, config = prometheus()
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    doc["rule_files"] = [str(host_file(service, path)) for path in config.rule_files]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(doc))
    done = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Grafana ---------------------------------------------------------------------------------


class Datasource(Strict):
    name: str
    uid: str
    type: str
    access: Literal["proxy"]
    url: str
    isDefault: bool = False
    editable: bool = True
    jsonData: dict[str, Any] = {}


class Datasources(Strict):
    apiVersion: Literal[1]
    datasources: list[Datasource]


class ProviderOptions(Strict):
    path: str


class Provider(Strict):
    name: str
    folder: str = ""
    type: Literal["file"]
    disableDeletion: bool = False
    allowUiUpdates: bool = False
    updateIntervalSeconds: int = 10
    options: ProviderOptions


class Providers(Strict):
    apiVersion: Literal[1]
    providers: list[Provider]


def grafana_file(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    service = rendered()["services"]["grafana"]
    found = [
        source
        for target, source in mounts(service).items()
        if target.parent == PurePosixPath(f"/etc/grafana/provisioning/{kind}")
    ]
    assert len(found) == 1, f"one {kind} provisioning file is mounted"
    return service, yaml.safe_load(found[0].read_text())


def test_grafana_reads_the_compose_prometheus() -> None:
    _, doc = grafana_file("datasources")
    (source,) = Datasources.model_validate(doc).datasources
    assert source.type == "prometheus" and source.isDefault
    url = urlsplit(source.url)
    service, config = prometheus()
    assert url.hostname in rendered()["services"] and url.hostname == "prometheus"
    assert f"http://127.0.0.1:{url.port}/" in " ".join(service["healthcheck"]["test"])
    assert source.jsonData["timeInterval"] == config.global_["scrape_interval"]


def test_grafana_provisions_the_checked_dashboard() -> None:
    service, doc = grafana_file("dashboards")
    (provider,) = Providers.model_validate(doc).providers
    folder = PurePosixPath(provider.options.path)
    shown = [source for target, source in mounts(service).items() if target.parent == folder]
    assert shown == [DASHBOARD], "the dashboard Grafana shows is the one whose queries are checked"
    home = host_file(service, service["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home == DASHBOARD
    text = DASHBOARD.read_text()
    # An exported dashboard's ${DS_...} inputs would be left unresolved by provisioning.
    assert "__inputs" not in json.loads(text) and "${DS_" not in text
    (variable,) = [v for v in json.loads(text)["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"


# traces ----------------------------------------------------------------------------------


def test_the_workers_send_traces_to_the_jaeger_in_the_stack() -> None:
    compose = rendered()
    for name in SERVICES:
        endpoint = compose["services"][name]["environment"]["TETHER_OTLP_ENDPOINT"]
        settings = Settings(_env_file=None, otlp_endpoint=endpoint)  # type: ignore[call-arg]
        assert tracing.enabled(settings), name
        exported_to = urlsplit(tracing._exporter_endpoint(settings) or "")
        collector = compose["services"][exported_to.hostname or ""]
        assert collector["image"].startswith("jaegertracing/all-in-one:"), name
        env = collector["environment"]
        assert env["COLLECTOR_OTLP_ENABLED"] == "true"
        # OTLP over HTTP, where Jaeger listens for it.
        assert exported_to.scheme == "http" and exported_to.path == "/v1/traces"
        assert exported_to.port == int(env["COLLECTOR_OTLP_HTTP_HOST_PORT"].rsplit(":", 1)[1])
    assert "127.0.0.1:16686:16686" in compose["services"]["jaeger"]["ports"]
