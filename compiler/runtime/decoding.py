"""Greedy decoding and the 30 s window loop, following openai/whisper's decoding.py and transcribe.py.

Logit rules are small classes applied in order (suppress blank, suppress tokens, timestamp rules), as in openai's
``LogitFilter``s. The model is anything with ``encode(mel_window)`` and ``decode(tokens, audio, cache)``: the
compiled MAX artifact (``runtime.model``) and the numpy float64 reference (``compiler.reference``) both are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .audio import CHUNK_LENGTH, HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from .tokenizer import Tokenizer


@dataclass
class DecodingOptions:
    language: str | None = None  # None: detect (multilingual models); ignored by .en models
    task: str = "transcribe"
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    suppress_blank: bool = True
    sample_len: int | None = None  # default: n_text_ctx // 2


@dataclass
class DecodingResult:
    tokens: list[int]
    text: str
    sum_logprob: float
    avg_logprob: float
    no_speech_prob: float
    language: str | None


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class SuppressBlank:
    def __init__(self, tokenizer: Tokenizer, sample_begin: int):
        self.ids = [tokenizer.space, tokenizer.eot]
        self.sample_begin = sample_begin

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = -np.inf


class SuppressTokens:
    def __init__(self, ids: list[int]):
        self.ids = list(ids)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, self.ids] = -np.inf


class ApplyTimestampRules:
    def __init__(self, tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: int | None):
        self.tk = tokenizer
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        tb, eot = self.tk.timestamp_begin, self.tk.eot
        logits[:, self.tk.no_timestamps] = -np.inf  # handled by without_timestamps
        # timestamps come in pairs, except directly before EOT
        for k in range(tokens.shape[0]):
            seq = tokens[k, self.sample_begin:]
            last_was_ts = len(seq) >= 1 and seq[-1] >= tb
            penultimate_was_ts = len(seq) < 2 or seq[-2] >= tb
            if last_was_ts:
                if penultimate_was_ts:  # has to be non-timestamp
                    logits[k, tb:] = -np.inf
                else:  # cannot be normal text tokens
                    logits[k, :eot] = -np.inf
            ts = seq[seq >= tb]
            if ts.size > 0:
                # timestamps never decrease, and each segment has a nonzero length (no infinite loops)
                last = ts[-1] if last_was_ts and not penultimate_was_ts else ts[-1] + 1
                logits[k, tb:last] = -np.inf
        if tokens.shape[1] == self.sample_begin:
            logits[:, :tb] = -np.inf  # a sample starts with a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, tb + self.max_initial_timestamp_index + 1:] = -np.inf
        # if the timestamps together are likelier than any text token, take a timestamp
        logprobs = _log_softmax(logits)
        for k in range(tokens.shape[0]):
            ts_lp = logprobs[k, tb:]
            m = ts_lp.max()
            ts_logprob = m + np.log(np.exp(ts_lp - m).sum()) if np.isfinite(m) else -np.inf
            if ts_logprob > logprobs[k, :tb].max():
                logits[k, :tb] = -np.inf


def suppress_ids(tokenizer: Tokenizer, checkpoint_suppress: list[int]) -> list[int]:
    """openai's suppress_tokens="-1": the checkpoint's non-speech list plus the task/special tokens."""
    ids = {t for t in checkpoint_suppress if t >= 0}
    ids |= {tokenizer.translate, tokenizer.transcribe, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm,
            tokenizer.no_speech}
    return sorted(ids)


def sot_sequence(tokenizer: Tokenizer, language: str | None, task: str, without_timestamps: bool) -> list[int]:
    seq = [tokenizer.sot]
    if tokenizer.languages:  # multilingual
        seq.append(tokenizer.languages[language or "en"])
        seq.append(tokenizer.translate if task == "translate" else tokenizer.transcribe)
    if without_timestamps:
        seq.append(tokenizer.no_timestamps)
    return seq


def detect_language(model, tokenizer: Tokenizer, audio_features) -> str:
    """The language token with the highest logit after <|startoftranscript|> (multilingual models only)."""
    logits, _ = model.decode(np.array([[tokenizer.sot]], dtype=np.int64), audio_features, None)
    codes = list(tokenizer.languages)
    ids = [tokenizer.languages[c] for c in codes]
    return codes[int(np.argmax(logits[0, -1, ids]))]


def decode_window(model, tokenizer: Tokenizer, mel_window: np.ndarray, options: DecodingOptions,
                  suppress: list[int], prompt: list[int] | None = None, n_text_ctx: int = 448,
                  n_audio_ctx: int = 1500) -> DecodingResult:
    """Greedy decoding (temperature 0) of one 30 s mel window (n_mels, 3000)."""
    audio = model.encode(mel_window[None].astype(np.float32))
    language = options.language
    if tokenizer.languages and language is None:
        language = detect_language(model, tokenizer, audio)
    sot_seq = sot_sequence(tokenizer, language, options.task, options.without_timestamps)
    initial = list(sot_seq)
    if prompt:
        initial = [tokenizer.sot_prev] + list(prompt)[-(n_text_ctx // 2 - 1):] + initial
    sample_begin = len(initial)
    sot_index = initial.index(tokenizer.sot)
    sample_len = options.sample_len or n_text_ctx // 2
    precision = CHUNK_LENGTH / n_audio_ctx
    filters: list = []
    if options.suppress_blank:
        filters.append(SuppressBlank(tokenizer, sample_begin))
    filters.append(SuppressTokens(suppress))
    if not options.without_timestamps:
        max_idx = None
        if options.max_initial_timestamp:
            max_idx = int(round(options.max_initial_timestamp / precision))
        filters.append(ApplyTimestampRules(tokenizer, sample_begin, max_idx))

    tokens = np.array([initial], dtype=np.int64)
    feed = tokens
    cache = None
    sum_logprob = 0.0
    no_speech_prob = float("nan")
    for i in range(sample_len):
        logits_all, cache = model.decode(feed, audio, cache)
        if i == 0:
            probs_at_sot = np.exp(_log_softmax(logits_all[:, sot_index]))
            no_speech_prob = float(probs_at_sot[0, tokenizer.no_speech])
        logits = np.array(logits_all[:, -1], dtype=np.float32)  # a copy: filters write into it
        for f in filters:
            f.apply(logits, tokens)
        next_token = int(np.argmax(logits[0]))
        sum_logprob += float(_log_softmax(logits)[0, next_token])
        tokens = np.concatenate([tokens, [[next_token]]], axis=1)
        if next_token == tokenizer.eot or tokens.shape[1] > n_text_ctx:
            break
        feed = tokens[:, -1:]
    sampled = tokens[0, sample_begin:].tolist()
    if tokenizer.eot in sampled:
        sampled = sampled[:sampled.index(tokenizer.eot)]
    text = tokenizer.decode(sampled).strip()
    return DecodingResult(tokens=sampled, text=text, sum_logprob=sum_logprob,
                          avg_logprob=sum_logprob / (len(sampled) + 1), no_speech_prob=no_speech_prob,
                          language=language)


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)


def transcribe(model, tokenizer: Tokenizer, mel: np.ndarray, options: DecodingOptions, suppress: list[int],
               n_text_ctx: int = 448, n_audio_ctx: int = 1500, condition_on_previous_text: bool = True) -> dict:
    """openai's sequential 30 s window loop over a whole-file mel (n_mels, frames incl. 30 s of padding).

    Temperature 0 only (no fallback yet): segments are cut at timestamp pairs and the window advances to the last
    timestamp, with the previous windows' text as the prompt.
    """
    content_frames = mel.shape[-1] - N_FRAMES
    input_stride = N_FRAMES // n_audio_ctx
    precision = input_stride * HOP_LENGTH / SAMPLE_RATE
    tb = tokenizer.timestamp_begin
    seek, all_tokens, prompt_reset_since = 0, [], 0
    segments: list[Segment] = []
    windows: list[DecodingResult] = []
    while seek < content_frames:
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        segment_size = min(N_FRAMES, content_frames - seek)
        window = mel[:, seek:seek + segment_size]
        if window.shape[-1] < N_FRAMES:
            window = np.pad(window, ((0, 0), (0, N_FRAMES - window.shape[-1])))
        result = decode_window(model, tokenizer, window, options, suppress,
                               prompt=all_tokens[prompt_reset_since:] if condition_on_previous_text else None,
                               n_text_ctx=n_text_ctx, n_audio_ctx=n_audio_ctx)
        if options.language is None and result.language is not None:
            options = DecodingOptions(**{**options.__dict__, "language": result.language})
        windows.append(result)
        toks = np.array(result.tokens, dtype=np.int64)
        is_ts = toks >= tb
        single_timestamp_ending = is_ts[-2:].tolist() == [False, True]
        consecutive = (np.where(is_ts[:-1] & is_ts[1:])[0] + 1).tolist()
        current: list[Segment] = []
        if consecutive:
            slices = consecutive + ([len(toks)] if single_timestamp_ending else [])
            last = 0
            for cur in slices:
                piece = toks[last:cur]
                current.append(Segment(start=time_offset + (int(piece[0]) - tb) * precision,
                                       end=time_offset + (int(piece[-1]) - tb) * precision,
                                       text=tokenizer.decode(piece), tokens=piece.tolist()))
                last = cur
            if single_timestamp_ending:
                seek += segment_size
            else:
                seek += (int(toks[last - 1]) - tb) * input_stride
        else:
            duration = segment_size * HOP_LENGTH / SAMPLE_RATE
            ts = toks[is_ts]
            if ts.size > 0 and int(ts[-1]) != tb:
                duration = (int(ts[-1]) - tb) * precision
            current.append(Segment(start=time_offset, end=time_offset + duration, text=tokenizer.decode(toks),
                                   tokens=toks.tolist()))
            seek += segment_size
        for s in current:  # instantaneous or empty segments carry no text
            if s.start == s.end or not s.text.strip():
                s.text, s.tokens = "", []
        segments.extend(current)
        all_tokens.extend(t for s in current for t in s.tokens)
    text = "".join(s.text for s in segments)
    return {"text": text.strip(), "segments": segments, "windows": windows, "language": options.language}
