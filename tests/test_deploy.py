"""deploy/: the Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate, offline, strict), and
the manifests and the compose setup checked for what a schema cannot see: probes, labels, ports, replicas."""

from __future__ import annotations

import copy
import re

import kubernetes_validate
import pytest
import yaml

from tests.server import ROOT

DEPLOY = ROOT / "deploy"
# The oldest Kubernetes still supported upstream when this was written, and the newest this validator knows.
VERSIONS = ["1.32", kubernetes_validate.utils.latest_version()]


def manifests() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["Deployment", "Service", "HorizontalPodAutoscaler"])
def test_manifest_matches_the_kubernetes_schema(kind, version):
    resource = manifests()[kind]
    print(f"{kind}/{resource['metadata']['name']}: valid against Kubernetes {version} (strict)")
    kubernetes_validate.validate(resource, version, strict=True)  # raises ValidationError


def test_schema_check_rejects_a_broken_manifest():
    """The check is not vacuous: a misspelt probe field and a string replica count are refused."""
    broken = copy.deepcopy(manifests()["Deployment"])
    container(broken)["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    broken = copy.deepcopy(manifests()["Deployment"])
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_deployment_probes_resources_and_user():
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    app = container(deployment)
    ports = {port["name"]: port["containerPort"] for port in app["ports"]}
    assert ports == {"http": 3000}
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert app["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    requests, limits = app["resources"]["requests"], app["resources"]["limits"]
    assert quantity(requests["cpu"]) <= quantity(limits["cpu"])
    assert quantity(requests["memory"]) <= quantity(limits["memory"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # A read-only root needs BentoML's home on the writable /tmp volume.
    env = {item["name"]: item.get("value") for item in app["env"]}
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert env["BENTOML_HOME"].startswith("/tmp/") and {"mountPath": "/tmp", "name": "tmp"} in app["volumeMounts"]


def test_service_and_autoscaler_point_at_the_deployment():
    deployment, service, hpa = (manifests()[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler"))
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert {port["targetPort"] for port in service["spec"]["ports"]} == {"http"}
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "cpu" in container(deployment)["resources"]["requests"]  # CPU utilization is relative to the request


def test_compose_runs_two_replicas_sharing_nothing_behind_the_load_balancer():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    replicas = {name: spec for name, spec in services.items() if name != "lb"}
    assert len(replicas) == 2
    assert len({spec["image"] for spec in replicas.values()}) == 1
    assert all("volumes" not in spec and "ports" not in spec for spec in replicas.values())  # only the lb is exposed
    assert services["lb"]["depends_on"] == {name: {"condition": "service_healthy"} for name in replicas}
    nginx = (DEPLOY / "nginx.conf").read_text()
    upstream = re.search(r"upstream scenespell \{(.*?)\}", nginx, re.S).group(1)
    assert sorted(re.findall(r"server (\S+):3000", upstream)) == sorted(replicas)
    listen = re.search(r"listen (\d+);", nginx).group(1)
    assert all(port.endswith(f":{listen}") for port in services["lb"]["ports"])
    assert services["lb"]["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]


def quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi)?", value).groups()
    return float(number) * units.get(unit, 1)
