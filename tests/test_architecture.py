"""The structure docs/architecture.md promises: `plan` names what `run` executes, rooms import
downwards without cycles, and no module grows past 400 lines."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from latentforge.config import load_config
from latentforge.sample_media import make_image, make_video

PACKAGE = Path(__file__).resolve().parents[1] / "latentforge"
BUCKETS = "64x64x9;64x64x1"
CAPTIONER = ["caption.model=tiny-qwen2.5-vl", "caption.max_new_tokens=6", "caption.max_frames=2", "caption.max_pixels=3136"]

# Room -> rooms it may import (besides itself and the ground floor: rows, storage, buckets, config).
ROOMS = {
    "formats": set(),
    "tiny": set(),
    "operators": {"formats", "models", "captioner_models"},
    "models": {"tiny"},
    "captioner_models": {"tiny", "models"},
    "pipelines": {"formats", "operators", "models", "captioner_models", "cluster"},
    "cli": {"pipelines", "cluster"},
}
GROUND = {"rows", "storage", "buckets", "config", "__init__", "sample_media", "cluster"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every latentforge module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def test_no_import_cycle_and_no_dynamic_import():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    for m, path in modules.items():
        assert "import_module" not in path.read_text(), f"{m} imports dynamically"

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return trail + [dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, trail + [dep]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_rooms_import_downwards():
    modules = _modules()
    wrong = []
    for m, path in modules.items():
        room = m.split(".")[1] if m.count(".") else "__init__"
        allowed = ROOMS.get(room)
        if allowed is None:
            continue
        for dep in _imports(path, modules):
            target = dep.split(".")[1] if dep.count(".") else "__init__"
            if target != room and target not in allowed | GROUND:
                wrong.append(f"{m} -> {dep}")
    assert not wrong, "imports pointing up or sideways: " + ", ".join(sorted(wrong))
    for m in ("latentforge.formats", "latentforge.operators"):  # no Ray in either room
        for name, path in modules.items():
            if name.startswith(m):
                assert not re.search(r"^\s*(import ray|from ray)", path.read_text(), re.M), f"{name} imports Ray"


def test_no_module_over_400_lines():
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    assert not {m: n for m, n in sizes.items() if n > 400}


# ---------------------------------------------------------------------------------------------
# plan == run


def _logical_operators(ds) -> list[str]:
    """Operator labels of a dataset's logical plan, as Ray Data names them (Map(probe), ...)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ds.explain()
    logical = buf.getvalue().split("-------- Logical Plan (Optimized)")[0]
    labels = re.findall(r"\w+\[(.+?)\]\s*$", logical, re.M)
    return [re.sub(r"\[.*\]$", "", label) for label in labels]  # parameters (StreamingRepartition[...]) are not names


@pytest.fixture
def executed_operators(monkeypatch):
    """Ray operators of every pass a run writes, recorded as the run writes them."""
    import ray.data

    seen: list[str] = []
    original = ray.data.Dataset.write_datasink

    def recording(self, datasink, *args, **kwargs):
        seen.extend(_logical_operators(self))
        seen.append("Write")
        return original(self, datasink, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "write_datasink", recording)
    return seen


@pytest.mark.ray
@pytest.mark.parametrize("pipeline", ["split", "caption", "all", "precompute+export"])
def test_plan_names_every_operator_that_run_executes(tmp_path, ray_local, tiny_home, executed_operators, pipeline):
    from latentforge.pipelines import plan, run

    make_video(tmp_path / "cuts.mp4", 96, 64, 40, 24, cuts=[20])
    make_image(tmp_path / "still.png", 80, 64)
    rows = [{"media_path": "cuts.mp4", "caption": None}, {"media_path": "still.png", "caption": "A still."}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    export = ["export=[fastvideo]"] if pipeline.endswith("+export") else []
    cfg = load_config(
        None,
        CAPTIONER + ["split.min_scene_len=4"] + export,
        input=str(tmp_path / "data.jsonl"),
        output=str(tmp_path / "out"),
        model="tiny",
        buckets=BUCKETS,
        pipeline=pipeline.removesuffix("+export"),
    )
    planned = [op for s in plan(cfg) for op in s.runs_as.split(" + ")]
    run(cfg)
    executed = set(executed_operators)
    assert executed, "the run wrote nothing"
    assert executed <= set(planned), f"run executed operators that plan does not list: {sorted(executed - set(planned))}"
    # and on a fresh output every planned stage ran (nothing listed that never happens)
    assert set(planned) == executed


def test_cpu_stage_modules_never_import_the_model_stack():
    """Ray imports a task's module in the worker that runs it: the modules whose functions and
    classes run on CPU workers (reading, probing, bucketing, decoding, splitting, caption parts,
    writing) must not pull in torch, diffusers or transformers, which cost a worker ~0.6 GB."""
    import subprocess
    import sys

    cpu_modules = [
        # the driver's: it names model actors and exporters without importing them (test_node_loss runs one)
        "latentforge.cli", "latentforge.pipelines.api", "latentforge.pipelines.precompute", "latentforge.pipelines.export",
        "latentforge.pipelines", "latentforge.pipelines.input", "latentforge.pipelines.sinks", "latentforge.pipelines.outputs",
        "latentforge.pipelines.tally", "latentforge.pipelines.precompute_tasks", "latentforge.pipelines.split",
        "latentforge.pipelines.caption", "latentforge.pipelines.backpressure", "latentforge.operators.probe",
        "latentforge.operators.frames", "latentforge.operators.audio", "latentforge.operators.scenes", "latentforge.operators.captions",
        "latentforge.operators.captioning", "latentforge.operators.captioner", "latentforge.operators.caption_api",
        "latentforge.operators.reference", "latentforge.pipelines.reference",
    ]
    code = "import sys\n" + "".join(f"import {m}\n" for m in cpu_modules) + (
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\nprint(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "", f"a CPU worker would import {out.stdout.strip()}"

