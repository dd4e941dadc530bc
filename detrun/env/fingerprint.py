"""The environment fingerprint: everything outside the script that can change the bits.

Every probe either answers or says "unavailable"; none of them imports torch or TensorFlow (that
would change the program being recorded), so library versions come from the installed
distributions' directory names and the CUDA details from package metadata, torch's and
TensorFlow's build files read as text, and shared-library file names. What only a running torch
knows (the cuDNN it loaded, the devices it sees) is recorded as an event once the script imports
torch (`torch_build_info`, `torch_cuda_info`). `fingerprint()` runs at every record and replay
start, so it stays cheap: no `importlib.metadata` (it parses every METADATA file), one `git` call.

"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterable

UNAVAILABLE = "unavailable"
UNSET = "unset"

# Variables that change numerics or parallelism; recorded, and the thread ones pinned on replay.
NUMERIC_ENV_PREFIXES = ("TF_", "XLA_", "NCCL_", "CUDNN_", "CUBLAS", "TORCH_", "TORCHINDUCTOR_", "OMP_", "MKL_",
                        "KMP_", "OPENBLAS_", "ONEDNN_", "DNNL_", "NVIDIA_")
NUMERIC_ENV_NAMES = (
    "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "CUDA_VISIBLE_DEVICES", "CUDA_LAUNCH_BLOCKING",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
    "KMP_AFFINITY", "KMP_DETERMINISTIC_REDUCTION", "PYTHONHASHSEED", "CUDA_MODULE_LOADING",
)
# Names under those prefixes that only steer logging, caches or unrelated tools.
COSMETIC_ENV = re.compile(r"(LOG|DEBUG|VERBOS|VMODULE|HOME|CACHE|DIR$|PATH$|CONFIG_FILE|^NVIDIA_VISIBLE|"
                          r"^NVIDIA_DRIVER_CAPABILITIES|^NVIDIA_REQUIRE|^NVIDIA_PRODUCT)")
THREAD_ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
# Always reported (as "unavailable" when missing): the frameworks whose version changes numerics.
FRAMEWORKS = ("torch", "numpy", "tensorflow")
# Reported when installed.
OPTIONAL_LIBRARIES = ("keras", "jax", "jaxlib", "scipy", "detrun")
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly", "tensorflow-intel",
                            "tensorflow-macos")
# The CUDA libraries as pip distributions (cu13 wheels dropped the suffix for some of them).
CUDA_DISTRIBUTIONS = {
    "runtime": ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12",
                "nvidia-cuda-runtime-cu11"),
    "cudnn": ("nvidia-cudnn-cu13", "nvidia-cudnn-cu12", "nvidia-cudnn-cu11", "nvidia-cudnn"),
    "cublas": ("nvidia-cublas", "nvidia-cublas-cu13", "nvidia-cublas-cu12", "nvidia-cublas-cu11"),
    "nccl": ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11", "nvidia-nccl"),
}
# And as shared libraries, for system installs (the file name carries the version).
CUDA_LIBRARY_FILES = {"runtime": "cudart", "cudnn": "cudnn", "cublas": "cublas", "nccl": "nccl"}
SYSTEM_LIBRARY_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu",
                       "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib")
# ISA extensions that pick different BLAS/oneDNN kernels (and so different summation orders).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")


# ------------------------------------------------------------------------------ probes


def numeric_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment variables that can change numerics, sorted by name."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in sorted(environ.items())
            if k in NUMERIC_ENV_NAMES or (k.startswith(NUMERIC_ENV_PREFIXES) and not COSMETIC_ENV.search(k))}


def _cpu() -> dict[str, Any]:
    """Return the CPU model, ISA flags and counts."""
    import platform  # start-up: the launcher imports this module before its child starts, fingerprints after

    model, flags = UNAVAILABLE, UNAVAILABLE
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "cpu model") and model == UNAVAILABLE:
                    model = value.strip()
                elif key in ("flags", "Features") and flags == UNAVAILABLE:
                    present = set(value.split())
                    flags = " ".join(f for f in ISA_FLAGS if f in present)
                if model != UNAVAILABLE and flags != UNAVAILABLE:
                    break  # every core repeats the same block
    except OSError:
        pass
    if model == UNAVAILABLE and platform.processor():
        model = platform.processor()
    try:
        affinity: Any = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = UNAVAILABLE
    return {"model": model, "isa": flags, "machine": platform.machine() or UNAVAILABLE,
            "logical_cpus": os.cpu_count() or UNAVAILABLE, "usable_cpus": affinity}


def _normalise(name: str) -> str:
    """Return a distribution name the way PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _search_path() -> list[str]:
    """Return the existing directories on sys.path, in order, without duplicates."""
    seen: list[str] = []
    for entry in sys.path:
        entry = os.path.abspath(entry or os.curdir)
        if entry not in seen and os.path.isdir(entry):
            seen.append(entry)
    return seen


