"""No Kubernetes or Grafana runs here, so deploy/ is checked statically against the code: the manifests set only
settings the code reads, with values it and librdkafka accept, secrets only from the Secret, the port, probes and
user the image really has; the dashboard queries only metrics (and labels) that pipeline/telemetry/metrics.py
registers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer
from prometheus_client.metrics import MetricWrapperBase

from pipeline.cli import COMMANDS
from pipeline.config import KAFKA_PASSTHROUGH_PREFIX, OPTIONS, Settings, load_settings
from pipeline.telemetry import metrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
MANIFESTS = {path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
             for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"}
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "wigzo-pipeline.json").read_text())

KNOWN_ENV = {option.env for option in OPTIONS}
SECRET_ENV = {option.env for option in OPTIONS if option.secret}
POD_NAME = "wigzo-pipeline-5d8f7c9b6-x2x7q"


def _one(kind: str) -> dict[str, Any]:
    found = [doc for docs in MANIFESTS.values() for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


DEPLOYMENT, CONFIGMAP, SECRET, SERVICE = (_one(kind) for kind in ("Deployment", "ConfigMap", "Secret", "Service"))
POD = DEPLOYMENT["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]
ENV = CONTAINER["env"]


def _is_secret(name: str) -> bool:
    return name in SECRET_ENV or (name.startswith(KAFKA_PASSTHROUGH_PREFIX) and "PASSWORD" in name)


def _environment() -> dict[str, str]:
    """What a replica's process sees: the ConfigMap, then `env` (which wins), with the downward API giving the pod
    name and secretKeyRef the example Secret's placeholders."""
    (source,) = CONTAINER["envFrom"]
    assert source["configMapRef"]["name"] == CONFIGMAP["metadata"]["name"]
    environment = dict(CONFIGMAP["data"])
    for entry in ENV:
        if "value" in entry:
            environment[entry["name"]] = entry["value"]
        elif "fieldRef" in entry["valueFrom"]:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", entry
            environment[entry["name"]] = POD_NAME
        else:
            environment[entry["name"]] = SECRET["stringData"][entry["valueFrom"]["secretKeyRef"]["key"]]
    return environment


def _settings() -> Settings:
    """The replica's settings as the code resolves them: a value it rejects fails with the code's own message."""
    return load_settings(None, environ=_environment())


def _metrics_port() -> int:
    (port,) = [port for port in CONTAINER["ports"] if port["name"] == "metrics"]
    return port["containerPort"]


def _resolves_to_metrics_port(port: int | str) -> bool:
    return port == "metrics" or port == _metrics_port()


def test_the_kustomization_applies_every_manifest_except_the_secret_example() -> None:
    example = [name for name, docs in MANIFESTS.items() if any(doc["kind"] == "Secret" for doc in docs)]
    assert example == ["secret.example.yaml"], "the Secret is an example, and named so"
    assert set(KUSTOMIZATION["resources"]) == set(MANIFESTS) - {"secret.example.yaml"}, \
        "applying the directory must never overwrite the real Secret with placeholders"


def test_every_variable_is_one_the_code_reads() -> None:
    names = set(CONFIGMAP["data"]) | {entry["name"] for entry in ENV}
    unknown = {name for name in names if name not in KNOWN_ENV and not name.startswith(KAFKA_PASSTHROUGH_PREFIX)}
    assert not unknown, f"variables the code does not read: {unknown}"


def test_the_settings_parse_and_librdkafka_accepts_the_pass_through() -> None:
    settings = _settings()
    settings.require_org_token()
    # a consumer with every KAFKA_OPT_ setting makes librdkafka check each name and value; closed before it connects
    consumer = Consumer({**settings.kafka_client_config(), "group.id": settings.group_id, "log_level": 0})
    consumer.close()


def test_secrets_come_only_from_the_secret() -> None:
    assert not {name for name in CONFIGMAP["data"] if _is_secret(name)}, "a secret in the ConfigMap"
    supplied = set()
    for entry in ENV:
        reference = entry.get("valueFrom", {}).get("secretKeyRef")
        assert _is_secret(entry["name"]) == (reference is not None), entry["name"]
        if reference is not None:
            assert reference["name"] == SECRET["metadata"]["name"] and reference["key"] in SECRET["stringData"]
            assert reference.get("optional", False) == (entry["name"] != "WIGZO_ORG_TOKEN"), \
                "only the org token is required"
            supplied.add(entry["name"])
    assert SECRET_ENV <= supplied
    assert all("REPLACE" in value for value in SECRET["stringData"].values()), "the example holds placeholders only"


