"""The config fingerprint (issue 11): a rerun into an output made with other result options is
refused before any work, unless --overwrite; options that change speed only are free."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentforge.config import ConfigError, load_config
from latentforge.pipelines import fingerprint
from latentforge.pipelines.caption import enabled as caption_enabled
from latentforge.pipelines.split import enabled as split_enabled

REPO = Path(__file__).resolve().parents[1]
INPUT = str(REPO / "examples" / "media" / "dataset.jsonl")


def _cfg(tmp_path: Path, *overrides: str, **kw):
    kw.setdefault("buckets", "64x64x9")
    return load_config(None, list(overrides), input=INPUT, output=str(tmp_path / "out"), model="tiny", **kw)


def _fp(cfg) -> dict:
    return fingerprint.fingerprint(fingerprint.result_options(cfg, split_enabled(cfg), caption_enabled(cfg)))


def _record(cfg, fp: dict) -> None:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"fingerprint": fp}))


def test_result_options_refuse_speed_options_do_not(tmp_path):
    base = _cfg(tmp_path)
    _record(base, _fp(base))
    for speed in (["encode_video.batch_size=1"], ["encode_video.max_actors=3"], ["encode_text.batch_size=2"], ["ray.num_cpus=1"]):
        fingerprint.check(_cfg(tmp_path, *speed), _fp(_cfg(tmp_path, *speed)))  # no error
    for result, key in ((["prepare.target_fps=8"], "prepare.target_fps"), (["encode_video.dtype=bfloat16"], "encode_video.dtype"),
                        (["encode_text.trigger_word=SKS"], "encode_text.trigger_word"), (["prepare.resize_filter=lanczos"], "prepare.resize_filter")):
        cfg = _cfg(tmp_path, *result)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            fingerprint.check(cfg, _fp(cfg))
    other_buckets = _cfg(tmp_path, buckets="64x64x9;96x64x9")
    with pytest.raises(ConfigError, match="buckets.*--overwrite"):
        fingerprint.check(other_buckets, _fp(other_buckets))
    same_buckets_reordered = _cfg(tmp_path, buckets="64x64x9")
    fingerprint.check(same_buckets_reordered, _fp(same_buckets_reordered))


@pytest.mark.ray
def test_the_cli_refuses_then_overwrite_starts_over(tmp_path, ray_local, tiny_home, capsys):
    from latentforge.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"input: {INPUT}\noutput: {tmp_path / 'out'}\nmodel: tiny\nbuckets: 64x64x9\n")
    assert main(["run", str(config)]) == 0
    first = json.loads((tmp_path / "out" / "run.json").read_text())
    assert first["fingerprint"]["options"]["buckets"] == ["64x64x9"]
    capsys.readouterr()
    assert main(["run", str(config), "--set", "prepare.target_fps=8"]) == 2
    err = capsys.readouterr().err
    assert "prepare.target_fps: None -> 8.0" in err and "--overwrite" in err and "Traceback" not in err
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == first  # nothing touched
    assert main(["run", str(config), "--set", "prepare.target_fps=8", "--overwrite"]) == 0
    again = json.loads((tmp_path / "out" / "run.json").read_text())
    assert again["fingerprint"]["options"]["prepare.target_fps"] == 8.0
    assert again["counts"]["latents_skipped_existing"] == 0 and again["counts"]["latents_written"] == first["counts"]["latents_written"]
