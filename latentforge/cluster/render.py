"""Cluster configs shipped with latentforge, filled in from a few options and checked.

`configs/aws.yaml` is a Ray cluster-launcher config (`ray up`); `configs/kuberay-raycluster.yaml`
and `configs/kuberay-rayjob.yaml` are KubeRay manifests (`kubectl apply`). All three set the same
shape (docs/cluster.md, "Cluster configs"): an on-demand head that runs no tasks and carries the
`latentforge_driver` resource, spot CPU workers, spot GPU workers from zero, an idle timeout.

Everything here is a pure function over dicts: no Ray cluster, no cloud account. The checks
(`check_aws`, `check_kuberay`) are the ones the tests apply to the shipped files and `render`
applies to what it writes; the AWS config also goes through Ray's own preparation and schema
validation, as `ray up` does before it launches anything.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import yaml

PROVIDERS = ("aws", "kuberay")
KINDS = ("rayjob", "raycluster")
FILES = {"aws": "aws.yaml", "raycluster": "kuberay-raycluster.yaml", "rayjob": "kuberay-rayjob.yaml"}
DRIVER_RESOURCE = "latentforge_driver"
SPOT_LABEL = "karpenter.sh/capacity-type"  # Karpenter's node label: spot | on-demand
INSTANCE_LABEL = "node.kubernetes.io/instance-type"
ENTRYPOINT = "latentforge run /config/config.yaml"
CONFIG_MAP = "latentforge-config"
HEAD, CPU_WORKERS, GPU_WORKERS = "head", "cpu_spot", "gpu_spot"  # AWS node types
CPU_GROUP, GPU_GROUP = "cpu-spot", "gpu-spot"  # KubeRay worker groups
_INSTANCE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_GPU_FAMILY = re.compile(r"^(g|p|gr)\d")  # NVIDIA families: g4dn, g5, g6, g6e, gr6, p4d, p5, ...
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # a Kubernetes / cluster name


class RenderError(ValueError):
    """A bad option or a rendered config that fails its checks (one line, for the CLI)."""


@dataclass
class RenderOptions:
    """What `latentforge cluster render` fills in; None keeps the shipped file's value."""

    provider: str = "aws"
    kind: str = "rayjob"  # kuberay only: a RayJob (one run) or a long-lived RayCluster
    name: str | None = None
    region: str | None = None  # aws only
    gpu_instance_type: str | None = None
    cpu_instance_type: str | None = None
    head_instance_type: str | None = None  # aws only
    max_gpu_workers: int | None = None
    max_cpu_workers: int | None = None
    idle_timeout_minutes: float | None = None
    image: str | None = None  # default: Ray's GPU image of the Ray installed here
    package: str | None = None  # pip spec installed on every node; "" installs nothing
    pipeline_config: str | None = None  # kuberay rayjob: a config file put in the ConfigMap


def load_shipped(name: str) -> list[dict]:
    """The YAML documents of a shipped config file (`aws.yaml`, `kuberay-rayjob.yaml`, ...)."""
    text = resources.files("latentforge.cluster").joinpath("configs", name).read_text()
    return [d for d in yaml.safe_load_all(text) if d is not None]


def default_image() -> str:
    """Ray's GPU image for the Ray and Python versions here (`ray up` wants them to match)."""
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    return f"rayproject/ray:{metadata.version('ray')}-{py}-gpu"


# ---------------------------------------------------------------------------------------------
# Rendering


