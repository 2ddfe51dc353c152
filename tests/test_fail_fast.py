"""Fail fast, in one line (issue 11): an input that is not there, an output that cannot be
written and S3 without credentials stop `latentforge run` before Ray starts, with exit 2 and a
message naming the path and the reason, no traceback; 16-bit images are scaled, not clipped;
credentials given with --set never reach run.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentforge.buckets import parse_bucket
from latentforge.operators.frames import load_image
from latentforge.pipelines.run_summary import redacted_argv

REPO = Path(__file__).resolve().parents[1]


def run_cli(tmp_path: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(f"input: {REPO / 'examples/media/dataset.jsonl'}\noutput: {tmp_path / 'out'}\nmodel: tiny\nbuckets: 64x64x9\n")
    args = [a for kv in overrides for a in ("--set", kv)]
    env = dict(env or os.environ, PYTHONPATH=str(REPO))  # this checkout, whatever is installed
    return subprocess.run(
        [sys.executable, "-m", "latentforge.cli", "run", str(config), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "Ray" not in proc.stderr, "the check must come before Ray starts"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_input_is_one_line(tmp_path):
    line = one_line_error(run_cli(tmp_path, f"input={tmp_path / 'nope' / 'dataset.jsonl'}"))
    assert line.startswith("latentforge: input ") and "nope/dataset.jsonl: not found" in line


def test_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_line_error(run_cli(tmp_path, f"output={blocker / 'out'}"))
    assert f"output {blocker / 'out'}: cannot write there" in line


def test_s3_without_credentials_is_one_line(tmp_path, s3_endpoint):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_DEFAULT_REGION="us-east-1")
    line = one_line_error(
        run_cli(tmp_path, "input=s3://raw/dataset.jsonl", f"storage_options.client_kwargs.endpoint_url={s3_endpoint}", env=env)
    )
    assert "input s3://raw/dataset.jsonl: cannot be read" in line and "credentials" in line.lower()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32)[None, :] * 1040).repeat(64, 0).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    frame = load_image(str(tmp_path / "deep.png"), parse_bucket("64x64x1"))[0]
    expected = np.rint(ramp / 257.0).astype(np.int16)
    assert frame.shape == (64, 64, 3)
    assert np.abs(frame[..., 0].astype(np.int16) - expected).max() <= 1
    assert frame.mean() < 160  # clipped, the ramp was almost all 255 (mean ~251)


def test_credentials_on_the_command_line_are_masked():
    argv = ["latentforge", "run", "c.yaml", "--set", "storage_options.key=AKIAXXXX", "--set=storage_options.secret=s3cr3t",
            "--set", "storage_options.client_kwargs.aws_session_token=TOKVALUE9", "--set", "encode_video.batch_size=8"]
    masked = redacted_argv(argv)
    assert not any(s in " ".join(masked) for s in ("AKIAXXXX", "s3cr3t", "TOKVALUE9"))
    assert masked[-1] == "encode_video.batch_size=8" and masked[:3] == argv[:3]


@pytest.mark.ray
def test_run_json_never_holds_a_credential_given_with_set(tmp_path, ray_local, tiny_home, monkeypatch):
    from latentforge.config import load_config
    from latentforge.pipelines import run

    secret = "wJalrXUtnFEMI-K7MDENG"
    monkeypatch.setattr(sys, "argv", ["latentforge", "run", "c.yaml", "--set", f"storage_options.secret={secret}"])
    cfg = load_config(None, [f"storage_options.secret={secret}"], input=str(REPO / "examples/media/dataset.jsonl"),
                      output=str(tmp_path / "out"), model="tiny", buckets="64x64x9")
    cfg.storage_options.clear()  # local files need none; the point is what run.json keeps of argv
    run(cfg)
    assert secret not in (tmp_path / "out" / "run.json").read_text()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model=wan2.1"], "model Wan-AI/"),  # the VAE and text encoder of a real preset, no cache, no hub
        (["model=tiny", "caption.enabled=true", "caption.model=Qwen/Qwen2.5-VL-7B-Instruct"], "caption.model Qwen/"),
        (["model=wan2.1", "model_path={tmp}/empty-folder"], "model_path "),
    ],
)
def test_a_model_that_cannot_load_is_one_line(tmp_path, overrides, key):
    (tmp_path / "empty-folder").mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # no cache; the hub is not asked
    line = one_line_error(run_cli(tmp_path, *[o.format(tmp=tmp_path) for o in overrides], env=env))
    assert line.startswith(f"latentforge: {key}"), line
    assert "model_path" in line or "no vae/config.json" in line


def test_redact_credentials_masks_url_secrets_and_nothing_else():
    from latentforge.rows import redact_credentials

    assert redact_credentials("https://bob:hunter2@host/a.mp4: file not found") == "https://***@host/a.mp4: file not found"
    presigned = "https://b.s3.amazonaws.com/a.mp4?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc&X-Amz-Security-Token=t0k: 403"
    assert redact_credentials(presigned) == "https://b.s3.amazonaws.com/a.mp4?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***: 403"
    assert redact_credentials("gs://b/x?alt=media&token=abc") == "gs://b/x?alt=media&token=***"
    kept = "s3://bucket/clips/key.mp4: damaged or truncated container (moov atom not found; key=3)"
    assert redact_credentials(kept) == kept


@pytest.mark.ray
def test_credentials_reach_no_output_file_and_no_log(tmp_path):
    """Media URLs carrying credentials (user:password@, a presigned signature) fail to open
    (nothing listens on port 9): their error rows, run.json and everything the run printed
    hold the masked form; a secret given with --set is masked too."""
    secrets = ("hunter2-secret", "deadbeef0signature", "t0ken-value", "topsecret-set-value")
    lines = [
        {"media_path": "http://bob:hunter2-secret@127.0.0.1:9/a.mp4", "caption": "One."},
        {"media_path": "http://127.0.0.1:9/b.mp4?X-Amz-Signature=deadbeef0signature&X-Amz-Security-Token=t0ken-value", "caption": "Two."},
        {"media_path": str(REPO / "examples/media/landscape.mp4"), "caption": "Three."},
    ]
    (tmp_path / "dataset.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = run_cli(tmp_path, f"input={tmp_path / 'dataset.jsonl'}", "storage_options.secret=topsecret-set-value", "encode_text.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file())
    printed = (proc.stdout + proc.stderr).encode()
    for secret in secrets:
        assert secret.encode() not in written and secret.encode() not in printed, secret
    from latentforge.formats.shards import read_table

    errors = sorted(r["error"] for r in read_table(str(tmp_path / "out"), "errors").to_pylist())
    assert len(errors) == 2 and "http://***@127.0.0.1:9/a.mp4" in errors[0] and "X-Amz-Signature=***" in errors[1]
    verify = subprocess.run(
        [sys.executable, "-m", "latentforge.cli", "verify", str(tmp_path / "out"), "--input", str(tmp_path / "dataset.jsonl")],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp_path,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr  # masked error rows still account for their inputs


def test_a_vae_on_several_gpus_is_a_config_error():
    from latentforge.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="does not split over GPUs"):
        load_config(None, ["encode_video.num_gpus=2"], input="in", output="out", model="tiny")
    assert load_config(None, ["encode_video.num_gpus=0.5", "encode_text.num_gpus=2"], input="in", output="out", model="tiny")


@pytest.mark.ray
def test_quantised_text_encoder_without_gpus_stops_before_any_actor(tmp_path, ray_local):
    from latentforge.config import ConfigError, load_config
    from latentforge.pipelines import run

    cfg = load_config(
        None, ["encode_text.quantization=8bit"], input=str(REPO / "examples/media/dataset.jsonl"), output=str(tmp_path / "out"), model="tiny", buckets="64x64x9"
    )
    with pytest.raises(ConfigError, match="encode_text.quantization: 8bit weights need CUDA GPUs"):
        run(cfg)
    assert not (tmp_path / "out" / "latents").exists()
