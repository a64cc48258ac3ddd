"""Transcript files: txt, vtt, srt, tsv and json, byte for byte as openai/whisper's utils.py writes them.

Standard library only (the runtime ships inside every artifact). A result is ``transcribe()``'s dict: ``text``,
``segments`` (``decoding.Segment`` objects or openai-style dicts with start/end/text) and ``language``. Segments
have no word timings here, so subtitles are one cue per segment (openai's path without ``word_timestamps``).
"""

from __future__ import annotations

import json
import os
from typing import TextIO

FORMATS = ("txt", "vtt", "srt", "tsv", "json")


def format_timestamp(seconds: float, always_include_hours: bool = False, decimal_marker: str = ".") -> str:
    """openai's utils.format_timestamp: [HH:]MM:SS.mmm (hours only when asked or nonzero)."""
    assert seconds >= 0, "non-negative timestamp expected"
    milliseconds = round(seconds * 1000.0)
    hours = milliseconds // 3_600_000
    milliseconds -= hours * 3_600_000
    minutes = milliseconds // 60_000
    milliseconds -= minutes * 60_000
    seconds = milliseconds // 1_000
    milliseconds -= seconds * 1_000
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{seconds:02d}{decimal_marker}{milliseconds:03d}"


def _plain(value):
    """numpy scalars → Python numbers (json cannot write them)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    return value


def segment_dict(segment) -> dict:
    if isinstance(segment, dict):
        d = dict(segment)
    elif hasattr(segment, "to_dict"):
        d = segment.to_dict()
    else:
        d = {"start": segment.start, "end": segment.end, "text": segment.text, "tokens": list(segment.tokens)}
    out = {k: _plain(v) for k, v in d.items()}
    if "tokens" in out:
        out["tokens"] = [int(t) for t in out["tokens"]]
    return out


def result_dict(result: dict) -> dict:
    """The JSON-able part of a transcribe() result, as openai returns it: text, segments, language."""
    return {"text": result["text"], "segments": [segment_dict(s) for s in result["segments"]],
            "language": result.get("language")}


def write_txt(result: dict, file: TextIO) -> None:
    for segment in result_dict(result)["segments"]:
        print(segment["text"].strip(), file=file, flush=True)


def _cues(result: dict, always_include_hours: bool, decimal_marker: str):
    for segment in result_dict(result)["segments"]:
        yield (format_timestamp(segment["start"], always_include_hours, decimal_marker),
               format_timestamp(segment["end"], always_include_hours, decimal_marker),
               segment["text"].strip().replace("-->", "->"))


def write_vtt(result: dict, file: TextIO) -> None:
    print("WEBVTT\n", file=file)
    for start, end, text in _cues(result, False, "."):
        print(f"{start} --> {end}\n{text}\n", file=file, flush=True)


def write_srt(result: dict, file: TextIO) -> None:
    for i, (start, end, text) in enumerate(_cues(result, True, ","), start=1):
        print(f"{i}\n{start} --> {end}\n{text}\n", file=file, flush=True)


def write_tsv(result: dict, file: TextIO) -> None:
    """<start ms>\\t<end ms>\\t<text> lines under a "start\\tend\\ttext" header (integer milliseconds)."""
    print("start", "end", "text", sep="\t", file=file)
    for segment in result_dict(result)["segments"]:
        print(round(1000 * segment["start"]), file=file, end="\t")
        print(round(1000 * segment["end"]), file=file, end="\t")
        print(segment["text"].strip().replace("\t", " "), file=file, flush=True)


def write_json(result: dict, file: TextIO) -> None:
    json.dump(result_dict(result), file)


WRITERS = {"txt": write_txt, "vtt": write_vtt, "srt": write_srt, "tsv": write_tsv, "json": write_json}


def formats_for(output_format: str) -> list[str]:
    """"all" → every format (openai's order: txt, vtt, srt, tsv, json); else the one named."""
    if output_format == "all":
        return list(FORMATS)
    if output_format not in WRITERS:
        raise ValueError(f"unknown output format {output_format!r}; use one of {', '.join(FORMATS)} or all")
    return [output_format]


def render(result: dict, output_format: str) -> str:
    """One format as a string."""
    import io

    buf = io.StringIO()
    WRITERS[output_format](result, buf)
    return buf.getvalue()


def write_result(result: dict, audio_path, output_dir, output_format: str = "all") -> list[str]:
    """Write ``<output_dir>/<audio stem>.<ext>`` for each format (openai's ResultWriter naming); returns the paths."""
    base = os.path.splitext(os.path.basename(str(audio_path)))[0]
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for fmt in formats_for(output_format):
        path = os.path.join(str(output_dir), f"{base}.{fmt}")
        with open(path, "w", encoding="utf-8") as f:
            WRITERS[fmt](result, f)
        paths.append(path)
    return paths
