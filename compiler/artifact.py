"""The artifact writer: owns the folder format, the versioned manifest with checksums, and the atomic write.

An artifact folder:
  manifest.json         schema version, dims, precision plan, source + hash, versions, graph I/O, every file's sha256
  model.mef             the mel, encoder and step graphs compiled into one MAX executable (greedy decoding)
  extras.mef            the decoder (whole logits), kv_gather and alignment graphs, loaded on first use
  weights.safetensors   weights in the names, layout and dtype the graphs bind (incl. the mel filterbank)
  vocab.json            id → token table for decoding (tokenizer.json is copied too when the checkpoint has one)
  ops.mojoc             the project's Mojo ops, precompiled (already inside the .mefs; kept for rebuilding graphs)
  parity.json           compile-time parity of each stage against the numpy reference
  mwc_runtime/          the runtime (max + numpy only): the same modules the mwc library runs
  loader.py             generated entry point: ``python loader.py audio.wav`` or ``load(dir).transcribe(path)``
Serialization: ``CompiledModel.export_mef`` — reloads in a new process in milliseconds with no compiler run, the
custom ops inside; a serialized graph (MLIR) would need a full recompile (minutes) on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable


from . import __version__
from .checkpoint import Checkpoint
from .errors import MwcError
from .precision import PrecisionPlan
from .runtime.model import SCHEMA_VERSION

PACKAGE_DIR = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """ops/ and templates/: next to compiler/ in a checkout, inside the package when installed."""
    for base in (PACKAGE_DIR / "_data", PACKAGE_DIR.parent):
        if (base / name).is_dir():
            return base / name
    raise MwcError(f"{name}/ not found next to the mwc package; reinstall mwc (pip install .)")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def model_name(ck: Checkpoint) -> str:
    d = ck.dims
    sizes = {(384, 4, 4): "tiny", (512, 6, 6): "base", (768, 12, 12): "small", (1024, 24, 24): "medium",
             (1280, 32, 32): "large-v3" if d.n_mels == 128 else "large-v2", (1280, 32, 4): "large-v3-turbo"}
    size = sizes.get((d.n_audio_state, d.n_audio_layer, d.n_text_layer), f"custom-{d.n_audio_state}")
    return f"whisper-{size}{'' if ck.multilingual else '.en'}"


def parse_target(spec: str, device: str) -> str:
    """``--target cuda:sm_90a`` → the GPU architecture to cross-compile for (NVIDIA only: mwc's GPU kernels are
    measured on CUDA devices)."""
    if device != "gpu":
        raise MwcError(f"--target {spec}: cross-compiling is for GPU artifacts; add --device gpu")
    api, sep, arch = spec.partition(":")
    if api != "cuda" or not sep or not arch.startswith("sm_") or not arch[3:5].isdigit():
        raise MwcError(f"--target {spec}: expected cuda:ARCH, e.g. cuda:sm_90a (H100, H200), cuda:sm_80 (A100), "
                       "cuda:sm_89 (L4, L40S), cuda:sm_86 (A10, RTX 30xx)")
    return arch


def cross_cpu() -> str:
    """The host CPU a cross-compiled artifact's host code targets: AVX2-era x86-64 (x86-64-v3), which the hosts of
    datacenter GPUs run, else MAX's portable baseline of this machine's architecture family."""
    return "x86-64-v3" if platform.machine() in ("x86_64", "AMD64") else "generic"


@contextmanager
def virtual_gpu(arch: str):
    """MAX's compile-only mode: an accelerator of architecture ``arch`` that exists for the compiler only (the
    mode MAX's own ProcessCompilePool compiles in), with host code for a portable CPU instead of this one."""
    from max import driver

    driver.set_virtual_cpu_target(cross_cpu())
    driver.set_virtual_device_api("cuda")
    driver.set_virtual_device_target_arch(arch)
    driver.set_virtual_device_count(1)
    try:
        yield
    finally:
        driver.set_virtual_device_count(0)
        driver.set_virtual_cpu_target("")


def cpu_target() -> dict:
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "f16c")
                flags = sorted(set(line.split(":", 1)[1].split()) & set(wanted))
                break
    except OSError:
        pass
    return {"arch": platform.machine(), "os": platform.system().lower(), "cpu_flags": flags}


