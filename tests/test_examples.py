"""The examples/ scripts run as written on the session's tiny.en artifact (each from a copy, as a user would)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

EXAMPLES = ROOT / "examples"
JFK = "ask not what your country can do for you"


def run(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_consumer_project(tiny_en_artifact, tmp_path):
    project = tmp_path / "consumer"
    shutil.copytree(EXAMPLES / "consumer_project", project)
    shutil.copytree(tiny_en_artifact, project / "model")  # the vendored artifact, nothing else
    r = run("app.py", EXAMPLES / "jfk.flac", "--words", cwd=project)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert JFK in lines[0].lower()
    words = [re.match(r"\s*([\d.]+)\s+([\d.]+)\s+(\S+)", line) for line in lines[1:]]
    assert len(words) >= 20 and all(words)
    times = [(float(m.group(1)), float(m.group(2))) for m in words]
    assert all(s <= e for s, e in times) and all(a[0] <= b[0] for a, b in zip(times, times[1:]))
    assert 0 <= times[0][0] < 1.5 and 9.0 < times[-1][1] <= 11.1  # JFK speaks from ~0.3 s to ~10.6 s
    r = run("app.py", tmp_path / "missing.wav", cwd=project)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "missing.wav" in r.stderr


def test_batch_transcribe(tiny_en_artifact, data, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLES / "jfk.flac", folder / "jfk.flac")
    shutil.copy(data / "edge" / "speech_8k.wav", folder / "sub" / "speech_8k.wav")
    shutil.copy(data / "edge" / "notaudio.wav", folder / "broken.wav")
    out = tmp_path / "out"
    r = run(EXAMPLES / "batch_transcribe.py", tiny_en_artifact, folder, "-o", out, "-f", "txt", cwd=tmp_path)
    assert r.returncode == 1  # one file failed ...
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "broken.wav" in errors[0]
    assert JFK in (out / "jfk.txt").read_text().lower()  # ... and the others were still written
    assert "surpassed" in (out / "sub" / "speech_8k.txt").read_text().lower()
    assert not (out / "broken.txt").exists()


def test_subtitles(tiny_en_artifact, tmp_path):
    out = tmp_path / "jfk.srt"
    r = run(EXAMPLES / "subtitles.py", tiny_en_artifact, EXAMPLES / "jfk.flac", "-o", out, "--max-chars", "24",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cues = out.read_text().strip().split("\n\n")
    assert len(cues) >= 4
    for i, cue in enumerate(cues, start=1):
        n, times, *text = cue.splitlines()
        assert n == str(i) and re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", times)
        assert len(" ".join(text)) <= 24 or len(" ".join(text).split()) == 1
    assert JFK in " ".join(" ".join(c.splitlines()[2:]) for c in cues).lower()
    vtt = tmp_path / "jfk.vtt"
    r = run(EXAMPLES / "subtitles.py", tiny_en_artifact, EXAMPLES / "jfk.flac", "-o", vtt, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert vtt.read_text().startswith("WEBVTT") and JFK in vtt.read_text().lower()