def _check_options(o: RenderOptions) -> None:
    if o.provider not in PROVIDERS:
        raise RenderError(f"unknown provider {o.provider!r} (aws or kuberay)")
    if o.kind not in KINDS:
        raise RenderError(f"unknown kind {o.kind!r} (rayjob or raycluster)")
    for flag, n in (("--max-gpu-workers", o.max_gpu_workers), ("--max-cpu-workers", o.max_cpu_workers)):
        if n is not None and n < 0:
            raise RenderError(f"{flag} must be 0 or more, got {n}")
    if o.idle_timeout_minutes is not None and o.idle_timeout_minutes <= 0:
        raise RenderError(f"--idle-timeout-minutes must be more than 0, got {o.idle_timeout_minutes:g}")
    for flag, t in (("--gpu-instance-type", o.gpu_instance_type), ("--cpu-instance-type", o.cpu_instance_type),
                    ("--head-instance-type", o.head_instance_type)):
        if t is not None and not _INSTANCE.match(t):
            raise RenderError(f"{flag} {t!r} is not an instance type like g6.xlarge")
    if o.gpu_instance_type and not _GPU_FAMILY.match(o.gpu_instance_type):
        raise RenderError(f"--gpu-instance-type {o.gpu_instance_type!r} has no NVIDIA GPU (use a g* or p* type)")
    if o.name is not None and not _NAME.match(o.name):
        raise RenderError(f"--name {o.name!r} must be lowercase letters, digits and '-'")
    if o.image is not None and (not o.image or any(c.isspace() for c in o.image)):
        raise RenderError(f"--image {o.image!r} is not an image name")
    if o.pipeline_config is not None and (o.provider != "kuberay" or o.kind != "rayjob"):
        raise RenderError("--pipeline-config goes with --provider kuberay --kind rayjob")


def render(o: RenderOptions) -> list[dict]:
    """The shipped config of `o.provider` with the options applied, checked (RenderError if not)."""
    _check_options(o)
    if o.provider == "aws":
        docs = [_render_aws(load_shipped(FILES["aws"])[0], o)]
    else:
        docs = _render_kuberay(load_shipped(FILES[o.kind]), o)
    problems = check(o.provider, docs)
    if problems:
        raise RenderError("rendered config fails its checks: " + "; ".join(problems))
    return docs


def _render_aws(cfg: dict, o: RenderOptions) -> dict:
    cfg = copy.deepcopy(cfg)
    types = cfg["available_node_types"]
    if o.name:
        cfg["cluster_name"] = o.name
    if o.region:
        cfg["provider"]["region"] = o.region
    for node_type, instance in ((GPU_WORKERS, o.gpu_instance_type), (CPU_WORKERS, o.cpu_instance_type), (HEAD, o.head_instance_type)):
        if instance:
            types[node_type]["node_config"]["InstanceType"] = instance
    for node_type, n in ((GPU_WORKERS, o.max_gpu_workers), (CPU_WORKERS, o.max_cpu_workers)):
        if n is not None:
            types[node_type]["max_workers"] = n
    cfg["max_workers"] = sum(t.get("max_workers", 0) for name, t in types.items() if name != HEAD)
    if o.idle_timeout_minutes is not None:
        cfg["idle_timeout_minutes"] = o.idle_timeout_minutes
    cfg["docker"]["image"] = o.image or default_image()
    if o.package is not None:
        other = [c for c in cfg.get("setup_commands", []) if "latentforge" not in c]
        cfg["setup_commands"] = other + ([f"pip install -U {json.dumps(o.package)}"] if o.package else [])
    return cfg


def _render_kuberay(docs: list[dict], o: RenderOptions) -> list[dict]:
    docs = copy.deepcopy(docs)
    top = docs[0]
    spec = cluster_spec(top)
    if o.name:
        top["metadata"]["name"] = o.name
    spec["rayVersion"] = metadata.version("ray")
    if o.idle_timeout_minutes is not None:
        spec.setdefault("autoscalerOptions", {})["idleTimeoutSeconds"] = round(o.idle_timeout_minutes * 60)
    image = o.image or default_image()
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            container["image"] = image
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for group, n, instance in ((GPU_GROUP, o.max_gpu_workers, o.gpu_instance_type), (CPU_GROUP, o.max_cpu_workers, o.cpu_instance_type)):
        if n is not None:
            groups[group]["maxReplicas"] = n
        if instance:
            groups[group]["template"]["spec"].setdefault("nodeSelector", {})[INSTANCE_LABEL] = instance
    if top["kind"] == "RayJob":
        if o.package is not None:
            if o.package:
                top["spec"]["runtimeEnvYAML"] = yaml.safe_dump({"pip": [o.package]}, default_flow_style=True)
            else:
                top["spec"].pop("runtimeEnvYAML", None)
        if o.pipeline_config is not None:
            docs.append(config_map(o.pipeline_config))
    return docs


