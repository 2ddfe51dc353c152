"""Config validation names the field and the allowed values; `plan` shows what would run."""

import pytest

from latentforge.cli import main
from latentforge.config import ConfigError, load_config


def _write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_overrides_type_values_and_keep_bucket_strings(tmp_path):
    path = _write(tmp_path, "input: in/\noutput: out/\nmodel: tiny-wan2.1\nbuckets: 64x64x9\n")
    cfg = load_config(
        path,
        ["encode_video.batch_size=8", "encode_text.trigger_word=yes", "buckets=96x64x9;64x96x9", "prepare.target_fps=16"],
    )
    assert cfg.encode_video.batch_size == 8
    assert cfg.encode_text.trigger_word == "yes"  # not YAML's True
    assert [str(b) for b in cfg.bucket_list()] == ["96x64x9", "64x96x9"]
    assert cfg.prepare.target_fps == 16.0


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["model=wan3"], "unknown model preset 'wan3'; allowed: "),
        (["buckets=840x480x49"], "840x480x49: width and height must be multiples of 16"),
        (["buckets=832x480x48"], "frames must satisfy F % 4 == 1"),
        (["model=ltx2", "buckets=832x480x45"], "F % 8 == 1"),
        (["model=ltx2", "buckets=848x480x49"], "multiples of 32"),
        (["prepare.resize_filter=nearest"], "prepare.resize_filter: Input should be 'area', 'bilinear', 'bicubic' or 'lanczos'"),
        (["encode_video.batch_sise=2"], "encode_video.batch_sise: unknown key"),
        (["pipeline=train"], "pipeline: Input should be 'split', 'caption', 'precompute' or 'all'"),
        (["buckets"], "expected key=value"),
    ],
)
def test_config_errors_name_the_field(tmp_path, extra, expected):
    path = _write(tmp_path, "input: in/\noutput: out/\nmodel: wan2.1\nbuckets: 832x480x49\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, extra)
    assert expected in str(err.value)


def test_missing_required_keys_and_files(tmp_path):
    with pytest.raises(ConfigError, match="input: Field required"):
        load_config(_write(tmp_path, "output: out/\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_plan_prints_stages_and_resources(tmp_path, capsys):
    path = _write(tmp_path, "input: data/dataset.jsonl\noutput: s3://bucket/out\nmodel: ltx2\nbuckets: 960x544x49;544x960x49\n")
    assert main(["plan", str(path), "--gpus", "--set", "encode_video.max_actors=8"]) == 0
    out = capsys.readouterr().out
    assert "buckets: 960x544x49; 544x960x49" in out
    assert "encode_video" in out and "1..8 actors, 1 GPU each" in out
    assert "AutoencoderKLLTX2Video" in out and "LTX2Pipeline.encode_prompt" in out
    assert "s3://bucket/out/embeddings/encoder=" in out


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    path = _write(tmp_path, "input: in/\noutput: out/\nmodel: wan2.1\nbuckets: 832x480x50\n")
    assert main(["run", str(path)]) == 2
    assert "F % 4 == 1" in capsys.readouterr().err
    path = _write(tmp_path, "input: in/\noutput: out/\npipeline: split\nsplit:\n  detector: fancy\n")
    assert main(["plan", str(path)]) == 2
    assert "split.detector: Input should be 'content', 'adaptive'" in capsys.readouterr().err


def test_help_explains_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "run" in out and "plan" in out and "examples:" in out and "docs/config.md" in out
