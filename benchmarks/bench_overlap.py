"""Does the pipeline keep an accelerator busy while the CPUs decode? A simulated accelerator.

On this machine the tiny VAE costs CPU, so the CPU-bound prepare and the "GPU" compete for the
same cores and no overlap can show. On the users' clusters the VAE costs GPU time while the CPUs
decode. So here the encode_video actor is replaced by a stand-in that holds no CPU (num_cpus=0,
one actor: one accelerator) and sleeps a fixed time per clip, then hands back a latent of the
size Wan 2.1's VAE gives (zeros). Everything before it is the real pipeline (manifest read,
probe, bucket, prepare's decode and resize), and its latents go through the real sink.

- sequential   what a trainer's preprocessing script does, one clip at a time in one process:
               probe + bucket + prepare (`load_frames`), then the accelerator's time (a sleep).
               It measures prepare's CPU seconds per clip on this machine.
- parallel     probe + prepare over the clips in as many plain processes as cores, no Ray: what
               this machine's CPUs decode when all of them work, the CPU side's real ceiling.
- ray tasks    the same in as many one-CPU Ray tasks as cores on the embedded Ray, no Ray Data:
               what a Ray worker costs the decode, apart from Ray Data's blocks and the other
               processes of a pipeline.
- pipeline     `latentforge run`'s video pass (pipelines.runtime.run with the stand-in), the
               embedded Ray started by the run, as a user runs it, text pass off.

The bound per clip is max(accelerator seconds, prepare CPU seconds / cores): with perfect
overlap the slower side sets the pace; the sequential loop pays their sum. The accelerator time
defaults to prepare's measured CPU seconds per clip divided by the cores: the balanced case,
where the bound is tightest and neither side hides the other's stalls (`--accel-ms` sets it).
A GPU node pairs a few CPU cores with each GPU; whether its decoding or its VAE is the slower
side depends on the model and the clips, and the balanced case is where overlap matters most.

Printed: both sides' wall seconds, the steady-state throughput of the pipeline (clips between its
first and last accelerator call; the fixed cost before the first is shown apart, from run.json),
the stand-in's busy share over that time, the ratios to the bound and to the sequential loop,
and where the run's CPU went by process (task workers, the stand-in, Ray Data's bookkeeping
actors, Ray's services, the driver), which the bound does not count. Nothing asserts on time.

    python benchmarks/bench_overlap.py                  # 120 720p clips, ~5 min on 2 cores (the first time
                                                        # also ~2 min to generate them)
    python benchmarks/bench_overlap.py --clips 200 --accel-ms 150
    python benchmarks/bench_overlap.py --clips 360 --accel-ms 50 --pipeline-only   # the pipeline alone, for repeats
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from latentforge.rows import object_column

from _machine import CpuByProcess, OtherLoad, ray_process_group, steal_seconds

BUCKETS = "832x480x49;480x832x49;624x624x49"  # Wan 2.1 sizes
SHAPES = [(1280, 720, 24), (720, 1280, 30), (960, 960, 25)]


class SimulatedAccelerator:
    """The encode_video actor's stand-in: per clip a sleep of `seconds` (the accelerator is busy,
    the CPU is not) and a small float32 latent; each call's start and end go to `log`."""

    def __init__(self, seconds: float, log: str, **_: object) -> None:
        self.seconds, self.log = seconds, log

    def __call__(self, batch: dict) -> dict:
        start = time.time()
        n = len(batch["sample_id"])
        frames = batch.pop("frames")
        done = [f is not None and getattr(f, "size", 0) > 0 for f in frames]
        time.sleep(self.seconds * sum(done))
        shapes = [[16, (f.shape[0] - 1) // 4 + 1, f.shape[1] // 8, f.shape[2] // 8] if d else None for f, d in zip(frames, done)]
        # the size a Wan 2.1 latent of that bucket has in bfloat16, so the sink writes what it would
        # one-dimensional object columns, as the real stage makes them: np.array(shapes) would be
        # a 2-D tensor column in a batch of done rows and a null one beside a failed row
        batch["latent_bytes"] = object_column([bytes(2 * int(np.prod(s))) if s else None for s in shapes])
        batch["latent_shape"] = object_column(shapes)
        batch["latent_dtype"] = object_column(["bfloat16" if d else None for d in done])
        batch["_seconds_encode_video"] = np.full(n, self.seconds)
        with open(self.log, "a") as f:
            f.write(json.dumps({"start": start, "end": time.time(), "clips": sum(done)}) + "\n")
        return batch


def make_dataset(folder: Path, clips: int, frames: int) -> Path:
    from latentforge.sample_media import make_video

    lines = []
    for i in range(clips):
        w, h, fps = SHAPES[i % len(SHAPES)]
        name = f"clip{i:03d}.mp4"
        if not (folder / name).exists():
            make_video(folder / name, w, h, frames, fps, cuts=(frames // 2,))
        lines.append({"media_path": name, "caption": "a square moves"})
    manifest = folder / "dataset.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def config(manifest: Path, out: Path):
    from latentforge.config import load_config

    sets = ["encode_text.enabled=false", "encode_video.min_actors=1", "encode_video.max_actors=1", "encode_video.batch_size=1"]
    return load_config(None, sets, input=str(manifest), output=str(out), model="tiny", buckets=BUCKETS)


def prepare_clip(row: dict, buckets: list) -> None:
    """What the pipeline's probe, bucket and prepare stages do to one row, in this process; both
    baselines below run it."""
    from latentforge.operators import frames as frames_op
    from latentforge.operators.probe import probe

    prepared = frames_op.load_frames(frames_op.assign_bucket(probe(row), buckets, None))
    if prepared.get("error"):
        raise RuntimeError(prepared["error"])


def clips(manifest: Path) -> tuple[list[dict], list]:
    """The manifest's rows and the benchmark's buckets."""
    from latentforge.formats.manifests import read_manifest

    return read_manifest(str(manifest)), config(manifest, Path("unused")).bucket_list()


def sequential(manifest: Path, accel: float | None) -> tuple[float, float, int]:
    """(wall seconds with the accelerator's sleeps, prepare CPU seconds per clip, clips)."""
    rows, buckets = clips(manifest)
    cpu = wall = 0.0
    for row in rows:
        c0, t0 = time.process_time(), time.perf_counter()
        prepare_clip(row, buckets)
        cpu += time.process_time() - c0
        if accel:
            time.sleep(accel)
        wall += time.perf_counter() - t0
    return wall, cpu / len(rows), len(rows)


def _import_stages() -> None:
    """Each pool process imports the stages once, before the clock starts."""
    from latentforge.operators import frames, probe

    assert frames and probe


def _prepare_share(args: tuple[str, int, int]) -> tuple[int, float]:
    """(clips, CPU seconds of this process) for every `shares`-th clip from `share`."""
    manifest, share, shares = args
    rows, buckets = clips(Path(manifest))
    c0 = time.process_time()
    for row in rows[share::shares]:
        prepare_clip(row, buckets)
    return len(rows[share::shares]), time.process_time() - c0


def prepare_on_all_cores(manifest: Path, cores: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of probe + prepare over every clip in `cores` plain processes
    at once, no Ray: what this machine's CPUs decode when all of them work. It is the CPU side's
    real ceiling: two vCPUs rarely give twice one (shared caches, memory bandwidth, hyperthreads)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(cores, initializer=_import_stages) as pool:
        t0 = time.perf_counter()
        shares = pool.map(_prepare_share, [(str(manifest), i, cores) for i in range(cores)], chunksize=1)
        return time.perf_counter() - t0, sum(cpu for _, cpu in shares)


def prepare_in_ray_tasks(manifest: Path, cores: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the same work in `cores` one-CPU Ray tasks on the embedded
    Ray that `latentforge run` starts, without Ray Data: what a Ray worker costs the decode (its
    environment, its process), apart from what Ray Data's blocks and the pipeline's other
    processes cost it."""
    import ray

    from latentforge.cluster import connect

    connect()
    try:
        task = ray.remote(num_cpus=1)(_prepare_share)
        warm = ray.remote(num_cpus=1)(_import_stages)
        ray.get([warm.remote() for _ in range(cores)])
        t0 = time.perf_counter()
        shares = ray.get([task.remote((str(manifest), i, cores)) for i in range(cores)])
        return time.perf_counter() - t0, sum(cpu for _, cpu in shares)
    finally:
        ray.shutdown()


def pipeline(manifest: Path, out: Path, accel: float, log: Path) -> dict:
    from latentforge.operators.base import Resources
    from latentforge.pipelines import precompute, runtime

    stages = [
        dataclasses.replace(
            s, op=SimulatedAccelerator, resources=Resources(num_cpus=0), args=lambda job: {"seconds": accel, "log": str(log)}
        )
        if s.name == "encode_video"
        else s
        for s in precompute.STAGES
    ]
    cfg = config(manifest, out)
    t0 = time.perf_counter()
    summary = runtime.run(stages, cfg, precompute.summarize)
    summary["command_seconds"] = time.perf_counter() - t0
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=120)
    ap.add_argument("--frames", type=int, default=60, help="frames of each generated clip")
    ap.add_argument("--accel-ms", type=float, default=None, help="accelerator milliseconds per clip (default: balanced)")
    ap.add_argument("--pipeline-only", action="store_true", help="only the pipeline (needs --accel-ms): for repeated runs of one side")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "latentforge-bench-overlap"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = make_dataset(workdir, args.clips, args.frames)
    cores = os.cpu_count() or 1
    load, steal0 = OtherLoad(), steal_seconds()

    if args.pipeline_only:
        if args.accel_ms is None:
            sys.exit("--pipeline-only needs --accel-ms (the balanced figure comes from the sequential loop)")
        n, accel = len(clips(manifest)[0]), args.accel_ms / 1000
        print(f"{n} clips, {cores} CPUs; accelerator {accel * 1000:.1f} ms per clip (given); the pipeline alone")
    else:
        sequential(manifest, None)  # warm-up: imports, page cache
        _, prepare_cpu, n = sequential(manifest, None)
        accel = args.accel_ms / 1000 if args.accel_ms is not None else prepare_cpu / cores
        seq_wall, _, _ = sequential(manifest, accel)
        parallel_wall, parallel_cpu = prepare_on_all_cores(manifest, cores)
        parallel = parallel_wall / n
        tasks_wall, tasks_cpu = prepare_in_ray_tasks(manifest, cores)
        bound = max(accel, prepare_cpu / cores)
        reachable = max(accel, parallel)
        print(f"{n} clips, {cores} CPUs; prepare {prepare_cpu * 1000:.1f} CPU-ms per clip; accelerator {accel * 1000:.1f} ms per clip"
              f" ({'given' if args.accel_ms is not None else 'balanced: prepare / cores'})")
        print(f"bound {bound * 1000:.1f} ms per clip = {1 / bound:.2f} clips/s; the sequential loop pays the sum, "
              f"{(accel + prepare_cpu) * 1000:.1f} ms")
        print(f"prepare in {cores} plain processes at once (no Ray): {parallel * 1000:.1f} ms per clip = {1 / parallel:.2f} clips/s, "
              f"{prepare_cpu / parallel:.2f}x one process, {parallel_cpu / n * 1000:.1f} CPU-ms per clip; "
              f"with the accelerator: reachable {reachable * 1000:.1f} ms per clip")
        print(f"prepare in {cores} Ray tasks at once (no Ray Data): {tasks_wall / n * 1000:.1f} ms per clip, "
              f"{tasks_cpu / n * 1000:.1f} CPU-ms per clip")

    out, log = workdir / "out", workdir / "accelerator_calls.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    with CpuByProcess() as cpu:
        summary = pipeline(manifest, out, accel, log)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    first, last = min(c["start"] for c in calls), max(c["end"] for c in calls)
    encoded = sum(c["clips"] for c in calls)
    busy = sum(c["end"] - c["start"] for c in calls)
    steady = encoded / (last - first)
    if not args.pipeline_only:
        print(f"\nsequential loop: {seq_wall:.2f}s, {n / seq_wall:.2f} clips/s")
    print(f"pipeline: {summary['command_seconds']:.2f}s for the run ({summary['counts']['latents_written']} latents), "
          f"fixed cost {json.dumps(summary.get('fixed_cost_seconds'))}")
    print(f"  steady state (first to last accelerator call): {encoded} clips in {last - first:.2f}s = {steady:.2f} clips/s; "
          f"accelerator busy {busy / (last - first):.0%} of that time, median call {statistics.median(c['end'] - c['start'] for c in calls) * 1000:.0f} ms")
    if not args.pipeline_only:
        print(f"  -> {steady * bound:.0%} of the bound ({steady * reachable:.0%} of what {cores} plain processes decode); "
              f"{steady / (n / seq_wall):.2f}x the sequential loop's throughput "
              f"(whole run, fixed cost included: {(n / summary['command_seconds']) / (n / seq_wall):.2f}x)")
    groups = cpu.by_group(ray_process_group)
    groups["driver (this script: Ray Data's executor, the run's bookkeeping, this CPU sampling)"] = cpu.by_pid.get(os.getpid(), 0.0)
    spent = sum(groups.values())
    needs = "" if args.pipeline_only else f"; prepare itself needs {prepare_cpu * n:.1f}"
    print(f"  where the pipeline's CPU went ({spent:.1f} CPU-s of {cores * summary['command_seconds']:.1f} in the run{needs}):")
    for name, seconds in sorted(groups.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.05:
            print(f"    {seconds:6.1f} CPU-s  {seconds / spent:4.0%}  {name[:100]}")
    print(f"(meanwhile other processes used about {load.others():.0f} CPU-s of {load.available():.0f} available (Ray's workers are not "
          f"this script's children and count there too); the hypervisor stole {steal_seconds() - steal0:.0f} s)")


if __name__ == "__main__":
    main()
