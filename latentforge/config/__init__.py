"""Pipeline config: one YAML file validated by pydantic, every key overridable with --set a.b=c.

The top-level keys input/output/model/buckets/pipeline are the stable contract (DESIGN.md);
the per-stage sections are named after the stages they tune.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from latentforge.buckets import Bucket, BucketError, parse_buckets, validate_buckets
from latentforge.config.base import DTYPE, ConfigError, _Section
from latentforge.config.reference import ReferenceConfig, check_reference_buckets
from latentforge.config.split import SplitConfig

PIPELINES = ("split", "caption", "precompute", "all")


class ActorPool(_Section):
    """Size of an autoscaling actor pool for a model stage (ray.data.ActorPoolStrategy)."""

    min_actors: int = Field(1, ge=1)
    max_actors: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="a number, or auto: on GPU runs the pool grows with queued work up to what the cluster "
        "has or its autoscaler can add; on CPU-only runs one actor per node (docs/cluster.md)",
    )
    num_gpus: float = Field(1.0, ge=0, description="GPUs per actor when CUDA is present")
    batch_size: int = Field(4, ge=1, description="rows per actor call; same-shape rows of it share one model call")


class PrepareConfig(_Section):
    target_fps: Optional[float] = Field(None, gt=0, description="resample frames down to this rate first")
    resize_filter: Literal["area", "bilinear", "bicubic", "lanczos"] = "area"
    time_limit_s: float = Field(
        300.0, gt=0, description="per sample, probe and decode stop after this (plus time_limit_per_frame_s per frame read): an error row"
    )
    time_limit_per_frame_s: float = Field(0.5, ge=0, description="seconds added to a sample's time limit per source frame it reads")


class EncodeVideoConfig(ActorPool):
    dtype: Optional[DTYPE] = Field(None, description="latent storage dtype; default: the output's, else bfloat16 on GPU, float32 on CPU")
    compute_dtype: Optional[DTYPE] = Field(None, description="VAE compute dtype; default: the output's, else the family's on GPU (docs/models.md), float32 on CPU")
    tiling: Literal["auto", "on", "off"] = Field("auto", description="spatial tiling; auto: on for buckets that do not fit the GPU without it (docs/models.md)")
    framewise: Literal["auto", "on", "off"] = Field("auto", description="frame-wise encoding (LTX, HunyuanVideo VAEs); auto: on where needed to fit")
    store_logvar: bool = False
    first_frame_latent: bool = Field(False, description="I2V: also store the latent of the first frame followed by zeros (Wan I2V's condition)")
    i2v: bool = Field(False, description="Wan I2V conditions: first_frame_latent, and clip_feature (CLIP image features of the first frame) where the model has an image encoder (Wan 2.1)")
    image_encoder: Optional[str] = Field(None, description="i2v: folder or Hub id with image_encoder/ and image_processor/; default the model's I2V repo (docs/models.md)")
    with_audio: bool = Field(False, description="LTX-2: also store each clip's audio latent (audio_latent_*; the audio VAE of the preset repo)")
    call_time_limit_s: float = Field(
        1800.0, gt=0, description="a VAE call that has not returned after this long (a hung GPU) makes its rows errors; the actor restarts"
    )

    @field_validator("num_gpus")
    @classmethod
    def _one_gpu_at_most(cls, value: float) -> float:
        if value > 1:
            raise ValueError(
                "a VAE encode does not split over GPUs (the largest VAE is 1.2B parameters); give each actor one GPU or a "
                "fraction and let the pool grow (max_actors) instead"
            )
        return value


class EncodeTextConfig(ActorPool):
    enabled: bool = True
    dtype: Optional[DTYPE] = None
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none", description="bitsandbytes weights for large encoders (Gemma 3 12B on 24 GB cards); CUDA only; changes embeddings slightly"
    )
    call_time_limit_s: float = Field(1800.0, gt=0, description="a text encoder call that has not returned after this long makes its rows errors; the actor restarts")
    trigger_word: Optional[str] = Field(None, description="LoRA trigger word prepended to every caption")
    strip_openers: bool = Field(True, description="remove 'The video shows'-style openers")
    batch_size: int = Field(16, ge=1)
    ltx2_stacked_hidden_states: bool = Field(False, description="LTX-2: store encode_prompt's stacked Gemma hidden "
        "states (49x larger) instead of the trainer's text features, under embeddings/encoder=<name without -features>")


class CaptionConfig(ActorPool):
    """Captioning (docs/captioning.md): a VLM actor pool or an OpenAI-compatible endpoint."""

    enabled: bool = Field(False, description="caption inside `latentforge run` (pipeline: precompute); always on for pipeline: caption / all")
    backend: Literal["transformers", "openai"] = "transformers"
    task: Literal["describe", "edit"] = Field("describe", description="edit: ChronoEdit instruction from the first and last frame")
    cot: bool = Field(False, description="edit task: the expanded 80-100 word reasoning prompt instead of one sentence")
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="Hub id, a tiny twin (tiny-qwen2.5-vl, tiny-qwen3-vl, ...), or the served model name")
    model_path: Optional[str] = Field(None, description="local transformers folder instead of the Hub id")
    family: Literal["auto", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen2.5-omni"] = "auto"
    override: bool = Field(False, description="caption every row, replacing existing captions")
    fps: float = Field(2.0, gt=0, description="frames sampled per second of the clip")
    max_frames: int = Field(32, ge=1, description="at most this many frames per clip (sampled evenly when more)")
    max_pixels: int = Field(640 * 360, ge=28 * 28, description="pixel budget per frame (W*H), aspect kept")
    prompt: Literal["default", "short"] = "default"
    prompt_file: Optional[str] = Field(None, description="text file with a custom prompt; replaces `prompt`")
    max_new_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0, description="0: greedy decoding")
    dtype: Optional[DTYPE] = Field(None, description="default bfloat16 on GPU, float32 on CPU")
    use_8bit: bool = Field(False, description="bitsandbytes 8-bit weights (CUDA only)")
    use_4bit: bool = Field(False, description="bitsandbytes 4-bit NF4 weights (CUDA only)")
    attn_implementation: Optional[Literal["sdpa", "eager", "flash_attention_2"]] = None
    no_audio: bool = Field(False, description="audio-aware models (Qwen2.5-Omni): do not feed the audio track")
    base_url: Optional[str] = Field(None, description="openai backend: e.g. http://vllm:8000/v1")
    api_key_env: Optional[str] = Field(None, description="name of the environment variable holding the API key")
    concurrency: int = Field(8, ge=1, description="openai backend: requests in flight per actor")
    timeout_s: float = Field(120.0, gt=0, description="openai backend: per-request timeout")
    max_retries: int = Field(5, ge=0, description="openai backend: retries on 429, 5xx, timeouts")
    backoff_s: float = Field(1.0, ge=0, description="openai backend: first retry delay, doubled each time")
    send_video: bool = Field(False, description="openai backend: send an mp4 (video_url) instead of JPEG frames")
    manifest: Optional[str] = Field(None, description="pipeline: caption output manifest (.jsonl/.json/.csv); default <output>/captions.jsonl")
    num_cpus: Optional[float] = Field(
        None, ge=0, description="CPUs reserved per caption actor; default 1 with GPUs, 0 on CPU-only runs (the actor shares CPUs)"
    )
    batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "CaptionConfig":
        if self.use_8bit and self.use_4bit:
            raise ValueError("caption.use_8bit and caption.use_4bit are both true: choose one")
        if self.backend == "openai" and not self.base_url:
            raise ValueError("caption.base_url is required when caption.backend is 'openai' (e.g. http://localhost:8000/v1)")
        if self.prompt_file and not Path(self.prompt_file).is_file():
            raise ValueError(f"caption.prompt_file: file not found: {self.prompt_file}")
        if self.manifest and not self.manifest.lower().endswith((".jsonl", ".json", ".csv")):
            raise ValueError(f"caption.manifest: {self.manifest!r} must end with .jsonl, .json or .csv")
        return self


class DecodeConfig(_Section):
    samples_per_bucket: int = Field(0, ge=0, description="at the end of a precompute run, VAE-decode this many latents per bucket into previews/ (0: off)")


class RayConfig(_Section):
    address: Optional[str] = Field(None, description="cluster to join; default: RAY_ADDRESS, else an embedded local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs for the embedded local Ray")
    no_progress_timeout_s: float = Field(1800, gt=0, description="fail a run that makes no progress this long")
    actor_init_retries: int = Field(3, ge=0, description="retries of a model actor whose start-up fails")
    use_gpus: Optional[bool] = Field(
        None, description="model actors ask for GPUs; default: when the cluster has any (set true where GPU workers scale from zero)"
    )

    def cluster_address(self) -> str | None:
        """The cluster a run joins: `address`, else RAY_ADDRESS; None, an embedded local Ray
        (the rule `cluster.connect` applies when it starts or joins one)."""
        return self.address or os.environ.get("RAY_ADDRESS") or None


class PipelineConfig(_Section):
    input: str
    output: str
    model: str = "wan2.1"
    buckets: str = "832x480x49;480x832x49;624x624x49"
    pipeline: Literal["split", "caption", "precompute", "all"] = "precompute"
    input_format: Literal["auto", "ltx", "fastvideo", "lists", "caption_files", "chronoedit", "folder", "webdataset", "hf_folder", "parquet"] = "auto"
    input_allow_outside: bool = Field(False, description="read relative media paths that climb out of the manifest's folder (../)")
    model_path: Optional[str] = Field(None, description="local diffusers-format folder instead of the preset's Hub id")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for s3:// etc.")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    encode_video: EncodeVideoConfig = Field(default_factory=EncodeVideoConfig)
    encode_text: EncodeTextConfig = Field(default_factory=EncodeTextConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    export: list[Literal["ltx2", "fastvideo", "cogvideox", "musubi"]] = Field(
        default_factory=list, description="trainer layouts to write at the end of the run (docs/exporters.md)"
    )
    export_to: Optional[str] = Field(None, description="folder or bucket prefix for the layouts; default <output>/export/<format>")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from latentforge.models import PRESETS

        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; allowed: {', '.join(sorted(PRESETS))}")
        return name

    @model_validator(mode="after")
    def _no_fp16_overflow(self) -> "PipelineConfig":
        from latentforge.models import FP16_OVERFLOWS, get_preset

        encoder = FP16_OVERFLOWS.get(get_preset(self.model, self.model_path).family)
        if self.encode_text.enabled and self.encode_text.dtype == "float16" and encoder:
            raise ValueError(
                f"encode_text.dtype: float16 overflows in {encoder} (its activations pass float16's range and become "
                "inf/NaN); use bfloat16 or float32"
            )
        return self

    @model_validator(mode="after")
    def _reference_fits(self) -> "PipelineConfig":
        from latentforge.models import get_preset

        if self.reference.kind != "none":  # an invalid bucket is reported by bucket_list
            with contextlib.suppress(BucketError):
                check_reference_buckets(parse_buckets(self.buckets), self.reference, get_preset(self.model, self.model_path))
        return self

    @model_validator(mode="after")
    def _i2v_model(self) -> "PipelineConfig":
        from latentforge.models.image_encoder import i2v_problem

        v = self.encode_video
        if problem := i2v_problem(self.model, self.model_path, v.i2v, v.image_encoder):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _audio_needs_ltx2(self) -> "PipelineConfig":
        from latentforge.models import get_preset

        family = get_preset(self.model, self.model_path).family
        if self.encode_video.with_audio and family != "ltx2":
            raise ValueError(f"encode_video.with_audio: only LTX-2 presets have an audio VAE; model {self.model!r} is {family}")
        return self

    def bucket_list(self) -> list[Bucket]:
        """Parsed buckets, checked against the preset's VAE rules."""
        from latentforge.models import get_preset

        preset = get_preset(self.model, self.model_path)
        buckets = parse_buckets(self.buckets)
        validate_buckets(buckets, preset.spatial_multiple, preset.frame_modulus, preset.frame_remainder, self.model)
        return buckets


