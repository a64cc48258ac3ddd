"""Transcribe every audio file in a folder with a compiled artifact, one transcript file per input.

    python examples/batch_transcribe.py ARTIFACT FOLDER -o OUT [-f txt|srt|vtt|tsv|json|all] [--beam-size N]
                                        [--batch-size N]

Needs only the artifact folder (its loader and mwc_runtime) plus max and numpy. Files are decoded --batch-size at a
time (their windows share decoder batches; the text is the same as one by one). Files that cannot be read are
reported with one line each and skipped; the others are still transcribed; the exit status is 1 if any failed.
"""

import argparse
import sys
import time
from pathlib import Path

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".webm", ".mp4", ".mkv",
                  ".mov"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="an artifact folder made by mwc compile")
    parser.add_argument("folder", type=Path, help="folder of audio files (searched recursively)")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, help="where the transcripts go")
    parser.add_argument("-f", "--output-format", default="txt", help="txt, srt, vtt, tsv, json or all (default txt)")
    parser.add_argument("--beam-size", type=int, default=None, help="beam search (default: greedy)")
    parser.add_argument("--batch-size", type=int, default=8, help="files decoded together (default 8)")
    args = parser.parse_args(argv)

    if not (args.artifact / "loader.py").is_file():
        print(f"error: {args.artifact}: not an artifact folder (no loader.py); run mwc compile", file=sys.stderr)
        return 2
    if not args.folder.is_dir():
        print(f"error: {args.folder}: not a folder; pass the folder that holds the audio", file=sys.stderr)
        return 2
    sys.path.insert(0, str(args.artifact.resolve()))
    from loader import load
    from mwc_runtime.audio import AudioError
    from mwc_runtime.writers import write_result

    files = sorted(p for p in args.folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        print(f"error: {args.folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})", file=sys.stderr)
        return 2
    model = load(args.artifact)
    failed, t_all = 0, time.perf_counter()
    results = model.transcribe_many([str(p) for p in files], batch_size=args.batch_size, beam_size=args.beam_size)
    for i, (path, result) in enumerate(zip(files, results), start=1):  # results arrive in input order
        rel = path.relative_to(args.folder)
        if isinstance(result, AudioError):
            print(f"[{i}/{len(files)}] error: {result}", file=sys.stderr)
            failed += 1
            continue
        out_dir = args.output_dir / rel.parent  # keep the folder structure (and same-named files apart)
        write_result(result, path, out_dir, args.output_format)
        print(f"[{i}/{len(files)}] {rel} ({time.perf_counter() - t_all:.1f} s): {result['text'][:70]}", flush=True)
    print(f"{len(files) - failed} of {len(files)} files transcribed into {args.output_dir} "
          f"in {time.perf_counter() - t_all:.1f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
