"""The precision table of issue 4: per model × precision, `mwc verify`'s measurements on the dev speech set.

    python tests/precision_table.py ART [ART ...] [--manifest ../shared/data/manifest.jsonl] [--cache DIR]
        [--reports DIR] [--json OUT] [--texted-only] [--limit N]

Each artifact is verified with compiler.verify.run_verify (the machinery of `mwc verify`) against the numpy float64
reference over the manifest's clips (English clips only for .en models; by default every clip, edge clips and
clips without a text included: their tokens are compared, WER counts clips with a text, unreadable files are
listed; --texted-only takes `mwc verify --manifest`'s selection). The reference's side of each clip is cached in
--cache (one float64 run per model, shared by all its precisions); each artifact's report goes to --reports and is
reused while the artifact (manifest sha256) and the clip list are unchanged, so the table can be rebuilt as
artifacts finish. Nothing is written into the artifacts.

One markdown row per artifact: model, precision, the plan (manifest precision + calibration), worst stage errors
(mel abs; encoder, cross K, teacher-forced logits relative), greedy-token agreement with the reference (clips with
identical tokens; reference tokens matched before the first divergence) and with the fp32 artifact of the same
checkpoint when one is given, WER and the reference's WER, compile time (manifest timings: calibration, graph
build, MAX compile, parity), size (folder; weights file), and pass/fail: the parity tolerances of the precision,
fp32 tokens identical to the reference on every clip, reduced precisions' WER within --wer-margin (absolute, 0.003 =
0.3 points) of their fp32 artifact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.readers import load_checkpoint  # noqa: E402
from compiler.verify import clips_from_manifest, normalize, run_verify, wer  # noqa: E402

DATA = Path(os.environ.get("MWC_DATA", ROOT.parent / "shared" / "data"))
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plan_text(m: dict) -> str:
    """The precision plan in a few words: what is reduced, what the CPU plan or the calibration kept in fp32."""
    p = m["precision"]
    if p.get("quantized") == "int8":
        return "int8 weights (per-channel fp32 scales), fp32 compute"
    if p["name"] == "fp32":
        return "all fp32"
    low = SHORT[p["weights"]]
    reduced = [k for k in ("matmul", "conv", "kv_cache", "logits") if p[k] == p["weights"]]
    kept = [k for k in ("matmul", "conv", "kv_cache", "logits") if p[k] == "float32"]
    text = f"{low}: weights, {', '.join(reduced)}"
    if kept:
        text += f"; fp32: {', '.join(kept)}"
    cal = m.get("calibration")
    if cal:
        e = cal.get("expected") or {}
        text += (f"; calibrated ({cal['clips']} clip, emulated logits {e.get('logits_max_rel', float('nan')):.1e}"
                 f" ≤ budget {cal['budget_logits_max_rel']:.0e}: {'met' if cal['met_budget'] else 'NOT met'})")
    return text


def prefix_agreement(rows: list[dict], key_a: str, other: dict[str, list[int]] | None = None) -> float:
    """Reference tokens matched before the first divergence, over all clips (1.0: every clip identical)."""
    matched = total = 0
    for r in rows:
        a = r[key_a]
        b = other[r["file"]] if other is not None else r["ref_tokens"]
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        matched += n
        total += max(len(a), len(b))
    return matched / total if total else 1.0


def clip_list_key(clips) -> str:
    return hashlib.sha256(json.dumps([[str(c.path), c.language] for c in clips]).encode()).hexdigest()[:16]


def cache_path(args, m: dict, ck, clip) -> Path:
    """Where run_verify keeps the reference's side of ``clip`` for artifacts like ``m`` (numpy reference)."""
    from compiler.runtime.decoding import suppress_ids
    from compiler.runtime.tokenizer import Tokenizer
    from compiler.verify import reference_key

    if not hasattr(args, "_sha"):
        args._sha = {}
    sha = args._sha.setdefault(ck.source, ck.source_sha256())
    tk = Tokenizer(json.loads(Path(args.current_artifact, "vocab.json").read_text(encoding="utf-8")), m["tokens"])
    suppress = suppress_ids(tk, m["generation"]["suppress_tokens"])
    language = clip.language if ck.multilingual else None
    return args.cache / f"{reference_key(sha, 'numpy', clip.path, language, suppress, m['tokens'])}.npz"


