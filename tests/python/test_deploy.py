"""The deployment manifests parse and say what the README says: one replica (sled is embedded), a
volume claim for the data, gRPC liveness and readiness probes (readiness on the Query service, which
is NOT_SERVING until projections catch up), configuration from a ConfigMap and tokens from a Secret,
ports that match between Service and container, and a compose file whose mounts exist. Only
``config.toml`` keys the server knows are used (the server refuses unknown keys)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KNOWN_KEYS = {
    "data_dir", "listen", "metrics_listen", "durability", "signing_key", "log_format",
    "allow_unauthenticated", "tls", "tokens_file", "tokens", "subscriptions", "allow_plaintext",
    "metrics_allow_remote", "metrics_token_sha256", "connections",
}


def load(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    assert len(docs) == 1, name
    return docs[0]


def test_statefulset_runs_one_writer_with_a_volume_and_grpc_probes():
    s = load("k8s/statefulset.yaml")
    assert s["kind"] == "StatefulSet"
    assert s["spec"]["replicas"] == 1
    assert s["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    c = s["spec"]["template"]["spec"]["containers"][0]
    assert c["livenessProbe"]["grpc"]["port"] == 50051
    assert c["readinessProbe"]["grpc"]["service"] == "claimsledger.v1.Query"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["data"] == "/var/lib/claims-ledger"
    assert s["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["args"][:3] == ["serve", "--config", "/etc/claims-ledger/config.toml"]


def test_service_ports_match_the_container():
    svc = load("k8s/service.yaml")
    s = load("k8s/statefulset.yaml")
    names = {p["name"] for p in s["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names
    assert svc["spec"]["selector"] == s["spec"]["selector"]["matchLabels"]


def test_configmap_and_secret_hold_valid_toml_with_known_keys():
    cm = tomllib.loads(load("k8s/configmap.yaml")["data"]["config.toml"])
    assert set(cm) <= KNOWN_KEYS, set(cm) - KNOWN_KEYS
    assert cm["tokens_file"].startswith("/etc/claims-ledger/secret/")
    tokens = tomllib.loads(load("k8s/secret.yaml")["stringData"]["tokens.toml"])
    assert tokens["tokens"][0]["roles"] == ["writer"]
    example = tomllib.loads((DEPLOY / "config.example.toml").read_text())
    assert set(example) <= KNOWN_KEYS


def test_compose_mounts_exist_and_config_is_used():
    compose = load("docker-compose.yml")
    ledger = compose["services"]["ledger"]
    assert ledger["command"][:2] == ["serve", "--config"]
    for v in ledger["volumes"]:
        src = v.split(":")[0]
        if src.startswith("./"):
            assert (DEPLOY / src).exists(), src
    assert (DEPLOY / ledger["build"]["context"] / ledger["build"]["dockerfile"]).exists()


def test_alert_rules_parse_and_say_how_bad():
    rules = load("prometheus/alerts.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["alert"].startswith("ClaimsLedger"), rule
            assert rule["expr"].strip() and rule["for"], rule
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule
            assert rule["annotations"]["summary"], rule


def test_exposure_is_safe_as_shipped():
    """Tokens beyond loopback need TLS or an explicit trusted-network override; metrics stay on
    loopback unless allowed. Where k8s declares the cluster network trusted, a NetworkPolicy
    restricts who reaches each port, and compose publishes metrics on the host's loopback only."""
    example = tomllib.loads((DEPLOY / "config.example.toml").read_text())
    assert "tls" in example and "allow_plaintext" not in example
    assert example["metrics_listen"].startswith("127.0.0.1:")
    ledger = load("docker-compose.yml")["services"]["ledger"]
    assert "127.0.0.1:9090:9090" in ledger["ports"]
    assert not any(p.startswith("9090") for p in ledger["ports"])
    cm = tomllib.loads(load("k8s/configmap.yaml")["data"]["config.toml"])
    assert "tls" in cm or cm.get("allow_plaintext") is True
    if cm.get("allow_plaintext") or cm.get("metrics_allow_remote"):
        policy = load("k8s/networkpolicy.yaml")
        assert policy["kind"] == "NetworkPolicy"
        assert policy["spec"]["podSelector"] == load("k8s/statefulset.yaml")["spec"]["selector"]
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ports == {50051, 9090}
        assert all(rule.get("from") for rule in policy["spec"]["ingress"])
    assert cm["data_dir"].startswith("/var/lib/claims-ledger/")