def distributions(path: Iterable[str] | None = None) -> dict[str, str]:
    """Return {normalised name: version} of the installed distributions, read from directory names.

    The first one on sys.path wins, as for imports; reading the `*.dist-info` names costs one
    listdir per path entry where importlib.metadata would parse every METADATA file (~60 ms).
    """
    found: dict[str, str] = {}
    for entry in (path if path is not None else _search_path()):
        try:
            names = os.listdir(entry)
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                stem = name[: -len(".dist-info")]
            elif name.endswith(".egg-info"):
                stem = name[: -len(".egg-info")]
            else:
                continue
            dist, _, version = stem.partition("-")
            if version:  # a bare `name.egg-info` from a source checkout says nothing about what is installed
                found.setdefault(_normalise(dist), version.split("-py")[0])
    return found


def _libraries(dists: dict[str, str]) -> dict[str, str]:
    """Return the versions of the frameworks that matter for numerics ("unavailable" when missing)."""
    versions = {name: dists.get(name, UNAVAILABLE) for name in FRAMEWORKS}
    versions["tensorflow"] = next((dists[d] for d in TENSORFLOW_DISTRIBUTIONS if d in dists), UNAVAILABLE)
    versions.update({name: dists[name] for name in OPTIONAL_LIBRARIES if name in dists})
    return versions


def _packages_digest(dists: dict[str, str]) -> str:
    """Return a digest of every installed distribution and version."""
    from detrun.small_sha256 import sha256_hex  # start-up: no OpenSSL to load (see there)

    entries = sorted(f"{name}=={version}" for name, version in dists.items())
    return sha256_hex("\n".join(entries).encode())[:16] + f" ({len(entries)} packages)"


def _package_dir(package: str, path: list[str]) -> str | None:
    """Return the directory of an importable package without importing it."""
    for entry in path:
        candidate = os.path.join(entry, package)
        if os.path.isfile(os.path.join(candidate, "__init__.py")):
            return candidate
    return None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(65536)
    except OSError:
        return ""


def _torch_build_cuda(path: list[str]) -> str:
    """Return the CUDA version torch was built with, from torch/version.py read as text."""
    directory = _package_dir("torch", path)
    if directory is None:
        return UNAVAILABLE
    text = _read(os.path.join(directory, "version.py"))
    match = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, re.MULTILINE)
    if not match:
        return UNAVAILABLE
    return match.group(1) or match.group(2) or "none (CPU build)"


def _tensorflow_build(path: list[str]) -> dict[str, str]:
    """Return the CUDA and cuDNN versions TensorFlow was built with, from its build_info.py as text."""
    directory = _package_dir("tensorflow", path)
    if directory is None:
        return {"cuda": UNAVAILABLE, "cudnn": UNAVAILABLE}
    text = _read(os.path.join(directory, "python", "platform", "build_info.py"))
    found = {}
    for key in ("cuda", "cudnn"):
        # Either `'cuda_version': '12.5'` or, in newer builds, `('cuda_version', '12.5')`.
        match = re.search(rf"['\"]{key}_version['\"]\s*[:,]\s*['\"]([^'\"]+)['\"]", text)
        found[key] = match.group(1) if match else ("none (CPU build)" if text else UNAVAILABLE)
    return found


