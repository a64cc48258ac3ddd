"""The ``mwc`` command line (click). Every MwcError becomes one line on stderr and exit status 1."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from . import __version__
from .errors import MwcError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MwcError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mwc")
def main() -> None:
    """mwc — compile Whisper checkpoints into MAX Graph artifacts and run them."""


@main.command("compile")
@click.argument("model")
@click.option("--fp32", "precision", flag_value="fp32", default=True, help="float32 everywhere (default)")
@click.option("--fp16", "precision", flag_value="fp16", help="float16 weights and matmuls; residual, norms, softmax and mel in fp32")
@click.option("--bf16", "precision", flag_value="bf16", help="bfloat16 weights and matmuls; residual, norms, softmax and mel in fp32")
@click.option("--int8", "precision", flag_value="int8",
              help="int8 weight-only: projection weights int8 with per-output-channel scales, dequantized to fp32 "
                   "before each matmul")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--target", default=None, metavar="cuda:ARCH",
              help="cross-compile the GPU artifact for this architecture on a machine without it (cuda:sm_90a: "
                   "H100/H200, cuda:sm_80: A100); parity is then checked by `mwc verify` on such a GPU")
@click.option("--attention", type=click.Choice(["auto", "mojo", "blas", "max", "flash"]), default="auto",
              show_default=True,
              help="the encoder's self-attention: auto = blas on the GPU, mojo on the CPU; mojo: the Mojo op in ops/; "
                   "blas (GPU): two cuBLAS GEMMs on the tensor cores around a Mojo softmax kernel; max: MAX's matmul "
                   "+ softmax; flash (GPU): MAX's flash attention kernel. The decoder's attention is always the Mojo op")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="artifact folder (default: artifacts/NAME-PRECISION-DEVICE)")
@click.option("--force", is_flag=True, help="replace an existing artifact folder")
@click.option("--no-parity", is_flag=True, help="skip the compile-time parity check against the numpy reference")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True,
              help="fp16/bf16: measure the plan by emulation on calibration audio and keep sensitive ops in fp32")
@click.option("--calibration-audio", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="audio for --calibrate (repeatable; default: the bundled JFK clip and a chirp signal)")
def compile_cmd(model: str, precision: str, device: str, target: str | None, attention: str, output: Path | None,
                force: bool, no_parity: bool, calibrate: bool, calibration_audio: tuple[Path, ...]) -> None:
    """Compile MODEL: a hub id (whisper-small, openai/whisper-large-v3), or a local Hugging Face safetensors,
    faster-whisper/CTranslate2 or optimum ONNX folder, or an openai-whisper .pt file."""
    from .artifact import model_name, parse_target, write_artifact
    from .precision import plan_for
    from .readers import load_checkpoint

    t0 = time.perf_counter()
    if attention == "auto":
        attention = "blas" if device == "gpu" else "mojo"
    if attention in ("flash", "blas") and device != "gpu":
        what = "MAX's GPU flash attention kernel" if attention == "flash" else "cuBLAS on the GPU"
        raise MwcError(f"--attention {attention} is {what} (it has no CPU version); "
                       "use it with --device gpu, or --attention mojo on the CPU")
    if target is not None:
        parse_target(target, device)  # before reading the checkpoint: a wrong flag fails at once
    plan = plan_for(precision, device)
    click.echo(f"[1/2] checkpoint: reading {model}")
    ck = load_checkpoint(model)
    d = ck.dims
    click.echo(f"      {model_name(ck)}: {d.n_audio_layer}+{d.n_text_layer} layers, d={d.n_audio_state}, "
               f"{d.n_mels} mels, vocab {d.n_vocab} ({ck.source_format}, {time.perf_counter() - t0:.1f} s)")
    out = output or Path("artifacts") / f"{model_name(ck)}-{plan.name}-{device}"
    if out.exists() and not force:
        raise MwcError(f"{out}: already exists; pass --force to replace it or -o to write elsewhere")
    click.echo(f"[2/2] artifact: {out}")
    audio = None
    if calibration_audio:
        from .runtime.audio import AudioError, load_audio

        try:
            audio = [load_audio(a) for a in calibration_audio]
        except AudioError as e:
            raise MwcError(str(e)) from e
    manifest = write_artifact(ck, plan, out, device=device, attention=attention, force=force,
                              parity=not no_parity, log=click.echo, calibrate=calibrate, calibration_audio=audio,
                              target=target)
    size = sum(f["bytes"] for f in manifest["files"].values())
    tm = manifest["timings"]
    click.echo(f"done in {time.perf_counter() - t0:.1f} s (compile {tm['compile_s']:.1f} s): {out} "
               f"({size / 1e6:.1f} MB)")
    if not no_parity and target is None:
        report = json.loads((out / "parity.json").read_text())
        for stage, s in report["stages"].items():
            click.echo(f"      parity {stage:15s} max_abs {s['max_abs']:.2e}  max_rel {s['max_rel']:.2e}  "
                       f"cosine {s['cosine']:.6f}  ok")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the whole manifest")
@click.option("--check", is_flag=True, help="verify every file's sha256 against the manifest")
def inspect(artifact: Path, as_json: bool, check: bool) -> None:
    """Print an artifact's manifest."""
    from .artifact import verify_checksums
    from .runtime.model import ArtifactError, read_manifest

    try:
        m = read_manifest(artifact)
    except ArtifactError as e:
        raise MwcError(str(e)) from e
    if as_json:
        click.echo(json.dumps(m, indent=2))
    else:
        d = m["dims"]
        click.echo(f"{m['name']}  ({artifact})")
        click.echo(f"  source     {m['source']['checkpoint']} [{m['source']['format']}] "
                   f"sha256 {m['source']['sha256'][:16]}…")
        click.echo(f"  dims       mels {d['n_mels']}, audio {d['n_audio_layer']}×{d['n_audio_state']} "
                   f"({d['n_audio_head']} heads), text {d['n_text_layer']}×{d['n_text_state']} "
                   f"({d['n_text_head']} heads), vocab {d['n_vocab']}")
        tg = m["target"]
        gpu = f" ({tg['accelerator']})" if tg.get("accelerator") else ""
        click.echo(f"  precision  {m['precision']['name']}  device {m['device']}{gpu}  attention {m['attention']}")
        host = (f"host code for {tg['cpu']}, cross-compiled" if tg.get("cross_compiled")
                else f"{tg['arch']} {' '.join(tg['cpu_flags'])}")
        click.echo(f"  built      mwc {m['versions']['mwc']}, max {m['versions']['max']}, "
                   f"mojo {m['versions']['mojo']}, {host}")
        parity = artifact / "parity.json"  # written by mwc compile's gate or by mwc verify
        if parity.is_file():
            state = "passed" if json.loads(parity.read_text()).get("passed") else "FAILED (see parity.json)"
        elif tg.get("cross_compiled"):
            state = "not checked yet (cross-compiled: run mwc verify on the GPU)"
        else:
            state = "not checked (compiled with --no-parity)"
        click.echo(f"  parity     {state}")
        for file, names in m["serialization"]["files"].items():
            click.echo(f"  {file:10s} {', '.join(names)}")
        for rel, f in m["files"].items():
            if "/" not in rel:
                click.echo(f"  file       {rel:22s} {f['bytes'] / 1e6:9.2f} MB  {f['sha256'][:12]}")
    if check:
        bad = verify_checksums(artifact)
        if bad:
            raise MwcError(f"{artifact}: checksum mismatch in {', '.join(bad)}; the artifact was modified — "
                           "recompile it")
        click.echo(f"  checksums  all {len(m['files'])} files match")


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--checkpoint", default=None, help="the source checkpoint (default: the one named in the manifest)")
@click.option("--reference", type=click.Choice(["numpy", "transformers", "onnxruntime"]), default="numpy",
              show_default=True,
              help="reference implementation: numpy float64, transformers' WhisperForConditionalGeneration "
                   "(float64, built from the same checkpoint; needs transformers and torch), or onnxruntime running "
                   "an ONNX input's own graphs (needs onnxruntime)")
