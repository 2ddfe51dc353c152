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
    for command in (["--help"], ["run", "--help"], ["plan", "--help"]):
        with pytest.raises(SystemExit):
            main(command)
        out = capsys.readouterr().out
        assert "split.*" in out and "docs/scenes.md" in out and "clip_name" in out, command
        assert "caption.*" in out and "docs/captioning.md" in out and "use_8bit" in out, command
        assert "docs/config.md" in out and "encode_video." in out, command


# ---------------------------------------------------------------------------------------------
# --set values that YAML reads as something else; config errors found after loading


def test_set_keeps_text_for_string_fields(tmp_path):
    from latentforge.config import parse_override

    path = _write(tmp_path, "input: in/\noutput: out/\nmodel: tiny\nbuckets: 64x64x9\ncaption:\n")
    cfg = load_config(
        path,
        [
            "split.clip_name={stem}-{scene:03d}-{hash}",  # YAML: a flow mapping (or a syntax error)
            "caption.enabled=true",  # into a section that is empty (None) in the YAML
            "caption.model=[tiny",  # YAML: a syntax error; the field is text
            "split.content.weights=[1, 1, 1, 0]",  # a list field still gets YAML's list
            'input="in dir/"',  # YAML quotes are YAML's
        ],
    )
    assert cfg.split.clip_name == "{stem}-{scene:03d}-{hash}"
    assert cfg.caption.enabled and cfg.caption.model == "[tiny"
    assert cfg.split.content.weights == (1.0, 1.0, 1.0, 0.0)
    assert cfg.input == "in dir/"
    assert parse_override("split.clip_name={stem}") == (["split", "clip_name"], "{stem}")
    assert parse_override("split.skip_start=00:01:30") == (["split", "skip_start"], "00:01:30")
    assert parse_override("encode_video.batch_size=8") == (["encode_video", "batch_size"], 8)


@pytest.mark.parametrize(
    "item, expected",
    [
        # the template as typed reaches the field's own check, which names the key
        ("split.clip_name={stem}-{hash}", "split.clip_name: Value error, must contain {scene}"),
        ("encode_video.batch_size=[1", "--set 'encode_video.batch_size=[1': the value of encode_video.batch_size is not valid YAML"),
        ("storage_options.anon={a", "--set 'storage_options.anon={a': the value of storage_options.anon is not valid YAML"),
        ("caption.prompt={x}", "caption.prompt: Input should be 'default' or 'short'"),
        ("input.x=1", "'input' is not a section"),
    ],
)
def test_bad_set_values_are_config_errors(tmp_path, capsys, item, expected):
    path = _write(tmp_path, "input: in/\noutput: out/\nmodel: tiny\nbuckets: 64x64x9\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, [item])
    assert expected in str(err.value)
    assert main(["plan", str(path), "--set", item]) == 2  # no traceback
    assert expected in capsys.readouterr().err


def _no_ray(monkeypatch):
    import latentforge.cluster
    import latentforge.pipelines.runtime

    def connect(*args, **kwargs):
        raise AssertionError("Ray was started for a config that cannot run")

    monkeypatch.setattr(latentforge.cluster, "connect", connect)
    monkeypatch.setattr(latentforge.pipelines.runtime, "connect", connect)


@pytest.mark.parametrize("pipeline", ["all", "caption", "precompute"])
def test_quantization_without_cuda_fails_before_ray_with_exit_code_2(tmp_path, capsys, monkeypatch, pipeline):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _no_ray(monkeypatch)
    path = _write(tmp_path, f"input: in/\noutput: out/\nmodel: tiny\nbuckets: 64x64x9\npipeline: {pipeline}\n")
    args = ["--set", "caption.use_4bit=true", "--set", "caption.enabled=true", "--set", "ray.num_cpus=1"]
    assert main(["plan", str(path), *args]) == 2
    assert "latentforge: caption.use_4bit: bitsandbytes quantization needs CUDA GPUs" in capsys.readouterr().err
    assert main(["plan", str(path), "--gpus", *args]) == 0  # planned for a GPU cluster
    assert "dtype bfloat16 4-bit" in capsys.readouterr().out
    assert main(["run", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentforge: caption.use_4bit: bitsandbytes quantization needs CUDA GPUs") and "Traceback" not in err
    # ray.use_gpus: false refuses it too, whatever the machine has
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert main(["run", str(path), *args, "--set", "ray.use_gpus=false"]) == 2
    assert "caption.use_4bit: bitsandbytes quantization needs CUDA GPUs and ray.use_gpus is false" in capsys.readouterr().err


def test_config_errors_raised_while_running_exit_2(tmp_path, capsys, monkeypatch):
    """A ConfigError found by a stage at run time (e.g. a cluster without GPUs) is a message."""
    from latentforge import pipelines

    def run(cfg, overwrite=False, make_report=True):
        raise ConfigError("caption.use_8bit: bitsandbytes quantization needs CUDA GPUs and this run uses none")

    def plan(cfg, use_gpus=None):
        raise ConfigError("caption.prompt_file: prompt.txt is empty")

    monkeypatch.setattr(pipelines, "run", run)
    monkeypatch.setattr(pipelines, "plan", plan)
    path = _write(tmp_path, "input: in/\noutput: out/\nmodel: tiny\nbuckets: 64x64x9\n")
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == "latentforge: caption.use_8bit: bitsandbytes quantization needs CUDA GPUs and this run uses none\n"
    assert main(["plan", str(path)]) == 2
    assert capsys.readouterr().err == "latentforge: caption.prompt_file: prompt.txt is empty\n"


@pytest.mark.parametrize("how", [["pipeline=all"], ["caption.enabled=true"]])
def test_plan_gpus_puts_the_captioner_on_gpus(tmp_path, capsys, how):
    from latentforge.pipelines import plan

    path = _write(tmp_path, "input: in/\noutput: out/\nmodel: tiny\nbuckets: 64x64x9\n")
    cfg = load_config(path, how + ["caption.max_actors=4"])
    caption = {s.name: s for s in plan(cfg, use_gpus=True)}["caption"]
    assert "1..4 actors, 1 GPU each" in caption.resources and "dtype bfloat16" in caption.detail
    caption = {s.name: s for s in plan(cfg, use_gpus=False)}["caption"]
    assert "CPU each (no GPU)" in caption.resources and "dtype float32" in caption.detail
    assert main(["plan", str(path), "--gpus"] + [a for kv in how for a in ("--set", kv)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().split()[1:2] == ["caption"])
    assert "1 GPU each" in line
