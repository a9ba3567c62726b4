"""Tests of the Helm chart helm/scopegate, through Helm's own Go SDK (PyPI `helm-python-sdk`).

Every test renders or lints the real chart offline (no cluster); rendered manifests are checked
against the Kubernetes OpenAPI schemas with `kubernetes-validate` (strict: unknown fields fail).
The last tests start the real `scopegate` binary with the rendered arguments and environment, so
the chart and the CLI cannot drift apart.

    .venv/bin/python -m pytest tests/helm -q

Needs: .venv with helm-python-sdk, kubernetes-validate and pytest; for the last tests a built
scopegate binary (`cargo build --bin scopegate`, or SCOPEGATE_BIN=path), and etcd, etcdctl
(Debian etcd-server, etcd-client) and openssl. A missing tool fails the test, with how to get it.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "scopegate"
RELEASE = "scopegate"
NAMESPACE = "auth"
# The chart's minimum (Chart.yaml kubeVersion) and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]

ETCD_VALUES = {
    "etcd": {
        "endpoints": ["https://etcd-0.etcd:2379", "https://etcd-1.etcd:2379"],
        "prefix": "/authz/prod/",
        "tls": {"existingSecret": "etcd-client-tls"},
        "auth": {"user": "scopegate", "existingSecret": "etcd-password"},
    }
}


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(chart, values=None, *, name=RELEASE, namespace=NAMESPACE):
    """Renders the chart; returns (list of manifest dicts, NOTES text)."""
    out = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    docs, notes = [], ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs, notes


def objects(chart, values=None, **kw):
    docs, _ = render(chart, values, **kw)
    return docs


def only(docs, kind):
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def container(docs):
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}


def env_values(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def mounts_of(c):
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def volumes_of(docs):
    return {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"].get("volumes", [])}


def merged(*parts):
    out = {}
    for part in parts:
        out = _deep_merge(out, copy.deepcopy(part))
    return out


def _deep_merge(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            a[k] = _deep_merge(a[k], v)
        else:
            a[k] = v
    return a


def validate_all(docs, version):
    """Validates every core manifest against the Kubernetes schemas (strict)."""
    checked = []
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: not in the Kubernetes schemas, checked structurally below
        kubernetes_validate.validate(doc, version, strict=True)
        checked.append(doc["kind"])
    return checked


def load_ci_values(name):
    return helm.values_from_yaml((CHART_DIR / "ci" / name).read_text())


def lint_problems(report):
    """Lint messages of severity warning (2) or error (3), plus the report's errors."""
    return [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]


# ---------------------------------------------------------------------------------------------
# chart metadata and lint


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "scopegate"
    assert meta["version"] == "0.1.0"
    assert meta["appVersion"] == "0.1.0"
    # Native gRPC probes and the preStop sleep action need Kubernetes 1.30 (validated below).
    assert meta["kubeVersion"] == ">=1.30.0-0"
    assert chart.schema is not None, "values.schema.json must ship with the chart"
    assert chart.values["image"]["repository"] == "ghcr.io/scopegate/scopegate"
    assert chart.values["replicas"] == 2


@pytest.mark.parametrize("values_file", [None, "rules-values.yaml", "etcd-values.yaml"])
def test_lint_strict_passes(values_file):
    values = load_ci_values(values_file) if values_file else None
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1
    assert lint_problems(report) == []


def test_packaged_chart_renders_like_the_directory(chart, tmp_path):
    archive = helm.package(CHART_DIR, destination=tmp_path)
    assert Path(archive).name == "scopegate-0.1.0.tgz"
    assert helm.digest(archive).startswith("sha256:")
    with helm.Chart.load_archive(Path(archive).read_bytes()) as packaged:
        assert packaged.schema == chart.schema
        for values in ({}, ETCD_VALUES):
            assert render(packaged, values) == render(chart, values)


def test_lint_reports_schema_violation():
    report = helm.lint(CHART_DIR, {"replicas": 0}, strict=True)
    problems = lint_problems(report)
    assert problems, "lint must flag replicas: 0"
    assert any("replicas" in str(p) for p in problems)


# ---------------------------------------------------------------------------------------------
# default render


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_default_render_validates_strictly(chart, version):
    docs = objects(chart)
    checked = validate_all(docs, version)
    assert sorted(checked) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", ["rules-values.yaml", "etcd-values.yaml"])