@click.option("--audio", "audio", multiple=True, type=click.Path(path_type=Path), help="an audio file (repeatable)")
@click.option("--manifest", "manifest_path", type=click.Path(path_type=Path), default=None,
              help="a manifest.jsonl of clips with reference texts (WER is computed over them)")
@click.option("--limit", type=int, default=None, help="verify only the first N clips of the manifest")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="keep the reference's results per clip in this folder (keyed by checkpoint, clip, language and "
                   "the reference's code), so verifying another artifact of the same checkpoint skips the reference")
def verify(artifact: Path, checkpoint: str | None, reference: str, audio: tuple[Path, ...],
           manifest_path: Path | None, limit: int | None, cache: Path | None) -> None:
    """Compare ARTIFACT with the reference stage by stage; exit 1 when a tolerance is exceeded."""
    from .readers import load_checkpoint
    from .runtime.model import ArtifactError, read_manifest
    from .verify import Clip, clips_from_manifest, run_verify, write_report

    try:
        m = read_manifest(artifact)
    except ArtifactError as e:
        raise MwcError(str(e)) from e
    if not audio and manifest_path is None:
        raise MwcError("nothing to verify on: pass --audio FILE (repeatable) or --manifest manifest.jsonl")
    source = checkpoint or m["source"]["checkpoint"]
    ck = load_checkpoint(source)
    if ck.source_sha256() != m["source"]["sha256"]:
        raise MwcError(f"{source}: not the checkpoint this artifact was compiled from (sha256 differs); "
                       "pass the right one with --checkpoint")
    clips = [Clip(Path(a)) for a in audio]
    if manifest_path is not None:
        clips += clips_from_manifest(manifest_path, english_only=not ck.multilingual, limit=limit)
    click.echo(f"verifying {artifact} ({m['precision']['name']}) against the {reference} reference on "
               f"{len(clips)} clips")
    report = run_verify(artifact, ck, clips, log=click.echo, reference=reference, cache=cache)
    write_report(artifact, report)
    w = report["worst"]
    click.echo(f"worst: mel {w['mel']:.1e} abs, encoder {w['encoder']:.1e} rel, cross K/V {w['cross_kv']:.1e} rel, "
               f"logits {w['decoder_logits']:.1e} rel; greedy tokens equal on "
               f"{report['token_agreement']:.0%} of clips; WER {report['wer']:.2%} (reference {report['reference_wer']:.2%})")
    failed = [k for k, ok in report["checks"].items() if not ok]
    if failed:
        raise MwcError(f"{artifact}: parity check failed for {', '.join(failed)} (tolerances {report['tolerances']}); "
                       "see parity.json")
    click.echo(f"passed; report written to {artifact / 'parity.json'}")