@contextmanager
def atomic_folder(out: Path, force: bool):
    """Yield a temp folder beside ``out``; on success it replaces ``out``, on failure nothing is left behind."""
    if out.exists() and not force:
        raise MwcError(f"{out}: already exists; pass --force to replace it or -o to write elsewhere")
    if out.exists() and not out.is_dir():
        raise MwcError(f"{out}: exists and is not a folder; choose another -o")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp made it private; give it the user's usual modes
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def dist_version(name: str) -> str:
    """An installed distribution's version; "unknown" where MAX was unpacked without its metadata."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def precompile_ops(ops_dir: Path, dest: Path) -> None:
    mojo = Path(sys.executable).parent / "mojo"
    cmd = [str(mojo) if mojo.exists() else "mojo", "precompile", str(ops_dir), "-o", str(dest)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        raise MwcError(f"{ops_dir}: mojo precompile failed: {detail.strip().splitlines()[-1:]}") from e


def write_artifact(ck: Checkpoint, plan: PrecisionPlan, out: Path, *, device: str, attention: str, force: bool,
                   parity: bool = True, log: Callable[[str], None] = print, calibrate: bool = True,
                   calibration_audio: list | None = None, target: str | None = None) -> dict:
    """checkpoint → (calibrated precision plan) → weights → graphs → compiled .mef → artifact folder, written
    atomically. ``calibrate``: fp16/bf16 plans are checked by emulation on ``calibration_audio`` (default: the
    parity's JFK speech and chirp signal) and sensitive op classes raised to float32 where needed (compiler.calibrate).
    ``target`` (``cuda:sm_90a``): cross-compile a GPU artifact for that architecture on a machine that lacks it; the
    graphs cannot run here, so the reload and the parity check are left to ``mwc verify`` on such a GPU."""
    from max.driver import CPU, Accelerator, accelerator_count
    from max.engine import InferenceSession
    from max.graph import DeviceRef
    from .graph import MEF_FILES, build_graphs, signature
    from .loader import render_loader
    from .weights import graph_weights, save_weights

    if device not in ("cpu", "gpu"):
        raise MwcError(f"--device {device}: choose cpu or gpu")
    arch = None
    if target is not None:
        arch = parse_target(target, device)
    elif device == "gpu" and accelerator_count() == 0:
        raise MwcError("--device gpu: MAX sees no accelerator on this machine; compile on the GPU machine, or "
                       "cross-compile here with --target cuda:ARCH (cuda:sm_90a for H100/H200, cuda:sm_80 for A100)")
    ops_dir = resource_dir("ops")
    name = model_name(ck)
    timings: dict[str, float] = {}

    def stage(label: str):
        log(f"  {label} ...")
        return time.perf_counter()

    calibration = None
    if calibrate and plan.name in ("fp16", "bf16"):
        from .calibrate import calibrate as choose_plan
        from .parity import speech_clip, test_signal, tolerances

        t = stage(f"calibrate: the {plan.name} plan, emulated on calibration audio against the float64 reference")
        tol = tolerances({"precision": plan.to_dict(), "device": device})["logits_rel"]
        plan, calibration = choose_plan(ck, plan, tol, calibration_audio or [speech_clip(), test_signal()], log=log)
        timings["calibrate_s"] = time.perf_counter() - t

    with atomic_folder(out, force) as tmp:
        t = stage("weights: layout and dtype for the graphs")
        weights = graph_weights(ck, plan)
        save_weights(weights, tmp / "weights.safetensors", plan)
        timings["weights_s"] = time.perf_counter() - t

        t = stage("graph: build mel, encoder, step (model.mef); decoder, kv_gather, alignment (extras.mef)")
        graph_device = DeviceRef.GPU() if device == "gpu" else DeviceRef.CPU()
        heads, heads_source = ck.alignment_heads()
        modules, graphs = build_graphs(ck.dims, plan, graph_device, ops_dir, attention=attention,
                                      alignment_heads=heads)
        timings["build_s"] = time.perf_counter() - t

        t = stage("compile: MAX graph compiler (minutes when cold; cached in ~/.cache/modular)")
        with virtual_gpu(arch) if arch else nullcontext():
            accelerator = Accelerator() if device == "gpu" else None
            accelerator_name = accelerator.architecture_name if accelerator else None
            session = InferenceSession(devices=[accelerator or CPU()])
            for file, module in modules.items():
                try:
                    # a Module does not carry its graphs' custom_extensions: the session must be given them
                    compiled = session.compile(module, custom_extensions=[ops_dir])
                except Exception as e:  # the MAX compiler raises several types; all mean the same to the user
                    raise MwcError(f"{ck.source}: MAX failed to compile the graphs of {file} ({type(e).__name__}: "
                                   f"{str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''})") from e
                compiled.export_mef(str(tmp / file))
        timings["compile_s"] = time.perf_counter() - t

        t = stage("ops: precompile the Mojo kernels")
        try:
            precompile_ops(ops_dir, tmp / "ops.mojoc")
        except MwcError as e:  # the kernels are already inside model.mef; ops.mojoc only serves rebuilding graphs
            log(f"  warning: {e}; the artifact ships without ops.mojoc")
        timings["ops_s"] = time.perf_counter() - t

        (tmp / "vocab.json").write_text(json.dumps(ck.vocab, ensure_ascii=False), encoding="utf-8")
        for src in ck.source_files:
            if src.name == "tokenizer.json":
                shutil.copyfile(src, tmp / "tokenizer.json")
        shutil.copytree(PACKAGE_DIR / "runtime", tmp / "mwc_runtime",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": {"mwc": __version__, "max": dist_version("max"), "mojo": dist_version("mojo"),
                         "python": platform.python_version()},
            "source": {"checkpoint": ck.source, "format": ck.source_format, "sha256": ck.source_sha256(),
                       "files": sorted(p.name for p in ck.source_files)},
            "dims": ck.dims.to_dict(),
            "precision": plan.to_dict(),
            **({"calibration": calibration} if calibration else {}),
            "device": device,
            "target": {**cpu_target(), **({"accelerator": accelerator_name} if accelerator_name else {}),
                       # cross-compiled: built without the GPU (MAX's compile-only mode), host code for ``cpu``
                       **({"cross_compiled": True, "cpu": cross_cpu()} if arch else {})},
            "attention": attention,
            "serialization": {"format": "mef", "files": {f: list(g) for f, g in MEF_FILES.items()},
                              "why": "CompiledModel.export_mef reloads in a new process without compiling; "
                                     "a serialized graph would need a full recompile on every load",
                              "split": "the first file is all greedy decoding loads; the others load on first "
                                       "use (a GPU holds a copy of the weights for each graph that reads them)"},
            "tokens": ck.tokens.to_dict(),
            "generation": ck.generation.to_dict(),
            # the (layer, head) pairs the ``alignment`` graph returns, in order (word timestamps)
            "alignment": {"heads": [list(h) for h in heads], "source": heads_source},
            "timings": {},
        }
        (tmp / "manifest.json").write_text(json.dumps({**manifest, "files": {}}, indent=2))

        manifest["graphs"] = {name: signature(g) for name, g in graphs.items()}
        if arch:
            log(f"  reload and parity: deferred — cross-compiled for {arch}; on such a GPU run "
                f"`mwc verify {out} --audio CLIP [--checkpoint CKPT]` (it writes parity.json)")
        else:
            t = stage("reload: the artifact in this process, as a consumer would")
            from .runtime.model import Whisper

            runtime = Whisper(tmp)
            timings["reload_s"] = time.perf_counter() - t

        if parity and not arch:
            from .parity import stage_parity

            t = stage("parity: mel, encoder and decoder against the numpy float64 reference")
            report = stage_parity(ck, runtime)
            (tmp / "parity.json").write_text(json.dumps(report, indent=2))
            timings["parity_s"] = time.perf_counter() - t
            if not report["passed"]:
                failed = ", ".join(f"{k} {v['max_rel']:.1e} rel > {v['tolerance']}" for k, v in report["stages"].items()
                                   if not v["passed"])
                raise MwcError(f"{ck.source}: the compiled graphs disagree with the numpy reference ({failed}); "
                               "nothing was written")

        (tmp / "loader.py").write_text(render_loader(manifest))
        manifest["timings"] = {k: round(v, 3) for k, v in timings.items()}
        files = sorted(p for p in tmp.rglob("*") if p.is_file() and p.name != "manifest.json"
                       and "__pycache__" not in p.parts)
        manifest["files"] = {str(p.relative_to(tmp)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                             for p in files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def verify_checksums(folder: Path) -> list[str]:
    """Files whose sha256 differs from the manifest's (or that are missing)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    bad = []
    for rel, info in manifest["files"].items():
        p = folder / rel
        if not p.is_file() or sha256(p) != info["sha256"]:
            bad.append(rel)
    return bad