def test_metrics_are_served_and_scraped_on_the_port_the_code_serves() -> None:
    assert _metrics_port() == Settings().metrics_port == _settings().metrics_port
    assert POD["metadata"]["annotations"]["prometheus.io/port"] == str(_metrics_port())
    (port,) = SERVICE["spec"]["ports"]
    assert port["name"] == "metrics" and _resolves_to_metrics_port(port["targetPort"])


def test_the_service_selects_the_pipeline_pods() -> None:
    labels = POD["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert SERVICE["spec"]["selector"].items() <= labels.items()


def test_liveness_asks_healthz_and_readiness_readyz_on_the_metrics_port() -> None:
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        request = CONTAINER[probe]["httpGet"]
        assert request["path"] == path and _resolves_to_metrics_port(request["port"]), probe


def _dockerfile_user() -> str:
    users = [line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    return users[-1]


def test_it_runs_as_the_images_non_root_user() -> None:
    context = {**POD["spec"].get("securityContext", {}), **CONTAINER.get("securityContext", {})}
    assert context["runAsNonRoot"] is True
    assert str(context["runAsUser"]) == _dockerfile_user() == "10001"


def test_the_container_runs_the_pipeline_through_the_images_entrypoint() -> None:
    assert "command" not in CONTAINER, "the image's ENTRYPOINT is wigzo-pipeline"
    assert CONTAINER["args"] == ["run"] and "run" in COMMANDS


def test_shutdown_has_time_to_drain_and_commit() -> None:
    """On SIGTERM work already read gets connect + read timeout + 1 s, then requests on the wire as long again."""
    settings = _settings()
    drain = settings.connect_timeout + settings.read_timeout + 1
    assert POD["spec"]["terminationGracePeriodSeconds"] >= 2 * drain + 10


def test_group_churn_is_cheap_and_every_replica_is_its_own_static_member() -> None:
    kafka_config = _settings().kafka_config
    assert kafka_config["partition.assignment.strategy"] == "cooperative-sticky"
    assert 6000 <= int(kafka_config["session.timeout.ms"]) <= 1_800_000  # the broker's default bounds
    assert kafka_config["group.instance.id"] == POD_NAME, "from the pod name: one id per replica"
    assert "KAFKA_OPT_GROUP_INSTANCE_ID" not in CONFIGMAP["data"], "a shared id would fence all but one replica"


# ---- the Grafana dashboard ----

SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count")}


def _exposed() -> dict[str, set[str]]:
    """Every series name pipeline/telemetry/metrics.py exposes -> the labels it carries."""
    exposed: dict[str, set[str]] = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                for suffix in SUFFIXES[family.type]:
                    extra = {"le"} if suffix == "_bucket" else set()
                    exposed[family.name + suffix] = set(metric._labelnames) | extra
    return exposed


def _queries() -> list[tuple[str, str]]:
    """(expression, legend) of every panel target, and the template variables' queries."""
    queries = [(target["expr"], target.get("legendFormat", ""))
               for panel in DASHBOARD["panels"] for target in panel["targets"]]
    queries += [(variable["definition"], "") for variable in DASHBOARD["templating"]["list"]
                if "definition" in variable]
    return queries


METRIC_NAME = re.compile(rf"\b{metrics.PREFIX}_\w+")


def test_every_metric_the_dashboard_queries_is_one_the_code_exposes() -> None:
    exposed = _exposed()
    referenced = {name for expression, _ in _queries() for name in METRIC_NAME.findall(expression)}
    assert len(referenced) >= 10, referenced
    assert referenced <= set(exposed), f"not exposed by pipeline/telemetry/metrics.py: {referenced - set(exposed)}"


def test_the_dashboard_groups_and_names_series_by_labels_the_metrics_have() -> None:
    exposed = _exposed()
    for expression, legend in _queries():
        labels = set().union(*(exposed[name] for name in METRIC_NAME.findall(expression)))
        grouped = {label.strip() for clause in re.findall(r"\bby\s*\(([^)]*)\)", expression)
                   for label in clause.split(",")}
        shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        assert grouped | shown <= labels, f"{expression}: labels {(grouped | shown) - labels} do not exist"


def test_every_panel_queries_the_prometheus_datasource_variable() -> None:
    variables = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in DASHBOARD["panels"]:
        for source in (panel["datasource"], *(target["datasource"] for target in panel["targets"])):
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def _mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def test_the_pods_memory_and_the_members_budget_agree() -> None:
    """The sizing rule (docs/operations.md, Memory): each member stays under MEMORY_BUDGET_MB, so the pod requests
    WORKERS x budget and its limit leaves at least a quarter spare."""
    settings = _settings()
    (container,) = POD["spec"]["containers"]
    resources = container["resources"]
    members = settings.workers * settings.memory_budget_mb
    assert _mebibytes(resources["requests"]["memory"]) == members
    assert members <= 0.75 * _mebibytes(resources["limits"]["memory"])


# ---- autoscaling with KEDA (deploy/keda: the manifests above plus a ScaledObject) ----

KEDA = ROOT / "deploy" / "keda"
KEDA_KUSTOMIZATION = yaml.safe_load((KEDA / "kustomization.yaml").read_text())
(SCALED_OBJECT,) = [doc for doc in yaml.safe_load_all((KEDA / "scaledobject.yaml").read_text()) if doc]
TRIGGERS = SCALED_OBJECT["spec"]["triggers"]


def test_the_keda_overlay_adds_the_scaled_object_and_hands_it_the_replica_count() -> None:
    assert KEDA_KUSTOMIZATION["resources"] == ["../kubernetes", "scaledobject.yaml"]
    (patch,) = KEDA_KUSTOMIZATION["patches"]
    assert patch["target"] == {"kind": "Deployment", "name": DEPLOYMENT["metadata"]["name"]}
    assert yaml.safe_load(patch["patch"]) == [{"op": "remove", "path": "/spec/replicas"}]
    assert "replicas" in DEPLOYMENT["spec"], "removing a field that is not there fails the patch"


def test_keda_scales_the_deployment_on_its_own_groups_lag_on_its_own_topics() -> None:
    settings = _settings()
    assert SCALED_OBJECT["apiVersion"] == "keda.sh/v1alpha1" and SCALED_OBJECT["kind"] == "ScaledObject"
    assert SCALED_OBJECT["spec"]["scaleTargetRef"] == {"name": DEPLOYMENT["metadata"]["name"]}
    assert SCALED_OBJECT["metadata"]["labels"] == DEPLOYMENT["metadata"]["labels"]
    assert all(trigger["type"] == "kafka" for trigger in TRIGGERS)
    assert sorted(trigger["metadata"]["topic"] for trigger in TRIGGERS) == sorted(settings.topics), \
        "one trigger per KAFKA_TOPICS entry (a ^pattern cannot be a trigger's topic)"
    for trigger in TRIGGERS:
        metadata = trigger["metadata"]
        assert metadata["bootstrapServers"] == settings.bootstrap_servers
        assert metadata["consumerGroup"] == settings.group_id
        assert metadata["offsetResetPolicy"] == settings.auto_offset_reset, "KEDA's default (latest) is not ours"
        assert int(metadata["lagThreshold"]) > 0


def test_keda_never_runs_more_replicas_than_the_topic_has_partitions() -> None:
    partitions = int(SCALED_OBJECT["metadata"]["annotations"]["wigzo-pipeline/topic-partitions"])
    spec = SCALED_OBJECT["spec"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert all(str(trigger["metadata"].get("allowIdleConsumers", "false")).lower() == "false" for trigger in TRIGGERS)


def test_keda_reaches_kafka_as_the_pipeline_does() -> None:
    """The manifests use a PLAINTEXT listener, so the scaler needs no credentials; a ConfigMap that turns SASL or
    TLS on needs the trigger's `sasl`/`tls` and the TriggerAuthentication docs/deployment.md shows."""
    protocol = str(_settings().kafka_config.get("security.protocol", "plaintext")).lower()
    assert protocol == "plaintext", "add sasl, tls and a TriggerAuthentication to the ScaledObject (docs/deployment.md)"
    for trigger in TRIGGERS:
        assert not {"sasl", "tls"} & set(trigger["metadata"]) and "authenticationRef" not in trigger
