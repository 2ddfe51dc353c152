"""Per-row overhead and driver memory against the manifest's length (issue 10).

For each --rows N an LTX-2 style dataset.jsonl of N rows is generated whose media files do not
exist (every row becomes a probe error row: this measures what each row costs the pipeline, not
decoding), and `latentforge run` (pipeline precompute, the tiny-wan2.1 preset, text pass on) runs
on it in a fresh process, as a user runs it. Measured per size:

- driver peak RSS: VmHWM of the `latentforge run` process, polled every 0.1 s (Ray's own
  processes are not in it; the driver is what must not grow with the manifest);
- first output: seconds from the command's start to the first shard file under the output
  (the first error shard): includes Ray's start, reading and planning;
- first task: run.json's `first_task_seconds` where the run reports it (seconds from the run's
  start to the first manifest read task);
- rows/s: N / the command's wall time.

The ratio lines compare the largest size against the smallest (memory: want about 1.0; first
output: want about 1.0; rows/s: want about 1.0 or above). --repo runs another checkout (e.g. a
`git worktree` of an older commit) for a before/after figure in the same session. Nothing here
asserts on time. The last line says how busy the machine was meanwhile.

    python benchmarks/bench_manifest_scale.py                       # 10^4 and 10^5 rows
    python benchmarks/bench_manifest_scale.py --rows 100000,1000000 # the issue's sizes (long)
    python benchmarks/bench_manifest_scale.py --repo /tmp/before    # an older checkout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import REPO, machine_busy_seconds, steal_seconds


def write_manifest(path: Path, rows: int) -> None:
    captions = [f"Caption number {i} of a clip that is not there." for i in range(97)]
    with open(path, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"media_path": f"missing/clip_{i:08d}.mp4", "caption": captions[i % 97]}) + "\n")


def peak_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def first_shard(output: Path) -> bool:
    errors = output / "errors"
    return errors.is_dir() and any(p.suffix == ".parquet" for p in errors.iterdir())


def run_once(repo: Path, rows: int, workdir: Path, extra: list[str]) -> dict:
    data = workdir / f"data_{rows}"
    data.mkdir()
    write_manifest(data / "dataset.jsonl", rows)
    output = workdir / f"out_{rows}"
    config = workdir / f"config_{rows}.yaml"
    config.write_text(
        f"input: {data}\noutput: {output}\nmodel: tiny-wan2.1\nbuckets: 64x64x9\npipeline: precompute\n"
    )
    env = dict(os.environ, PYTHONPATH=str(repo), RAY_DEDUP_LOGS="0")
    command = [sys.executable, "-m", "latentforge.cli", "run", str(config), *extra]
    log_path = workdir / f"run_{rows}.log"  # a file, not a pipe: a full pipe would stall the run's logging
    t0 = time.perf_counter()
    peak = 0
    first_output = None
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, cwd=repo, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            kib = peak_kib(proc.pid)
            if kib:
                peak = max(peak, kib)
            if first_output is None and first_shard(output):
                first_output = time.perf_counter() - t0
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    log = log_path.read_text()
    if proc.returncode != 0:
        sys.exit(f"run of {rows} rows failed ({proc.returncode}):\n{log[-3000:]}")
    summary = json.loads((output / "run.json").read_text())
    counts = summary["counts"]
    return {
        "rows": rows,
        "wall_s": wall,
        "peak_mib": peak / 1024,
        "first_output_s": first_output,
        "first_task_s": summary.get("first_task_seconds"),
        "rows_per_s": rows / wall,
        "input_rows": counts.get("input_rows"),
        "errors": counts.get("errors"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,100000", help="comma-separated manifest lengths")
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout to run (default: this one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to latentforge run")
    args = parser.parse_args()
    sizes = [int(s) for s in args.rows.split(",")]
    extra = [a for kv in args.set for a in ("--set", kv)]
    busy0, steal0, t0 = machine_busy_seconds(), steal_seconds(), time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="lf-bench-manifest-") as tmp:
        for rows in sizes:
            r = run_once(args.repo.resolve(), rows, Path(tmp), extra)
            results.append(r)
            first_task = f"{r['first_task_s']:.2f} s" if r["first_task_s"] is not None else "not reported"
            first_output = f"{r['first_output_s']:.1f} s" if r["first_output_s"] is not None else "-"
            print(
                f"{rows:>9} rows: wall {r['wall_s']:.1f} s, {r['rows_per_s']:,.0f} rows/s, driver peak {r['peak_mib']:.0f} MiB, "
                f"first output {first_output}, first task {first_task} "
                f"(run.json: input_rows {r['input_rows']}, errors {r['errors']})",
                flush=True,
            )
    small, large = results[0], results[-1]
    if len(results) > 1:
        print(f"ratio {large['rows']}/{small['rows']} rows: driver peak {large['peak_mib'] / small['peak_mib']:.2f}x, "
              f"rows/s {large['rows_per_s'] / small['rows_per_s']:.2f}x", end="")
        if small["first_output_s"] and large["first_output_s"]:
            print(f", first output {large['first_output_s'] / small['first_output_s']:.2f}x", end="")
        if small["first_task_s"] and large["first_task_s"]:
            print(f", first task {large['first_task_s'] / small['first_task_s']:.2f}x", end="")
        print()
    elapsed = time.perf_counter() - t0
    other = machine_busy_seconds() - busy0
    print(f"machine: {os.cpu_count()} CPUs; all processes used {other:.0f} CPU s in {elapsed:.0f} s "
          f"(this benchmark included); steal {steal_seconds() - steal0:.1f} s")


if __name__ == "__main__":
    main()
