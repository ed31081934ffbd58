"""The API's container port (`api.port`) and its Service port (`api.service.port`) are two things:
the Service forwards to the container port by name, the operator reaches the Service's port, and the
tenants' NetworkPolicy lets aligner pods reach the API pods' own port (a NetworkPolicy matches the
pod's port, not the Service's)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.chart.test_chart import render


def test_api_port_and_service_port_each_where_they_belong(k8s_tools: dict[str, Path]) -> None:
    docs = render(k8s_tools, "--set", "api.port=9090", "--set", "api.service.port=80")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    api = deployments["rel-mesial-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["args"][-2:] == ["--port", "9090"]
    assert api["ports"] == [{"name": "http", "containerPort": 9090}]
    assert api["readinessProbe"]["httpGet"]["port"] == "http"
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "rel-mesial-api"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]
    operator = deployments["rel-mesial-operator"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in operator["env"]}
    assert env["MESIAL_OPERATOR__API_URL"] == "http://rel-mesial-api.mesial-system.svc:80"
    egress = json.loads(env["MESIAL_OPERATOR__EGRESS_AUDIT"])
    assert egress["ports"] == [9090], "tenant pods must be let through to the API pods' port, not the Service's"
    assert egress["pod_selector"]["app.kubernetes.io/component"] == "api"


def test_api_port_default_is_8080(k8s_tools: dict[str, Path]) -> None:
    docs = render(k8s_tools)
    (api,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-mesial-api"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["api", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]


def test_operator_health_port(k8s_tools: dict[str, Path]) -> None:
    docs = render(k8s_tools, "--set", "operator.healthPort=9181")
    (operator,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "rel-mesial-operator"]
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-1] == "http://0.0.0.0:9181/healthz"
    assert {"name": "health", "containerPort": 9181} in container["ports"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