def _optional_float(value: str) -> float | None:
    """openai's optional_float: "None" (any case) → None."""
    return None if value.lower() == "none" else float(value)


def _temperatures(temperature: float, increment: float | None) -> tuple[float, ...]:
    """openai's CLI: --temperature T with --temperature-increment-on-fallback I → T, T+I, ..., up to 1.0."""
    if increment is None or increment <= 0:
        return (temperature,)
    out, k = [], 0
    while temperature + k * increment <= 1.0 + 1e-6:  # np.arange(T, 1.0 + 1e-6, I)
        out.append(round(temperature + k * increment, 10))
        k += 1
    return tuple(out) or (temperature,)


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--language", default=None, help="language code (multilingual models; default: detect)")
@click.option("--task", type=click.Choice(["transcribe", "translate"]), default="transcribe", show_default=True,
              help="translate: speech in any language to English text (multilingual models)")
@click.option("--language-per-window", is_flag=True,
              help="without --language: detect the language of every 30 s window, not only the first (json: "
                   "each segment's language)")
@click.option("--without-timestamps", is_flag=True, help="decode without timestamp tokens")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=None,
              help="write transcript files here, one per input and format, named after the input")
@click.option("-f", "--output-format", type=click.Choice(["txt", "vtt", "srt", "tsv", "json", "all"]), default=None,
              help="file format(s) for -o (default: all)")
@click.option("--temperature", type=float, default=0.0, show_default=True,
              help="sampling temperature of the first attempt (0: greedy)")
@click.option("--temperature-increment-on-fallback", "increment", type=_optional_float, default="0.2",
              show_default=True, metavar="FLOAT|None",
              help="re-decode a failed window at this much higher temperature, up to 1.0; None: no fallback")
@click.option("--compression-ratio-threshold", type=_optional_float, default="2.4", show_default=True,
              metavar="FLOAT|None",
              help="a window whose gzip compression ratio is higher failed (None: no check)")
@click.option("--logprob-threshold", type=_optional_float, default="-1.0", show_default=True, metavar="FLOAT|None",
              help="a window whose average log probability is lower failed (None: no check)")
@click.option("--no-speech-threshold", type=_optional_float, default="0.6", show_default=True, metavar="FLOAT|None",
              help="a window with a higher <|nospeech|> probability that failed the log-prob check is skipped as "
                   "silence (None: never skip)")
@click.option("--condition-on-previous-text/--no-condition-on-previous-text", default=True, show_default=True,
              help="prompt each window with the text before it")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the sampler (temperature > 0)")
@click.option("--silence-threshold", "silence_mel_threshold", type=_optional_float, default="-0.75",
              show_default=True, metavar="FLOAT|None",
              help="skip windows whose log-mel stays below this (digital silence, dither) without decoding; "
                   "None: decode them as openai-whisper does")
