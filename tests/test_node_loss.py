"""A worker node lost while the model stage runs (issue 11): on a three-node
`ray.cluster_utils.Cluster` (a head that runs no work and two 2-CPU workers, one VAE actor), a
worker node is removed mid-run (the one holding the VAE actor as soon as it is up, else a worker
once latents are being written; the result says which); Ray Data restarts the actor elsewhere and
Ray rebuilds the decoded blocks that were stored on the lost node, and the job ends with every
input row exactly once (a latent or an error row), byte-equal to a run on one machine.

The surviving worker keeps a CPU beside the restarted actor on purpose: Ray rebuilds a lost block
by rerunning the 1-CPU decode task that made it, and CPU-only VAE actors holding every CPU left
would wait forever for blocks that no task can rebuild (docs/scale.md, "Node loss and CPU-only
actor pools").

The scenario runs in a subprocess (this file as a script), never beside the session's local
Ray; `Cluster.shutdown` stops only the processes it started.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_scenario

pytestmark = pytest.mark.ray

CLIPS = 12
SCENARIO_TIMEOUT_S = 300


def test_a_lost_worker_node_loses_no_row(tmp_path, ray_local, tiny_home):
    from latentforge.config import load_config
    from latentforge.formats.shards import read_table
    from latentforge.pipelines import run

    manifest = _dataset(tmp_path / "media")
    result = run_scenario(__file__, tmp_path, SCENARIO_TIMEOUT_S)
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1))
    assert result["removed_node"], "no worker node was removed while the run worked"
    assert result["latents_when_removed"] < CLIPS, "the node went after the work was done"
    counts = result["summary"]["counts"]
    assert counts["input_rows"] == CLIPS and counts["errors"] == 0, counts
    # the driver ran both passes without the model stack: actors hold the models, the driver
    # names them (operators/model_actors.py), about 0.5 GB of RSS it no longer carries
    assert result["driver_imported"] == [], result["driver_imported"]

    lost = read_table(str(tmp_path / "out"), "latents").to_pylist()
    assert len(lost) == len({r["sample_id"] for r in lost}) == CLIPS  # each once

    # the same rows as a run on this machine alone
    cfg = load_config(None, ["encode_video.batch_size=1"], input=str(manifest), output=str(tmp_path / "alone"), model="tiny", buckets="64x64x9")
    run(cfg)
    alone = {r["sample_id"]: r["latent_bytes"] for r in read_table(cfg.output, "latents").to_pylist()}
    assert {r["sample_id"]: r["latent_bytes"] for r in lost} == alone


def _dataset(folder: Path) -> Path:
    from latentforge.sample_media import make_video

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(CLIPS):
        make_video(folder / f"clip{i}.mp4", 96 + 16 * (i % 3), 64, 12, 24)
        rows.append({"media_path": f"clip{i}.mp4", "caption": f"Clip {i}."})
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def _vae_actor_nodes() -> set[str]:
    import ray
    from ray.core.generated import gcs_pb2

    accessor = ray._private.state.state._connect_and_get_accessor()
    nodes = set()
    for raw in accessor.get_actor_table(None, None):
        a = gcs_pb2.ActorTableData.FromString(raw)
        if "VideoEncodeStage" in a.repr_name and gcs_pb2.ActorTableData.ActorState.Name(a.state) == "ALIVE":
            nodes.add(a.address.node_id.hex())
    return nodes


def scenario(root: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from latentforge.config import load_config
    from latentforge.models import model_root
    from latentforge.pipelines import run

    model_root("tiny")
    manifest = root / "media" / "dataset.jsonl"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # actors land on workers
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    out: dict = {"removed_node": None, "latents_when_removed": None}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        cfg = load_config(
            None,
            ["ray.use_gpus=false", f"ray.address={cluster.address}", "encode_video.batch_size=1", "encode_video.max_actors=1",
             "ray.no_progress_timeout_s=200"],
            input=str(manifest), output=str(root / "out"), model="tiny", buckets="64x64x9",
        )
        done: dict = {}
        thread = threading.Thread(target=lambda: done.update(summary=run(cfg)), daemon=True)
        thread.start()
        latents = root / "out" / "latents"
        by_id = {w.node_id: w for w in workers}
        deadline = time.monotonic() + 200
        while thread.is_alive() and time.monotonic() < deadline and out["removed_node"] is None:
            written = len(list(latents.rglob("part-*.parquet"))) if latents.exists() else 0
            # the node under a VAE actor as soon as there is one; else, once latents are being
            # written, a worker node all the same (it runs decode tasks and maybe the sink's)
            target = next((n for n in _vae_actor_nodes() if n in by_id), None)
            if target is None and written:
                target = workers[0].node_id
            if target is not None:
                out.update(latents_when_removed=written, vae_on_it=target in _vae_actor_nodes())
                cluster.remove_node(by_id[target], allow_graceful=False)
                out["removed_node"] = target
            time.sleep(0.05)
        thread.join(SCENARIO_TIMEOUT_S - 60)
        out["summary"] = done.get("summary")
        out["driver_imported"] = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
        return out
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    workdir = Path(sys.argv[1])
    result = scenario(workdir)
    if result.get("summary") is None:
        sys.exit("the run did not finish")
    (workdir / "result.json").write_text(json.dumps(result, default=str))
