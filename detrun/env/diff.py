"""Compare two environment fingerprints and class each difference: can change bits, cosmetic, or pinned."""
from __future__ import annotations

import os
import re
from typing import Any, NamedTuple

from detrun.env.fingerprint import COSMETIC_ENV, THREAD_ENV_NAMES, UNAVAILABLE, UNSET, fingerprint

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


class Difference(NamedTuple):
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




def compare_with_trace(trace_path: str, script_dir: str | None = None) -> list[Difference]:
    """Return the classified differences between a trace's environment and this one."""
    from detrun.trace import read_header

    header = read_header(trace_path)
    if script_dir is None:
        script_dir = os.path.dirname(str(header.get("script", {}).get("path") or "")) or None
    if script_dir is not None and not os.path.isdir(script_dir):
        script_dir = None
    return classify(diff(header.get("env", {}), fingerprint(script_dir)))
