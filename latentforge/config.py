"""Pipeline config: one YAML file validated by pydantic, every key overridable with --set a.b=c.

The top-level keys input/output/model/buckets/pipeline are the stable contract (DESIGN.md);
the per-stage sections are named after the stages they tune.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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
    max_actors: int = Field(1, ge=1)
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

    input_format: Literal["auto", "ltx", "fastvideo", "lists", "caption_files", "chronoedit", "folder"] = "auto"
    model_path: Optional[str] = Field(None, description="local diffusers-format folder instead of the preset's Hub id")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for s3:// etc.")
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    encode_video: EncodeVideoConfig = Field(default_factory=EncodeVideoConfig)
    encode_text: EncodeTextConfig = Field(default_factory=EncodeTextConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

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


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=c' -> (['a', 'b'], value), the value read as YAML so numbers and booleans type."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, for example encode_video.batch_size=8")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {text!r}: empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if keys[-1] in {"buckets", "input", "output", "model", "model_path", "trigger_word"} and value is not None:
        value = str(raw.strip())  # never let YAML turn '480x832x49' or 'yes' into something else
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
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
            loaded = yaml.safe_load(Path(path).read_text())
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
