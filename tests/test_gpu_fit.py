"""GPU pools that fit (issue 12): the pools of one pass start together or the run says what to
change, in seconds, instead of waiting for the no-progress timeout. The placement rule is a pure
function; the scenario runs `plan` and `run` on a `ray.cluster_utils.Cluster` with fake GPUs
(one one-GPU node, then two) in a subprocess, never beside the session's local Ray."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from conftest import run_scenario

from latentforge.pipelines.gpu_fit import PoolNeed, problem, unplaced

CAPTION, VAE = PoolNeed("caption", 1.0, 1), PoolNeed("encode_video", 1.0, 1)
SCENARIO_TIMEOUT_S = 150


def test_pools_are_placed_largest_first_on_the_nodes():
    assert unplaced([CAPTION, VAE], [1.0]) == {"encode_video": 1} or unplaced([CAPTION, VAE], [1.0]) == {"caption": 1}
    assert unplaced([CAPTION, VAE], [1.0, 1.0]) == {}
    assert unplaced([CAPTION, VAE], [2.0]) == {}
    assert unplaced([PoolNeed("caption", 0.5, 1), PoolNeed("encode_video", 0.5, 1)], [1.0]) == {}  # they share it
    assert unplaced([PoolNeed("encode_text", 2.0, 1)], [1.0, 1.0]) == {"encode_text": 1}  # one actor, one node
    assert unplaced([PoolNeed("encode_video", 1.0, 3)], [1.0, 1.0]) == {"encode_video": 1}


def test_the_message_says_what_to_change():
    message = problem([CAPTION, VAE], [1.0], [])
    assert "caption (1 x 1 GPU) and encode_video (1 x 1 GPU)" in message
    assert "caption.num_gpus=0.5 and encode_video.num_gpus=0.5" in message and "pipeline: caption" in message
    assert problem([CAPTION, VAE], [1.0], [1.0]) is None  # the autoscaler can add the second node
    assert problem([CAPTION, VAE], [], None) is None  # an unbounded node type: it can
    assert problem([CAPTION, VAE], [1.0, 1.0], []) is None


@pytest.mark.ray
def test_plan_and_run_report_pools_that_cannot_start_together(tmp_path):
    result = run_scenario(__file__, tmp_path, SCENARIO_TIMEOUT_S)
    one, two = result["one_gpu_node"], result["two_gpu_nodes"]
    assert len(one["plan_problems"]) == 1 and "caption.num_gpus=0.5 and encode_video.num_gpus=0.5" in one["plan_problems"][0]
    assert "cannot hold them" in one["run_error"] and one["run_seconds"] < 30  # refused, not left waiting 30 minutes
    assert not (tmp_path / "out" / "latents").exists()
    assert two["plan_problems"] == []  # one pool per node: fits


def scenario(workdir: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from latentforge.config import ConfigError, load_config
    from latentforge.pipelines import fit_problems, run
    from latentforge.pipelines.gpu_fit import _autoscaler_reports
    from latentforge.sample_media import make_video

    make_video(workdir / "a.mp4", 64, 64, 12, 24)
    (workdir / "dataset.jsonl").write_text(json.dumps({"media_path": "a.mp4", "caption": "A square."}) + "\n")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    result: dict = {}
    try:
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        deadline = time.monotonic() + 60  # Ray's monitor writes its first status a few seconds in;
        while _autoscaler_reports() and time.monotonic() < deadline:  # until then the cluster might scale
            time.sleep(0.5)
        overrides = [
            "pipeline=all", "ray.use_gpus=true", f"ray.address={cluster.address}",
            "caption.model=tiny-qwen2.5-vl", "caption.max_new_tokens=4", "caption.max_frames=2", "caption.max_pixels=3136",
        ]
        cfg = load_config(None, overrides, input=str(workdir / "dataset.jsonl"), output=str(workdir / "out"), model="tiny", buckets="64x64x9")
        one = {"plan_problems": fit_problems(cfg)}
        t0 = time.monotonic()
        try:
            run(cfg)
            one["run_error"] = ""
        except ConfigError as e:
            one["run_error"] = str(e)
        one["run_seconds"] = time.monotonic() - t0
        result["one_gpu_node"] = one
        cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        result["two_gpu_nodes"] = {"plan_problems": fit_problems(cfg)}
    finally:
        ray.shutdown()
        cluster.shutdown()
    return result


if __name__ == "__main__":
    out = Path(sys.argv[1])
    (out / "result.json").write_text(json.dumps(scenario(out)))