@click.option("--beam-size", type=click.IntRange(min=1), default=None,
              help="beam search with this many beams at temperature 0 (openai-whisper's CLI uses 5; default: greedy)")
@click.option("--best-of", type=click.IntRange(min=1), default=None,
              help="sample this many candidates at each fallback temperature > 0 and keep the likeliest")
@click.option("--patience", type=float, default=None,
              help="beam search: finish after beam_size * patience candidates (default 1.0; needs --beam-size)")
@click.option("--length-penalty", type=float, default=None,
              help="rank candidates by log-prob / ((5 + length) / 6) ** ALPHA (0..1; default: / length)")
@click.option("--word-timestamps", is_flag=True,
              help="word-level timestamps from the alignment heads' cross-attention (json gets 'words')")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="files decoded together, their windows sharing encoder and decoder batches (the same text as one "
                   "by one; default: 8); with --chunked, a file's chunks decoded together (default: 32 on a GPU, 16 on the "
                   "CPU)")
@click.option("--chunked", is_flag=True,
              help="batched long-form: cut each file at quiet points into chunks of at most 30 s and decode them "
                   "together (much faster on long audio on a GPU; no text carried from one chunk to the next)")
def transcribe(artifact: Path, audio: tuple[Path, ...], language: str | None, task: str, language_per_window: bool,
               without_timestamps: bool,
               output_dir: Path | None, output_format: str | None, temperature: float, increment: float | None,
               compression_ratio_threshold: float | None, logprob_threshold: float | None,
               no_speech_threshold: float | None, condition_on_previous_text: bool, seed: int,
               silence_mel_threshold: float | None, beam_size: int | None, best_of: int | None,
               patience: float | None, length_penalty: float | None, word_timestamps: bool,
               batch_size: int | None, chunked: bool) -> None:
    """Transcribe AUDIO files with a compiled ARTIFACT; print the text and, with -o DIR, write transcript files.

    Several files are decoded together (--batch-size); each is printed and written as soon as it and the files
    before it are done, in the order given. A progress bar (files, seconds of audio) shows on a terminal."""
    from .runtime.audio import AudioError
    from .runtime.model import ArtifactError, Whisper
    from .runtime.writers import write_result

    if output_format is not None and output_dir is None:
        raise click.UsageError("--output-format needs -o DIR (the folder to write the files into)")
    if temperature < 0:
        raise click.UsageError("--temperature must not be negative")
    if patience is not None and beam_size is None:
        raise click.UsageError("--patience needs --beam-size")
    if patience is not None and patience <= 0:
        raise click.UsageError("--patience must be positive")
    if length_penalty is not None and not 0 <= length_penalty <= 1:
        raise click.UsageError("--length-penalty must be between 0 and 1")
    if output_dir is not None:
        if output_dir.exists() and not output_dir.is_dir():
            raise MwcError(f"{output_dir}: exists and is not a folder; pass another -o")
        output_dir.mkdir(parents=True, exist_ok=True)
    try:
        model = Whisper(artifact)
    except ArtifactError as e:
        raise MwcError(str(e)) from e
    kwargs = dict(temperature=_temperatures(temperature, increment),
                  compression_ratio_threshold=compression_ratio_threshold, logprob_threshold=logprob_threshold,
                  no_speech_threshold=no_speech_threshold, condition_on_previous_text=condition_on_previous_text,
                  seed=seed, silence_mel_threshold=silence_mel_threshold, beam_size=beam_size, best_of=best_of,
                  patience=patience, length_penalty=length_penalty, word_timestamps=word_timestamps,
                  language_per_window=language_per_window)
    batch = batch_size or (model.chunked_batch_size if chunked else model.default_batch_size)
    failed, t0 = 0, time.perf_counter()
    bar = _ProgressLine(len(audio))
    try:
        results = model.transcribe_many(audio, batch_size=batch, progress=bar.update, language=language, task=task,
                                        without_timestamps=without_timestamps, chunked=chunked, **kwargs)
    except ValueError as e:  # language / task the model cannot do
        raise MwcError(f"{artifact}: {e}") from e
    try:
        for path, result in zip(audio, results):
            if isinstance(result, AudioError):
                bar.echo(f"error: {result}", err=True)
                failed += 1
                continue
            bar.echo(result["text"] if len(audio) == 1 else f"{path}\t{result['text']}")
            if output_dir is not None:
                try:
                    written = write_result(result, path, output_dir, output_format or "all")
                except OSError as e:
                    bar.echo(f"error: {path}: cannot write the transcript into {output_dir} ({e})", err=True)
                    failed += 1
                    continue
                bar.echo(f"  wrote {', '.join(Path(w).name for w in written)}", err=True)
    except ArtifactError as e:  # a graph file loaded on first use (beam search, word timestamps) failed
        bar.close()
        raise MwcError(str(e)) from e
    bar.close()
    click.echo(f"  {len(audio) - failed} of {len(audio)} files, {bar.seconds:.1f} s of audio in "
               f"{time.perf_counter() - t0:.2f} s (batch {batch})", err=True)
    if failed:
        sys.exit(1)