def select_clips(args, ck) -> list:
    """The manifest's clips for this checkpoint (English only for .en models), narrowed by --limit and --only."""
    clips = clips_from_manifest(args.manifest, english_only=not ck.multilingual, limit=args.limit,
                                every=not args.texted_only)
    return [c for c in clips if re.search(args.only, str(c.path))] if args.only else clips


def verify_artifact(art: Path, args, log) -> dict:
    m = json.loads((art / "manifest.json").read_text())
    args.current_artifact = art
    ck_path = args.checkpoint.get(m["name"]) or m["source"]["checkpoint"]
    ck = load_checkpoint(ck_path)
    if ck.source_sha256() != m["source"]["sha256"]:
        raise SystemExit(f"{ck_path}: not the checkpoint {art} was compiled from; pass --checkpoint NAME=PATH")
    clips = select_clips(args, ck)
    if args.cached_only:
        clips = [c for c in clips if cache_path(args, m, ck, c).is_file()]
    art_sha = hashlib.sha256((art / "manifest.json").read_bytes()).hexdigest()[:16]
    key = f"{art.name}-{art_sha}-{clip_list_key(clips)}"
    saved = args.reports / f"{key}.json" if args.reports else None
    if saved is not None and saved.is_file():
        log(f"{art}: report reused ({saved})")
        return json.loads(saved.read_text())
    log(f"{art}: {m['name']} {m['precision']['name']}, {len(clips)} clips")
    t = time.perf_counter()
    report = run_verify(art, ck, clips, log=lambda s: log("  " + s), cache=args.cache)
    report["verify_seconds"] = round(time.perf_counter() - t, 1)
    report["artifact"] = str(art)
    report["manifest"] = {k: m[k] for k in ("name", "precision", "calibration", "timings", "device", "source")
                          if k in m}
    report["bytes"] = {"folder": folder_bytes(art), "weights": (art / "weights.safetensors").stat().st_size,
                       "mef": sum(f.stat().st_size for f in art.glob("*.mef"))}
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(report, indent=1))
    return report


def warm(art: Path, args, log) -> None:
    """Fill --cache with the reference's side of every clip for ``art``'s checkpoint without loading the artifact
    (its manifest gives the tokens and the suppress list): the slow float64 part, run ahead of the compile."""
    from compiler.reference import NumpyWhisper
    from compiler.runtime.audio import AudioError, load_audio
    from compiler.runtime.decoding import suppress_ids
    from compiler.runtime.tokenizer import Tokenizer
    from compiler.verify import _cache_load, _cache_store, reference_clip, reference_key

    m = json.loads((art / "manifest.json").read_text())
    ck = load_checkpoint(args.checkpoint.get(m["name"]) or m["source"]["checkpoint"])
    clips = select_clips(args, ck)
    tk = Tokenizer.from_file(art / "vocab.json", m["tokens"])
    suppress = suppress_ids(tk, m["generation"]["suppress_tokens"])
    sha, ref = ck.source_sha256(), None
    for clip in clips:
        language = clip.language if ck.multilingual else None
        path = args.cache / f"{reference_key(sha, 'numpy', clip.path, language, suppress, m['tokens'])}.npz"
        if _cache_load(path) is not None:
            continue
        try:
            audio = load_audio(clip.path)
        except AudioError as e:
            log(f"  {e}")
            continue
        t = time.perf_counter()
        ref = ref or NumpyWhisper(ck)
        _cache_store(path, reference_clip(ref, tk, suppress, audio, language))
        log(f"  {m['name']} {clip.path.name}: reference in {time.perf_counter() - t:.1f} s")


