"""The cluster configs shipped in the package (docs/cluster.md, "Cluster configs") and
`latentforge cluster render`: the AWS config passes Ray's own cluster-config schema, the KubeRay
manifests carry what the pipeline relies on, and rendered files pass the same checks."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from latentforge.cli import main
from latentforge.cluster import render as r


def _aws() -> dict:
    return r.load_shipped("aws.yaml")[0]


def _render(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / "rendered.yaml"
    assert main(["cluster", "render", *args, "--out", str(out)]) == 0
    return [d for d in yaml.safe_load_all(out.read_text()) if d is not None]


# ---------------------------------------------------------------------------------------------
# shipped files


def test_shipped_aws_config_passes_rays_schema_and_our_checks():
    cfg = _aws()
    assert r.ray_schema_errors(cfg) == []
    assert r.check_aws(cfg) == []
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "latentforge_driver": 1}
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand
    gpu = cfg["available_node_types"]["gpu_spot"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] > 0
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert cfg["available_node_types"]["cpu_spot"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert cfg["idle_timeout_minutes"] > 0
    assert any("pip install" in c and "latentforge" in c for c in cfg["setup_commands"])
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda c: c["available_node_types"]["gpu_spot"].update(bogus_key=1), "Ray's cluster-config schema"),
        (lambda c: c["available_node_types"]["gpu_spot"].update(min_workers="0"), "Ray's cluster-config schema"),
        (lambda c: c["available_node_types"]["head"]["resources"].update(CPU=4), "CPU: 0"),
        (lambda c: c["available_node_types"]["gpu_spot"]["node_config"].pop("InstanceMarketOptions"), "not spot"),
        (lambda c: c["available_node_types"]["gpu_spot"].update(min_workers=1), "min_workers: 0"),
        (lambda c: c.pop("idle_timeout_minutes"), "idle_timeout_minutes"),
    ],
)
def test_aws_checks_catch_a_broken_config(breakage, expected):
    cfg = copy.deepcopy(_aws())
    breakage(cfg)
    assert any(expected in p for p in r.check_aws(cfg)), r.check_aws(cfg)


def _groups(doc: dict) -> dict:
    return {g["groupName"]: g for g in r.cluster_spec(doc)["workerGroupSpecs"]}


@pytest.mark.parametrize("name", ["kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_shipped_kuberay_manifests_have_the_fields(name):
    (doc,) = r.load_shipped(name)
    assert r.check_kuberay(doc) == []
    spec = r.cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu = _groups(doc)["gpu-spot"]
    assert (gpu["replicas"], gpu["minReplicas"]) == (0, 0) and gpu["maxReplicas"] > 0
    pod = gpu["template"]["spec"]
    assert pod["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"
    assert {t["key"] for t in pod["tolerations"]} >= {"karpenter.sh/capacity-type", "nvidia.com/gpu"}
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu = _groups(doc)["cpu-spot"]
    assert cpu["minReplicas"] == 0 and cpu["template"]["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("latentforge run /config/config.yaml")
        assert json.loads(doc["spec"]["entrypointResources"]) == {"latentforge_driver": 1}
        assert doc["spec"]["shutdownAfterJobFinishes"] is True


def test_rayjob_and_raycluster_share_one_cluster_spec():
    (cluster,) = r.load_shipped("kuberay-raycluster.yaml")
    (job,) = r.load_shipped("kuberay-rayjob.yaml")
    job_spec = copy.deepcopy(r.cluster_spec(job))
    head = job_spec["headGroupSpec"]["template"]["spec"]
    head.pop("volumes")  # the RayJob adds only the config mount
    head["containers"][0].pop("volumeMounts")
    assert job_spec == r.cluster_spec(cluster)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda s: s.update(enableInTreeAutoscaling=False), "enableInTreeAutoscaling"),
        (lambda s: s["headGroupSpec"]["rayStartParams"].pop("num-cpus"), "num-cpus"),
        (lambda s: s["workerGroupSpecs"][1].update(replicas=2), "replicas: 0"),
        (lambda s: s["workerGroupSpecs"][1]["template"]["spec"]["nodeSelector"].pop("karpenter.sh/capacity-type"), "nodeSelector"),
        (lambda s: s["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("nvidia.com/gpu"), "nvidia.com/gpu limits"),
    ],
)
def test_kuberay_checks_catch_a_broken_manifest(breakage, expected):
    (doc,) = r.load_shipped("kuberay-raycluster.yaml")
    doc = copy.deepcopy(doc)
    assert _groups(doc)["gpu-spot"] is doc["spec"]["workerGroupSpecs"][1]
    breakage(doc["spec"])
    assert any(expected in p for p in r.check_kuberay(doc)), r.check_kuberay(doc)


# ---------------------------------------------------------------------------------------------
# latentforge cluster render


def test_render_aws_applies_the_options_and_still_validates(tmp_path):
    (cfg,) = _render(
        tmp_path, "--provider", "aws", "--gpu-instance-type", "g6e.2xlarge", "--cpu-instance-type", "c7i.8xlarge",
        "--max-gpu-workers", "7", "--max-cpu-workers", "3", "--region", "eu-west-1", "--image", "me/lf:1",
        "--package", "latentforge @ https://example.com/latentforge-0.1.0-py3-none-any.whl", "--idle-timeout-minutes", "10",
    )
    assert r.check("aws", [cfg]) == [] and r.ray_schema_errors(cfg) == []
    types = cfg["available_node_types"]
    assert types["gpu_spot"]["node_config"]["InstanceType"] == "g6e.2xlarge"
    assert types["gpu_spot"]["max_workers"] == 7 and types["gpu_spot"]["min_workers"] == 0
    assert types["cpu_spot"]["node_config"]["InstanceType"] == "c7i.8xlarge" and types["cpu_spot"]["max_workers"] == 3
    assert cfg["max_workers"] == 10
    assert cfg["provider"]["region"] == "eu-west-1" and cfg["docker"]["image"] == "me/lf:1"
    assert cfg["idle_timeout_minutes"] == 10
    assert cfg["setup_commands"] == ['pip install -U "latentforge @ https://example.com/latentforge-0.1.0-py3-none-any.whl"']


def test_render_aws_defaults_use_the_local_ray_version(tmp_path):
    (cfg,) = _render(tmp_path, "--provider", "aws", "--package", "")
    assert cfg["docker"]["image"] == r.default_image()
    assert cfg["setup_commands"] == []  # the image has latentforge
    assert r.check_aws(cfg) == []


def test_render_kuberay_rayjob_applies_the_options(tmp_path):
    pipeline = tmp_path / "my.yaml"
    pipeline.write_text("input: s3://bucket/raw/\noutput: s3://bucket/out/\nmodel: wan2.1\n")
    docs = _render(
        tmp_path, "--provider", "kuberay", "--gpu-instance-type", "g5.2xlarge", "--max-gpu-workers", "6",
        "--max-cpu-workers", "0", "--image", "me/lf:2", "--package", "", "--pipeline-config", str(pipeline),
        "--idle-timeout-minutes", "2",
    )
    job, config_map = docs
    assert r.check("kuberay", docs) == [] and job["kind"] == "RayJob"
    groups = _groups(job)
    assert groups["gpu-spot"]["maxReplicas"] == 6 and groups["cpu-spot"]["maxReplicas"] == 0
    assert groups["gpu-spot"]["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"] == "g5.2xlarge"
    spec = r.cluster_spec(job)
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 120
    images = {c["image"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]}
    assert images == {"me/lf:2"}
    assert "runtimeEnvYAML" not in job["spec"]
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "latentforge-config"
    assert yaml.safe_load(config_map["data"]["config.yaml"])["model"] == "wan2.1"


def test_render_kuberay_raycluster(tmp_path):
    (doc,) = _render(tmp_path, "--provider", "kuberay", "--kind", "raycluster", "--name", "lf-prod", "--max-gpu-workers", "2")
    assert doc["kind"] == "RayCluster" and doc["metadata"]["name"] == "lf-prod"
    assert r.check_kuberay(doc) == [] and _groups(doc)["gpu-spot"]["maxReplicas"] == 2


def test_render_to_stdout(capsys):
    assert main(["cluster", "render", "--provider", "kuberay"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert r.check("kuberay", docs) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--provider", "aws", "--max-gpu-workers", "-1"], "--max-gpu-workers must be 0 or more, got -1"),
        (["--provider", "gcp"], "unknown provider 'gcp' (aws or kuberay)"),
        (["--provider", "kuberay", "--kind", "rayservice"], "unknown kind 'rayservice'"),
        (["--provider", "aws", "--gpu-instance-type", "m6i.large"], "has no NVIDIA GPU"),
        (["--provider", "aws", "--pipeline-config", "my.yaml"], "--pipeline-config goes with"),
    ],
)
def test_render_bad_option_exits_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "never.yaml"
    assert main(["cluster", "render", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