def config_map(path: str) -> dict:
    """The ConfigMap holding a pipeline config for the RayJob (checked to be a YAML mapping)."""
    try:
        text = Path(path).read_text()
        parsed = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as e:
        raise RenderError(f"--pipeline-config {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(parsed, dict):
        raise RenderError(f"--pipeline-config {path}: not a YAML mapping")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP}, "data": {"config.yaml": text}}


def dump(docs: list[dict], o: RenderOptions) -> str:
    source = FILES["aws" if o.provider == "aws" else o.kind]
    header = f"# Rendered by `latentforge cluster render` from latentforge/cluster/configs/{source};\n# docs/cluster.md explains each setting.\n"
    return header + yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=100)


# ---------------------------------------------------------------------------------------------
# Checks (shared by the tests and `render`): each returns a list of problems, empty when fine


def check(provider: str, docs: list[dict]) -> list[str]:
    if provider == "aws":
        return check_aws(docs[0]) if len(docs) == 1 else ["an AWS config is one YAML document"]
    problems = []
    for doc in docs:
        if doc.get("kind") in ("RayCluster", "RayJob"):
            problems += check_kuberay(doc)
    if not any(d.get("kind") in ("RayCluster", "RayJob") for d in docs):
        problems.append("no RayCluster or RayJob")
    return problems


def ray_schema_errors(cfg: dict) -> list[str]:
    """What Ray's cluster launcher refuses: its defaults merged in and its JSON schema applied,
    as `ray up` does (`prepare_config` + `validate_config`) before it talks to the cloud."""
    from ray.autoscaler._private.util import prepare_config, validate_config  # jsonschema: a Ray dependency

    quiet = logging.getLogger("ray.autoscaler")  # prepare_config logs its defaults at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except Exception as e:  # jsonschema.ValidationError, ValueError, ...
        return [f"Ray's cluster-config schema: {str(e).splitlines()[0]}"]
    finally:
        quiet.setLevel(level)
    return []


def check_aws(cfg: dict) -> list[str]:
    problems = ray_schema_errors(cfg)
    types = cfg.get("available_node_types", {})
    head = types.get(cfg.get("head_node_type"), {})
    res = head.get("resources", {})
    if res.get("CPU") != 0:
        problems.append("head must have resources CPU: 0 (it runs no tasks)")
    if res.get(DRIVER_RESOURCE, 0) < 1:
        problems.append(f"head must carry the custom resource {DRIVER_RESOURCE}")
    if "InstanceMarketOptions" in head.get("node_config", {}):
        problems.append("head must be on-demand (no InstanceMarketOptions)")
    workers = {n: t for n, t in types.items() if n != cfg.get("head_node_type")}
    for name, t in workers.items():
        if t.get("node_config", {}).get("InstanceMarketOptions", {}).get("MarketType") != "spot":
            problems.append(f"worker type {name} is not spot")
        if t.get("min_workers", 0) != 0:
            problems.append(f"worker type {name} must start from min_workers: 0")
        if not isinstance(t.get("max_workers"), int) or t["max_workers"] < 0:
            problems.append(f"worker type {name} needs max_workers >= 0")
    gpu = workers.get(GPU_WORKERS, {}).get("node_config", {}).get("InstanceType", "")
    if not _GPU_FAMILY.match(gpu):
        problems.append(f"no GPU worker type {GPU_WORKERS} with a GPU instance type")
    if CPU_WORKERS not in workers:
        problems.append(f"no CPU worker type {CPU_WORKERS}")
    if not cfg.get("idle_timeout_minutes"):
        problems.append("idle_timeout_minutes must be set")
    if cfg.get("max_workers", 0) < sum(t.get("max_workers", 0) for t in workers.values()):
        problems.append("max_workers is below the sum of the worker types' max_workers")
    if not cfg.get("docker", {}).get("image"):
        problems.append("docker.image must be set")
    return problems


