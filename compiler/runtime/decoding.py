"""Greedy/sampled decoding and the 30 s window loop, following openai/whisper's decoding.py and transcribe.py.

Each window is decoded at the first temperature of ``(0.0, 0.2, ..., 1.0)`` and re-decoded at the next one when the
text is too repetitive (gzip compression ratio > 2.4) or too improbable (average log-prob < -1.0), unless the window
looks like silence (no-speech probability > 0.6 with a low log-prob): then it is skipped, as in openai's
``decode_with_fallback`` and no-speech check. Temperature 0 is greedy (argmax); above 0 the next token is sampled
from softmax(logits / T) with a seeded numpy Generator, so results are reproducible.

Logit rules are small classes applied in order (suppress blank, suppress tokens, timestamp rules), as in openai's
``LogitFilter``s. The model is anything with ``encode(mel_window)`` and ``decode(tokens, audio, cache)``: the
compiled MAX artifact (``runtime.model``) and the numpy float64 reference (``compiler.reference``) both are. A model
that also has ``greedy_step`` (the compiled one) gets the filters as data (``pick_rules``) and picks greedy tokens
inside its decoder graph, so no logits reach the host; after the prompt's call its step graph also makes the
timestamp rules from the tokens it keeps, so ``greedy_steps`` runs several steps per host round trip
(``graph_picks``).

Many files at once: each file's window loop (``_window_loop``) is a generator that yields a ``WindowRequest`` per
decoding attempt; ``transcribe_many`` runs up to ``batch_size`` of them and decodes their requests together, one
batch per ``batch_key`` (``decode_requests``, ``decode_windows``). ``transcribe`` is the same driver with one file.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from . import timing
from .audio import CHUNK_LENGTH, HOP_LENGTH, N_FRAMES, SAMPLE_RATE, AudioError
from .tokenizer import Tokenizer


@dataclass
class DecodingOptions:
    language: str | None = None  # None: detect (multilingual models); ignored by .en models
    task: str = "transcribe"
    temperature: float = 0.0  # 0: greedy; > 0: sample from softmax(logits / temperature)
    without_timestamps: bool = False
    max_initial_timestamp: float = 1.0
    suppress_blank: bool = True
    sample_len: int | None = None  # default: n_text_ctx // 2
    beam_size: int | None = None  # beams at temperature 0 (openai's BeamSearchDecoder); None: greedy
    best_of: int | None = None  # independent samples at temperature > 0, the likeliest kept; None: one
    patience: float | None = None  # beam search: stop after round(beam_size * patience) finished candidates
    length_penalty: float | None = None  # ranking: None divides the log-prob by the length, else ((5+n)/6)**alpha


@dataclass
class DecodingResult:
    tokens: list[int]
    text: str
    sum_logprob: float
    avg_logprob: float
    no_speech_prob: float
    language: str | None
    temperature: float = 0.0
    compression_ratio: float = float("nan")


def compression_ratio(text: str) -> float:
    """openai's utils.compression_ratio: len(utf-8 bytes) / len(zlib-compressed bytes)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data))


def _sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """One draw from softmax(logits / temperature) (openai: Categorical(logits=logits / T).sample())."""
    z = logits.astype(np.float64) / temperature
    z = np.exp(z - z.max())  # suppressed tokens (-inf) get probability 0
    c = np.cumsum(z)
    return min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), len(c) - 1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


OPEN_END = 1 << 40  # "to the end of the vocabulary" for an interval's upper bound
# columns of the decoder graphs' ``rules`` input (batch, 14) int64: four token-id intervals [lo, hi) masked to -inf,
# then 1 to apply openai's timestamp rules, the row of the prompt holding <|startoftranscript|> (for the no-speech
# probability), the <|nospeech|> id, the first timestamp id, the sample's first position (sample_begin) and
# <|endoftext|> (the last two: the step graph's own timestamp rules, graph.WhisperGraphs.step_rules)
PICK_RULES = 14


class LogitFilter:
    """openai's LogitFilter, as data: ids masked on every step (``suppress``), token-id intervals masked for this
    row (``intervals``) and, for the timestamp rules, the "timestamps likelier than text" test (``ts_rule``).

    ``apply`` runs them on numpy logits; the decoder graph runs the same data in its greedy ``pick``, so the rules
    exist once."""

    suppress: tuple[int, ...] = ()
    ts_rule = False

    def intervals(self, row: np.ndarray) -> list[tuple[int, int]]:
        return []

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if self.suppress:
            logits[:, list(self.suppress)] = -np.inf
        for k in range(tokens.shape[0]):
            for lo, hi in self.intervals(tokens[k]):
                logits[k, lo:hi] = -np.inf


class SuppressBlank(LogitFilter):
    def __init__(self, tokenizer: Tokenizer, sample_begin: int):
        self.ids = [tokenizer.space, tokenizer.eot]
        self.sample_begin = sample_begin

    def intervals(self, row: np.ndarray) -> list[tuple[int, int]]:
        return [(i, i + 1) for i in self.ids] if len(row) == self.sample_begin else []


class SuppressTokens(LogitFilter):
    def __init__(self, ids: list[int]):
        self.suppress = tuple(ids)


