"""Pipeline config: one YAML file validated by pydantic, every key overridable with --set a.b=c.

The top-level keys input/output/model/buckets/pipeline are the stable contract (DESIGN.md);
the per-stage sections are named after the stages they tune.
"""

from __future__ import annotations

from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from latentforge.buckets import Bucket, BucketError, parse_buckets, validate_buckets

DTYPE = Literal["bfloat16", "float16", "float32"]
PIPELINES = ("split", "caption", "precompute", "all")


class ConfigError(ValueError):
    """A config that cannot run; the message names the field and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class EncodeVideoConfig(ActorPool):
    dtype: Optional[DTYPE] = Field(None, description="VAE compute and storage dtype; default bfloat16 on GPU, float32 on CPU")
    store_logvar: bool = False


class EncodeTextConfig(ActorPool):
    enabled: bool = True
    dtype: Optional[DTYPE] = None
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


Duration = Union[int, float, str]  # frames (15), seconds (2.5, "5s") or a timecode ("00:00:05.000")
Weights = tuple[float, float, float, float]  # delta_hue, delta_sat, delta_lum, delta_edges


class ContentParams(_Section):
    """PySceneDetect ContentDetector (`detect-content`): HSV change between adjacent frames."""

    threshold: float = Field(27.0, ge=0, description="frame score (0-255) at or above which a cut is found")
    weights: Weights = Field((1.0, 1.0, 1.0, 0.0), description="hue, saturation, luma, edges weights of the score")
    luma_only: bool = Field(False, description="score on brightness only (weights 0, 0, 1, 0)")
    kernel_size: Optional[int] = Field(None, ge=3, description="edge dilation kernel (odd); default from frame size")
    filter_mode: Literal["merge", "suppress"] = Field("merge", description="how cuts closer than min_scene_len are handled")


class AdaptiveParams(_Section):
    """PySceneDetect AdaptiveDetector (`detect-adaptive`): content score against its rolling average."""

    adaptive_threshold: float = Field(3.0, gt=0, description="score / average of the window around it")
    window_width: int = Field(2, ge=1, description="frames either side in the rolling average")
    min_content_val: float = Field(15.0, ge=0, description="least content score for a cut")
    weights: Weights = (1.0, 1.0, 1.0, 0.0)
    luma_only: bool = False
    kernel_size: Optional[int] = Field(None, ge=3)


class ThresholdParams(_Section):
    """PySceneDetect ThresholdDetector (`detect-threshold`): fades to and from black (or white)."""

    threshold: float = Field(12.0, ge=0, le=255, description="mean pixel level that counts as faded out")
    fade_bias: float = Field(0.0, ge=-1, le=1, description="-1: cut at the fade out, 0: middle, +1: at the fade in")
    add_final_scene: bool = Field(False, description="cut where a final fade out starts")
    method: Literal["floor", "ceiling"] = Field("floor", description="floor: below threshold is faded; ceiling: above")
    min_out_length: Duration = Field(0, description="least time faded out for a cut")


class HistogramParams(_Section):
    """PySceneDetect HistogramDetector (`detect-hist`): luma histogram correlation."""

    threshold: float = Field(0.2, ge=0, le=1, description="least change (1 - correlation) for a cut")
    bins: int = Field(128, ge=2, le=256)


class HashParams(_Section):
    """PySceneDetect HashDetector (`detect-hash`): perceptual hash distance."""

    threshold: float = Field(0.35, ge=0, le=1, description="least fraction of hash bits that differ for a cut")
    size: int = Field(8, ge=2, description="hash side (size x size bits)")
    lowpass: int = Field(2, ge=1, description="frame shrunk to size * lowpass before the DCT")


class SplitConfig(_Section):
    """Scene splitting (docs/scenes.md): one row per clip, optionally one file per clip."""

    enabled: bool = Field(False, description="split inside `latentforge run` (pipeline: precompute); always on for pipeline: split / all")
    detector: Literal["content", "adaptive", "threshold", "histogram", "hash"] = "content"
    min_scene_len: Duration = Field(15, description="detector: no cut closer than this to the previous one")
    content: ContentParams = Field(default_factory=ContentParams)
    adaptive: AdaptiveParams = Field(default_factory=AdaptiveParams)
    threshold: ThresholdParams = Field(default_factory=ThresholdParams)
    histogram: HistogramParams = Field(default_factory=HistogramParams)
    hash: HashParams = Field(default_factory=HashParams)
    skip_start: Optional[Duration] = Field(None, description="drop this much at the start of each video (intros)")
    skip_end: Optional[Duration] = Field(None, description="drop this much at the end of each video (credits)")
    max_scene_len: Optional[Duration] = Field(None, description="cut longer scenes into consecutive pieces of this length")
    filter_shorter_than: Optional[Duration] = Field(None, description="drop clips shorter than this (after max_scene_len)")
    max_scenes: Optional[int] = Field(None, ge=1, description="keep the first N clips of each video")
    mode: Literal["virtual", "reencode", "copy"] = Field("virtual", description="virtual: spans only; reencode / copy: clip files")
    crf: int = Field(22, ge=0, le=51, description="reencode: libx264 quality (lower is better)")
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"] = "veryfast"
    audio: bool = Field(True, description="clip files keep the audio of their span (AAC when re-encoded)")
    clip_name: str = Field("{stem}-Scene-{scene:03d}", description="clip file name: {stem}, {scene} (1-based), {hash}, {start}")
    detect_size: int = Field(256, ge=16, description="longer side of the frames the detector sees (FFmpeg scales to it)")
    segment_seconds: Optional[float] = Field(600.0, gt=0, description="videos longer than this are detected in parallel segments")
    overlap_seconds: float = Field(5.0, ge=0, description="frames each segment also reads either side of its own range")
    shared_decode_mb: int = Field(
        1024, ge=0, description="in `latentforge run`: memory per video for bucket frames made during detection; 0: prepare decodes again"
    )

    @field_validator("min_scene_len", "skip_start", "skip_end", "max_scene_len", "filter_shorter_than")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        from latentforge.operators.scenes import parse_duration

        if value is not None:
            parse_duration(value)  # frames, seconds or a timecode; the message says which forms
        return value

    @field_validator("max_scene_len")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        from latentforge.operators.scenes import parse_duration

        if value is not None and parse_duration(value)[1] <= 0:
            raise ValueError("must be longer than 0")
        return value

    @field_validator("clip_name")
    @classmethod
    def _template(cls, value: str) -> str:
        if "{scene" not in value:
            raise ValueError("must contain {scene} (or {scene:03d}) so clips of one video get different names")
        try:
            value.format(stem="clip", scene=1, hash="0" * 8, start=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"placeholders are {{stem}}, {{scene}}, {{hash}}, {{start}} ({e})") from None
        if "/" in value:
            raise ValueError("must be a file name, not a path")
        return value


class RayConfig(_Section):
    address: Optional[str] = Field(None, description="cluster to join; default: RAY_ADDRESS, else an embedded local Ray")
    num_cpus: Optional[int] = Field(None, ge=1, description="CPUs for the embedded local Ray")
    no_progress_timeout_s: float = Field(1800, gt=0, description="fail a run that makes no progress this long")
    actor_init_retries: int = Field(3, ge=0, description="retries of a model actor whose start-up fails")
    use_gpus: Optional[bool] = Field(
        None, description="model actors ask for GPUs; default: when the cluster has any (set true where GPU workers scale from zero)"
    )


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
    ray: RayConfig = Field(default_factory=RayConfig)
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