def cluster_spec(doc: dict) -> dict:
    """The RayCluster spec of a RayCluster or a RayJob."""
    return doc["spec"]["rayClusterSpec"] if doc.get("kind") == "RayJob" else doc["spec"]


def _spot_tolerated(pod: dict) -> bool:
    return any(t.get("key") == SPOT_LABEL and t.get("value", "spot") == "spot" for t in pod.get("tolerations", []))


def check_kuberay(doc: dict) -> list[str]:
    problems = []
    try:
        spec = cluster_spec(doc)
        head = spec["headGroupSpec"]
        groups = {g["groupName"]: g for g in spec.get("workerGroupSpecs", [])}
    except (KeyError, TypeError) as e:
        return [f"{doc.get('kind')}: missing {e}"]
    if spec.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling must be true")
    params = head.get("rayStartParams", {})
    if params.get("num-cpus") != "0":
        problems.append('head rayStartParams must set num-cpus: "0"')
    if DRIVER_RESOURCE not in params.get("resources", ""):
        problems.append(f"head rayStartParams must set the custom resource {DRIVER_RESOURCE}")
    if head["template"]["spec"].get("nodeSelector", {}).get(SPOT_LABEL) == "spot":
        problems.append("head must not be on spot")
    for name in (CPU_GROUP, GPU_GROUP):
        g = groups.get(name)
        if g is None:
            problems.append(f"no worker group {name}")
            continue
        if g.get("minReplicas") != 0 or g.get("replicas", 0) != 0:
            problems.append(f"worker group {name} must start from minReplicas: 0, replicas: 0")
        if not isinstance(g.get("maxReplicas"), int) or g["maxReplicas"] < 0:
            problems.append(f"worker group {name} needs maxReplicas >= 0")
        pod = g["template"]["spec"]
        if pod.get("nodeSelector", {}).get(SPOT_LABEL) != "spot":
            problems.append(f"worker group {name} needs nodeSelector {SPOT_LABEL}: spot")
        if not _spot_tolerated(pod):
            problems.append(f"worker group {name} needs a toleration for {SPOT_LABEL}=spot")
    gpu = groups.get(GPU_GROUP)
    if gpu is not None:
        limits = [c.get("resources", {}).get("limits", {}) for c in gpu["template"]["spec"]["containers"]]
        if not any(int(lim.get("nvidia.com/gpu", 0)) >= 1 for lim in limits):
            problems.append(f"worker group {GPU_GROUP} needs nvidia.com/gpu limits")
        if not any(t.get("key") == "nvidia.com/gpu" for t in gpu["template"]["spec"].get("tolerations", [])):
            problems.append(f"worker group {GPU_GROUP} needs a toleration for nvidia.com/gpu")
    if doc.get("kind") == "RayJob":
        problems += _check_rayjob(doc)
    return problems


def _check_rayjob(doc: dict) -> list[str]:
    problems = []
    job = doc["spec"]
    if not str(job.get("entrypoint", "")).startswith(ENTRYPOINT):
        problems.append(f"RayJob entrypoint must run `{ENTRYPOINT}`")
    try:
        pinned = json.loads(job.get("entrypointResources", "{}")).get(DRIVER_RESOURCE, 0) >= 1
    except (ValueError, AttributeError):
        pinned = False
    if not pinned:
        problems.append(f"RayJob entrypointResources must ask for {DRIVER_RESOURCE}")
    pod = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"] for v in pod.get("volumes", []) if v.get("configMap", {}).get("name") == CONFIG_MAP}
    mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] in volumes and m["mountPath"] == "/config"]
    if not mounts:
        problems.append(f"RayJob head must mount the ConfigMap {CONFIG_MAP} at /config")
    return problems