class ApplyTimestampRules(LogitFilter):
    ts_rule = True

    def __init__(self, tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: int | None):
        self.tk = tokenizer
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index
        self.suppress = (tokenizer.no_timestamps,)  # handled by without_timestamps

    def intervals(self, row: np.ndarray) -> list[tuple[int, int]]:
        tb, eot = self.tk.timestamp_begin, self.tk.eot
        out = []
        # timestamps come in pairs, except directly before EOT
        seq = row[self.sample_begin:]
        last_was_ts = len(seq) >= 1 and seq[-1] >= tb
        penultimate_was_ts = len(seq) < 2 or seq[-2] >= tb
        if last_was_ts:
            # two timestamps in a row: text must follow; one: cannot be normal text tokens
            out.append((tb, OPEN_END) if penultimate_was_ts else (0, eot))
        ts = seq[seq >= tb]
        if ts.size > 0:
            # timestamps never decrease, and each segment has a nonzero length (no infinite loops)
            last = int(ts[-1]) if last_was_ts and not penultimate_was_ts else int(ts[-1]) + 1
            out.append((tb, last))
        if len(row) == self.sample_begin:
            out.append((0, tb))  # a sample starts with a timestamp
            if self.max_initial_timestamp_index is not None:
                out.append((tb + self.max_initial_timestamp_index + 1, OPEN_END))
        return out

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        super().apply(logits, tokens)
        # if the timestamps together are likelier than any text token, take a timestamp
        tb = self.tk.timestamp_begin
        logprobs = _log_softmax(logits)
        for k in range(tokens.shape[0]):
            ts_lp = logprobs[k, tb:]
            m = ts_lp.max()
            ts_logprob = m + np.log(np.exp(ts_lp - m).sum()) if np.isfinite(m) else -np.inf
            if ts_logprob > logprobs[k, :tb].max():
                logits[k, :tb] = -np.inf


def pick_rules(filters: list[LogitFilter], tokens: np.ndarray, sot_index: int, tokenizer: Tokenizer) -> np.ndarray:
    """The filters' per-row data for the decoder graph's in-graph pick (``PICK_RULES`` columns). ``sot_index``
    indexes the tokens of this call: the prompt's SOT position on the first call, 0 on later ones (t = 1). On the
    prompt's call ``tokens`` is the prompt, so its length is where the sample begins (the step graph's timestamp
    rules read that column; see ``step_rules``)."""
    rules = np.zeros((tokens.shape[0], PICK_RULES), dtype=np.int64)
    for k in range(tokens.shape[0]):
        ivs = [iv for f in filters for iv in f.intervals(tokens[k])]
        if len(ivs) > 4:
            raise ValueError(f"{len(ivs)} masked intervals; the decoder graph takes 4")
        for j, (lo, hi) in enumerate(ivs):
            rules[k, 2 * j:2 * j + 2] = lo, hi
    rules[:, 8] = any(f.ts_rule for f in filters)
    rules[:, 9] = sot_index
    rules[:, 10] = tokenizer.no_speech
    rules[:, 11] = tokenizer.timestamp_begin
    rules[:, 12] = tokens.shape[1]
    rules[:, 13] = tokenizer.eot
    return rules


def step_rules(prompt_rules: np.ndarray) -> np.ndarray:
    """The rules of every step after the prompt's call (``pick_rules``' on it): no intervals from the host (the step
    graph makes the timestamp rules from the tokens it has seen; suppress-blank and the initial timestamp rules
    hold only at the sample's first token) and the no-speech row 0."""
    rules = np.array(prompt_rules)
    rules[:, :8] = 0
    rules[:, 9] = 0
    return rules


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


def detect_languages(model, tokenizer: Tokenizer, audio_features, n: int = 1) -> list[str]:
    """For each of the ``n`` rows of an encoder output, the language token with the highest logit after
    <|startoftranscript|> (multilingual models only). A compiled model picks it in its greedy ``step`` graph with
    every other token suppressed (the same argmax; its whole-logits decoder graph then need not load)."""
    codes = list(tokenizer.languages)
    ids = [tokenizer.languages[c] for c in codes]
    sot = np.full((n, 1), tokenizer.sot, dtype=np.int64)
    if hasattr(model, "greedy_step"):
        rules = np.zeros((n, PICK_RULES), dtype=np.int64)  # no intervals, no timestamp rule
        picks = model.greedy_step(sot, audio_features, None, rules, _all_but(model.dims["n_vocab"], tuple(ids)))[0]
        code = dict(zip(ids, codes))
        return [code[int(t)] for t in picks]
    logits, _ = model.decode(sot, audio_features, None)
    return [codes[int(np.argmax(logits[k, -1, ids]))] for k in range(n)]


@functools.lru_cache(maxsize=4)
def _all_but(n_vocab: int, keep: tuple[int, ...]) -> tuple[int, ...]:
    """Every token id but ``keep``, as a suppress set."""
    return tuple(sorted(set(range(n_vocab)) - set(keep)))


def detect_language(model, tokenizer: Tokenizer, audio_features) -> str:
    """The language of a batch-1 window (``detect_languages``)."""
    return detect_languages(model, tokenizer, audio_features, 1)[0]


