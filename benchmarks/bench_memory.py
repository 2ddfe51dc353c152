"""Peak memory of a whole `latentforge run`, summed over every process it starts (issue 13).

A local run is the driver plus Ray's processes (GCS, raylet, dashboard agents, the object store,
one worker per task slot, one per model actor). This script starts `latentforge run` (precompute,
the tiny-wan2.1 preset, text pass on) on N generated clips, as a user runs it, and every 0.2 s
sums over the run's process tree:

- RSS: resident memory of each process; pages shared between processes (torch's libraries
  mapped by every worker that imports it) count once per process, as `top` shows them;
- PSS: each shared page divided among the processes that map it (/proc/PID/smaps_rollup):
  what the run really occupies.

It reports the peak of each sum and how many worker processes had torch mapped. --scale runs
the same at N and 10 x N clips: the ratio of the peaks is what must stay near 1 (memory flat in
the input's length). --repo runs another checkout for a before/after. Nothing here asserts.

    python benchmarks/bench_memory.py                 # 12 clips, ~1 minute on 2 cores
    python benchmarks/bench_memory.py --scale         # 12 and 120 clips
    python benchmarks/bench_memory.py --repo /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from _machine import REPO, machine_busy_seconds, steal_seconds


def make_dataset(folder: Path, clips: int, repo: Path) -> Path:
    code = (
        "import json, sys; from pathlib import Path; from latentforge.sample_media import make_video\n"
        "root, n = Path(sys.argv[1]), int(sys.argv[2]); lines = []\n"
        "for i in range(n):\n"
        "    make_video(root / f'clip_{i:04d}.mp4', (160, 96, 128)[i % 3], (96, 160, 128)[i % 3], 24, 24, cuts=[12])\n"
        "    lines.append(json.dumps({'media_path': f'clip_{i:04d}.mp4', 'caption': f'Caption {i % 7} of a moving square.'}))\n"
        "(root / 'dataset.jsonl').write_text('\\n'.join(lines) + '\\n')\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(folder), str(clips)], check=True, env=dict(os.environ, PYTHONPATH=str(repo)))
    return folder / "dataset.jsonl"


def pss_kib(proc: psutil.Process) -> int:
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def maps_torch(proc: psutil.Process) -> bool:
    try:
        with open(f"/proc/{proc.pid}/maps") as f:
            return "libtorch_cpu" in f.read()
    except OSError:
        return False


def run_once(repo: Path, clips: int, workdir: Path) -> dict:
    manifest = make_dataset(workdir / "data", clips, repo)
    config = workdir / "run.yaml"
    config.write_text(f"input: {manifest}\noutput: {workdir / 'out'}\nmodel: tiny-wan2.1\nbuckets: 96x64x9;64x96x9;64x64x9\n")
    env = dict(os.environ, PYTHONPATH=str(repo), RAY_DEDUP_LOGS="0")
    log = open(workdir / "run.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "latentforge.cli", "run", str(config)], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak = {"rss_mib": 0.0, "pss_mib": 0.0, "processes": 0, "torch_processes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = pss = 0
            for p in tree:
                try:
                    rss += p.memory_info().rss // 1024
                except psutil.Error:
                    continue
                pss += pss_kib(p)
            if rss / 1024 > peak["rss_mib"]:
                peak["rss_mib"] = rss / 1024
                peak["processes"] = len(tree)
                peak["torch_processes"] = sum(maps_torch(p) for p in tree)
            peak["pss_mib"] = max(peak["pss_mib"], pss / 1024)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    done.set()
    sampler.join()
    log.close()
    if rc != 0:
        raise SystemExit(f"latentforge run failed (rc {rc}); see {workdir / 'run.log'}:\n" + (workdir / "run.log").read_text()[-3000:])
    summary = json.loads((workdir / "out" / "run.json").read_text())
    return {"clips": clips, "wall_s": time.perf_counter() - t0, "latents": summary["counts"]["latents_written"], **peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--scale", action="store_true", help="also 10 x --clips, and the ratio of the peaks")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to run (default: this one)")
    args = parser.parse_args()
    busy0, steal0, t0 = machine_busy_seconds(), steal_seconds(), time.time()
    results = []
    for clips in [args.clips] + ([args.clips * 10] if args.scale else []):
        with tempfile.TemporaryDirectory(prefix="lf-bench-memory-") as tmp:
            r = run_once(args.repo.resolve(), clips, Path(tmp))
        results.append(r)
        print(
            f"{clips:5d} clips: wall {r['wall_s']:.1f} s, peak summed RSS {r['rss_mib']:.0f} MiB over {r['processes']} processes "
            f"({r['torch_processes']} with torch mapped), peak summed PSS {r['pss_mib']:.0f} MiB, latents {r['latents']}",
            flush=True,
        )
    if len(results) == 2:
        a, b = results
        print(f"ratio {b['clips']}/{a['clips']} clips: summed RSS {b['rss_mib'] / a['rss_mib']:.2f}x, summed PSS {b['pss_mib'] / a['pss_mib']:.2f}x")
    print(f"machine: {os.cpu_count()} CPUs; all processes used {machine_busy_seconds() - busy0:.0f} CPU s in {time.time() - t0:.0f} s "
          f"(this benchmark included); steal {steal_seconds() - steal0:.1f} s")


if __name__ == "__main__":
    main()
