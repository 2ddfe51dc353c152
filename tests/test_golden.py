"""Golden test: the current code writes exactly the outputs recorded in tests/golden/reference.json
by an earlier version (latents and embeddings byte for byte, rows, errors, clips.jsonl,
captions.jsonl, counts). The runs and the canonical form live in tests/golden/record.py, which
also records the reference:

    PYTHONPATH=/path/to/old/checkout python tests/golden/record.py --check

Tensor bytes depend on the torch build, the CPU and PyAV's FFmpeg; where the platform fingerprint
differs from the reference's, the tensor comparison is skipped (with the reason) and only the
platform-independent content is compared.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ray

_RECORD = Path(__file__).resolve().parent / "golden" / "record.py"
_spec = importlib.util.spec_from_file_location("latentforge_golden_record", _RECORD)
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

PARTS = ["generated", pytest.param("shared", marks=pytest.mark.media)]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    if not golden.REFERENCE.is_file():
        pytest.fail(f"{golden.REFERENCE} is missing: record it with tests/golden/record.py (PYTHONPATH=<old checkout>)")
    ref = json.loads(golden.REFERENCE.read_text())
    assert ref["format"] == golden.FORMAT, "reference.json was written by another format of record.py: record it again"
    assert ref["work_root"] == str(golden.WORK_ROOT), "sample ids hash absolute uris: the runs must use the recorded WORK_ROOT"
    return ref


@pytest.fixture(scope="module")
def platform_differences(reference) -> list[str]:
    """Empty when this machine computes tensors as the recording machine did."""
    return golden.diff(reference["platform"], json.loads(json.dumps(golden.platform_fingerprint())), "platform")


@pytest.fixture(scope="module")
def current(ray_local):
    """Runs a part ("generated" / "shared") with the current code, once per module. Tiny models
    come from the session's LATENTFORGE_HOME (conftest); only the two twins used are built."""
    driver, worker = golden._check_worker_imports(ray_local)
    print(f"golden: comparing the latentforge at {Path(driver).parent} (Ray workers: {Path(worker).parent})")
    assert Path(driver).resolve() == Path(worker).resolve(), (
        f"Ray workers import latentforge from {worker}, this process from {driver}: the comparison would mix two versions "
        "(run pytest from a folder that does not hold another latentforge, or pass PYTHONPATH to Ray)"
    )
    cache: dict[str, Any] = {}

    def get(part: str, shared: Path | None = None) -> dict[str, Any]:
        if part not in cache:
            cache[part] = golden.record(shared, parts=(part,))[part]
        return cache[part]

    return get


def _inputs(reference: dict[str, Any], part: str, request: pytest.FixtureRequest) -> tuple[dict[str, Any], Path | None]:
    """The reference section of `part` and the real media folder (skips where it cannot run)."""
    shared = None
    if part == "shared":
        shared = request.getfixturevalue("shared_media")  # skips with a reason where ../shared/media is absent
        if not golden.shared_media_available(shared):
            pytest.skip(f"real clips {golden.SHARED_CLIPS} not found in {shared}")
    if reference.get(part) is None:
        pytest.skip(f"reference.json has no {part!r} section (recorded without the real media): record it again where it is present")
    return reference[part], shared


def _assert_same(expected: Any, actual: Any, what: str) -> None:
    differences = golden.diff(expected, actual, limit=30)
    assert not differences, f"{what} differ from tests/golden/reference.json:\n  " + "\n  ".join(differences)


@pytest.mark.parametrize("part", PARTS)
def test_content_is_unchanged(part, reference, current, request):
    """Rows, errors, manifests and counts, without tensor hashes and model-generated text (what
    must hold on any machine)."""
    expected, shared = _inputs(reference, part, request)
    actual = current(part, shared)
    _assert_same(
        golden.platform_independent(expected, part),
        golden.platform_independent(actual, part),
        f"{part}: outputs (tensor hashes, FFmpeg error wording and generated captions left out)",
    )


@pytest.mark.parametrize("part", PARTS)
def test_bytes_are_unchanged(part, reference, current, request, platform_differences):
    """Everything, tensor bytes (sha256) and generated captions included, where the platform
    fingerprint matches the recording machine's."""
    expected, shared = _inputs(reference, part, request)
    if platform_differences:
        pytest.skip(
            "tensor bytes NOT compared: this machine's platform fingerprint differs from the one reference.json was "
            "recorded on (record it again on this platform with the old code to compare them):\n  "
            + "\n  ".join(platform_differences)
        )
    _assert_same(expected, current(part, shared), f"{part}: outputs")