def _verify_group_options(options: DecodingOptions) -> None:
    """openai's DecodingTask._verify_options for the group settings."""
    if options.beam_size is not None and options.best_of is not None:
        raise ValueError("beam_size and best_of can't be given together")
    if options.temperature == 0 and options.best_of is not None:
        raise ValueError("best_of with greedy sampling (T=0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise ValueError("patience requires beam_size to be given")
    if options.length_penalty is not None and not 0 <= options.length_penalty <= 1:
        raise ValueError("length_penalty (alpha) should be a value between 0 and 1")
    for name in ("beam_size", "best_of"):
        value = getattr(options, name)
        if value is not None and (int(value) != value or value < 1):
            raise ValueError(f"{name} must be a positive integer, not {value!r}")


class BeamSearchDecoder:
    """openai's BeamSearchDecoder for one audio: ``beam_size`` live beams; candidates that end in <|endoftext|> are
    collected until ``round(beam_size * patience)`` of them are finished."""

    def __init__(self, beam_size: int, eot: int, patience: float | None = None):
        self.beam_size, self.eot = beam_size, eot
        self.patience = patience or 1.0
        self.max_candidates = round(beam_size * self.patience)
        if self.max_candidates <= 0:
            raise ValueError(f"Invalid beam size ({beam_size}) or patience ({patience})")
        self.finished: dict[tuple, float] = {}

    def update(self, tokens: np.ndarray, logits: np.ndarray, sum_logprobs: np.ndarray):
        """One step: (beam, t) tokens and (beam, V) filtered logits → (beam, t + 1) tokens, the source beam of
        each row (to reorder the KV cache by), and whether enough candidates have finished. ``sum_logprobs`` is
        updated in place."""
        logprobs = _log_softmax(logits)
        scores: dict[tuple, float] = {}
        sources: dict[tuple, int] = {}
        for j in range(self.beam_size):  # STEP 1: the cumulative log-prob of every candidate
            prefix = tokens[j].tolist()
            top = np.argsort(-logprobs[j], kind="stable")[:self.beam_size + 1]  # torch topk, descending
            for token in top.tolist():
                sequence = tuple(prefix + [token])
                scores[sequence] = float(sum_logprobs[j] + logprobs[j, token])
                sources[sequence] = j
        next_tokens, source_indices, finished = [], [], {}
        for sequence in sorted(scores, key=scores.get, reverse=True):  # STEP 2: keep the top beam_size
            if sequence[-1] == self.eot:
                finished[sequence] = scores[sequence]
            else:
                sum_logprobs[len(next_tokens)] = scores[sequence]
                next_tokens.append(sequence)
                source_indices.append(sources[sequence])
                if len(next_tokens) == self.beam_size:
                    break
        for sequence in sorted(finished, key=finished.get, reverse=True):
            if len(self.finished) >= self.max_candidates:
                break  # the candidate list is full
            self.finished[sequence] = finished[sequence]
        completed = len(self.finished) >= self.max_candidates
        return np.array(next_tokens, dtype=np.int64), source_indices, completed

    def finalize(self, tokens: np.ndarray, sum_logprobs: np.ndarray):
        """The finished candidates, topped up with the best unfinished beams when fewer than beam_size finished."""
        sequences = dict(self.finished)
        if len(sequences) < self.beam_size:
            for j in list(np.argsort(sum_logprobs))[::-1]:
                sequences[tuple(tokens[j].tolist() + [self.eot])] = float(sum_logprobs[j])
                if len(sequences) >= self.beam_size:
                    break
        return [list(s) for s in sequences], list(sequences.values())


def rank_candidates(tokens: list[list[int]], sum_logprobs: list[float], length_penalty: float | None) -> int:
    """openai's MaximumLikelihoodRanker: the index of the candidate with the best length-normalized log-prob
    (divided by the length, or by the Google NMT penalty ((5 + length) / 6) ** length_penalty)."""
    scores = []
    for logprob, t in zip(sum_logprobs, tokens):
        length = len(t)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        scores.append(logprob / penalty)
    return int(np.argmax(scores))


def decode_group(model, tokenizer: Tokenizer, audio, initial: list[int], sample_begin: int, sot_index: int,
                 filters: list, options: DecodingOptions, language: str | None, n_text_ctx: int, sample_len: int,
                 rng: np.random.Generator | None) -> DecodingResult:
    """openai's DecodingTask with a group of ``beam_size`` beams or ``best_of`` samples decoded as one batch.

    The prompt is decoded once at batch 1 and its KV cache repeated to the group (the same numbers as openai's
    decoding the prompt on every row); each beam-search step reorders the cache by the beams it kept
    (``model.reorder_cache``), and the window's cross-attention K/V is repeated once (``model.repeat_audio``)."""
    n = int(options.beam_size or options.best_of)
    temperature = float(options.temperature)
    eot = tokenizer.eot
    beam = BeamSearchDecoder(n, eot, options.patience) if options.beam_size else None
    logits_all, cache = model.decode(np.array([initial], dtype=np.int64), audio, None)
    no_speech_prob = float(np.exp(_log_softmax(logits_all[:, sot_index]))[0, tokenizer.no_speech])
    audio_n = model.repeat_audio(audio, n)
    cache = model.reorder_cache(cache, [0] * n)
    logits_last = np.repeat(np.asarray(logits_all[:, -1], dtype=np.float32), n, axis=0)
    tokens = np.array([initial] * n, dtype=np.int64)
    sum_logprobs = np.zeros(n, dtype=np.float64)
    for i in range(sample_len):
        if i > 0:
            logits_all, cache = model.decode(tokens[:, -1:], audio_n, cache)
            logits_last = np.array(logits_all[:, -1], dtype=np.float32)  # a copy: filters write into it
        logits = logits_last
        for f in filters:
            f.apply(logits, tokens)
        if beam is not None:
            tokens, sources, completed = beam.update(tokens, logits, sum_logprobs)
            if sources != list(range(n)):
                cache = model.reorder_cache(cache, sources)
        else:  # openai's GreedyDecoder at temperature > 0: every row samples; a finished row keeps <|endoftext|>
            if temperature == 0:
                next_tokens = logits.argmax(axis=-1)
            else:
                next_tokens = np.array([_sample(logits[k], temperature, rng) for k in range(n)], dtype=np.int64)
            logprobs = _log_softmax(logits)
            done = tokens[:, -1] == eot
            sum_logprobs += np.where(done, 0.0, logprobs[np.arange(n), next_tokens])
            next_tokens[done] = eot
            tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
            completed = bool((tokens[:, -1] == eot).all())
        if completed or tokens.shape[1] > n_text_ctx:
            break
    if beam is not None:
        candidates, scores = beam.finalize(tokens, sum_logprobs)
    else:
        candidates = [row + [eot] for row in tokens.tolist()]
        scores = sum_logprobs.tolist()
    sampled = []
    for seq in candidates:  # between the first sampled token and the first <|endoftext|>
        tail = seq[sample_begin:]
        sampled.append(tail[:tail.index(eot)] if eot in tail else tail)
    best = rank_candidates(sampled, scores, options.length_penalty)
    toks, sum_logprob = sampled[best], scores[best]
    text = tokenizer.decode(toks).strip()
    return DecodingResult(tokens=toks, text=text, sum_logprob=sum_logprob, avg_logprob=sum_logprob / (len(toks) + 1),
                          no_speech_prob=no_speech_prob, language=language, temperature=temperature,
                          compression_ratio=compression_ratio(text))


@dataclass
class WindowRequest:
    """One attempt at one 30 s window, as a file's window loop (``transcribe_many``) asks for it: the mel window
    (n_mels, 3000), this attempt's options (temperature, beams...), the prompt (previous text) and the file's
    sampling Generator. ``audio``: the window's encoder output when the loop already has it (word timestamps share
    it between attempts); ``keep_audio``: hand the encoder output back with the result (for the alignment)."""

    mel: np.ndarray
    options: DecodingOptions
    prompt: list[int] = field(default_factory=list)
    rng: np.random.Generator | None = None
    audio: object = None
    keep_audio: bool = False
    time_offset: float = 0.0  # where the window starts in its file (progress reports)


def _initial_tokens(tokenizer: Tokenizer, options: DecodingOptions, language: str | None, prompt: list[int] | None,
                    n_text_ctx: int) -> list[int]:
    """openai's DecodingTask._get_initial_tokens: [<|startofprev|>, prompt tail] + the SOT sequence."""
    initial = sot_sequence(tokenizer, language, options.task, options.without_timestamps)
    if prompt:
        initial = [tokenizer.sot_prev] + list(prompt)[-(n_text_ctx // 2 - 1):] + initial
    return initial


def batch_key(request: WindowRequest, tokenizer: Tokenizer, n_text_ctx: int) -> tuple:
    """Requests with equal keys can share one decoder batch: the same initial length (so every row's cache grows in
    step and the filters' sample_begin / SOT index agree) and the same decoding settings. Beam search, best_of and
    requests that bring their own encoder output decode alone (a key of their own)."""
    o = request.options
    if (o.beam_size or o.best_of or 1) > 1 or request.audio is not None:
        return ("alone", id(request))
    length = len(_initial_tokens(tokenizer, o, o.language, request.prompt, n_text_ctx))
    return (length,) + tuple(getattr(o, f) for f in ("task", "temperature", "without_timestamps",
                                                     "max_initial_timestamp", "suppress_blank", "sample_len"))


def decode_window(model, tokenizer: Tokenizer, mel_window: np.ndarray, options: DecodingOptions,
                  suppress: list[int], prompt: list[int] | None = None, n_text_ctx: int = 448,
                  n_audio_ctx: int = 1500, rng: np.random.Generator | None = None,
                  audio=None) -> DecodingResult:
    """Decoding of one 30 s mel window (n_mels, 3000): greedy at options.temperature 0, else sampled with rng;
    beam search with options.beam_size, the best of options.best_of samples at temperature > 0.
    ``audio``: the window's ``model.encode`` output when the caller already has it."""
    request = WindowRequest(mel=mel_window, options=options, prompt=list(prompt or []), rng=rng)
    return decode_windows(model, tokenizer, [request], suppress, n_text_ctx, n_audio_ctx, audio=audio)[0]


def decode_windows(model, tokenizer: Tokenizer, requests: list[WindowRequest], suppress: list[int],
                   n_text_ctx: int = 448, n_audio_ctx: int = 1500, audio=None) -> list[DecodingResult]:
    """Decode windows of one batch key (``batch_key``) as one batch: the encoder runs once on the stacked windows
    (unless ``audio``, their encoder output, is given) and the decoder on every row at once. Each row keeps its own
    prompt, language and sampling Generator, and its result is the one it gets decoded alone: finished rows keep
    stepping (their picks are ignored) until every row has finished or the length limit is reached."""
    options = requests[0].options
    n_rows = len(requests)
    temperature = float(options.temperature)
    _verify_group_options(options)
    rngs = [r.rng if r.rng is not None or temperature == 0 else np.random.default_rng(0) for r in requests]
    if audio is None:
        audio = model.encode(np.stack([r.mel for r in requests]).astype(np.float32))
    languages = [r.options.language for r in requests]
    if tokenizer.languages and None in languages:
        detected = detect_languages(model, tokenizer, audio, n_rows)
        languages = [lang or detected[k] for k, lang in enumerate(languages)]
    initials = [_initial_tokens(tokenizer, r.options, languages[k], r.prompt, n_text_ctx)
                for k, r in enumerate(requests)]
    if len({len(i) for i in initials}) != 1:
        raise ValueError("rows of one decoder batch need initial token sequences of one length (see batch_key)")
    initial = initials[0]
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

    if (options.beam_size or options.best_of or 1) > 1:  # beam search, or best-of-n sampling
        if n_rows != 1:
            raise ValueError("beam search and best_of decode one window at a time (see batch_key)")
        return [decode_group(model, tokenizer, audio, initial, sample_begin, sot_index, filters, options,
                             languages[0], n_text_ctx, sample_len, rngs[0])]

    eot = tokenizer.eot
    tokens = np.array(initials, dtype=np.int64)
    feed = tokens
    cache = None
    sum_logprob = np.zeros(n_rows, dtype=np.float64)
    no_speech_prob = np.full(n_rows, np.nan)
    done = np.zeros(n_rows, dtype=bool)
    greedy_graph = temperature == 0 and hasattr(model, "greedy_step")
    if greedy_graph:  # the compiled decoder applies the same filters and picks the token: no logits reach the host
        suppress_all = tuple(sorted({i for f in filters for i in f.suppress}))
        picks = graph_picks(model, tokenizer, filters, tokens, audio, sot_index, suppress_all, sample_len)
    for i in range(sample_len):
        if greedy_graph:
            next_ids, step_logprob, nospeech = next(picks)
            if i == 0:
                no_speech_prob = np.exp(np.asarray(nospeech, dtype=np.float64))
            next_ids = np.asarray(next_ids, dtype=np.int64)
            step_logprob = np.asarray(step_logprob, dtype=np.float64)
        else:
            logits_all, cache = model.decode(feed, audio, cache)
            if i == 0:
                no_speech_prob = np.exp(_log_softmax(logits_all[:, sot_index]))[:, tokenizer.no_speech]
            logits = np.array(logits_all[:, -1], dtype=np.float32)  # a copy: filters write into it
            for f in filters:
                f.apply(logits, tokens)
            if temperature == 0:
                next_ids = logits.argmax(axis=-1).astype(np.int64)
            else:  # a finished row draws nothing, so each row's Generator sees the draws it sees alone
                next_ids = np.array([eot if done[k] else _sample(logits[k], temperature, rngs[k])
                                     for k in range(n_rows)], dtype=np.int64)
            step_logprob = _log_softmax(logits)[np.arange(n_rows), next_ids]
        sum_logprob += np.where(done, 0.0, step_logprob)
        next_ids = np.where(done, eot, next_ids)
        tokens = np.concatenate([tokens, next_ids[:, None]], axis=1)
        done |= next_ids == eot
        if done.all() or tokens.shape[1] > n_text_ctx:
            break
        if not greedy_graph:
            feed = tokens[:, -1:]
    return [_result(tokenizer, tokens[k], sample_begin, float(sum_logprob[k]), float(no_speech_prob[k]),
                    languages[k], temperature) for k in range(n_rows)]


def graph_picks(model, tokenizer: Tokenizer, filters: list, prompt: np.ndarray, audio, sot_index: int,
                suppress: tuple[int, ...], sample_len: int):
    """The compiled greedy decoder's picks, one step at a time: (ids (batch,), log-probs, no-speech log-probs on the
    first step, else None). After the prompt's call the steps run ``model.steps_per_sync`` at a time on the device
    (``greedy_steps``); the caller stops reading when every row has ended, and a run's steps past that are unused.
    With ``model.lookahead`` (GPU) the next run is queued before this one's picks are read: the device keeps
    working while the host reads them, and the run queued when the caller stops is left unread."""
    rules = pick_rules(filters, prompt, sot_index, tokenizer)
    ids, logprob, nospeech, state, _ = model.greedy_step(prompt, audio, None, rules, suppress)
    yield ids, logprob, nospeech
    rules, n_ctx, taken, queued = step_rules(rules), model.dims["n_text_ctx"], 1, []

    def launch():  # queue the next run of steps while the sample and the context have room
        nonlocal taken
        n = min(model.steps_per_sync, sample_len - taken, n_ctx - state.pos)
        if n > 0:
            queued.append(model.launch_steps(state, audio, rules, suppress, n))
            taken += n

    launch()
    while queued:
        if model.lookahead:
            launch()  # before this run is read (at most two queued: launch_steps' two copy slots)
        ids, logprobs = model.read_steps(queued.pop(0))
        for j in range(ids.shape[1]):
            yield ids[:, j], logprobs[:, j], None
        if not model.lookahead:
            launch()


def _result(tokenizer: Tokenizer, tokens: np.ndarray, sample_begin: int, sum_logprob: float, no_speech_prob: float,
            language: str | None, temperature: float) -> DecodingResult:
    sampled = tokens[sample_begin:].tolist()
    if tokenizer.eot in sampled:
        sampled = sampled[:sampled.index(tokenizer.eot)]
    text = tokenizer.decode(sampled).strip()
    return DecodingResult(tokens=sampled, text=text, sum_logprob=sum_logprob,
                          avg_logprob=sum_logprob / (len(sampled) + 1), no_speech_prob=no_speech_prob,
                          language=language, temperature=temperature, compression_ratio=compression_ratio(text))


@dataclass
class Segment:
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    # the rest as in openai's segment dicts (the window's decoding result)
    id: int = 0
    seek: int = 0
    temperature: float = 0.0
    avg_logprob: float = float("nan")
    compression_ratio: float = float("nan")
    no_speech_prob: float = float("nan")
    words: list[dict] | None = None  # with word_timestamps: {word, start, end, probability} per word
    language: str | None = None  # with language_per_window: the language detected for this segment's window

    def to_dict(self) -> dict:
        """openai's segment dict (keys in its order; "words" only with word timestamps, "language" only with
        per-window language detection)."""
        d = {"id": self.id, "seek": self.seek, "start": self.start, "end": self.end, "text": self.text,
             "tokens": [int(t) for t in self.tokens], "temperature": self.temperature,
             "avg_logprob": self.avg_logprob, "compression_ratio": self.compression_ratio,
             "no_speech_prob": self.no_speech_prob}
        if self.words is not None:
            d["words"] = [dict(w) for w in self.words]
        if self.language is not None:
            d["language"] = self.language
        return d


TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# log-mel units: (log10(band power) + 4) / 4. -0.75 is band power 1e-7, about 16-bit dither (digital silence is
# -1.5); quiet speech at -60 dBFS still reaches about -0.2.
SILENCE_MEL_THRESHOLD = -0.75


def is_silent(mel_content: np.ndarray, threshold: float = SILENCE_MEL_THRESHOLD) -> bool:
    """True when a window's content frames hold no signal: every log-mel value below ``threshold``, or all equal
    (flat at the file's 80 dB floor: silence inside a loud file, where openai's dynamic-range clamp lifts it)."""
    if mel_content.size == 0:
        return True
    hi, lo = float(mel_content.max()), float(mel_content.min())
    return hi < threshold or hi - lo < 1e-4


def needs_fallback(result: DecodingResult, compression_ratio_threshold: float | None,
                   logprob_threshold: float | None, no_speech_threshold: float | None) -> bool:
    """openai's decode_with_fallback test: too repetitive or too improbable, unless it looks like silence."""
    fallback = False
    if compression_ratio_threshold is not None and result.compression_ratio > compression_ratio_threshold:
        fallback = True  # too repetitive
    if logprob_threshold is not None and result.avg_logprob < logprob_threshold:
        fallback = True  # average log probability is too low
    if (no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold
            and logprob_threshold is not None and result.avg_logprob < logprob_threshold):
        fallback = False  # silence
    return fallback


def _window_loop(tokenizer: Tokenizer, mel: np.ndarray, options: DecodingOptions, n_text_ctx: int = 448,
                 n_audio_ctx: int = 1500, condition_on_previous_text: bool = True,
                 temperature: float | tuple[float, ...] = TEMPERATURES,
                 compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
                 no_speech_threshold: float | None = 0.6, seed: int | None = 0,
                 silence_mel_threshold: float | None = SILENCE_MEL_THRESHOLD, word_timestamps: bool = False,
                 prepend_punctuations: str = timing.PREPEND_PUNCTUATIONS,
                 append_punctuations: str = timing.APPEND_PUNCTUATIONS, language_per_window: bool = False,
                 model=None):
    """openai's sequential 30 s window loop for one file, as a generator: it yields a ``WindowRequest`` for every
    decoding attempt and is sent back ``(DecodingResult, audio)`` (audio: the window's encoder output when the request
    asked to keep it). Its return value (StopIteration.value) is the file's result. ``model`` is needed only for word
    timestamps (the alignment graph). ``transcribe_many`` drives many of these at once; see ``transcribe``.

    ``language_per_window`` (multilingual models, no language given): every window detects its own language
    (openai detects once, on the first window, and keeps it); each segment records its window's language."""
    temperatures = [float(temperature)] if isinstance(temperature, (int, float)) else [float(t) for t in temperature]
    if not temperatures:
        raise ValueError("temperature: give at least one value")
    rng = np.random.default_rng(seed)
    content_frames = mel.shape[-1] - N_FRAMES
    input_stride = N_FRAMES // n_audio_ctx
    precision = input_stride * HOP_LENGTH / SAMPLE_RATE
    tb = tokenizer.timestamp_begin
    seek, all_tokens, prompt_reset_since = 0, [], 0
    last_speech_timestamp = 0.0
    segments: list[Segment] = []
    windows: list[DecodingResult] = []
    detect_each = language_per_window and options.language is None and bool(tokenizer.languages)
    while seek < content_frames:
        time_offset = seek * HOP_LENGTH / SAMPLE_RATE
        segment_size = min(N_FRAMES, content_frames - seek)
        window = mel[:, seek:seek + segment_size]
        if window.shape[-1] < N_FRAMES:
            window = np.pad(window, ((0, 0), (0, N_FRAMES - window.shape[-1])))
        if silence_mel_threshold is not None and is_silent(mel[:, seek:seek + segment_size], silence_mel_threshold):
            windows.append(DecodingResult(tokens=[], text="", sum_logprob=0.0, avg_logprob=float("nan"),
                                          no_speech_prob=1.0, language=options.language, compression_ratio=0.0))
            seek += segment_size
            continue
        prompt = all_tokens[prompt_reset_since:]
        # word timestamps need the window's cross K/V after decoding: encoded once, shared with every attempt
        audio = None
        window_options = options  # with detect_each its language stays None until this window's first attempt
        for t in temperatures:  # decode_with_fallback
            # openai's decode_with_fallback: beams (and patience) only at temperature 0, best_of only above it
            attempt = (replace(window_options, temperature=t, beam_size=None, patience=None) if t > 0
                       else replace(window_options, temperature=t, best_of=None))
            result, kept = yield WindowRequest(mel=window, options=attempt, prompt=prompt, rng=rng, audio=audio,
                                               keep_audio=word_timestamps, time_offset=time_offset)
            audio = audio if audio is not None else kept
            if window_options.language is None and result.language is not None:
                window_options = replace(window_options, language=result.language)  # fallbacks keep it
                if not detect_each:  # openai: the first window's language holds for the whole file
                    options = window_options
            if not needs_fallback(result, compression_ratio_threshold, logprob_threshold, no_speech_threshold):
                break
        windows.append(result)
        if no_speech_threshold is not None:  # no voice activity check
            should_skip = result.no_speech_prob > no_speech_threshold
            if logprob_threshold is not None and result.avg_logprob > logprob_threshold:
                should_skip = False  # don't skip if the logprob is high enough, despite the no_speech_prob
            if should_skip:
                seek += segment_size  # fast-forward to the next segment boundary
                continue
        previous_seek = seek
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
        if word_timestamps:
            timing.add_word_timestamps(
                segments=current, model=model, tokenizer=tokenizer, audio=audio, num_frames=segment_size,
                time_offset=time_offset, language=result.language or options.language,
                sot_sequence=sot_sequence(tokenizer, result.language or options.language, options.task, False),
                prepend_punctuations=prepend_punctuations, append_punctuations=append_punctuations,
                last_speech_timestamp=last_speech_timestamp)
            if not single_timestamp_ending:
                last_word_end = timing.get_end(current)
                if last_word_end is not None and last_word_end > time_offset:
                    seek = round(last_word_end * SAMPLE_RATE / HOP_LENGTH)  # FRAMES_PER_SECOND
            last_word_end = timing.get_end(current)
            if last_word_end is not None:
                last_speech_timestamp = last_word_end
        audio = None
        for s in current:
            s.id, s.seek = len(segments), previous_seek
            s.temperature, s.avg_logprob = result.temperature, result.avg_logprob
            s.compression_ratio, s.no_speech_prob = result.compression_ratio, result.no_speech_prob
            if detect_each:
                s.language = result.language
            if s.start == s.end or not s.text.strip():  # instantaneous or empty segments carry no text
                s.text, s.tokens = "", []
                if s.words is not None:
                    s.words = []
            segments.append(s)
        all_tokens.extend(t for s in current for t in s.tokens)
        if not condition_on_previous_text or result.temperature > 0.5:
            prompt_reset_since = len(all_tokens)  # do not feed the prompt tokens if a high temperature was used
    text = "".join(s.text for s in segments)
    # openai: "en" for .en models; per window: the first window's, as openai would report
    first_language = next((w.language for w in windows if w.language), None)  # per window: options.language is None
    language = options.language or first_language or (None if tokenizer.languages else "en")
    return {"text": text.strip(), "segments": segments, "windows": windows, "language": language}


def decode_requests(model, tokenizer: Tokenizer, requests: list[WindowRequest], suppress: list[int],
                    n_text_ctx: int = 448, n_audio_ctx: int = 1500) -> list[tuple[DecodingResult, object]]:
    """One round of the driver: the requests grouped by ``batch_key`` (in order of first appearance), each group
    encoded and decoded as one batch. Returns (result, audio) per request, in order; audio is the row's encoder
    output (batch 1) when the request asked to keep it, else None."""
    groups: dict[tuple, list[int]] = {}
    for k, r in enumerate(requests):
        groups.setdefault(batch_key(r, tokenizer, n_text_ctx), []).append(k)
    out: list = [None] * len(requests)
    for rows in groups.values():
        group = [requests[k] for k in rows]
        audio = group[0].audio  # given only for a request alone in its group
        if audio is None:
            audio = model.encode(np.stack([r.mel for r in group]).astype(np.float32))
        results = decode_windows(model, tokenizer, group, suppress, n_text_ctx, n_audio_ctx, audio=audio)
        for j, (k, res) in enumerate(zip(rows, results)):
            kept = None
            if requests[k].keep_audio:
                kept = audio if len(rows) == 1 else _audio_row(model, audio, j, requests[k].mel)
            out[k] = (res, kept)
    return out


def _audio_row(model, audio, row: int, mel: np.ndarray):
    """Row ``row`` of a batch's encoder output, as batch 1 (``model.select_audio``; else the window encoded again)."""
    if hasattr(model, "select_audio"):
        return model.select_audio(audio, [row])
    return model.encode(mel[None].astype(np.float32))


@dataclass
class Progress:
    """What ``transcribe_many`` reports after every round: files finished (transcribed or failed) of the total
    (None for an iterable of unknown length), and seconds of audio done (finished files whole, the others up to
    the window being decoded)."""

    files_done: int
    files_total: int | None
    audio_seconds: float


def transcribe_many(model, tokenizer: Tokenizer, mels, options: DecodingOptions, suppress: list[int], *,
                    batch_size: int = 1, progress=None, n_text_ctx: int = 448, n_audio_ctx: int = 1500, **kwargs):
    """Transcribe many files, their windows sharing decoder batches; yields each file's result in input order.

    ``mels``: whole-file mels as ``transcribe`` takes them, or zero-argument callables returning one (loaded only
    when the file's turn comes; an ``AudioError`` raised while loading is yielded as that file's result instead of
    a dict, and the other files go on). Up to ``batch_size`` files are in flight: every round each of them asks for
    one window (its next window, or the next fallback temperature of the current one), the requests are grouped
    by ``batch_key`` and each group is decoded as one batch (``decode_requests``); a file that finishes makes room
    for the next. Every file runs openai's window loop (``_window_loop``) unchanged, so its result is the one
    ``transcribe`` gives it alone; batch_size=1 is exactly the sequential loop. ``progress``: called with a
    ``Progress`` after every round and every finished file. ``kwargs``: ``transcribe``'s options, for every file."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    total = len(mels) if hasattr(mels, "__len__") else None
    queue = iter(enumerate(mels))
    loop_kwargs = dict(kwargs, n_text_ctx=n_text_ctx, n_audio_ctx=n_audio_ctx)
    if loop_kwargs.get("word_timestamps"):
        loop_kwargs["model"] = model
    active: list[list] = []  # [index, generator, pending request, seconds of audio]
    finished: dict[int, object] = {}
    done_seconds, n_done, next_out, exhausted = 0.0, 0, 0, False

    def report():
        if progress is not None:
            busy = sum(a[2].time_offset for a in active)
            progress(Progress(n_done, total, done_seconds + busy))

    while True:
        while len(active) < batch_size and not exhausted:  # admit files until the batch is full
            try:
                index, item = next(queue)
            except StopIteration:
                exhausted = True
                break
            try:
                mel = item() if callable(item) else item
            except AudioError as e:  # a file that cannot be read is that file's result; the others go on
                finished[index] = e
                n_done += 1
                report()
                continue
            seconds = (mel.shape[-1] - N_FRAMES) * HOP_LENGTH / SAMPLE_RATE
            gen = _window_loop(tokenizer, mel, options, **loop_kwargs)
            try:
                active.append([index, gen, next(gen), seconds])
            except StopIteration as stop:  # nothing to decode (no audio, or all silent)
                finished[index] = stop.value
                n_done += 1
                done_seconds += seconds
                report()
        while next_out in finished:
            yield finished.pop(next_out)
            next_out += 1
        if not active:  # admission stops early only when the batch is full: nothing is left
            return
        responses = decode_requests(model, tokenizer, [a[2] for a in active], suppress, n_text_ctx, n_audio_ctx)
        still = []
        for a, response in zip(active, responses):
            try:
                a[2] = a[1].send(response)
                still.append(a)
            except StopIteration as stop:
                finished[a[0]] = stop.value
                n_done += 1
                done_seconds += a[3]
        active = still
        report()


def merge_chunks(results: list[dict], offsets: list[float], language: str | None) -> dict:
    """One file's result from its chunks' results (batched long-form): segments (and words) shifted by each chunk's
    start in seconds, renumbered; text joined as openai joins segments; windows in order."""
    segments, windows = [], []
    for r, off in zip(results, offsets):
        seek0 = int(round(off * SAMPLE_RATE / HOP_LENGTH))
        for s in r["segments"]:
            s.id, s.seek = len(segments), s.seek + seek0
            s.start, s.end = round(s.start + off, 3), round(s.end + off, 3)
            for w in s.words or []:
                w["start"], w["end"] = round(w["start"] + off, 3), round(w["end"] + off, 3)
            segments.append(s)
        windows.extend(r["windows"])
    language = language or next((r["language"] for r in results if r.get("language")), None)
    return {"text": "".join(s.text for s in segments).strip(), "segments": segments, "windows": windows,
            "language": language}


def transcribe(model, tokenizer: Tokenizer, mel: np.ndarray, options: DecodingOptions, suppress: list[int],
               n_text_ctx: int = 448, n_audio_ctx: int = 1500, condition_on_previous_text: bool = True,
               temperature: float | tuple[float, ...] = TEMPERATURES,
               compression_ratio_threshold: float | None = 2.4, logprob_threshold: float | None = -1.0,
               no_speech_threshold: float | None = 0.6, seed: int | None = 0,
               silence_mel_threshold: float | None = SILENCE_MEL_THRESHOLD, word_timestamps: bool = False,
               prepend_punctuations: str = timing.PREPEND_PUNCTUATIONS,
               append_punctuations: str = timing.APPEND_PUNCTUATIONS, language_per_window: bool = False) -> dict:
    """openai's sequential 30 s window loop over a whole-file mel (n_mels, frames incl. 30 s of padding).

    Segments are cut at timestamp pairs and the window advances to the last timestamp, with the previous windows'
    text as the prompt (reset after a window decoded at temperature > 0.5). Each window falls back through
    ``temperature`` (a number or a tuple) as openai's decode_with_fallback does; windows judged silent are skipped.
    ``seed`` seeds the numpy Generator used for sampling at temperature > 0 (None: unseeded).

    One addition to openai: a window whose audio is silent in the log-mel (see ``is_silent``) is skipped without
    decoding — openai decodes it and tiny.en then invents a word ("you") on 30 s of silence, because its
    no-speech test needs a low log-prob too. ``silence_mel_threshold=None`` turns this off (exactly openai).

    ``word_timestamps``: each segment gets ``words`` from the alignment heads' cross-attention and DTW
    (``timing.add_word_timestamps``), and the window advances to the last word's end, as openai's transcribe does.

    This is ``transcribe_many`` with one file (the loop itself is ``_window_loop``).
    """
    return next(transcribe_many(
        model, tokenizer, [mel], options, suppress, batch_size=1, n_text_ctx=n_text_ctx, n_audio_ctx=n_audio_ctx,
        condition_on_previous_text=condition_on_previous_text, temperature=temperature,
        compression_ratio_threshold=compression_ratio_threshold, logprob_threshold=logprob_threshold,
        no_speech_threshold=no_speech_threshold, seed=seed, silence_mel_threshold=silence_mel_threshold,
        word_timestamps=word_timestamps, prepend_punctuations=prepend_punctuations,
        append_punctuations=append_punctuations, language_per_window=language_per_window))
