"""Give a cross-compiled artifact its weights on the GPU machine.

A device call carries 64 MiB, less than most artifacts' weights, but the GPU machine has the checkpoints: so the
artifact is compiled here with ``mwc compile --device gpu --target cuda:sm_90a``, travels without
weights.safetensors, and gets it back there from the same checkpoint by the same code (``weights.graph_weights``
under the manifest's precision plan), checked against the manifest's sha256 — the artifact is then byte for byte
the one compiled here.

  python tests/assemble_artifact.py ARTIFACT CHECKPOINT [--rebind]

``--rebind``: CHECKPOINT may be another checkpoint of the same dims (W30's random weights, made again on the GPU
machine by another torch/transformers): the graphs do not depend on the values, so its weights are bound to the
compiled graphs and the manifest's source and checksums are rewritten to say so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.artifact import sha256  # noqa: E402
from compiler.precision import PrecisionPlan  # noqa: E402
from compiler.readers import load_checkpoint  # noqa: E402
from compiler.weights import graph_weights, save_weights  # noqa: E402


def main(artifact: Path, checkpoint: str, rebind: bool = False) -> None:
    m = json.loads((artifact / "manifest.json").read_text())
    want = m["files"]["weights.safetensors"]["sha256"]
    out = artifact / "weights.safetensors"
    if out.is_file() and sha256(out) == want:
        print(f"{out}: already there")
        return
    ck = load_checkpoint(checkpoint)
    same = ck.source_sha256() == m["source"]["sha256"]
    if not same and not (rebind and ck.dims.to_dict() == m["dims"]):
        raise SystemExit(f"{checkpoint}: not the checkpoint {artifact} was compiled from (source sha256 differs"
                         f"{'' if rebind else '; --rebind binds another checkpoint of the same dims'})")
    plan = PrecisionPlan(**m["precision"])
    save_weights(graph_weights(ck, plan), out, plan)
    if not same:
        m["source"] = {**m["source"], "checkpoint": ck.source, "sha256": ck.source_sha256(), "rebound": True}
        m["files"]["weights.safetensors"] = {"sha256": sha256(out), "bytes": out.stat().st_size}
        (artifact / "manifest.json").write_text(json.dumps(m, indent=2))
        print(f"{out}: rebound to {checkpoint} (same dims; manifest source and checksum rewritten)")
        return
    if sha256(out) != want:
        out.unlink()
        raise SystemExit(f"{out}: rebuilt weights differ from the manifest's sha256; recompile on this machine")
    print(f"{out}: rebuilt, sha256 matches the manifest")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--rebind"]
    if len(args) != 2:
        raise SystemExit(__doc__)
    main(Path(args[0]), args[1], rebind="--rebind" in sys.argv)
