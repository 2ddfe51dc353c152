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


def rss_kinds_mib(proc: psutil.Process) -> str:
    """RSS split as the kernel counts it: heap and stacks (anon), mapped files (libraries: torch's
    are shared by the processes that import it) and shared memory (Ray's object store pages)."""
    kinds = {}
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    key, value = line.split(":")
                    kinds[key[3:].lower()] = int(value.split()[0]) // 1024
    except OSError:
        return ""
    return " ".join(f"{k} {v}" for k, v in kinds.items())


def maps_torch(proc: psutil.Process) -> bool:
    try:
        with open(f"/proc/{proc.pid}/maps") as f:
            return "libtorch_cpu" in f.read()
    except OSError:
        return False


def process_name(proc: psutil.Process) -> str:
    """What a process is in a Ray run: Ray's worker processes name their task or actor in argv[0]."""
    cmd = proc.cmdline()
    if not cmd:
        return proc.name()
    head = cmd[0] if not cmd[0].endswith(("python", "python3")) and "python3." not in cmd[0] else " ".join(cmd[1:3])
    return Path(head.split()[0]).name if "/" in head.split()[0] else head[:60]


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
            rows = []
            for p in tree:
                try:
                    one = p.memory_info().rss // 1024
                    name = process_name(p)
                except psutil.Error:
                    continue
                share = pss_kib(p)
                rss, pss = rss + one, pss + share
                rows.append((name, one / 1024, share / 1024, rss_kinds_mib(p)))
            if rss / 1024 > peak["rss_mib"]:
                peak["rss_mib"] = rss / 1024
                peak["processes"] = len(tree)
                peak["torch_processes"] = sum(maps_torch(p) for p in tree)
            if pss / 1024 > peak["pss_mib"]:
                peak["pss_mib"] = pss / 1024
                peak["at_pss_peak"] = sorted(rows, key=lambda r: -r[2])
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
    for r in results:
        print(f"processes at the {r['clips']}-clip PSS peak (PSS / RSS MiB, RSS split):")
        for name, rss_mib, pss_mib, kinds in r["at_pss_peak"]:
            print(f"  {pss_mib:7.0f} / {rss_mib:7.0f}  {name}  ({kinds})")
    if len(results) == 2:
        a, b = results
        print(f"ratio {b['clips']}/{a['clips']} clips: summed RSS {b['rss_mib'] / a['rss_mib']:.2f}x, summed PSS {b['pss_mib'] / a['pss_mib']:.2f}x")
    print(f"machine: {os.cpu_count()} CPUs; all processes used {machine_busy_seconds() - busy0:.0f} CPU s in {time.time() - t0:.0f} s "
          f"(this benchmark included); steal {steal_seconds() - steal0:.1f} s")


if __name__ == "__main__":
    main()
