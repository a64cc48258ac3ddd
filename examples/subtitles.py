"""Write subtitles (srt or vtt) for one audio file with a compiled artifact.

    python examples/subtitles.py ARTIFACT AUDIO [-o OUT.srt] [--max-chars 42] [--beam-size N]

With --max-chars, cues are rebuilt from word timestamps so that no cue is longer than that many characters (a cue
starts at its first word and ends at its last); without it, one cue per Whisper segment (mwc transcribe -f srt).
The format follows the output's extension (.srt or .vtt; default AUDIO's name with .srt).
"""

import argparse
import sys
from pathlib import Path


def word_cues(result, max_chars):
    """Greedy line filling: words join a cue until it would exceed max_chars or a segment ends."""
    cues = []
    for segment in result["segments"]:
        text, start, end = "", None, None
        for w in segment.words or []:
            word = w["word"]
            if text and len((text + word).strip()) > max_chars:
                cues.append({"start": start, "end": end, "text": text.strip()})
                text, start = "", None
            text += word
            start = w["start"] if start is None else start
            end = w["end"]
        if text.strip():
            cues.append({"start": start, "end": end, "text": text.strip()})
    return cues


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path, help="an artifact folder made by mwc compile")
    parser.add_argument("audio", type=Path, help="the audio (or video) file")
    parser.add_argument("-o", "--output", type=Path, default=None, help="OUT.srt or OUT.vtt (default: AUDIO.srt)")
    parser.add_argument("--max-chars", type=int, default=None, help="at most this many characters per cue")
    parser.add_argument("--beam-size", type=int, default=None, help="beam search (default: greedy)")
    args = parser.parse_args(argv)

    out = args.output or args.audio.with_suffix(".srt")
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("srt", "vtt"):
        parser.error(f"{out}: the output must end in .srt or .vtt")
    if args.max_chars is not None and args.max_chars < 1:
        parser.error("--max-chars must be at least 1")
    if not (args.artifact / "loader.py").is_file():
        print(f"error: {args.artifact}: not an artifact folder (no loader.py); run mwc compile", file=sys.stderr)
        return 2
    sys.path.insert(0, str(args.artifact.resolve()))
    from loader import load
    from mwc_runtime.audio import AudioError
    from mwc_runtime.writers import render

    model = load(args.artifact)
    try:
        result = model.transcribe(str(args.audio), beam_size=args.beam_size,
                                  word_timestamps=args.max_chars is not None)
    except AudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.max_chars is not None:
        result = {**result, "segments": word_cues(result, args.max_chars)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(result, fmt), encoding="utf-8")
    print(f"wrote {out} ({len(result['segments'])} cues)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