class _YamlLoader(yaml.SafeLoader):
    """YAML 1.1 reads 00:00:05 or 1:30 as base-60 numbers (5, 90); here they stay strings, so a
    timecode such as split.skip_start: 00:01:30 means 90 seconds, not 90 frames."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        tag = super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode and ":" in str(value) and tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            return "tag:yaml.org,2002:str"
        return tag


def _flat_types(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation accepts, with Optional / Union flattened and Literal values
    replaced by their types (Literal["a", "b"] -> str)."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        return tuple(t for arg in get_args(annotation) for t in _flat_types(arg))
    if origin is Literal:
        return tuple({type(v) for v in get_args(annotation)})
    return (origin or annotation,)


def field_types(keys: list[str]) -> tuple[Any, ...] | None:
    """The types the config field at `keys` (e.g. ['split', 'clip_name']) accepts; None for a
    key the schema does not know (pydantic then reports it) or one inside a free-form mapping."""
    model: Any = PipelineConfig
    for i, key in enumerate(keys):
        field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        types = _flat_types(field.annotation)
        if i == len(keys) - 1:
            return types
        model = next((t for t in types if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return None


def _wants_text(value: Any, types: tuple[Any, ...] | None) -> bool:
    """True when YAML turned text meant for a string field into something that field does not
    take: a mapping ({stem}-{hash}), a list, a boolean (yes), a number or a date."""
    if types is None or str not in types or value is None or isinstance(value, str):
        return False
    accepted = [t for t in types if isinstance(t, type) and t is not type(None)]
    if isinstance(value, (dict, list)):
        return not any(issubclass(t, (dict, list, tuple)) or issubclass(t, BaseModel) for t in accepted)
    return not any(isinstance(value, t) for t in accepted)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=c' -> (['a', 'b'], value), the value read as YAML so numbers and booleans type.

    For a field that takes a string (split.clip_name, caption.model, buckets, input, ...), text
    that YAML would read as something else stays the text as typed: `{stem}-{hash}` is a file name
    template, not a YAML mapping, and `yes` a trigger word, not True. Anything YAML cannot read is
    a ConfigError naming the --set item, never a traceback.
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, for example encode_video.batch_size=8")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {text!r}: empty key")
    types = field_types(keys)
    if not raw.strip():
        return keys, ""
    try:
        value = yaml.load(raw, Loader=_YamlLoader)
    except yaml.YAMLError as e:
        if types is not None and str in types:
            return keys, raw.strip()
        problem = str(getattr(e, "problem", None) or e).strip()
        raise ConfigError(
            f"--set {text!r}: the value of {'.'.join(keys)} is not valid YAML ({problem}); "
            f"text with YAML syntax in it ({{ }} [ ] : #) goes in quotes: --set '{'.'.join(keys)}=\"...\"'"
        ) from None
    if _wants_text(value, types):
        value = raw.strip()
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            if node.get(k) is None:
                node[k] = {}  # a missing section, or an empty one (`caption:` in the YAML)
            node = node[k]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, **values: Any) -> PipelineConfig:
    """YAML file (optional) + keyword values + --set overrides -> a validated config."""
    data: dict[str, Any] = {}
    source = "(from arguments)"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.load(Path(path).read_text(), Loader=_YamlLoader)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must be a mapping of keys to values")
        data = loaded or {}
    data.update(values)
    data = apply_overrides(data, overrides or [])
    try:
        cfg = PipelineConfig.model_validate(data)
        cfg.bucket_list()
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    except BucketError as e:
        raise ConfigError(f"invalid config {source}:\n  buckets: {e}") from None
    return cfg