def test_example_values_render_validates_strictly(chart, values_file, version):
    docs = objects(chart, load_ci_values(values_file))
    assert "Deployment" in validate_all(docs, version)


def test_default_objects_and_names(chart):
    docs = objects(chart)
    assert kinds(docs) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert only(docs, "Deployment")["metadata"]["name"] == "scopegate"
    # A release name without the chart name gets it appended.
    other = objects(chart, name="authz")
    assert only(other, "Deployment")["metadata"]["name"] == "authz-scopegate"
    assert only(other, "ConfigMap")["metadata"]["name"] == "authz-scopegate-rules"


def test_deployment_defaults(chart):
    docs = objects(chart)
    deploy = only(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    c = container(docs)
    assert c["image"] == "ghcr.io/scopegate/scopegate:0.1.0"  # tag defaults to appVersion
    assert c["args"][0] == "serve"
    args = c["args"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:9191"
    assert args[args.index("--admin-listen") + 1] == "0.0.0.0:9192"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 9191, "http-admin": 9192}
    # Everything except the source and the listen addresses is configured through SCOPEGATE_*.
    env = env_values(c)
    assert env["SCOPEGATE_DECISION_LOG"] == "all"
    assert env["SCOPEGATE_CACHE_CAPACITY"] == "100000"
    assert env["SCOPEGATE_DRAIN_TIMEOUT"] == "10s"
    assert "SCOPEGATE_MAX_STALENESS" not in env  # off unless set
    for name in env:
        assert name.startswith("SCOPEGATE_") or name == "RUST_LOG"
    assert not any(a.startswith("--") and a not in ("--rules", "--listen", "--admin-listen") for a in args)
    # Selector labels are the pod's labels and the Service's selector.
    selector = deploy["spec"]["selector"]["matchLabels"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert only(docs, "Service")["spec"]["selector"] == selector
    spec = deploy["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == only(docs, "ServiceAccount")["metadata"]["name"]


def test_image_tag_and_digest(chart):
    c = container(objects(chart, {"image": {"tag": "1.2.3"}}))
    assert c["image"] == "ghcr.io/scopegate/scopegate:1.2.3"
    digest = "sha256:" + "ab" * 32
    c = container(objects(chart, {"image": {"repository": "registry.local/sg", "digest": digest}}))
    assert c["image"] == f"registry.local/sg@{digest}"


def test_service_ports(chart):
    svc = only(objects(chart), "Service")
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {"grpc", "http-admin"}
    assert ports["grpc"]["port"] == 9191
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert ports["grpc"]["targetPort"] == "grpc"
    assert ports["http-admin"]["port"] == 9192
    assert ports["http-admin"]["targetPort"] == "http-admin"
    assert svc["spec"]["type"] == "ClusterIP"


def test_service_account_does_not_mount_api_token(chart):
    docs = objects(chart)
    assert only(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    docs = objects(chart, {"serviceAccount": {"create": False, "name": "shared"}})
    assert "ServiceAccount" not in kinds(docs)
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "shared"


# ---------------------------------------------------------------------------------------------
# rules-file mode


def example_rules():
    """examples/rules.yaml with its JWKS as a file next to rules.yaml (ConfigMap keys are flat)."""
    rules = yaml.safe_load((ROOT / "examples" / "rules.yaml").read_text())
    rules["issuers"]["demo"]["jwks_file"] = "demo-jwks.json"
    jwks = (ROOT / "examples" / "keys" / "demo-jwks.json").read_text()
    return rules, jwks


def test_rules_mode_configmap_args_and_mount(chart):
    rules, jwks = example_rules()
    docs = objects(chart, {"rules": rules, "rulesExtraFiles": {"demo-jwks.json": jwks}})
    cm = only(docs, "ConfigMap")
    assert yaml.safe_load(cm["data"]["rules.yaml"]) == rules
    assert json.loads(cm["data"]["demo-jwks.json"]) == json.loads(jwks)

    c = container(docs)
    args = c["args"]
    assert args[:3] == ["serve", "--rules", "/etc/scopegate/rules.yaml"]
    mount = mounts_of(c)["rules"]
    assert mount["mountPath"] == "/etc/scopegate"
    assert mount["readOnly"] is True
    assert "subPath" not in mount, "subPath mounts never see ConfigMap updates (no hot reload)"
    assert volumes_of(docs)["rules"]["configMap"]["name"] == cm["metadata"]["name"]
    env = env_values(c)
    assert env["SCOPEGATE_RULES_POLL_INTERVAL"] == "2s"
    assert not any(name.startswith("SCOPEGATE_ETCD_") for name in env)


def test_rules_hot_reload_needs_no_checksum_but_extra_files_roll_pods(chart):
    def pod_annotations(values):
        deploy = only(objects(chart, values), "Deployment")
        return deploy["spec"]["template"]["metadata"].get("annotations", {})

    rules, jwks = example_rules()
    # Changing the rules must not change the pod template (hot reload, no rollout).
    assert pod_annotations({"rules": rules}) == pod_annotations({}) == {}
    # Extra files are only re-read with rules.yaml: their checksum rolls the pods.
    one = pod_annotations({"rules": rules, "rulesExtraFiles": {"demo-jwks.json": jwks}})
    two = pod_annotations({"rules": rules, "rulesExtraFiles": {"demo-jwks.json": jwks + "\n"}})
    assert one["checksum/rules-extra-files"] != two["checksum/rules-extra-files"]
    assert pod_annotations({"podAnnotations": {"team": "platform"}}) == {"team": "platform"}


def test_rules_given_as_a_string_are_stored_verbatim(chart):
    text = (ROOT / "examples" / "rules.yaml").read_text()
    cm = only(objects(chart, {"rules": text}), "ConfigMap")
    assert cm["data"]["rules.yaml"].strip() == text.strip()
    # `--set-file rules=examples/rules.yaml`, parsed by the SDK as the helm CLI does.
    values = helm.parse_set_file(f"rules={ROOT / 'examples' / 'rules.yaml'}")
    cm = only(objects(chart, values), "ConfigMap")
    assert yaml.safe_load(cm["data"]["rules.yaml"]) == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("routes: [unclosed", "not a valid YAML"),
        ("route:\n  health: {host: '*', path: /healthz, require: {public: true}}\n", "unknown top-level key"),
    ],
)
def test_bad_rules_string_fails_to_render(chart, text, message):
    with pytest.raises(helm.HelmError) as err:
        chart.render({"rules": text}, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)


def test_unquoted_jwk_y_coordinate_fails_to_render(chart):
    # Helm reads values files as YAML 1.1, where a bare `y` key is the boolean true: an inline
    # EC key would silently lose its y coordinate (and scopegate refuse the issuer).
    values = helm.values_from_yaml(
        (CHART_DIR / "ci" / "rules-values.yaml").read_text().replace('"y":', "y:")
    )
    with pytest.raises(helm.HelmError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert '"y"' in str(err.value) and "corp" in str(err.value)
    # Quoted, as in ci/rules-values.yaml, the key survives.
    cm = only(objects(chart, load_ci_values("rules-values.yaml")), "ConfigMap")
    key = yaml.safe_load(cm["data"]["rules.yaml"])["issuers"]["corp"]["jwks"]["keys"][0]
    assert key["y"] == "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"


def test_existing_rules_configmap(chart):
    docs = objects(chart, {"existingRulesConfigMap": "team-rules"})
    assert "ConfigMap" not in kinds(docs)
    assert volumes_of(docs)["rules"]["configMap"]["name"] == "team-rules"
    assert "--rules" in container(docs)["args"]


def test_no_rule_source_fails(chart):
    with pytest.raises(helm.HelmError) as err:
        chart.render({"rules": None}, name=RELEASE, namespace=NAMESPACE)
    assert "no rule source" in str(err.value)


# ---------------------------------------------------------------------------------------------
# etcd mode


def test_etcd_mode_env_and_secret_mounts(chart):
    docs = objects(chart, ETCD_VALUES)
    assert "ConfigMap" not in kinds(docs), "rules are ignored in etcd mode"
    c = container(docs)
    assert "--rules" not in c["args"]
    env = env_values(c)
    assert env["SCOPEGATE_ETCD_ENDPOINTS"] == "https://etcd-0.etcd:2379,https://etcd-1.etcd:2379"
    assert env["SCOPEGATE_ETCD_PREFIX"] == "/authz/prod/"
    assert env["SCOPEGATE_ETCD_TIMEOUT"] == "5s"
    assert env["SCOPEGATE_ETCD_USER"] == "scopegate"
    assert "SCOPEGATE_RULES_POLL_INTERVAL" not in env

    mounts, volumes = mounts_of(c), volumes_of(docs)
    tls_dir = mounts["etcd-tls"]["mountPath"]
    assert mounts["etcd-tls"]["readOnly"] is True
    assert volumes["etcd-tls"]["secret"]["secretName"] == "etcd-client-tls"
    items = {i["key"]: i["path"] for i in volumes["etcd-tls"]["secret"]["items"]}
    assert items == {"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"}
    assert env["SCOPEGATE_ETCD_CA_FILE"] == f"{tls_dir}/ca.crt"
    assert env["SCOPEGATE_ETCD_CERT_FILE"] == f"{tls_dir}/tls.crt"
    assert env["SCOPEGATE_ETCD_KEY_FILE"] == f"{tls_dir}/tls.key"

    auth_dir = mounts["etcd-auth"]["mountPath"]
    assert mounts["etcd-auth"]["readOnly"] is True
    assert volumes["etcd-auth"]["secret"]["secretName"] == "etcd-password"
    assert volumes["etcd-auth"]["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert env["SCOPEGATE_ETCD_PASSWORD_FILE"] == f"{auth_dir}/password"
    # Secret files are not world-readable (the fsGroup reads them).
    assert volumes["etcd-auth"]["secret"]["defaultMode"] == 0o440
    assert only(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == 65532


def test_etcd_password_is_never_in_env_or_args(chart):
    docs = objects(chart, ETCD_VALUES)
    c = container(docs)
    env = env_of(c)
    assert "SCOPEGATE_ETCD_PASSWORD" not in env
    for e in env.values():
        assert "valueFrom" not in e, f"{e['name']} must not pull a secret into the environment"
        if "PASSWORD" in e["name"]:
            assert e["name"] == "SCOPEGATE_ETCD_PASSWORD_FILE"
            assert e["value"].startswith("/")
    assert not any("password" in a.lower() for a in c["args"])
    # The password Secret is referenced by the volume only.
    rendered = json.dumps(docs)
    assert rendered.count('"etcd-password"') == 1
    # There is no way to hand the chart a literal password: the schema refuses it.
    with pytest.raises(helm.HelmValuesError):
        chart.render(merged(ETCD_VALUES, {"etcd": {"auth": {"password": "hunter2"}}}), name=RELEASE)
    # ...nor to smuggle one in through extraEnv.
    with pytest.raises(helm.HelmError) as err:
        chart.render(
            merged(ETCD_VALUES, {"extraEnv": [{"name": "SCOPEGATE_ETCD_PASSWORD", "value": "hunter2"}]}),
            name=RELEASE,
        )
    assert "password" in str(err.value)


def test_etcd_server_only_tls_and_no_auth(chart):
    values = {"etcd": {"endpoints": ["https://etcd:2379"], "tls": {"existingSecret": "etcd-ca", "certKey": "", "keyKey": ""}}}
    docs = objects(chart, values)
    env = env_values(container(docs))
    assert "SCOPEGATE_ETCD_CA_FILE" in env
    assert "SCOPEGATE_ETCD_CERT_FILE" not in env and "SCOPEGATE_ETCD_KEY_FILE" not in env
    assert "SCOPEGATE_ETCD_USER" not in env and "SCOPEGATE_ETCD_PASSWORD_FILE" not in env
    assert [i["key"] for i in volumes_of(docs)["etcd-tls"]["secret"]["items"]] == ["ca.crt"]
    assert "etcd-auth" not in volumes_of(docs)
    validate_all(docs, KUBE_VERSIONS[-1])


def test_etcd_plain_without_tls_has_no_volumes(chart):
    docs = objects(chart, {"etcd": {"endpoints": ["http://etcd:2379"]}})
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert "volumes" not in spec and "volumeMounts" not in spec["containers"][0]
    validate_all(docs, KUBE_VERSIONS[-1])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"etcd": {"endpoints": ["http://etcd:2379"], "tls": {"existingSecret": "etcd-tls"}}}, "https://"),
        ({"etcd": {"endpoints": ["https://etcd:2379"], "auth": {"user": "scopegate"}}}, "existingSecret"),
        ({"etcd": {"endpoints": ["https://etcd:2379"], "auth": {"existingSecret": "pw"}}}, "auth.user"),
        ({"etcd": {"endpoints": ["https://etcd:2379"], "tls": {"existingSecret": "t", "keyKey": ""}}}, "certKey"),
    ],
)
def test_inconsistent_etcd_settings_fail(chart, values, message):
    with pytest.raises(helm.HelmError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)


# ---------------------------------------------------------------------------------------------
# security, probes, shutdown, availability


def test_security_context(chart):
    for values in ({}, ETCD_VALUES):
        docs = objects(chart, values)
        pod = only(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert pod["runAsUser"] != 0
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container(docs)["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not sc.get("privileged", False)


def test_resources_have_requests_and_limits(chart):
    res = container(objects(chart))["resources"]
    assert set(res["requests"]) == {"cpu", "memory"}
    assert "memory" in res["limits"]
    # Overrides merge with the defaults; null removes a default.
    res = container(objects(chart, {"resources": {"requests": {"cpu": "50m"}, "limits": None}}))["resources"]
    assert res == {"requests": {"cpu": "50m", "memory": "128Mi"}}


def test_probes(chart):
    c = container(objects(chart))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["grpc"] == {"port": 9191}
    live = c["livenessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and ports[live["port"]] == 9192
    c = container(objects(chart, {"probes": {"readiness": {"type": "http"}}}))
    ready = c["readinessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and ports[ready["port"]] == 9192
    assert "grpc" not in c["readinessProbe"]
    c = container(objects(chart, {"probes": {"readiness": {"grpcService": "envoy.service.auth.v3.Authorization"}}}))
    assert c["readinessProbe"]["grpc"]["service"] == "envoy.service.auth.v3.Authorization"


def seconds(duration):
    assert duration.endswith("s") and duration[:-1].isdigit(), duration
    return int(duration[:-1])


def test_graceful_shutdown(chart):
    docs = objects(chart)
    spec = only(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = seconds(env_values(c)["SCOPEGATE_DRAIN_TIMEOUT"])
    assert pre_stop > 0
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain

    values = {"shutdown": {"drainTimeoutSeconds": 40}, "terminationGracePeriodSeconds": 60}
    c = container(objects(chart, values))
    assert env_values(c)["SCOPEGATE_DRAIN_TIMEOUT"] == "40s"
    with pytest.raises(helm.HelmError) as err:
        chart.render({"shutdown": {"drainTimeoutSeconds": 40}}, name=RELEASE)
    assert "terminationGracePeriodSeconds" in str(err.value)
    c = container(objects(chart, {"shutdown": {"preStopSleepSeconds": 0}}))
    assert "lifecycle" not in c


def test_pod_disruption_budget_follows_replicas(chart):
    assert "PodDisruptionBudget" not in kinds(objects(chart, {"replicas": 1}))
    docs = objects(chart, {"replicas": 3})
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert only(docs, "Deployment")["spec"]["replicas"] == 3
    assert "PodDisruptionBudget" not in kinds(objects(chart, {"podDisruptionBudget": {"enabled": False}}))
    pdb = only(objects(chart, {"podDisruptionBudget": {"minAvailable": "50%"}}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == "50%"


def test_scheduling_pass_through(chart):
    values = {
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "authz", "effect": "NoSchedule"}],
        "affinity": {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "topologyKey": "topology.kubernetes.io/zone",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "scopegate"}},
                    }
                ]
            }
        },
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
            {
                "maxSkew": 2,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"custom": "yes"}},
            },
        ],
        "priorityClassName": "system-cluster-critical",
        "podLabels": {"team": "platform"},
        "extraEnv": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "extraVolumes": [{"name": "hmac", "secret": {"secretName": "issuer-hmac"}}],
        "extraVolumeMounts": [{"name": "hmac", "mountPath": "/etc/scopegate-keys", "readOnly": True}],
    }
    docs = objects(chart, values)
    validate_all(docs, KUBE_VERSIONS[-1])
    deploy = only(docs, "Deployment")
    spec = deploy["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == values["nodeSelector"]
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == values["affinity"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    zone, host = spec["topologySpreadConstraints"]
    # A constraint without labelSelector gets the pods' selector labels; an explicit one is kept.
    assert zone["labelSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert zone["whenUnsatisfiable"] == "DoNotSchedule"
    assert host["labelSelector"] == {"matchLabels": {"custom": "yes"}}
    assert deploy["spec"]["template"]["metadata"]["labels"]["team"] == "platform"
    c = container(docs)
    assert env_values(c)["RUST_BACKTRACE"] == "1"
    assert mounts_of(c)["hmac"]["mountPath"] == "/etc/scopegate-keys"
    assert set(volumes_of(docs)) == {"rules", "hmac"}


# ---------------------------------------------------------------------------------------------
# values schema


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 0},
        {"replicas": "two"},
        {"replicas": 1.5},
        {"config": {"decisionLog": "verbose"}},
        {"config": {"logFormat": "xml"}},
        {"config": {"maxStaleness": "soon"}},
        {"config": {"maxStaleness": 30}},
        {"config": {"cacheMaxTtl": "5 minutes please"}},
        {"config": {"subjectHeader": "x subject"}},
        {"etcd": {"endpoints": ["etcd:2379"]}},
        {"etcd": {"endpoints": "https://etcd:2379"}},
        {"service": {"grpcPort": 70000}},
        {"probes": {"readiness": {"type": "tcp"}}},
        {"replica": 3},  # typo of a top-level key
        {"rules": {"route": {}}},  # typo of a rules section
        {"rules": ["not", "a", "mapping"]},
        {"rulesExtraFiles": {"rules.yaml": "shadowing the rules"}},
        {"image": {"digest": "latest"}},
        {"metrics": {"serviceMonitor": {"enabled": "yes"}}},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_bad_values_fail_to_render(chart, values):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize("duration", ["30s", "1m30s", "1h 30m", "500ms", "2.5s", "1d"])
def test_good_durations_render(chart, duration):
    values = {"config": {"maxStaleness": duration, "cacheMaxTtl": duration}}
    env = env_values(container(objects(chart, values)))
    assert env["SCOPEGATE_MAX_STALENESS"] == duration
    assert env["SCOPEGATE_CACHE_MAX_TTL"] == duration


# ---------------------------------------------------------------------------------------------
# ServiceMonitor, NOTES


def test_service_monitor_toggle(chart):
    assert "ServiceMonitor" not in kinds(objects(chart))
    values = {
        "metrics": {
            "serviceMonitor": {
                "enabled": True,
                "namespace": "monitoring",
                "labels": {"release": "prometheus"},
                "interval": "15s",
            }
        }
    }
    docs = objects(chart, values)
    sm = only(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "monitoring"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http-admin" and endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    svc = only(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert "http-admin" in {p["name"] for p in svc["spec"]["ports"]}


def test_notes_explain_envoy_and_istio_wiring(chart):
    _, notes = render(chart)
    assert f"scopegate.{NAMESPACE}.svc.cluster.local" in notes
    assert "envoyExtAuthzGrpc" in notes and "port: 9191" in notes
    assert "action: CUSTOM" in notes
    assert "failOpen: false" in notes
    assert "denied" in notes  # the default rules have no routes: deny-all is stated
    _, notes = render(chart, ETCD_VALUES)
    assert "etcd https://etcd-0.etcd:2379,https://etcd-1.etcd:2379" in notes


# ---------------------------------------------------------------------------------------------
# the rendered configuration against the real binary


def scopegate_binary():
    explicit = os.environ.get("SCOPEGATE_BIN")
    if explicit:
        return Path(explicit)
    built = [p for p in (ROOT / "target" / "debug" / "scopegate", ROOT / "target" / "release" / "scopegate") if p.exists()]
    if not built:
        pytest.fail("no scopegate binary: run `cargo build --bin scopegate` first (or set SCOPEGATE_BIN)")
    return max(built, key=lambda p: p.stat().st_mtime)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Pod:
    """Runs the rendered container locally: /etc/scopegate becomes a temp dir, 0.0.0.0 loopback."""

    def __init__(self, docs, tmp_path, files=None):
        c = container(docs)
        self.grpc, self.admin = free_port(), free_port()
        root = tmp_path / "etc-scopegate"
        root.mkdir()
        for name, content in (files or {}).items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(content)

        def local(value):
            value = value.replace("/etc/scopegate", str(root))
            value = value.replace("0.0.0.0:9191", f"127.0.0.1:{self.grpc}")
            return value.replace("0.0.0.0:9192", f"127.0.0.1:{self.admin}")

        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for e in c["env"]:
            assert "value" in e, f"{e['name']}: only plain values are expected here"
            env[e["name"]] = local(e["value"])
        self.args = [str(scopegate_binary())] + [local(a) for a in c["args"]]
        self.log = tmp_path / "scopegate.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.args, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_for(self, path, status, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"scopegate exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                got, body = http_get(f"http://127.0.0.1:{self.admin}{path}")
                if got == status:
                    return body
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        pytest.fail(f"{path} never answered {status}:\n{self.log.read_text()}")

    def wait_for_metric(self, name, predicate, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.wait_for("/metrics", 200)
            for line in body.splitlines():
                parts = line.split(" ")
                if len(parts) == 2 and parts[0] == name and predicate(float(parts[1])):
                    return
            time.sleep(0.05)
        pytest.fail(f"{name} never satisfied the condition:\n{self.log.read_text()}")

    def stop(self, timeout):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail("scopegate did not stop on SIGTERM")
        return self.proc.returncode


def configmap_files(docs):
    return dict(only(docs, "ConfigMap")["data"])


@pytest.mark.parametrize("source", ["defaults", "example-rules", "ci-values"])
def test_binary_serves_the_rendered_rules_mode(chart, tmp_path, source):
    if source == "defaults":
        values, routes = {}, 0
    elif source == "example-rules":
        rules, jwks = example_rules()
        values = {
            "rules": rules,
            "rulesExtraFiles": {"demo-jwks.json": jwks},
            # Non-default settings, to check the binary accepts what the chart renders.
            "config": {"decisionLog": "deny", "logFormat": "text", "maxStaleness": "1m 30s", "cacheMaxTtl": "90s"},
            "shutdown": {"drainTimeoutSeconds": 3},
        }
        routes = len(rules["routes"])
    else:
        values = load_ci_values("rules-values.yaml")
        routes = len(values["rules"]["routes"])
    docs = objects(chart, values)
    pod = Pod(docs, tmp_path, configmap_files(docs))
    try:
        pod.wait_for("/readyz", 200)
        status = json.loads(pod.wait_for("/status", 200))
        assert status["ready"] is True and status["last_error"] is None
        assert status["routes"] == routes
        assert pod.wait_for("/healthz", 200).strip() == "ok"
    finally:
        code = pod.stop(timeout=15)
    assert code == 0, pod.log.read_text()


def test_binary_accepts_the_rendered_etcd_mode(chart, tmp_path):
    # Unreachable etcd on a free loopback port: scopegate must start (arguments and environment
    # accepted, password read from the mounted file) and report not ready until a snapshot.
    values = {
        "etcd": {
            "endpoints": [f"http://127.0.0.1:{free_port()}"],
            "prefix": "/authz/",
            "timeout": "500ms",
            "auth": {"user": "scopegate", "existingSecret": "etcd-password"},
        },
        "config": {"maxStaleness": "30s"},
    }
    docs = objects(chart, values)
    pod = Pod(docs, tmp_path, {"etcd-auth/password": "not-a-real-password\n"})
    try:
        assert pod.wait_for("/healthz", 200).strip() == "ok"
        pod.wait_for("/readyz", 503)
        # Wait for a failed connection attempt (not a fixed time): the process survives it and
        # stays not ready.
        pod.wait_for_metric("scopegate_watch_restarts_total", lambda v: v >= 1)
        assert pod.proc.poll() is None, pod.log.read_text()
        pod.wait_for("/readyz", 503)
        assert "not-a-real-password" not in pod.log.read_text()
    finally:
        code = pod.stop(timeout=15)
    assert code == 0, pod.log.read_text()


def run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def tool(name, hint):
    for candidate in (f"/usr/bin/{name}", f"/usr/local/bin/{name}"):
        if os.path.exists(candidate):
            return candidate
    pytest.fail(f"{name} is required for this test: {hint}")


ETCD_HINT = "run `scripts/setup.sh --test` (installs it), or `apt-get install etcd-server etcd-client`"


def make_certs(d):
    """A test CA, an etcd server certificate for 127.0.0.1 and a client certificate (EC P-256)."""
    openssl = tool("openssl", "`apt-get install openssl`")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run([openssl, "req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "1", "-subj", "/CN=test-ca"])
    for who, cn, ext in [
        ("server", "etcd", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "scopegate", "extendedKeyUsage=clientAuth\n"),
    ]:
        (d / f"{who}.ext").write_text(ext)
        run([openssl, "req", *ec, "-keyout", d / f"{who}.key", "-out", d / f"{who}.csr", "-subj", f"/CN={cn}"])
        run([openssl, "x509", "-req", "-in", d / f"{who}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
             "-CAcreateserial", "-out", d / f"{who}.crt", "-days", "1", "-extfile", d / f"{who}.ext"])


def test_binary_with_real_etcd_over_mutual_tls_and_password_auth(chart, tmp_path):
    """etcd mode end to end: the chart's Secret mounts and SCOPEGATE_ETCD_* variables, laid out as
    Kubernetes would mount them, reach a real etcd with mutual TLS and password authentication
    (a read-only role on the prefix is enough)."""
    etcd, etcdctl = tool("etcd", ETCD_HINT), tool("etcdctl", ETCD_HINT)
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    client_port, peer_port = free_port(), free_port()
    url, peer = f"https://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    server = subprocess.Popen(
        [etcd, "--name", "t", "--data-dir", tmp_path / "etcd-data",
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"t={peer}",
         "--cert-file", certs / "server.crt", "--key-file", certs / "server.key",
         "--trusted-ca-file", certs / "ca.crt", "--client-cert-auth", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pod = None
    try:
        ctl = [etcdctl, "--endpoints", url, "--cacert", certs / "ca.crt",
               "--cert", certs / "client.crt", "--key", certs / "client.key"]
        env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        deadline = time.monotonic() + 30
        while subprocess.run([*ctl, "endpoint", "health"], env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, "etcd exited"
            assert time.monotonic() < deadline, "etcd never became healthy"
            time.sleep(0.1)
        password = "s3cret-for-test"
        for args in (
            ["user", "add", "root:root-pw"], ["user", "grant-role", "root", "root"],
            ["user", "add", f"scopegate:{password}"], ["role", "add", "scopegate-read"],
            ["role", "grant-permission", "scopegate-read", "--prefix=true", "read", "/authz/"],
            ["user", "grant-role", "scopegate", "scopegate-read"], ["auth", "enable"],
        ):
            run([*ctl, *args], env=env)
        root = [*ctl, "--user", "root:root-pw"]
        run([*root, "put", "/authz/routes/health", '{"host":"*","path":"/healthz","require":{"public":true}}'], env=env)

        values = {
            "etcd": {
                "endpoints": [url],
                "prefix": "/authz/",
                "tls": {"existingSecret": "etcd-client-tls"},
                "auth": {"user": "scopegate", "existingSecret": "etcd-password"},
            }
        }
        docs = objects(chart, values)
        validate_all(docs, KUBE_VERSIONS[-1])
        # The Secrets' keys, as their volumes project them.
        files = {}
        for volume, source in (("etcd-tls", {"ca.crt": "ca.crt", "tls.crt": "client.crt", "tls.key": "client.key"}),):
            for item in volumes_of(docs)[volume]["secret"]["items"]:
                files[f"{volume}/{item['path']}"] = (certs / source[item["key"]]).read_text()
        (item,) = volumes_of(docs)["etcd-auth"]["secret"]["items"]
        files[f"etcd-auth/{item['path']}"] = password
        mounts = mounts_of(container(docs))
        assert {m["mountPath"] for m in mounts.values()} == {"/etc/scopegate/etcd-tls", "/etc/scopegate/etcd-auth"}

        pod = Pod(docs, tmp_path, files)
        pod.wait_for("/readyz", 200)
        status = json.loads(pod.wait_for("/status", 200))
        assert status["routes"] == 1 and status["last_error"] is None
        # The watch works too: a new route arrives without a restart.
        run([*root, "put", "/authz/routes/orders", '{"host":"api.example.com","path":"/orders","require":{"all":["orders:read"]}}'], env=env)
        deadline = time.monotonic() + 10
        while json.loads(pod.wait_for("/status", 200))["routes"] != 2:
            assert time.monotonic() < deadline, pod.log.read_text()
            time.sleep(0.05)
        assert password not in pod.log.read_text()
    finally:
        if pod is not None:
            assert pod.stop(timeout=15) == 0, pod.log.read_text()
        server.terminate()
        server.wait(timeout=15)