def summarize(reports: list[dict], wer_margin: float) -> list[dict]:
    fp32 = {r["manifest"]["source"]["sha256"]: r for r in reports if r["precision"] == "fp32"}
    out = []
    for r in reports:
        m = r["manifest"]
        base = fp32.get(m["source"]["sha256"])
        rows = r["clips"]
        row = {"model": m["name"], "precision": r["precision"], "plan": plan_text(m), "worst": r["worst"],
               "clips": len(rows), "unreadable": len(r["unreadable"]),
               "tokens_equal_ref": r["token_agreement"], "token_prefix_ref": prefix_agreement(rows, "tokens"),
               "wer": r["wer"], "reference_wer": r["reference_wer"],
               "compile_s": {k: v for k, v in m["timings"].items()}, "bytes": r["bytes"],
               "checks": dict(r["checks"]), "artifact": r["artifact"], "verify_seconds": r.get("verify_seconds")}
        if base is not None and base is not r:
            theirs = {c["file"]: c["tokens"] for c in base["clips"]}
            theirs_hyp = {c["file"]: c["hyp"] for c in base["clips"]}
            common = [c for c in rows if c["file"] in theirs]
            row["tokens_equal_fp32"] = sum(c["tokens"] == theirs[c["file"]] for c in common) / max(len(common), 1)
            row["token_prefix_fp32"] = prefix_agreement(common, "tokens", theirs)
            # WER of both on the clips both saw (the fp32 run may cover more clips)
            texted = [c for c in common if c["text"]]
            row["fp32_wer"] = wer([normalize(c["text"], c["language"]) for c in texted],
                                  [normalize(theirs_hyp[c["file"]], c["language"]) for c in texted])
            row["wer_common"] = wer([normalize(c["text"], c["language"]) for c in texted],
                                    [normalize(c["hyp"], c["language"]) for c in texted])
            row["checks"]["wer_vs_fp32"] = row["wer_common"] <= row["fp32_wer"] + wer_margin
        row["passed"] = all(row["checks"].values())
        out.append(row)
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| model | precision | plan | mel abs | encoder rel | cross K rel | logits rel | tokens = ref (clips; "
            "prefix) | tokens = fp32 artifact (same clips: WER vs fp32's) | WER | ref WER | compile s (total; MAX) | size MB (folder; weights) "
            "| pass |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        w, t = r["worst"], r["compile_s"]
        fp32 = (f"{r['tokens_equal_fp32']:.0%}; {r['token_prefix_fp32']:.1%} (WER {r['wer_common']:.2%} vs "
                f"{r['fp32_wer']:.2%})" if "tokens_equal_fp32" in r else "—")
        failed = [k for k, ok in r["checks"].items() if not ok]
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['plan']} | {w['mel']:.1e} | {w['encoder']:.1e} | "
            f"{w['cross_kv']:.1e} | {w['decoder_logits']:.1e} | {r['tokens_equal_ref']:.0%} of {r['clips']}; "
            f"{r['token_prefix_ref']:.1%} | {fp32} | {r['wer']:.2%} | {r['reference_wer']:.2%} | "
            f"{sum(t.values()):.0f}; {t.get('compile_s', float('nan')):.0f} | {r['bytes']['folder'] / 1e6:.0f}; "
            f"{r['bytes']['weights'] / 1e6:.0f} | {'pass' if r['passed'] else 'FAIL: ' + ', '.join(failed)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--manifest", type=Path, default=DATA / "manifest.jsonl")
    ap.add_argument("--cache", type=Path, default=None, help="reference cache folder (run_verify's cache)")
    ap.add_argument("--reports", type=Path, default=None, help="per-artifact verify reports, reused when unchanged")
    ap.add_argument("--json", type=Path, default=None, help="write the rows (and the reports' paths) here")
    ap.add_argument("--texted-only", action="store_true", help="only clips with a text, no edge clips (mwc verify)")
    ap.add_argument("--limit", type=int, default=None, help="the first N clips of the manifest")
    ap.add_argument("--wer-margin", type=float, default=0.003, help="reduced precision's WER vs fp32, absolute")
    ap.add_argument("--only", default=None, metavar="REGEX", help="only the clips whose path matches REGEX")
    ap.add_argument("--cached-only", action="store_true",
                    help="only the clips whose reference is in --cache already (a run beside one filling it)")
    ap.add_argument("--warm", action="store_true",
                    help="only fill --cache with the reference's results (the artifacts' manifests give the "
                         "checkpoint, tokens and suppress list; the artifacts themselves are not loaded)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH",
                    help="checkpoint for artifacts named NAME (default: the manifest's source path)")
    args = ap.parse_args(argv)
    args.checkpoint = dict(c.split("=", 1) for c in args.checkpoint)
    if args.warm:
        if args.cache is None:
            ap.error("--warm needs --cache")
        for a in args.artifacts:
            warm(a, args, lambda s: print(s, file=sys.stderr, flush=True))
        return 0

    def log(s):
        print(s, file=sys.stderr, flush=True)

    reports = [verify_artifact(a, args, log) for a in args.artifacts]
    rows = summarize(reports, args.wer_margin)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "manifest": str(args.manifest),
                                         "clips": "texted only" if args.texted_only else "every clip"}, indent=1))
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
