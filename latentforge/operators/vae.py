"""encode_video: prepared frames -> VAE latent mean (and logvar on request), one actor per GPU.

The VAE stays resident in the actor; a batch is split into groups of equal shape so that
only same-bucket clips share a VAE call, and frames leave the row once encoded.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from latentforge.formats.tensors import DTYPES, to_columns
from latentforge.operators.devices import default_device, set_cpu_threads
from latentforge.operators.audio_vae import AudioLatentEncoder, add_audio_latents
from latentforge.operators.base import MODEL_RESOURCES
from latentforge.operators.reference_encode import add_references
from latentforge.operators.time_limit import SampleTimeout, end_stuck_process, within
from latentforge.operators.vae_memory import MemoryPlan, plan_memory
from latentforge.rows import has_value, object_column

RESOURCES = MODEL_RESOURCES
STAGE = "encode_video"


def frames_to_input(
    frames: np.ndarray, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """uint8 [B, F, H, W, 3] -> float [B, 3, F, H, W] in [-1, 1], the layout diffusers VAEs take.

    With a `device`, the uint8 frames move there first and are scaled there: a GPU receives a
    quarter of the bytes of float32 frames. The scaling is the same float32 arithmetic on any
    device, and the cast to `dtype` comes last, so on the CPU the result is bit-identical to
    `frames_to_input(frames).to(dtype)`.
    """
    x = torch.from_numpy(np.ascontiguousarray(frames))
    if device is not None:
        x = x.to(device)  # uint8; a no-op on the CPU
    x = x.permute(0, 4, 1, 2, 3).float().div_(127.5).sub_(1.0)
    return x if dtype is None else x.to(dtype)


class VideoEncodeStage:
    """Ray Data map_batches actor: `frames` -> `latent_*` (and `logvar_*`) columns."""

    resources = RESOURCES

    def __init__(
        self,
        model: str,
        model_path: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        store_logvar: bool = False,
        micro_batch: int = 4,
        cpu_actors_per_node: int | None = None,
        compute_dtype: str | None = None,
        call_time_limit_s: float | None = None,
        first_frame_latent: bool = False,
        tiling: str = "auto",
        framewise: str = "auto",
        image_encoder: str | None = None,
        with_audio: bool = False,
    ):
        """`dtype` is what latents are stored in, `compute_dtype` what the VAE runs in (each None:
        the device's default, `models.video_dtypes`). `tiling` / `framewise`: "auto" lets the
        memory rule decide per bucket from the GPU's memory (vae_memory.py). `cpu_actors_per_node`:
        on the CPU, torch gets the node's CPUs divided by this as threads (the pipeline passes it
        on CPU-only runs); None keeps torch's thread count. `image_encoder`: where the I2V CLIP
        image encoder loads from; with it, `clip_feature_*` columns too (image_features.py)."""
        from latentforge.models import get_preset, load_vae, video_dtypes

        self.device = device or default_device()
        self.preset = get_preset(model, model_path)
        on_gpu = torch.device(self.device).type == "cuda"
        self.compute_name, self.dtype_name = video_dtypes(self.preset.family, compute_dtype, dtype, on_gpu)
        self.dtype = DTYPES[self.compute_name]
        self.num_threads = set_cpu_threads(self.device, cpu_actors_per_node)
        self.vae = load_vae(self.preset, device=self.device, dtype=self.dtype)
        self.audio = AudioLatentEncoder(self.preset, self.device, self.dtype) if with_audio else None  # LTX-2 audio latents
        self.micro_batch = micro_batch
        self.tiling, self.framewise = tiling, framewise
        self.call_time_limit_s, self.stuck = call_time_limit_s, False
        self.first_frame_latent = first_frame_latent  # the I2V condition (encode_first_frame)
        self.stored = ["latent"] + (["logvar"] if store_logvar else []) + (["first_frame_latent"] if first_frame_latent else [])
        self.image_features = None
        if image_encoder:  # I2V: CLIP features of the first frame (WanImageToVideoPipeline.encode_image)
            from latentforge.operators.image_features import ImageFeatures

            self.image_features, self.stored = ImageFeatures(image_encoder, self.device), self.stored + ["clip_feature"]
        self.memory_bytes = torch.cuda.get_device_properties(torch.device(self.device)).total_memory if on_gpu else None
        self.weights_bytes = sum(p.numel() * p.element_size() for p in self.vae.parameters())
        self.weights_bytes += self.image_features.weights_bytes if self.image_features else 0  # resident beside the VAE
        self.plans: dict[tuple[int, ...], MemoryPlan] = {}
        patch = getattr(self.vae.config, "patch_size", None) if self.preset.family == "wan" else None
        self.tile_scale = int(patch or 1)  # Wan 2.2 tiles after its 2x2 patchify (vae_memory.TILE)

    def memory_plan(self, shape: tuple[int, ...]) -> MemoryPlan:
        """The memory switches and micro-batch for frames of `shape` ([F, H, W, 3]), once per shape."""
        if shape not in self.plans:
            f, h, w = shape[:3]
            self.plans[shape] = plan_memory(
                self.preset.family, f, h, w, self.compute_name, self.memory_bytes, self.weights_bytes,
                self.micro_batch, self.tiling, self.framewise, self.tile_scale,
            )
        return self.plans[shape]

    def use_plan(self, plan: MemoryPlan) -> None:
        """Set the VAE's own switches as the plan says (the classes keep them as attributes)."""
        if hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling() if plan.tiling else self.vae.disable_tiling()
        if hasattr(self.vae, "use_framewise_encoding"):
            self.vae.use_framewise_encoding = plan.framewise
        if self.preset.family in ("ltx-video", "ltx2"):
            # diffusers' LTX VAEs start frame-wise (temporal tiled) *encoding* on this flag, not on
            # use_framewise_encoding (diffusers 0.42: AutoencoderKLLTXVideo._encode); we never decode
            self.vae.use_framewise_decoding = plan.framewise

    @torch.no_grad()
    def encode(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Same-shape uint8 frames [B, F, H, W, 3] -> (mean, logvar), each [B, C, f, h, w]."""
        x = frames_to_input(frames, self.device, self.dtype)
        dist = self.vae.encode(x).latent_dist
        return dist.mean, dist.logvar

    @torch.no_grad()
    def encode_first_frame(self, frames: np.ndarray) -> torch.Tensor:
        """I2V condition of same-shape clips [B, F, H, W, 3]: the first frame followed by F - 1
        zero frames (0 in the VAE's [-1, 1] input: mid-grey) through the VAE, its latent mean,
        [B, C, f, h, w]. The diffusers Wan image-to-video pipeline builds its condition so
        (`video_condition`, encoded with sample_mode="argmax", the mean)."""
        x = frames_to_input(frames[:, :1], self.device, self.dtype)
        condition = torch.cat([x, x.new_zeros(x.shape[0], x.shape[1], frames.shape[1] - 1, *x.shape[3:])], dim=2)
        return self.vae.encode(condition).latent_dist.mean

    def target_tensors(self, stack: np.ndarray) -> dict[str, torch.Tensor]:
        """What is stored of same-shape clips [B, F, H, W, 3], each [B, ...]: the latent mean, and
        as configured its logvar, the first-frame latent and the CLIP features."""
        mean, logvar = within(self.call_time_limit_s, self.encode, stack)
        out = {"latent": mean, **({"logvar": logvar} if "logvar" in self.stored else {})}
        if self.first_frame_latent:
            out["first_frame_latent"] = within(self.call_time_limit_s, self.encode_first_frame, stack)
        if self.image_features:
            out["clip_feature"] = within(self.call_time_limit_s, self.image_features, stack)
        return out

    def encode_rows(self, frames_col: Any, rows: list[int], tensors_of: Any = None, label: str = "latent") -> dict[int, Any]:
        """Row -> {name: tensor} (`tensors_of`, default `target_tensors`) for same-shape `rows`, or
        the exception that row alone raised.

        A failing call is split until the row at fault is found, so one bad sample never costs
        the others their latents; a row that runs out of memory alone is tried once more with
        the VAE's tiling switched on, where the class has it. A tensor with NaN or inf is an
        error, never stored. A call that does not return within `call_time_limit_s` makes its
        rows errors and the actor's next batch restarts it (`__call__`)."""
        tensors_of = tensors_of or self.target_tensors
        try:
            batched = tensors_of(np.stack([frames_col[i] for i in rows]))
        except SampleTimeout as e:  # a hung call is not split: each half would hang again
            self.stuck = True
            return dict.fromkeys(rows, TimeoutError(f"the VAE call did not return ({e}; encode_video.call_time_limit_s)"))
        except Exception as e:  # noqa: BLE001 - isolated below; one bad row never kills the batch
            if len(rows) > 1:
                half = len(rows) // 2
                return {**self.encode_rows(frames_col, rows[:half], tensors_of, label), **self.encode_rows(frames_col, rows[half:], tensors_of, label)}
            if is_out_of_memory(e) and hasattr(self.vae, "enable_tiling") and not getattr(self.vae, "use_tiling", False):
                self.vae.enable_tiling()  # and so for the rest of this shape's clips, one at a time
                shape = tuple(frames_col[rows[0]].shape)
                self.plans[shape] = replace(self.memory_plan(shape), tiling=True, micro_batch=1)
                return self.encode_rows(frames_col, rows, tensors_of, label)
            return {rows[0]: e}
        out: dict[int, Any] = {}
        for j, i in enumerate(rows):
            tensors = {name: t[j] for name, t in batched.items()}
            finite = all(bool(torch.isfinite(t).all()) for t in tensors.values())
            out[i] = tensors if finite else FloatingPointError(f"the {label} has NaN or inf values")
        return out

    def encode_column(
        self, frames_col: Any, rows: list[int], names: list[str], tensors_of: Any = None, label: str = "latent", what: str = "vae encode failed"
    ) -> tuple[dict[str, list[Any]], dict[int, str]]:
        """Encode `rows` of a frames column: same-shape rows share calls, in micro-batches of the
        shape's memory plan. Returns the `<name>_*` columns (None where not encoded) and the rows
        that failed, with the reason (`what (<error>)`)."""
        n = len(frames_col)
        columns: dict[str, list[Any]] = {f"{name}_{part}": [None] * n for name in names for part in ("bytes", "shape", "dtype")}
        failed: dict[int, str] = {}
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for i in rows:
            groups[tuple(np.shape(frames_col[i]))].append(i)
        for shape, same in groups.items():
            plan = self.memory_plan(shape)
            self.use_plan(plan)
            for k in range(0, len(same), plan.micro_batch):
                for i, result in self.encode_rows(frames_col, same[k : k + plan.micro_batch], tensors_of, label).items():
                    if isinstance(result, BaseException):
                        failed[i] = f"{what} ({type(result).__name__}: {str(result).strip()[:300]})"
                        continue
                    for name in names:
                        for key, value in to_columns(name, result[name], self.dtype_name).items():
                            columns[key][i] = value
        return columns, failed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.stuck:
            end_stuck_process()  # a call hung in the model: a fresh actor takes this batch
        t0 = time.perf_counter()
        n = len(batch["sample_id"])
        frames_col = batch.pop("frames")
        refs = batch.pop("reference_frames", None)  # IC-LoRA references (operators/reference.py)
        audio_col = batch.pop("audio", None)  # the span's samples (encode_video.with_audio)
        errors = batch.get("error")
        # failed rows and rows already in the output (no frames) pass through
        todo = [i for i in range(n) if not (errors is not None and has_value(errors[i])) and frames_col[i] is not None and frames_col[i].size > 0]
        results, failed = self.encode_column(frames_col, todo, self.stored)
        if refs is not None:  # rows without target frames have no reference to encode either
            add_references(self, refs, results, failed, set(range(n)) - set(todo))
        if self.audio is not None:
            encoded = [i for i in todo if i not in failed]
            add_audio_latents(self.audio, audio_col, encoded, n, results, failed, self.dtype_name)
        out = dict(batch)
        for key, values in results.items():
            out[key] = object_column(values)
        if failed:
            stages = batch.get("error_stage")
            out["error"] = object_column([failed.get(i, errors[i] if errors is not None else None) for i in range(n)])
            out["error_stage"] = object_column([STAGE if i in failed else (stages[i] if stages is not None else None) for i in range(n)])
        elapsed = (time.perf_counter() - t0) / max(n, 1)
        out["_seconds_encode_video"] = np.full(n, elapsed)
        return out


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()
