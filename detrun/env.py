"""The environment fingerprint: everything outside the script that can change the bits, and its diff.

Every probe either answers or says "unavailable"; none of them imports torch or TensorFlow (that
would change the program being recorded), so library versions come from the installed
distributions' directory names and the CUDA details from package metadata, torch's and
TensorFlow's build files read as text, and shared-library file names. What only a running torch
knows (the cuDNN it loaded, the devices it sees) is recorded as an event once the script imports
torch (`torch_build_info`, `torch_cuda_info`). `fingerprint()` runs at every record and replay
start, so it stays cheap: no `importlib.metadata` (it parses every METADATA file), one `git` call.

`diff` lists what changed between two fingerprints; `classify` says for each difference whether it
"can change bits" or is "cosmetic" and ranks the former by how likely it is to explain a divergence.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import re
import subprocess
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
    entries = sorted(f"{name}=={version}" for name, version in dists.items())
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16] + f" ({len(entries)} packages)"


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
        cuda_driver = _probe(pynvml.nvmlSystemGetCudaDriverVersion)
        if isinstance(cuda_driver, int):  # 12080 -> "12.8"
            cuda_driver = f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}"
        gpus["cuda_driver"] = cuda_driver
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            gpus["devices"].append({
                "name": _text(_probe(lambda: pynvml.nvmlDeviceGetName(handle))),
                "uuid": _text(_probe(lambda: pynvml.nvmlDeviceGetUUID(handle))),
                "compute_capability": _probe(
                    lambda: ".".join(map(str, pynvml.nvmlDeviceGetCudaComputeCapability(handle)))),
                "memory_bytes": _probe(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)),
                "mig_mode": _mode(_probe(lambda: pynvml.nvmlDeviceGetMigMode(handle)[0])),
                "ecc_mode": _mode(_probe(lambda: pynvml.nvmlDeviceGetEccMode(handle)[0])),
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


def _probe(call: Any) -> Any:
    try:
        return call()
    except Exception:  # noqa: BLE001
        return UNAVAILABLE


def _git(directory: str) -> dict[str, Any]:
    """Return the commit and dirty state of the repository holding `directory` (one `git` call)."""
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


# ------------------------------------------------------------------------------ what only torch knows


def torch_build_info(torch: Any) -> dict[str, Any]:
    """Return torch's build facts; safe at import time (it initialises nothing, CUDA included)."""
    def config(pattern: str) -> str:
        match = re.search(pattern, show)
        return match.group(1) if match else UNAVAILABLE

    show = str(_probe(torch.__config__.show))
    return {
        "version": str(torch.__version__),
        "git": str(getattr(torch.version, "git_version", UNAVAILABLE)),
        "cuda": str(torch.version.cuda or "none (CPU build)"),
        "hip": str(getattr(torch.version, "hip", None) or "none"),
        "cudnn_built": bool(_probe(lambda: torch.backends.cudnn.is_available()) is True),
        "mkldnn": bool(_probe(lambda: torch.backends.mkldnn.is_available()) is True),
        "mkl": bool(_probe(lambda: torch.backends.mkl.is_available()) is True),
        "onednn_version": config(r"(?:MKL-DNN|oneDNN)\s+v?([0-9][^\s(]*)"),
        "mkl_version": config(r"Math Kernel Library Version ([0-9.]+)"),
        "cxx_abi": config(r"CXX11_ABI_FLAG=(\d)"),
    }


def torch_cuda_info(torch: Any) -> dict[str, Any]:
    """Return what torch sees of CUDA at run time; call only once CUDA is initialised (it would initialise it)."""
    devices = []
    for i in range(torch.cuda.device_count()):
        name = _probe(lambda: torch.cuda.get_device_name(i))
        capability = _probe(lambda: ".".join(map(str, torch.cuda.get_device_capability(i))))
        devices.append({"name": name, "compute_capability": capability})
    return {
        "cudnn": str(_probe(torch.backends.cudnn.version)),
        "nccl": str(_probe(lambda: ".".join(map(str, torch.cuda.nccl.version())))),
        "devices": devices,
    }


def torch_fingerprint(torch: Any) -> dict[str, Any]:
    """Return torch's build facts and, when a GPU is usable, its CUDA facts (for `detrun env`)."""
    info = torch_build_info(torch)
    usable = bool(_probe(torch.cuda.is_available) is True)
    info["cuda_available"] = usable
    info["runtime"] = torch_cuda_info(torch) if usable else UNAVAILABLE
    info["threads"] = {"intra_op": _probe(torch.get_num_threads), "inter_op": _probe(torch.get_num_interop_threads)}
    return info


