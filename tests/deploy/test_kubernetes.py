"""deploy/kubernetes: every manifest valid against the Kubernetes schemas (offline, with
kubernetes-validate), the GPU overlay's patch merged as kustomize would, and the settings the
Deployment relies on matching the server's."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from qwen_tts_api.settings import Settings

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.33.0"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def base_resources() -> list[dict]:
    kustomization = documents(ROOT / "base" / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in documents(ROOT / "base" / name)]


def merge(base: object, patch: object) -> object:
    """A strategic merge as kustomize applies ours: maps key by key, lists of named items
    (containers, env) item by name, other lists replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        merged = copy.deepcopy(base)
        for item in patch:
            found = [i for i, old in enumerate(merged) if old.get("name") == item["name"]]
            if found:
                merged[found[0]] = merge(merged[found[0]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def gpu_resources() -> list[dict]:
    overlay = documents(ROOT / "overlays" / "gpu" / "kustomization.yaml")[0]
    assert overlay["resources"] == ["../../base"]
    resources = base_resources()
    for entry in overlay["patches"]:
        patch = documents(ROOT / "overlays" / "gpu" / entry["path"])[0]
        key = (patch["kind"], patch["metadata"]["name"])
        targets = [r for r in resources if (r["kind"], r["metadata"]["name"]) == key]
        assert len(targets) == 1, entry
        resources[resources.index(targets[0])] = merge(targets[0], patch)
    return resources


def labelled(resource: dict) -> dict:
    """The kustomization's common label, added as kustomize does (selectors included)."""
    resource = copy.deepcopy(resource)
    resource["metadata"].setdefault("labels", {})["app.kubernetes.io/name"] = "qwen-tts-api"
    return resource


@pytest.mark.parametrize("variant", ["base", "gpu"])
def test_every_manifest_is_valid(variant):
    resources = base_resources() if variant == "base" else gpu_resources()
    kinds = sorted(r["kind"] for r in resources)
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",
        "Secret",
        "Service",
    ]
    for resource in resources:
        kubernetes_validate.validate(labelled(resource), KUBERNETES, strict=True)


def deployment(resources: list[dict]) -> dict:
    return next(r for r in resources if r["kind"] == "Deployment")


def env_of(resources: list[dict]) -> dict[str, dict]:
    container = deployment(resources)["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item for item in container["env"]}


def test_the_deployment_fits_the_server():
    resources = base_resources()
    spec = deployment(resources)["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = env_of(resources)
    # Probes on the server's own routes and port.
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["ports"][0]["containerPort"] == Settings.model_fields["port"].default
    # The grace period outlasts the server's own drain.
    assert spec["terminationGracePeriodSeconds"] > float(env["QWEN_TTS_SHUTDOWN_TIMEOUT"]["value"])
    # Saved voices on the shared claim, at the data directory the server is told.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
    assert mounts["voices"] == env["QWEN_TTS_DATA_DIR"]["value"] and claims["voices"] == "qwen-tts-voices"
    assert mounts["hf-cache"] == env["HF_HOME"]["value"]
    voices_claim = next(r for r in resources if r["metadata"]["name"] == "qwen-tts-voices")
    assert voices_claim["spec"]["accessModes"] == ["ReadWriteMany"]
    # API keys from the Secret.
    secret = next(r for r in resources if r["kind"] == "Secret")
    ref = env["QWEN_TTS_API_KEYS"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    # Every variable set is one the server reads.
    known = {f.validation_alias.choices[0] for f in Settings.model_fields.values() if f.validation_alias} | {"HF_HOME"}
    assert set(env) <= known
    # The autoscaler scales this Deployment on the queue-depth metric the server exports.
    hpa = next(r for r in resources if r["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment(resources)["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "qwen_tts_queue_depth"


def test_the_gpu_overlay_asks_for_a_gpu_and_uses_it(server, http):
    resources = gpu_resources()
    container = deployment(resources)["spec"]["template"]["spec"]["containers"][0]
    env = env_of(resources)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env["QWEN_TTS_DEVICE"]["value"] == "cuda:0"
    assert env["CUSTOMVOICE_MODEL_PATH"]["value"].endswith("1.7B-CustomVoice")
    assert env["QWEN_TTS_API_KEYS"]["valueFrom"]  # the base's other settings survive the patch
    # The metric the autoscaler reads is what the server exports.
    assert "qwen_tts_queue_depth" in http.get("/metrics").text
