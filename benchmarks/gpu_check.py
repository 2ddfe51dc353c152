"""The VAE memory rule and the encoders on a real GPU, with full-size models (issue 12).

On a CUDA machine this builds the published VAE architectures (FULL_CONFIGS of
vae_memory_calibrate.py) and the full-size text encoders from their configs with random weights:
nothing is downloaded, and the compute is the same as with real weights. For each family it:

- encodes the largest bucket in the table below through the pipeline's own encode_video actor
  (VideoEncodeStage: dtypes, memory plan, use_plan, micro-batches, out-of-memory fallback), with
  only the weights' loading replaced by the random build;
- prints the plan (tiling / frame-wise / micro-batch), the rule's estimated activation bytes
  against torch.cuda.max_memory_allocated (and max_memory_reserved), clips/s, and the GPU's
  busy share during the timed loop (NVML utilisation sampled every 0.2 s);
- encodes one 768x512x33 clip with each memory switch (tiling; frame-wise where the class has
  it) off and on and prints the latents' relative L2 distance (random weights: indicative only,
  trained weights give other figures; exactly 0 means the switch does nothing).

An out-of-memory error is a finding (the rule's estimate was too low for that family: raise its
BYTES_PER_VOXEL), reported and not raised. Then the text encoders (UMT5-XXL, T5-v1.1-XXL,
Gemma 3 12B's text tower) encode 16 prompts of their family's max_sequence_length, and
finally `latentforge run examples/tiny.yaml --set ray.use_gpus=true` runs as a subprocess while
the GPU's busy share is sampled (tiny models: a figure of how well the CPU side feeds a GPU, not
of full-size throughput). Nothing here asserts. Without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py                            # everything (its duration on a GPU is not measured yet)
    python benchmarks/gpu_check.py --families wan2.1,ltx2 --skip-text --skip-pipeline
    python benchmarks/gpu_check.py --json gpu_check.json --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, replace

import numpy as np
import torch

from _machine import REPO
from vae_memory_calibrate import FULL_CONFIGS

# The largest bucket checked per preset (W, H, F). Sources: docs/models.md, "VAE memory" table
# (Wan 2.1, LTX-Video, LTX-2, CogVideoX, HunyuanVideo: the buckets the rule's figures are
# documented for); Wan 2.2: TI2V-5B's published 720p generation size (1280x704, 121 frames),
# not in that table. HunyuanVideo's own 720p size is 1280x720x129: pass --bucket for it.
BUCKETS = {
    "wan2.1": (832, 480, 81),
    "wan2.2": (1280, 704, 121),
    "ltx-video": (768, 512, 121),
    "ltx2": (768, 512, 121),
    "cogvideox": (720, 480, 49),
    "hunyuanvideo": (960, 544, 129),
}
SMALL = (768, 512, 33)  # switches on vs off: wider than every class's tile, F > 16 frames, F % 8 == 1
# Full-size text encoders (bf16, as the pipeline runs them on a GPU): (transformers model class,
# config class, config, tokens = the largest max_sequence_length of the presets using it, presets).
TEXT_ENCODERS = {
    # google/umt5-xxl's public config.json (Wan 2.1 / 2.2's text_encoder).
    "umt5-xxl": ("UMT5EncoderModel", "UMT5Config", dict(
        d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=256384,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False), 512, ("wan2.1", "wan2.2")),
    # google/t5-v1_1-xxl's public config.json (LTX-Video: 128 tokens; CogVideoX: 226).
    "t5-v1_1-xxl": ("T5EncoderModel", "T5Config", dict(
        d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False), 226, ("ltx-video", "cogvideox")),
    # google/gemma-3-12b's text_config (what LTX-2's Gemma3ForConditionalGeneration runs for a
    # prompt). Checked by parameter count: 11,766,034,176, which is KerasHub's published
    # gemma3_12b_text count (11,765,788,416) plus HF's 64 extra vocabulary rows x 3840.
    "gemma3-12b-text": ("Gemma3TextModel", "Gemma3TextConfig", dict(
        vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=1024), 1024, ("ltx2",)),
}
PROMPTS = 16
GIB = 2**30
DEVICE = "cuda"  # one place, so that a CPU smoke test can swap it


class BusySampler:
    """Mean GPU utilisation (device 0) sampled every `period` s in a thread: torch.cuda.utilization
    (pynvml), else nvidia-smi; None when neither works. The share of time a kernel ran, by NVML."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples, self.stop_event, self.thread = period, [], threading.Event(), None
        self.read = self._pick()

    @staticmethod
    def _smi() -> float:
        out = subprocess.run(["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True)
        return float(out.stdout.strip().splitlines()[0])

    def _pick(self):
        for read in (lambda: float(torch.cuda.utilization(0)), self._smi):
            try:
                read()
                return read
            except Exception:  # noqa: BLE001 - pynvml or nvidia-smi missing: try the next
                continue
        return None

    def _loop(self) -> None:
        while not self.stop_event.wait(self.period):
            try:
                self.samples.append(self.read())
            except Exception:  # noqa: BLE001 - a failed sample is skipped
                pass

    def start(self) -> "BusySampler":
        self.samples, self.stop_event = [], threading.Event()
        if self.read is not None:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def stop(self) -> float | None:
        """Mean busy share in [0, 1] over the samples since start, or None."""
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join()
            if not self.samples:  # a loop shorter than one period: NVML's last window
                self.samples.append(self.read())
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def free_gpu() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def random_frames(rng: np.random.Generator, n: int, bucket: tuple[int, int, int]) -> np.ndarray:
    w, h, f = bucket
    return rng.integers(0, 256, size=(n, f, h, w, 3), dtype=np.uint8)  # [B, F, H, W, 3]


def build_stage(name: str, batch_size: int):
    """The pipeline's encode_video actor for preset `name`, its load_vae replaced by the
    published architecture with random weights built on the GPU (VideoEncodeStage.__init__
    imports load_vae from latentforge.models when it runs, so patching the module attribute
    is enough; everything else is the actor's own code)."""
    import diffusers

    import latentforge.models as models
    from latentforge.operators.vae import VideoEncodeStage

    cls_name, config = FULL_CONFIGS[name]

    def random_vae(preset, device="cpu", dtype=torch.float32):
        torch.manual_seed(0)
        with torch.device(device):
            vae = getattr(diffusers, cls_name)(**(config or {}))
        vae = vae.to(device=device, dtype=dtype).eval()  # device too: any buffer made on the CPU explicitly
        vae.requires_grad_(False)
        return vae

    real, models.load_vae = models.load_vae, random_vae
    try:
        return VideoEncodeStage(name, device=DEVICE, micro_batch=batch_size)
    finally:
        models.load_vae = real


def vae_check(name: str, bucket: tuple[int, int, int], repeats: int, batch_size: int, sampler: BusySampler,
              memory_gib: float | None = None) -> dict:
    from latentforge.operators.vae_memory import USABLE_SHARE
    from latentforge.rows import object_column

    rng = np.random.default_rng(0)
    stage = build_stage(name, batch_size)
    if memory_gib:  # plan as the actor would on a GPU of this size
        stage.memory_bytes = int(memory_gib * GIB)
    w, h, f = bucket
    plan = stage.memory_plan((f, h, w, 3))
    memory = stage.memory_bytes or 0  # None only off a GPU (the CPU smoke test of this script)
    budget = int(max(0, memory - stage.weights_bytes) * USABLE_SHARE)
    res = {"bucket": f"{w}x{h}x{f}", "compute_dtype": stage.compute_name, "weights_bytes": stage.weights_bytes,
           "planned_for_memory_bytes": stage.memory_bytes, "budget_bytes": budget,
           "plan": asdict(plan), "estimated_call_bytes": plan.clip_bytes * plan.micro_batch}
    print(f"{name:<13} {w}x{h}x{f} {stage.compute_name}: weights {stage.weights_bytes / GIB:.2f} GiB; plan tiling={plan.tiling} "
          f"framewise={plan.framewise} micro_batch={plan.micro_batch} fits={plan.fits}; estimated "
          f"{plan.clip_bytes / GIB:.2f} GiB a clip, {res['estimated_call_bytes'] / GIB:.2f} GiB a call; budget {budget / GIB:.1f} GiB "
          f"of {memory / GIB:.0f} GiB", flush=True)
    try:
        frames = random_frames(rng, plan.micro_batch, bucket)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        stage.use_plan(plan)
        stage.encode(frames)  # warm-up, raw: an out-of-memory error here is the rule's miss
        torch.cuda.synchronize()
        batch = {"sample_id": np.arange(plan.micro_batch), "frames": object_column(list(frames))}
        sampler.start()
        t0 = time.perf_counter()
        errors = []
        for _ in range(repeats):  # the actor's whole call: plan, micro-batches, to_columns
            out = stage(dict(batch))  # the actor pops "frames"
            errors += [e for e in out.get("error", []) if e]
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        busy = sampler.stop()
        peak, reserved = torch.cuda.max_memory_allocated() - base, torch.cuda.max_memory_reserved()
        res.update(measured_peak_bytes=peak, max_reserved_bytes=reserved, peak_over_estimate=round(peak / max(res["estimated_call_bytes"], 1), 3),
                   clips_per_s=round(repeats * plan.micro_batch / seconds, 3), gpu_busy_share=busy, actor_errors=errors[:3],
                   plan_after=asdict(stage.plans[(f, h, w, 3)]), peak_within_budget=peak <= budget)
        print(f"{'':<13} measured peak {peak / GIB:.2f} GiB above the weights ({res['peak_over_estimate']}x the estimate, "
              f"{'within' if peak <= budget else 'ABOVE'} the budget), "
              f"reserved {reserved / GIB:.2f} GiB; {res['clips_per_s']} clips/s; GPU busy {busy}"
              + (f"; actor errors: {errors[:1]}" if errors else ""), flush=True)
    except torch.cuda.OutOfMemoryError as e:
        sampler.stop()
        res["oom"] = str(e).splitlines()[0][:300]
        print(f"{'':<13} OUT OF MEMORY with the plan above: the estimate is too low for {name} (raise "
              f"BYTES_PER_VOXEL['{stage.preset.family}']), or a switch it relies on did nothing (see the next line): {res['oom']}", flush=True)
    frames = batch = out = None
    free_gpu()
    res["switch_effects"] = switch_effects(stage, rng)
    del stage
    free_gpu()
    return res


def switch_effects(stage, rng: np.random.Generator) -> dict:
    """Relative L2 distance of one SMALL clip's latent with each memory switch on vs off: tiling
    (frame-wise as planned) and, where the class has it, frame-wise encoding (untiled). A
    distance of exactly 0 means the switch did not change the encode at all: with diffusers
    0.42.1 the LTX classes' _encode reads use_framewise_decoding, not use_framewise_encoding."""
    from latentforge.operators.vae_memory import has_framewise

    w, h, f = SMALL
    plan = stage.memory_plan((f, h, w, 3))
    frames = random_frames(rng, 1, SMALL)
    pairs = {"tiling": (replace(plan, tiling=False), replace(plan, tiling=True))}
    if has_framewise(stage.preset.family):
        pairs["framewise"] = (replace(plan, tiling=False, framewise=False), replace(plan, tiling=False, framewise=True))
    out: dict = {"bucket": f"{w}x{h}x{f}"}
    for switch, (off, on) in pairs.items():
        try:
            latents = []
            for p in (off, on):
                stage.use_plan(p)
                latents.append(stage.encode(frames)[0].float())
            rel = float((latents[1] - latents[0]).norm() / latents[0].norm().clamp_min(1e-12))
            out[switch] = {"relative_l2": round(rel, 4), "finite": bool(all(torch.isfinite(x).all() for x in latents))}
        except torch.cuda.OutOfMemoryError as e:
            out[switch] = {"oom": str(e).splitlines()[0][:300]}
        latents = None
        free_gpu()
    stage.use_plan(plan)
    print(f"{'':<13} switch on vs off at {w}x{h}x{f} (random weights, indicative only; 0.0 = no effect): "
          f"{ {k: v for k, v in out.items() if k != 'bucket'} }", flush=True)
    return out


def text_check(name: str, repeats: int) -> dict:
    import transformers

    cls_name, cfg_name, config, tokens, presets = TEXT_ENCODERS[name]
    cls, cfg = getattr(transformers, cls_name), getattr(transformers, cfg_name)(**config)
    with torch.device("meta"):
        params = sum(p.numel() for p in cls._from_config(cfg).parameters())
    free_bytes = torch.cuda.mem_get_info()[0]
    res = {"presets": list(presets), "tokens": tokens, "prompts": PROMPTS, "params": params}
    if params * 2 > 0.9 * free_bytes:
        print(f"{name:<16} skipped: {params * 2 / GIB:.1f} GiB of bf16 weights, {free_bytes / GIB:.1f} GiB free", flush=True)
        return {**res, "skipped": "weights do not fit"}
    torch.manual_seed(0)
    try:
        with torch.device(DEVICE):
            model = cls._from_config(cfg, dtype=torch.bfloat16)
        model = model.to(DEVICE).eval()
        model.requires_grad_(False)
        base = torch.cuda.memory_allocated()  # the weights (the VAEs before were freed)
        torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, cfg.vocab_size, (PROMPTS, tokens), device=DEVICE)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
        if name.startswith("gemma"):  # LTX-2 stacks every layer's hidden state
            kwargs.update(output_hidden_states=True, use_cache=False)
        with torch.inference_mode():
            model(**kwargs)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                out = model(**kwargs)
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        finite = bool(torch.isfinite(out.last_hidden_state).all())
        peak = torch.cuda.max_memory_allocated() - base
        res.update(weights_bytes=sum(p.numel() * p.element_size() for p in model.parameters()), measured_peak_bytes=peak, max_reserved_bytes=torch.cuda.max_memory_reserved(),
                   prompts_per_s=round(repeats * PROMPTS / seconds, 2), finite=finite)
        print(f"{name:<16} {params / 1e9:.2f} B params, {PROMPTS} prompts x {tokens} tokens: peak {peak / GIB:.2f} GiB above "
              f"the weights, {res['prompts_per_s']} prompts/s, finite={finite}", flush=True)
    except torch.cuda.OutOfMemoryError as e:
        res["oom"] = str(e).splitlines()[0][:300]
        print(f"{name:<16} OUT OF MEMORY: {res['oom']}", flush=True)
    model = out = ids = kwargs = None
    free_gpu()
    return res


def pipeline_check(sampler: BusySampler, timeout: int) -> dict:
    """`latentforge run examples/tiny.yaml` on the GPU as a subprocess; the busy share is the
    GPU's over the run's wall time (Ray start-up included), with the tiny twin built beforehand."""
    from latentforge.models import model_root

    model_root("tiny-wan2.1")  # build the twin now, so the run does not pay for it
    out_dir = tempfile.mkdtemp(prefix="gpu_check_")
    cmd = [sys.executable, "-m", "latentforge.cli", "run", "examples/tiny.yaml", "--set", "ray.use_gpus=true",
           "--set", f"output={out_dir}/demo"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    sampler.start()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        rc, tail = None, [f"timed out after {timeout} s"]
    res = {"command": " ".join(cmd), "returncode": rc, "wall_s": round(time.perf_counter() - t0, 1), "gpu_busy_share": sampler.stop(),
           "tail": tail}
    try:  # what the run recorded: whether its actors had GPUs, its phases' and stages' seconds
        with open(os.path.join(out_dir, "demo", "run.json")) as fh:
            run = json.load(fh)
        res.update({k: run.get(k) for k in ("used_gpus", "wall_seconds", "phase_wall_seconds", "stage_seconds")},
                   latents_written=run.get("counts", {}).get("latents_written"))
    except (OSError, ValueError):
        pass
    shutil.rmtree(out_dir, ignore_errors=True)
    print(f"pipeline (tiny-wan2.1, examples/tiny.yaml, use_gpus): rc {rc}, {res['wall_s']} s, GPU busy share {res['gpu_busy_share']}; "
          f"run.json: used_gpus {res.get('used_gpus')}, phases {res.get('phase_wall_seconds')}, {res.get('latents_written')} latents"
          + ("" if rc == 0 else f"; last lines: {tail}"), flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=",".join(BUCKETS), help=f"presets to check (default: {','.join(BUCKETS)})")
    ap.add_argument("--bucket", action="append", default=[], metavar="PRESET=WxHxF", help="replace a preset's bucket (repeatable)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per model after one warm-up (default 3)")
    ap.add_argument("--batch-size", type=int, default=4, help="encode_video.batch_size: the micro-batch's ceiling (default 4)")
    ap.add_argument("--memory-gib", type=float, help="plan as if the GPU had this much memory (e.g. 24 or 80): the rule's "
                    "switches on a larger GPU; the measured peak then says whether the plan fits that budget")
    ap.add_argument("--skip-text", action="store_true", help="no text encoders")
    ap.add_argument("--skip-pipeline", action="store_true", help="no tiny pipeline run")
    ap.add_argument("--pipeline-timeout", type=int, default=600)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    args.repeats = max(1, args.repeats)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in BUCKETS]
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; allowed: {', '.join(BUCKETS)}")
    buckets = dict(BUCKETS)
    for item in args.bucket:
        preset, _, size = item.partition("=")
        try:
            w, h, f = (int(v) for v in size.lower().split("x"))
            assert preset in BUCKETS
        except (ValueError, AssertionError):
            ap.error(f"--bucket {item!r}: expected PRESET=WxHxF, e.g. hunyuanvideo=1280x720x129")
        buckets[preset] = (w, h, f)
    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA GPU (none found): it would measure, per VAE family, the memory rule's plan, estimated vs "
              "peak GPU memory, clips/s and GPU busy share, plus the text encoders' peak memory and prompts/s; nothing run.")
        return 0
    props = torch.cuda.get_device_properties(0)
    summary: dict = {"gpu": props.name, "total_memory_bytes": props.total_memory, "torch": torch.__version__, "vae": {}, "text": {}}
    print(f"GPU 0: {props.name}, {props.total_memory / GIB:.1f} GiB; torch {torch.__version__}", flush=True)
    sampler = BusySampler()
    if sampler.read is None:
        print("GPU busy share unavailable: neither pynvml (torch.cuda.utilization) nor nvidia-smi works", flush=True)
    def save() -> None:  # after every model, so a later failure keeps what was measured
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(summary, fh, indent=2, default=str)

    def guarded(section: str, name: str, check, *a) -> None:
        try:
            summary[section][name] = check(name, *a)
        except torch.cuda.OutOfMemoryError as e:  # building the weights, or outside the timed calls
            summary[section][name] = {"oom": str(e).splitlines()[0][:300]}
            print(f"{name:<13} OUT OF MEMORY outside the timed calls: {summary[section][name]['oom']}", flush=True)
        except Exception as e:  # noqa: BLE001 - one model's failure is a finding; the others still run
            summary[section][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
            traceback.print_exc()
        free_gpu()
        save()

    for name in families:
        guarded("vae", name, vae_check, buckets[name], args.repeats, args.batch_size, sampler, args.memory_gib)
    if not args.skip_text:
        for name, spec in TEXT_ENCODERS.items():
            if any(p in families for p in spec[4]):
                guarded("text", name, text_check, args.repeats)
    if not args.skip_pipeline:
        try:
            summary["pipeline"] = pipeline_check(sampler, args.pipeline_timeout)
        except Exception as e:  # noqa: BLE001 - reported like a model's failure
            summary["pipeline"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            traceback.print_exc()
        save()
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