# ------------------------------------------------------------------------------ diff and classification


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested maps (and lists of maps, by index) to dotted keys, for diffs."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        flat = {}
        for index, value in enumerate(data):
            flat.update(flatten(value, f"{prefix}{index}."))
        return flat
    return {prefix.rstrip("."): data}


def diff(recorded: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Return (key, recorded, current) for every fingerprint field that differs."""
    a, b = flatten(recorded), flatten(current)
    return [(key, a.get(key, UNAVAILABLE), b.get(key, UNAVAILABLE))
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


BITS = "can change bits"
COSMETIC = "cosmetic"
PINNED = "pinned"


@dataclasses.dataclass
class Difference:
    """One field of the environment that differs from the recording, and what that can do."""

    key: str
    recorded: Any
    current: Any
    impact: str  # BITS, COSMETIC or PINNED (detrun restores the recorded value in the child)
    label: str
    rank: int  # lower is a more likely cause of a divergence
    why: str = ""

    def describe(self) -> str:
        """Return 'label: recorded X, now Y' for messages."""
        return f"{self.label}: recorded {_shown(self.recorded)}, now {_shown(self.current)}"


def _shown(value: Any) -> str:
    if value is None or value == UNSET:
        return UNSET
    if isinstance(value, str):
        return value if value.startswith(UNAVAILABLE) else repr(value)
    return str(value)


# (pattern, impact, rank, label, why); the first match wins. Labels may use the regex groups.
_RULES: tuple[tuple[str, str, int, str, str], ...] = (
    (r"gpus\.devices\.(\d+)\.name", BITS, 0, "GPU {0} model", "a different GPU runs different kernels"),
    (r"gpus\.devices\.(\d+)\.compute_capability", BITS, 0, "GPU {0} compute capability",
     "kernels are chosen per architecture"),
    (r"gpus\.devices\.(\d+)\.mig_mode", BITS, 1, "GPU {0} MIG mode",
     "a MIG slice has fewer SMs (other split-K choices)"),
    (r"gpus\.devices\.(\d+)\.(uuid|memory_bytes|ecc_mode)", COSMETIC, 50, "GPU {0} {1}", ""),
    (r"gpus\.(driver|cuda_driver)", BITS, 2, "NVIDIA driver ({0})", "the driver JIT-compiles and ships kernels"),
    (r"gpus\.nvml", COSMETIC, 50, "NVML", ""),
    (r"cuda\.cudnn", BITS, 3, "cuDNN", "cuDNN's heuristics and kernels change between versions"),
    (r"cuda\.cublas", BITS, 3, "cuBLAS", "cuBLAS picks other GEMM kernels between versions"),
    (r"cuda\.(runtime|torch_build)", BITS, 4, "CUDA ({0})", ""),
    (r"cuda\.nccl", BITS, 4, "NCCL", "collective reduction order"),
    (r"cuda\.(tensorflow_build\w*)", BITS, 5, "CUDA ({0})", ""),
    (r"libraries\.torch", BITS, 4, "torch", "op implementations and defaults change"),
    (r"libraries\.(tensorflow|jax|jaxlib|keras)", BITS, 5, "{0}", ""),
    (r"libraries\.numpy", BITS, 6, "numpy", ""),
    (r"libraries\.detrun", BITS, 9, "detrun", "other patches may apply"),
    (r"libraries\.(.+)", BITS, 7, "{0}", ""),
    (r"env\.PYTHONHASHSEED", PINNED, 90, "env PYTHONHASHSEED", ""),
    (r"env\.(CUDA_VISIBLE_DEVICES)", BITS, 6, "env {0}", ""),
    (r"env\.(\w*THREADS\w*)", BITS, 5, "env {0}", "reduction splits depend on thread counts"),
    (r"env\.(.+)", BITS, 3, "env {0}", "a numerics setting"),
    (r"cpu\.isa", BITS, 4, "CPU ISA extensions", "MKL/oneDNN pick other kernels per ISA"),
    (r"cpu\.machine", BITS, 2, "CPU architecture", ""),
    (r"cpu\.model", BITS, 5, "CPU model", "MKL/oneDNN dispatch on the CPU"),
    (r"cpu\.(logical_cpus|usable_cpus)", BITS, 6, "CPU count ({0})", "default thread counts follow it"),
    (r"python\.(version|implementation)", BITS, 7, "Python {0}", ""),
    (r"python\.executable", COSMETIC, 50, "python executable", ""),
    (r"os\.(system|libc)", BITS, 7, "OS {0}", "libm and the allocator"),
    (r"os\.release", COSMETIC, 50, "OS kernel release", ""),
    (r"host\.(.+)", COSMETIC, 50, "{0}", ""),
    (r"packages", COSMETIC, 50, "installed packages digest", ""),
    (r"git\.commit", BITS, 9, "git commit of the script's repository", "other files of the repository may differ"),
    (r"git\.dirty", COSMETIC, 50, "git dirty state", ""),
)


def classify(changes: list[tuple[str, Any, Any]], *, threads_pinned: bool = True) -> list[Difference]:
    """Class each difference as "can change bits", "cosmetic" or "pinned", most likely cause first."""
    found = []
    for key, old, new in changes:
        if key.startswith("env."):  # an absent variable is unset, not unavailable
            old = UNSET if old == UNAVAILABLE else old
            new = UNSET if new == UNAVAILABLE else new
        impact, rank, label, why = BITS, 8, key, ""
        for pattern, rule_impact, rule_rank, rule_label, rule_why in _RULES:
            match = re.fullmatch(pattern, key)
            if match:
                impact, rank, label, why = rule_impact, rule_rank, rule_label.format(*match.groups()), rule_why
                break
        name = key.partition(".")[2]
        if key.startswith("env.") and COSMETIC_ENV.search(name):
            impact, rank = COSMETIC, 50
        if threads_pinned and key.startswith("env.") and name in THREAD_ENV_NAMES:
            impact, rank = PINNED, 90  # the launcher gives the child the recorded value
        found.append(Difference(key, old, new, impact, label, rank, why))
    found.sort(key=lambda d: (d.rank, d.key))
    return found


def causes(differences: list[Difference]) -> list[str]:
    """Return the differences that can change bits, as cause texts, most likely first."""
    return [d.describe() for d in differences if d.impact == BITS]


def report_lines(differences: list[Difference], limit: int = 12) -> list[str]:
    """Return the lines `detrun replay` prints before running (without the `detrun:` prefix)."""
    bits = [d for d in differences if d.impact == BITS]
    cosmetic = [d for d in differences if d.impact == COSMETIC]
    pinned = [d for d in differences if d.impact == PINNED and d.key != "env.PYTHONHASHSEED"]
    if not (bits or cosmetic or pinned):
        return []
    lines = [f"environment differs from the recording: {len(bits)} difference(s) can change bits, "
             f"{len(cosmetic)} cosmetic" + (f", {len(pinned)} pinned" if pinned else "")]
    for d in bits[:limit]:
        lines.append(f"  {BITS}: {d.describe()}" + (f" ({d.why})" if d.why else ""))
    if len(bits) > limit:
        lines.append(f"  {BITS}: … and {len(bits) - limit} more")
    if pinned:
        lines.append("  pinned to the recorded value: " + ", ".join(d.label for d in pinned))
    if cosmetic:
        labels = list(dict.fromkeys(d.label for d in cosmetic))
        lines.append(f"  {COSMETIC}: " + ", ".join(labels))
    return lines


# ------------------------------------------------------------------------------ rendering (detrun env)


def render(data: dict[str, Any]) -> str:
    """Return a fingerprint (plus optional torch facts) as aligned `key  value` lines."""
    flat = flatten(data)
    width = max((len(k) for k in flat), default=0)
    lines = []
    section = None
    for key, value in flat.items():
        head = key.partition(".")[0]
        if head != section and section is not None:
            lines.append("")
        section = head
        lines.append(f"{key:<{width}}  {_plain(value)}")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "(none)"
    return str(value)


# ------------------------------------------------------------------------------ `detrun env`


def describe(*, with_torch: bool = True, script_dir: str | None = None) -> dict[str, Any]:
    """Return the fingerprint plus, if asked and installed, what torch itself reports (it imports torch)."""
    data = fingerprint(script_dir)
    if with_torch:
        data["torch"] = _torch_section()
    return data


def _torch_section() -> Any:
    try:
        import torch
    except ImportError:
        return f"{UNAVAILABLE} (torch not installed)"
    except Exception as exc:  # noqa: BLE001 - a broken install still leaves the rest of the report
        return f"{UNAVAILABLE} ({type(exc).__name__}: {exc})"
    from detrun.replay.sources.backends import torch_state

    info = torch_fingerprint(torch)
    info["flags"] = _probe(lambda: torch_state(torch))
    return info


def compare_with_trace(trace_path: str, script_dir: str | None = None) -> list[Difference]:
    """Return the classified differences between a trace's environment and this one."""
    from detrun.trace import read_header

    header = read_header(trace_path)
    if script_dir is None:
        script_dir = os.path.dirname(str(header.get("script", {}).get("path") or "")) or None
    if script_dir is not None and not os.path.isdir(script_dir):
        script_dir = None
    return classify(diff(header.get("env", {}), fingerprint(script_dir)))