def _library_dirs(path: list[str]) -> list[str]:
    """Return the directories that may hold CUDA shared libraries: pip wheels first, then the system."""
    dirs = []
    for entry in path:
        torch_lib = os.path.join(entry, "torch", "lib")
        if os.path.isdir(torch_lib):
            dirs.append(torch_lib)
        nvidia = os.path.join(entry, "nvidia")
        try:
            for sub in sorted(os.listdir(nvidia)):
                for leaf in ("lib", os.path.join("cu13", "lib")):
                    candidate = os.path.join(nvidia, sub, leaf)
                    if os.path.isdir(candidate):
                        dirs.append(candidate)
        except OSError:
            pass
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    dirs += list(SYSTEM_LIBRARY_DIRS)
    return dirs


def _shared_library_versions(dirs: list[str]) -> dict[str, str]:
    """Return {library: version} from file names such as libcudnn.so.9.10.2 (the longest version wins)."""
    wanted = {stem: key for key, stem in CUDA_LIBRARY_FILES.items()}
    pattern = re.compile(r"^lib(cudart|cudnn|cublas|nccl)\.so\.(\d+(?:\.\d+)*)$")
    found: dict[str, str] = {}
    for directory in dirs:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            match = pattern.match(name)
            if match:
                key = wanted[match.group(1)]
                if len(match.group(2)) > len(found.get(key, "")):
                    found[key] = match.group(2)
    if found.get("runtime", "").count(".") < 1:
        # A toolkit install links libcudart.so.13 only; its version.json has the full number.
        match = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([^"]+)"', _read("/usr/local/cuda/version.json"))
        if match:
            found["runtime"] = match.group(1)
    return found


def _cuda(dists: dict[str, str], path: list[str]) -> dict[str, str]:
    """Return the CUDA toolkit pieces: the builds torch and TF expect and the runtime, cuDNN, cuBLAS, NCCL found."""
    info = {"torch_build": _torch_build_cuda(path)}
    tf = _tensorflow_build(path)
    info["tensorflow_build"] = tf["cuda"]
    info["tensorflow_build_cudnn"] = tf["cudnn"]
    libraries: dict[str, str] | None = None
    for key, candidates in CUDA_DISTRIBUTIONS.items():
        version = next((dists[d] for d in candidates if d in dists), None)
        if version is None:
            if libraries is None:  # only scan directories when a wheel does not say
                libraries = _shared_library_versions(_library_dirs(path))
            version = libraries.get(key, UNAVAILABLE)
        info[key] = version
    return info


def cuda_unused_note(cuda: dict[str, Any]) -> str | None:
    """Return why CUDA libraries found on this machine apply to no framework here, or None if they may.

    A CPU build of torch (and of TensorFlow, or none installed) ignores whatever CUDA runtime,
    cuDNN, cuBLAS and NCCL files happen to lie around; `detrun env` says so instead of listing
    them as if they were used. The fingerprint itself keeps the versions found (traces compare them).
    """
    builds = {"torch": cuda.get("torch_build"), "TensorFlow": cuda.get("tensorflow_build")}
    cpu = [name for name, build in builds.items() if isinstance(build, str) and build.startswith("none")]
    absent = [name for name, build in builds.items() if not isinstance(build, str) or build.startswith(UNAVAILABLE)]
    if not cpu or len(cpu) + len(absent) != len(builds):
        return None
    return f"CPU build{'s' if len(cpu) > 1 else ''} of {' and '.join(cpu)}"


def _gpus() -> dict[str, Any]:
    """Return the GPUs as NVML reports them; without a driver every field says "unavailable"."""
    gpus: dict[str, Any] = {"nvml": "ok", "driver": UNAVAILABLE, "cuda_driver": UNAVAILABLE, "devices": []}
    if sys.platform == "linux" and not any(os.path.exists(p) for p in NVIDIA_DRIVER_MARKERS):
        # No NVIDIA driver on this Linux host: skip importing pynvml (20 ms of the fingerprint's 27).
        gpus["nvml"] = f"{UNAVAILABLE} (no NVIDIA driver)"
        return gpus
    try:
        import pynvml  # provided by the nvidia-ml-py distribution
    except ImportError:
        gpus["nvml"] = f"{UNAVAILABLE} (nvidia-ml-py not installed)"
        return gpus
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no NVIDIA driver
        gpus["nvml"] = f"{UNAVAILABLE} ({type(exc).__name__})"
        return gpus
    try:
        gpus["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_driver = probe(pynvml.nvmlSystemGetCudaDriverVersion)
        if isinstance(cuda_driver, int):  # 12080 -> "12.8"
            cuda_driver = f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}"
        gpus["cuda_driver"] = cuda_driver
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus["devices"].append({
                "name": _text(probe(lambda: pynvml.nvmlDeviceGetName(handle))),
                "uuid": _text(probe(lambda: pynvml.nvmlDeviceGetUUID(handle))),
                "compute_capability": probe(
                    lambda: ".".join(map(str, pynvml.nvmlDeviceGetCudaComputeCapability(handle)))),
                "memory_bytes": probe(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)),
                "mig_mode": _mode(probe(lambda: pynvml.nvmlDeviceGetMigMode(handle)[0])),
                "ecc_mode": _mode(probe(lambda: pynvml.nvmlDeviceGetEccMode(handle)[0])),
            })
    except Exception as exc:  # noqa: BLE001
        gpus["nvml"] = f"{UNAVAILABLE} ({type(exc).__name__})"
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    return gpus


# Present wherever the NVIDIA driver is loaded: the kernel module, its device node, or WSL's library.
NVIDIA_DRIVER_MARKERS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/usr/lib/wsl/lib/libnvidia-ml.so.1")


def _mode(value: Any) -> Any:
    return {0: "disabled", 1: "enabled"}.get(value, value) if isinstance(value, int) else value


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe(call: Any) -> Any:
    try:
        return call()
    except Exception:  # noqa: BLE001
        return UNAVAILABLE


def _git(directory: str) -> dict[str, Any]:
    """Return the commit and dirty state of the repository holding `directory` (one `git` call)."""
    import subprocess  # start-up: the child imports this module (torch_facts) and never runs git

    try:
        out = subprocess.run(["git", "-C", directory, "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=5, check=True,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": UNAVAILABLE, "dirty": UNAVAILABLE}
    commit, dirty = UNAVAILABLE, False
    for line in out.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split()[2]
        elif not line.startswith("#"):
            dirty = True
    return {"commit": commit if commit != "(initial)" else UNAVAILABLE, "dirty": dirty}


def fingerprint(script_dir: str | None = None) -> dict[str, Any]:
    """Return the environment fingerprint (plain data, safe to store in a trace)."""
    import platform  # start-up: see _cpu

    path = _search_path()
    dists = distributions(path)
    return {
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "os": {"system": platform.system() or UNAVAILABLE, "release": platform.release() or UNAVAILABLE,
               "libc": " ".join(platform.libc_ver()).strip() or UNAVAILABLE},
        "host": {"hostname": platform.node() or UNAVAILABLE},
        "cpu": _cpu(),
        "libraries": _libraries(dists),
        "cuda": _cuda(dists, path),
        "packages": _packages_digest(dists),
        "gpus": _gpus(),
        "env": numeric_environment(),
        "git": _git(script_dir or os.getcwd()),
    }


# Every leaf a fingerprint always has (devices and env vars come on top when present).
FIELDS = (
    "python.version", "python.implementation", "python.executable", "os.system", "os.release", "os.libc",
    "host.hostname", "cpu.model", "cpu.isa", "cpu.machine", "cpu.logical_cpus", "cpu.usable_cpus",
    "libraries.torch", "libraries.numpy", "libraries.tensorflow", "cuda.torch_build", "cuda.tensorflow_build",
    "cuda.tensorflow_build_cudnn", "cuda.runtime", "cuda.cudnn", "cuda.cublas", "cuda.nccl", "packages",
    "gpus.nvml", "gpus.driver", "gpus.cuda_driver", "git.commit", "git.dirty",
)
GPU_FIELDS = ("name", "uuid", "compute_capability", "memory_bytes", "mig_mode", "ecc_mode")
