"""Scene split of a folder, timed as users run it: the whole `latentforge run` command
(`pipeline: split`, the embedded Ray it starts, report and all) against the `scenedetect` CLI run
once per file (`scenedetect -i FILE -o DIR detect-content list-scenes`, what LTX-2's trainer
users run), in turn A B A B ..., the ratio taken pair by pair.

The folder: `--copies` generated 720p24 H.264 videos with known cuts (grainy footage at a
camera-like bitrate, bench_split.generated; copies of one encode under different names, each
split on its own) plus the short real clips of ../shared/media when present. Both tools' cuts
are scored against the known cuts of the generated videos (F1, +-1 frame).

Also, on one long video: the same `detect_video` call in this process and in a Ray task on an
embedded Ray started the way `latentforge run` starts it (`cluster.connect`), to show what a
Ray task costs detection.

    python benchmarks/bench_split_folder.py                  # 7 x 93 s + short clips, ~6 min
    python benchmarks/bench_split_folder.py --copies 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from _machine import SHARED_MEDIA, OtherLoad, own_cpu_seconds
from bench_split import REAL, generated, run_cli

SHORT_REAL = [name for name in REAL if name != "bee.mp4"]


def f1(found: list[int], truth: list[int], tolerance: int = 1) -> float:
    """F1 of detected cut frames against known ones; a cut matches one known cut at most."""
    left, hits = list(truth), 0
    for f in sorted(found):
        match = next((t for t in left if abs(t - f) <= tolerance), None)
        if match is not None:
            left.remove(match)
            hits += 1
    if not found and not truth:
        return 1.0
    return 2 * hits / (len(found) + len(truth))


def make_folder(workdir: Path, copies: int, spec: str, seconds: float, real: Path) -> tuple[Path, dict[str, list[int]]]:
    source, cuts = generated(workdir, spec, seconds)
    folder = workdir / f"folder_{copies}x{spec}_{seconds:g}s"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    truth = {}
    for k in range(copies):
        name = f"long_{k:02d}.mp4"
        os.link(source, folder / name)
        truth[name] = cuts
    for name in SHORT_REAL:
        if (real / name).exists():
            shutil.copyfile(real / name, folder / name)
    return folder, truth


def seconds_of(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return float(s.frames / s.average_rate)


def latentforge_command(folder: Path, out: Path, config: Path) -> list[str]:
    config.write_text(f"input: {folder}\noutput: {out}\npipeline: split\n")
    return [shutil.which("latentforge") or "latentforge", "run", str(config)]


def latentforge_cuts(out: Path) -> dict[str, list[int]]:
    cuts: dict[str, list[int]] = {}
    for line in (out / "clips.jsonl").read_text().splitlines():
        clip = json.loads(line)
        name = Path(clip.get("parent_uri") or clip["uri"]).name
        cuts.setdefault(name, [])
        if clip.get("scene_index", 0) > 0:
            cuts[name].append(int(clip["start_frame"]))
    return cuts


def whole_commands(folder: Path, truth: dict[str, list[int]], workdir: Path, repeats: int) -> None:
    files = sorted(folder.glob("*.mp4"))
    ours, cli, ratios, cli_cores = [], [], [], []
    found_ours: dict[str, list[int]] = {}
    found_cli: dict[str, list[int]] = {}
    for r in range(repeats + 1):  # the first pair is a warm-up (page cache, imports), not counted
        out = workdir / "split_out"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.run(latentforge_command(folder, out, workdir / "split.yaml"), capture_output=True, text=True)
        a = time.perf_counter() - t0
        if proc.returncode:
            sys.exit(f"latentforge run failed:\n{proc.stderr[-3000:]}")
        found_ours = latentforge_cuts(out)
        t0, cpu0 = time.perf_counter(), own_cpu_seconds(children=True)
        for f in files:
            found_cli[f.name] = run_cli(f)[0]
        b = time.perf_counter() - t0
        if r:
            ours.append(a)
            cli.append(b)
            ratios.append(b / a)
            cli_cores.append((own_cpu_seconds(children=True) - cpu0) / b)
        print(f"  {'warm-up' if not r else f'pair {r}'}: latentforge run {a:.2f}s, scenedetect per file {b:.2f}s -> {b / a:.2f}x")
    print(
        f"whole command, {len(files)} files: latentforge run median {statistics.median(ours):.2f}s, "
        f"scenedetect CLI once per file median {statistics.median(cli):.2f}s; "
        f"speed-up median {statistics.median(ratios):.2f}x (pairs: {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    # the CLI decodes with FFmpeg's frame threads through OpenCV: how many of the cores it already
    # keeps busy caps any speed-up on this machine at (CPUs / that) for the same work per frame
    print(f"the scenedetect CLI kept {statistics.median(cli_cores):.2f} of {os.cpu_count()} CPUs busy (its CPU-s over its wall s, median)")
    names = sorted(truth)
    ours_f1 = statistics.mean(f1(found_ours.get(n, []), truth[n]) for n in names)
    cli_f1 = statistics.mean(f1(found_cli.get(n, []), truth[n]) for n in names)
    same = sum(found_ours.get(f.name, []) == found_cli.get(f.name) for f in files)
    print(f"cuts against the known cuts of the generated videos: F1 latentforge {ours_f1:.3f}, CLI {cli_f1:.3f} "
          f"(difference {ours_f1 - cli_f1:+.3f}); files with the CLI's exact cut list: {same}/{len(files)}")


def in_task_against_in_process(path: Path, repeats: int) -> None:
    import ray

    from latentforge.cluster import connect
    from latentforge.config import SplitConfig
    from latentforge.operators import scenes
    from latentforge.operators.probe import probe

    row = probe({"uri": str(path), "media_type": "video"})
    opts = SplitConfig(segment_seconds=None).model_dump(mode="json")

    def call() -> tuple[float, float, int]:
        c0, t0 = time.process_time(), time.perf_counter()
        d = scenes.detect_video(str(path), 0, row["end_frame"], row["fps"], opts)
        return time.perf_counter() - t0, time.process_time() - c0, len(d.cuts)

    connect()
    task = ray.remote(num_cpus=1)(call)
    ray.get(task.remote())  # warm-up: worker start, imports
    call()
    local, remote = [], []
    for _ in range(repeats):
        local.append(call())
        remote.append(ray.get(task.remote()))
    lw, lc = min(x[0] for x in local), min(x[1] for x in local)
    rw, rc = min(x[0] for x in remote), min(x[1] for x in remote)
    print(
        f"detect_video on {path.name}: in process {lw:.2f}s wall / {lc:.2f} CPU-s; in a Ray task {rw:.2f}s / {rc:.2f} CPU-s "
        f"-> the task takes {rw / lw:.2f}x the wall time (best of {repeats}; cuts {local[0][2]} and {remote[0][2]})"
    )
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=7, help="generated long videos in the folder")
    ap.add_argument("--seconds", type=float, default=93.0, help="length of the generated video")
    ap.add_argument("--video", default="1280x720@24", help="generated video, WxH@fps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real", default=SHARED_MEDIA)
    ap.add_argument("--skip-task", action="store_true", help="skip the in-task / in-process comparison")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "latentforge-bench-split"))
    args = ap.parse_args()
    if shutil.which("scenedetect") is None:
        sys.exit("the scenedetect command is not on PATH (pip install scenedetect)")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    load = OtherLoad()
    folder, truth = make_folder(workdir, args.copies, args.video, args.seconds, Path(args.real))
    total = sum(seconds_of(p) for p in folder.glob("*.mp4"))
    print(f"{folder}: {len(list(folder.glob('*.mp4')))} files, {total / 60:.1f} minutes of video; {os.cpu_count()} CPUs")
    if not args.skip_task:
        in_task_against_in_process(folder / "long_00.mp4", args.repeats)
    whole_commands(folder, truth, workdir, args.repeats)
    print(f"(meanwhile other processes used {load.others():.0f} CPU-s of {load.available():.0f} available; "
          "Ray's worker processes are not this script's children, so their CPU counts there too)")


if __name__ == "__main__":
    main()
