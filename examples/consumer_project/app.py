"""A consumer of a vendored artifact: python app.py AUDIO [--model DIR] [--words] [--beam-size N]."""

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Transcribe audio with the vendored Whisper artifact.")
    parser.add_argument("audio", help="audio file (wav, flac, mp3, ogg, m4a, ...)")
    parser.add_argument("--model", default=str(HERE / "model"), help="the artifact folder (default: ./model)")
    parser.add_argument("--words", action="store_true", help="print word timestamps")
    parser.add_argument("--beam-size", type=int, default=None, help="beam search (default: greedy)")
    args = parser.parse_args(argv)

    model_dir = Path(args.model)
    if not (model_dir / "loader.py").is_file():
        print(f"error: {model_dir}: no loader.py; copy an artifact folder made by mwc compile there", file=sys.stderr)
        return 1
    sys.path.insert(0, str(model_dir))
    from loader import load  # the artifact's generated loader (max + numpy only)
    from mwc_runtime.audio import AudioError

    model = load(model_dir)
    try:
        result = model.transcribe(args.audio, beam_size=args.beam_size, word_timestamps=args.words)
    except AudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result["text"])
    if args.words:
        for segment in result["segments"]:
            for w in segment.words or []:
                print(f"{w['start']:7.2f} {w['end']:7.2f}  {w['word'].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
