"""Random-weight parity across Whisper sizes (not part of the CI suite: each size is one MAX compile).

For each size, random weights of its true widths, heads, mel bins and vocabulary (at a reduced depth — by default
2 encoder + 2 decoder layers (turbo keeps its 4 decoder layers), because the float64 numpy reference of the full depth takes too long on a small CPU)
are written as a Hugging Face folder, compiled with ``mwc compile``, loaded, and compared stage by stage against the
numpy float64 reference on the same weights (the artifact's compile-time parity.json, recomputed in this process).

Usage: python tests/parity_sizes.py [--sizes small,medium,large-v3,large-v3-turbo] [--precisions fp32,fp16]
                                    [--layers 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from helpers import SIZES, random_weights, write_hf_folder  # noqa: E402


def reduced(name: str, layers: int):
    d = SIZES[name]
    # a decoder of up to 4 layers is cheap for the reference: kept whole, so turbo stays turbo (4 decoder layers)
    text = d.n_text_layer if d.n_text_layer <= 4 else min(layers, d.n_text_layer)
    return dataclasses.replace(d, n_audio_layer=min(layers, d.n_audio_layer), n_text_layer=text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="small,medium,large-v3,large-v3-turbo")
    ap.add_argument("--precisions", default="fp32")
    ap.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (true depth: --layers 0)")
    ap.add_argument("--out", type=Path, default=None, help="where the checkpoints and artifacts go (default: a temp dir)")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="mwc-sizes-"))
    rows = []
    for size in args.sizes.split(","):
        true = SIZES[size]
        d = true if args.layers <= 0 else reduced(size, args.layers)
        ck = write_hf_folder(work / f"{size}-ck", d, random_weights(d, seed=1))
        depth = (f"{d.n_audio_layer}+{d.n_text_layer} of {true.n_audio_layer}+{true.n_text_layer} layers"
                 if (d.n_audio_layer, d.n_text_layer) != (true.n_audio_layer, true.n_text_layer)
                 else f"{d.n_audio_layer}+{d.n_text_layer} layers (full depth)")
        for prec in args.precisions.split(","):
            out = work / f"{size}-{prec}"
            print(f"== {size} {prec}: d={d.n_audio_state}, {d.n_audio_head} heads, {d.n_mels} mels, vocab "
                  f"{d.n_vocab}, {depth}", flush=True)
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(ck), f"--{prec}", "-o", str(out),
                                "--force"], capture_output=True, text=True, cwd=ROOT)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                print(r.stdout[-2000:] + r.stderr[-2000:], flush=True)
                rows.append({"size": size, "precision": prec, "depth": depth, "error": r.stderr.strip()[-200:]})
                continue
            m = json.loads((out / "manifest.json").read_text())
            rep = json.loads((out / "parity.json").read_text())
            # the parity check again, in this process, from the loaded artifact
            from compiler.parity import stage_parity
            from compiler.readers import load_checkpoint
            from compiler.runtime.model import Whisper

            again = stage_parity(load_checkpoint(str(ck)), Whisper(out))
            st = again["stages"]
            rows.append({"size": size, "precision": prec, "depth": depth, "frames": again["encoder_frames"],
                         "mel_abs": st["mel"]["max_abs"], "encoder_rel": st["encoder"]["max_rel"],
                         "cross_kv_rel": st["cross_kv"]["max_rel"], "logits_rel": st["decoder_logits"]["max_rel"],
                         "argmax": st["decoder_logits"]["argmax_agrees"], "passed": again["passed"],
                         "compile_report_passed": rep["passed"], "compile_s": m["timings"]["compile_s"],
                         "wall_s": round(wall, 1), "mb": sum(f["bytes"] for f in m["files"].values()) / 1e6,
                         "weights_mb": m["files"]["weights.safetensors"]["bytes"] / 1e6})
            print(json.dumps(rows[-1]), flush=True)
    print("\nrandom weights, true widths/heads/mels/vocab; depth reduced where stated; reference: numpy float64\n")
    print("| size | prec | depth | frames | mel abs | encoder rel | cross K/V rel | logits rel | argmax | pass | "
          "MAX compile s | mwc compile wall s | artifact MB (weights) |")
    print("|" + "---|" * 13)
    for r in rows:
        if "error" in r:
            print(f"| {r['size']} | {r['precision']} | {r['depth']} | failed: {r['error']} |")
            continue
        print(f"| {r['size']} | {r['precision']} | {r['depth']} | {r['frames']} | {r['mel_abs']:.1e} | "
              f"{r['encoder_rel']:.1e} | {r['cross_kv_rel']:.1e} | {r['logits_rel']:.1e} | {r['argmax']} | "
              f"{r['passed']} | {r['compile_s']:.0f} | {r['wall_s']:.0f} | {r['mb']:.0f} ({r['weights_mb']:.0f}) |")
    (work / "parity_sizes.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{work / 'parity_sizes.json'}")
    return 0 if all(r.get("passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
