"""Word timestamps, following openai/whisper's timing.py: the alignment heads' cross-attention over the window's
text tokens, softmax, normalized per head, median-filtered (width 7), averaged, then dynamic time warping between
tokens and 20 ms audio frames; words split at spaces (or at unicode boundaries for zh/ja/th/lo/my/yue), punctuation
merged into its neighbour, and the same duration heuristics as openai's ``add_word_timestamps``.

The model is anything with ``align(tokens, audio) -> (logits (t, vocab), scores (heads, t, n_audio))``: the
compiled artifact (its ``alignment`` graph) and the numpy reference both are. numpy and the standard library only.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import numpy as np

from .audio import HOP_LENGTH, SAMPLE_RATE

TOKENS_PER_SECOND = SAMPLE_RATE / HOP_LENGTH / 2  # 50: one audio frame of the encoder is 20 ms
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
NO_SPACE_LANGUAGES = {"zh", "ja", "th", "lo", "my", "yue"}


@dataclass
class WordTiming:
    word: str
    tokens: list[int] = field(default_factory=list)
    start: float = 0.0
    end: float = 0.0
    probability: float = 0.0


def median_filter(x: np.ndarray, filter_width: int) -> np.ndarray:
    """A median filter of odd width along the last axis, reflect-padded (openai's median_filter)."""
    pad = filter_width // 2
    if x.shape[-1] <= pad:
        return x
    xp = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(xp, filter_width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def _backtrace(trace: np.ndarray) -> np.ndarray:
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    result = []
    while i > 0 or j > 0:
        result.append((i - 1, j - 1))
        if trace[i, j] == 0:
            i, j = i - 1, j - 1
        elif trace[i, j] == 1:
            i -= 1
        elif trace[i, j] == 2:
            j -= 1
        else:
            raise ValueError("Unexpected trace[i, j]")
    return np.array(result)[::-1, :].T


def dtw(x: np.ndarray) -> np.ndarray:
    """openai's dtw_cpu (cost in float32, the same tie-breaking), vectorized along anti-diagonals: the cells with
    i + j = s depend only on the diagonals s - 1 and s - 2. Returns (text_indices, time_indices)."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    cost[0, 0] = 0
    x = np.asarray(x, dtype=np.float64)
    for s in range(2, n + m + 1):
        i = np.arange(max(1, s - m), min(n, s - 1) + 1)
        j = s - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        c = np.where(t == 0, c0, np.where(t == 1, c1, c2))
        cost[i, j] = x[i - 1, j - 1] + c
        trace[i, j] = t
    return _backtrace(trace)


def _decode_all(tokenizer, ids: list[int]) -> str:
    """tiktoken's decode of text and special tokens alike (openai's decode_with_timestamps on text + <|eot|>)."""
    out, run = [], []
    for i in ids:
        if int(i) < tokenizer.eot:
            run.append(i)
            continue
        out.append(tokenizer.decode(run))
        run = []
        if int(i) >= tokenizer.timestamp_begin:
            out.append(f"<|{(int(i) - tokenizer.timestamp_begin) * 0.02:.2f}|>")
        else:
            out.append(tokenizer.vocab[int(i)] if int(i) < len(tokenizer.vocab) else "")
    out.append(tokenizer.decode(run))
    return "".join(out)


def split_tokens_on_unicode(tokenizer, tokens: list[int]):
    decoded_full = _decode_all(tokenizer, tokens)
    replacement_char = "\ufffd"
    words, word_tokens, current, offset = [], [], [], 0
    for token in tokens:
        current.append(token)
        decoded = _decode_all(tokenizer, current)
        if (replacement_char not in decoded
                or decoded_full[offset + decoded.index(replacement_char)] == replacement_char):
            words.append(decoded)
            word_tokens.append(current)
            current = []
            offset += len(decoded)
    return words, word_tokens


def split_tokens_on_spaces(tokenizer, tokens: list[int]):
    subwords, subword_tokens_list = split_tokens_on_unicode(tokenizer, tokens)
    words, word_tokens = [], []
    for subword, subword_tokens in zip(subwords, subword_tokens_list):
        special = subword_tokens[0] >= tokenizer.eot
        with_space = subword.startswith(" ")
        punctuation = subword.strip() in string.punctuation
        if special or with_space or punctuation or len(words) == 0:
            words.append(subword)
            word_tokens.append(subword_tokens)
        else:
            words[-1] = words[-1] + subword
            word_tokens[-1].extend(subword_tokens)
    return words, word_tokens


def split_to_word_tokens(tokenizer, tokens: list[int], language: str | None):
    if language in NO_SPACE_LANGUAGES:
        return split_tokens_on_unicode(tokenizer, tokens)
    return split_tokens_on_spaces(tokenizer, tokens)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def find_alignment(model, tokenizer, text_tokens: list[int], audio, num_frames: int, sot_sequence: list[int],
                   language: str | None, medfilt_width: int = 7, qk_scale: float = 1.0) -> list[WordTiming]:
    """openai's timing.find_alignment: each word of ``text_tokens`` with its start/end (seconds from the window's
    start) and mean token probability."""
    if len(text_tokens) == 0:
        return []
    tokens = [*sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    logits, scores = model.align(np.array(tokens, dtype=np.int64), audio)
    token_probs = _softmax(np.asarray(logits)[len(sot_sequence):, :tokenizer.eot])
    text_token_probs = token_probs[np.arange(len(text_tokens)), text_tokens].tolist()

    weights = np.asarray(scores, dtype=np.float64)[:, :, :num_frames // 2]  # heads * tokens * frames
    weights = _softmax(weights * qk_scale)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)  # unbiased=False
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(axis=0)[len(sot_sequence):-1]
    text_indices, time_indices = dtw(-matrix)

    words, word_tokens = split_to_word_tokens(tokenizer, list(text_tokens) + [tokenizer.eot], language)
    if len(word_tokens) <= 1:
        return []
    word_boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    start_times = jump_times[word_boundaries[:-1]]
    end_times = jump_times[word_boundaries[1:]]
    word_probabilities = [float(np.mean(text_token_probs[i:j]))
                          for i, j in zip(word_boundaries[:-1], word_boundaries[1:])]
    return [WordTiming(word, tokens, float(start), float(end), probability)
            for word, tokens, start, end, probability in zip(words, word_tokens, start_times, end_times,
                                                             word_probabilities)]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """openai's merge_punctuations: opening marks join the next word, closing marks the previous one."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(*, segments: list, model, tokenizer, audio, num_frames: int, time_offset: float,
                        sot_sequence: list[int], language: str | None, last_speech_timestamp: float,
                        prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS, **kwargs) -> None:
    """openai's add_word_timestamps on one window's segments (objects with start, end, tokens; ``words`` is set to
    a list of {word, start, end, probability} dicts, and start/end are moved to the words' as openai does)."""
    if len(segments) == 0:
        return
    text_tokens_per_segment = [[t for t in s.tokens if t < tokenizer.eot] for s in segments]
    text_tokens = [t for ts in text_tokens_per_segment for t in ts]
    alignment = find_alignment(model, tokenizer, text_tokens, audio, num_frames, sot_sequence, language, **kwargs)
    word_durations = np.array([t.end - t.start for t in alignment])
    word_durations = word_durations[word_durations.nonzero()]
    median_duration = float(np.median(word_durations)) if len(word_durations) > 0 else 0.0
    median_duration = min(0.7, median_duration)
    max_duration = median_duration * 2

    # hack (openai's): truncate long words at sentence boundaries
    if len(word_durations) > 0:
        sentence_end_marks = ".。!！?？"
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in sentence_end_marks:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in sentence_end_marks:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    word_index = 0
    for segment, seg_tokens in zip(segments, text_tokens_per_segment):
        saved_tokens = 0
        words = []
        while word_index < len(alignment) and saved_tokens < len(seg_tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append({"word": timing.word, "start": round(time_offset + timing.start, 2),
                              "end": round(time_offset + timing.end, 2), "probability": timing.probability})
            saved_tokens += len(timing.tokens)
            word_index += 1

        # hack (openai's): truncate long words at segment boundaries
        if len(words) > 0:
            # the first and second word after a pause are not longer than twice the median word duration
            if words[0]["end"] - last_speech_timestamp > median_duration * 4 and (
                    words[0]["end"] - words[0]["start"] > max_duration
                    or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2)):
                if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
                    boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
                    words[0]["end"] = words[1]["start"] = boundary
                words[0]["start"] = max(0, words[0]["end"] - max_duration)

            # prefer the segment-level start timestamp if the first word is too long
            if segment.start < words[0]["end"] and segment.start - 0.5 > words[0]["start"]:
                words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment.start))
            else:
                segment.start = words[0]["start"]

            # prefer the segment-level end timestamp if the last word is too long
            if segment.end > words[-1]["start"] and segment.end + 0.5 < words[-1]["end"]:
                words[-1]["end"] = max(words[-1]["start"] + median_duration, segment.end)
            else:
                segment.end = words[-1]["end"]

            last_speech_timestamp = segment.end
        segment.words = words


def get_end(segments: list) -> float | None:
    """The end of the last word, else of the last segment (openai's get_end)."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s.words or [])),
                segments[-1].end if segments else None)
