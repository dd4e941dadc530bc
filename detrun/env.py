"""The environment fingerprint: everything outside the script that can change the bits, and its diff.

Every probe either answers or says "unavailable"; none of them imports torch or TensorFlow (that
would change the program being recorded), so library versions come from package metadata and the
CUDA/cuDNN details that only torch knows are recorded as an event once the script imports torch.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

UNAVAILABLE = "unavailable"

# Variables that change numerics or parallelism; recorded, and the thread ones pinned on replay.
NUMERIC_ENV_PREFIXES = ("TF_", "XLA_", "NCCL_", "CUDNN_", "TORCH_")
NUMERIC_ENV_NAMES = (
    "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
    "KMP_AFFINITY", "KMP_DETERMINISTIC_REDUCTION", "PYTHONHASHSEED",
)
THREAD_ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")
LIBRARIES = ("torch", "numpy", "tensorflow", "tensorflow-cpu", "keras", "jax", "scipy", "nvidia-cudnn-cu12",
             "nvidia-cublas-cu12", "nvidia-nccl-cu12", "nvidia-cudnn-cu13", "nvidia-cublas-cu13",
             "nvidia-nccl-cu13", "detrun")


def numeric_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment variables that can change numerics, sorted by name."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in sorted(environ.items())
            if k in NUMERIC_ENV_NAMES or k.startswith(NUMERIC_ENV_PREFIXES)}


def _cpu() -> dict[str, Any]:
    """Return the CPU model, ISA flags and counts."""
    model, flags = UNAVAILABLE, UNAVAILABLE
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and model == UNAVAILABLE:
                    model = value.strip()
                elif key in ("flags", "Features") and flags == UNAVAILABLE:
                    # Only the ISA extensions that pick different BLAS/oneDNN kernels.
                    wanted = ("avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16",
                              "fma", "sse4_2", "asimd", "sve", "sve2", "f16c")
                    present = set(value.split())
                    flags = " ".join(f for f in wanted if f in present)
    except OSError:
        pass
    if model == UNAVAILABLE and platform.processor():
        model = platform.processor()
    try:
        affinity: Any = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = UNAVAILABLE
    return {"model": model, "isa": flags, "machine": platform.machine(), "logical_cpus": os.cpu_count() or UNAVAILABLE,
            "usable_cpus": affinity}


def _libraries() -> dict[str, str]:
    """Return the installed versions of the libraries that matter for numerics."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _packages_digest() -> str:
    """Return a digest of every installed distribution and version."""
    entries = sorted({f"{d.metadata['Name']}=={d.version}".lower() for d in importlib.metadata.distributions()
                      if d.metadata and d.metadata["Name"]})
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16] + f" ({len(entries)} packages)"


def _gpus() -> Any:
    """Return the GPUs as NVML reports them, or "unavailable" without a driver."""
    try:
        import pynvml  # provided by the nvidia-ml-py distribution
    except ImportError:
        return UNAVAILABLE
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no NVIDIA driver
        return UNAVAILABLE
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus.append({
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                "compute_capability": ".".join(map(str, pynvml.nvmlDeviceGetCudaComputeCapability(handle))),
                "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                "mig_mode": _probe(lambda: pynvml.nvmlDeviceGetMigMode(handle)[0]),
                "ecc_mode": _probe(lambda: pynvml.nvmlDeviceGetEccMode(handle)[0]),
            })
        return {"driver": driver, "cuda_driver": _probe(pynvml.nvmlSystemGetCudaDriverVersion), "devices": gpus}
    except Exception as exc:  # noqa: BLE001
        return f"{UNAVAILABLE} ({type(exc).__name__})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _probe(call: Any) -> Any:
    try:
        return call()
    except Exception:  # noqa: BLE001
        return UNAVAILABLE


def _git(directory: str) -> dict[str, Any] | str:
    """Return the commit and dirty state of the repository holding `directory`."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", directory, *args], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return UNAVAILABLE
    return {"commit": commit, "dirty": dirty}


def fingerprint(script_dir: str | None = None) -> dict[str, Any]:
    """Return the environment fingerprint (plain data, safe to store in a trace)."""
    return {
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "os": {"system": platform.system(), "release": platform.release(), "libc": " ".join(platform.libc_ver())
               or UNAVAILABLE},
        "cpu": _cpu(),
        "libraries": _libraries(),
        "packages": _packages_digest(),
        "gpus": _gpus(),
        "env": numeric_environment(),
        "git": _git(script_dir or os.getcwd()),
    }


def torch_fingerprint(torch: Any) -> dict[str, Any]:
    """Return what only torch knows: its build, CUDA, cuDNN, NCCL and the visible devices."""
    cuda_available = bool(torch.cuda.is_available())
    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda": torch.version.cuda or UNAVAILABLE,
        "cudnn": _probe(torch.backends.cudnn.version) if cuda_available else UNAVAILABLE,
        "nccl": _probe(lambda: ".".join(map(str, torch.cuda.nccl.version()))) if cuda_available else UNAVAILABLE,
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda_available else [],
    }
    return info


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested maps to dotted keys, for diffs."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Return (key, recorded, current) for every fingerprint field that differs."""
    a, b = flatten(recorded), flatten(current)
    return [(key, a.get(key, UNAVAILABLE), b.get(key, UNAVAILABLE))
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