class _ProgressLine:
    """click's progress bar on stderr (files done of the total, seconds of audio), shown only on a terminal; a line
    printed meanwhile clears it first, and the next round's update draws it again."""

    def __init__(self, total: int):
        self.seconds = 0.0
        self.bar = None
        if sys.stderr.isatty() and total > 1:
            self.bar = click.progressbar(length=total, label="transcribing", file=sys.stderr, show_pos=True,
                                         show_eta=False, item_show_func=lambda s: s)
            self.bar.__enter__()

    def update(self, p) -> None:
        self.seconds = p.audio_seconds
        if self.bar is not None:
            self.bar.current_item = f"{p.audio_seconds:.0f} s of audio"
            if p.files_done > self.bar.pos:
                self.bar.update(p.files_done - self.bar.pos, self.bar.current_item)
            else:
                self.bar.render_progress()

    def echo(self, line: str, err: bool = False) -> None:
        if self.bar is not None:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
        click.echo(line, err=err)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-w", "--workload", "workloads", multiple=True, type=click.Choice(["MEL", "LF", "LFC", "TP", "COLD", "W30"],
              case_sensitive=False), help="workload(s) to run (default: MEL, LF, W30); see compiler/bench.py")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="W30: copies of the window decoded at once (default 1); TP: files in flight at once (default 1); "
                   "LFC: chunks decoded together (default 32 on a GPU, 16 on the CPU)")
@click.option("--tokens", "n_tokens", type=int, default=100, show_default=True, help="W30: greedy tokens per row")
@click.option("--repeat", type=int, default=3, show_default=True, help="timed runs after one warm-up; best counts")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object per workload")
def bench(artifact: Path, audio: tuple[Path, ...], workloads: tuple[str, ...], batch: int | None, n_tokens: int,
          repeat: int, as_json: bool) -> None:
    """Time ARTIFACT on AUDIO: log-mel of a 30 s window (MEL), long-form transcription (LF: the first file, openai's
    sequential loop; LFC: the first file, batched long-form as --chunked; TP: all files), load + first transcript
    (COLD), and one window with N greedy tokens (W30). The peer comparison with
    faster-whisper, openai-whisper and transformers is tests/bench_peers.py."""
    from .bench import run_mwc
    from .runtime.audio import AudioError
    from .runtime.model import ArtifactError

    rows = []
    for w in [w.upper() for w in workloads] or ["MEL", "LF", "W30"]:
        files = list(audio) if w == "TP" else [audio[0]]
        try:
            r = run_mwc(artifact, w, files, batch=batch or (None if w == "LFC" else 1),
                        n_tokens=n_tokens, repeat=repeat)
        except (ArtifactError, AudioError) as e:
            raise MwcError(str(e)) from e
        rows.append(r)
        if as_json:
            click.echo(json.dumps(r))
    if as_json:
        return
    click.echo(f"{'workload':8s} {'seconds':>10s}  detail")
    for r in rows:
        d = r["detail"]
        if r["workload"] == "MEL":
            info = f"30 s window: {d['mel_ms_device']:.3f} ms on the device, {d['mel_ms_host']:.3f} ms host to host"
        elif r["workload"] == "W30":
            info = (f"batch {d['batch']}: mel {d['mel_ms']:.2f} ms, encoder {d['encoder_ms']:.2f} ms, prefill "
                    f"{d['prefill_ms']:.2f} ms, {d['step_ms']:.3f} ms per step × {d['n_tokens']}")
        elif r["workload"] == "COLD":
            info = f"load {d['load_s']:.3f} s, then {d['audio_seconds']:.1f} s of audio"
        else:
            info = f"{d['audio_seconds']:.1f} s of audio, RTF {d['rtf']:.2e}"
            if r["workload"] == "LFC":
                info += f", {d['chunks']} chunks, batch {d['batch']}"
        click.echo(f"{r['workload']:8s} {r['seconds']:10.4f}  {info}")


if __name__ == "__main__":
    main()
