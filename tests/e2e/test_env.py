"""The environment fingerprint, its diff and classification, `detrun env`, and the report before a replay."""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import pytest

from conftest import detrun, verdict
import detrun.env.diff as env_diff
import detrun.env.fingerprint as env


def test_fingerprint_has_every_field_or_says_unavailable() -> None:
    data = env.fingerprint()
    flat = env_diff.flatten(data)
    missing = [field for field in env.FIELDS if field not in flat]
    assert missing == []
    for field in env.FIELDS:
        assert flat[field] not in (None, ""), field
    for device in data["gpus"]["devices"]:
        assert set(env.GPU_FIELDS) <= set(device)
    assert json.loads(json.dumps(data)) == data  # plain data, as stored in a trace
    if "torch" in sys.modules or flat["libraries.torch"] != env.UNAVAILABLE:
        assert flat["libraries.torch"].startswith("2.")


def test_fingerprint_is_cheap() -> None:
    env.fingerprint()  # warm: the first call imports pynvml and starts git's caches
    costs = []
    for _ in range(5):
        start = time.perf_counter()
        env.fingerprint()
        costs.append(time.perf_counter() - start)
    # It runs at every record and replay start (measured ~6 ms on the 2-core CI machine).
    assert statistics.median(costs) < 0.25, costs


def test_probes_say_unavailable_without_git_nvml_or_libraries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env._git(str(tmp_path)) == {"commit": env.UNAVAILABLE, "dirty": env.UNAVAILABLE}
    monkeypatch.setattr(env, "NVIDIA_DRIVER_MARKERS", ())
    if sys.platform == "linux":
        assert env._gpus()["nvml"] == "unavailable (no NVIDIA driver)"
    monkeypatch.setattr(env, "NVIDIA_DRIVER_MARKERS", (str(tmp_path),))  # as if a driver were loaded
    monkeypatch.setitem(sys.modules, "pynvml", None)  # but nvidia-ml-py is missing
    gpus = env._gpus()
    assert gpus == {"nvml": "unavailable (nvidia-ml-py not installed)", "driver": env.UNAVAILABLE,
                    "cuda_driver": env.UNAVAILABLE, "devices": []}
    empty = str(tmp_path)
    assert env._torch_build_cuda([empty]) == env.UNAVAILABLE
    assert env._tensorflow_build([empty]) == {"cuda": env.UNAVAILABLE, "cudnn": env.UNAVAILABLE}
    monkeypatch.setattr(env, "SYSTEM_LIBRARY_DIRS", ())
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    cuda = env._cuda({}, [empty])
    assert cuda["cudnn"] == cuda["cublas"] == cuda["nccl"] == env.UNAVAILABLE


def test_versions_come_from_files_without_importing(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "torch" / "lib").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("raise ImportError('never imported')\n")
    (site / "torch" / "version.py").write_text("__version__ = '2.13.0+cu130'\ncuda: Optional[str] = '13.0'\n")
    (site / "torch" / "lib" / "libcudnn.so.9").write_text("")
    (site / "torch" / "lib" / "libcudnn.so.9.19.0").write_text("")
    (site / "tensorflow" / "python" / "platform").mkdir(parents=True)
    (site / "tensorflow" / "__init__.py").write_text("")
    (site / "tensorflow" / "python" / "platform" / "build_info.py").write_text(
        "build_info = collections.OrderedDict([('is_cuda_build', True), ('cuda_version', '12.5.1'), "
        "('cudnn_version', '9')])\n")
    for name in ("torch-2.13.0+cu130.dist-info", "nvidia_cublas-13.1.1.3.dist-info", "tensorflow-2.21.0.dist-info",
                 "nvidia_nccl_cu13-2.28.3.dist-info", "numpy-2.4.6.dist-info", "source.egg-info"):
        (site / name).mkdir()
    dists = env.distributions([str(site)])
    assert dists["nvidia-cublas"] == "13.1.1.3" and "source" not in dists
    assert env._libraries(dists)["tensorflow"] == "2.21.0"
    cuda = env._cuda(dists, [str(site)])
    assert cuda["torch_build"] == "13.0"
    assert (cuda["tensorflow_build"], cuda["tensorflow_build_cudnn"]) == ("12.5.1", "9")
    assert cuda["cublas"] == "13.1.1.3" and cuda["nccl"] == "2.28.3"  # from the wheels
    assert cuda["cudnn"] == "9.19.0"  # from the library file name


def _fingerprint(**changes: object) -> dict:
    base = env.fingerprint()
    base["gpus"] = {"nvml": "ok", "driver": "580.1", "cuda_driver": "13.0",
                    "devices": [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "compute_capability": "9.0",
                                 "memory_bytes": 85520809984, "mig_mode": "disabled", "ecc_mode": "enabled"}]}
    flat = env_diff.flatten(base)
    flat.update(changes)
    out: dict = {}
    for key, value in flat.items():  # unflatten (devices are rebuilt as a list)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    out["gpus"]["devices"] = [out["gpus"]["devices"]["0"]]
    return out


def test_differences_are_classed_and_ranked() -> None:
    recorded = _fingerprint()
    current = _fingerprint(**{"gpus.devices.0.name": "NVIDIA A100-SXM4-80GB", "gpus.devices.0.uuid": "GPU-2",
                              "cuda.cudnn": "9.10.2", "host.hostname": "elsewhere", "packages": "0123 (9 packages)",
                              "python.executable": "/other/python", "git.dirty": not recorded["git"]["dirty"],
                              "env.NVIDIA_TF32_OVERRIDE": "0", "env.OMP_NUM_THREADS": "3",
                              "env.TF_CPP_MIN_LOG_LEVEL": "2"})
    differences = env_diff.classify(env_diff.diff(recorded, current))
    by_key = {d.key: d for d in differences}
    assert by_key["gpus.devices.0.name"].impact == env_diff.BITS
    assert by_key["cuda.cudnn"].impact == env_diff.BITS
    assert by_key["env.NVIDIA_TF32_OVERRIDE"].describe() == "env NVIDIA_TF32_OVERRIDE: recorded unset, now '0'"
    for key in ("gpus.devices.0.uuid", "host.hostname", "packages", "python.executable", "git.dirty",
                "env.TF_CPP_MIN_LOG_LEVEL"):
        assert by_key[key].impact == env_diff.COSMETIC, key
    assert by_key["env.OMP_NUM_THREADS"].impact == env_diff.PINNED  # the launcher pins the recorded value
    unpinned = {d.key: d for d in env_diff.classify(env_diff.diff(recorded, current), threads_pinned=False)}
    assert unpinned["env.OMP_NUM_THREADS"].impact == env_diff.BITS
    causes = env_diff.causes(differences)  # most likely first
    assert len(causes) == 3
    assert causes[0] == "GPU 0 model: recorded 'NVIDIA H100 80GB HBM3', now 'NVIDIA A100-SXM4-80GB'"
    assert causes[1].startswith("cuDNN: recorded ") and causes[1].endswith("now '9.10.2'")
    assert causes[2] == "env NVIDIA_TF32_OVERRIDE: recorded unset, now '0'"
    lines = env_diff.report_lines(differences)
    assert lines[0] == "environment differs from the recording: 3 difference(s) can change bits, 6 cosmetic, 1 pinned"
    assert lines[-1].startswith("  cosmetic: ") and "hostname" in lines[-1]


def test_detrun_env_prints_text_and_json(tmp_path: Path) -> None:
    text = detrun("env", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "python.version" in text.stdout and "gpus.nvml" in text.stdout and "cuda.cudnn" in text.stdout
    assert "torch.flags.cudnn.benchmark" in text.stdout  # torch imported: its flags are listed
    as_json = detrun("env", "--json", "--no-torch", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert set(data) >= {"python", "os", "cpu", "libraries", "cuda", "gpus", "env", "git", "packages"}
    assert "torch" not in data
    assert data["git"] == {"commit": "unavailable", "dirty": "unavailable"}


def test_replay_reports_the_environment_and_names_the_likely_cause(tmp_path: Path) -> None:
    # No torch: the byte count the script asks for depends on a numerics variable.
    script = tmp_path / "knob.py"
    script.write_text("import os\nos.urandom(8 if os.environ.get('NVIDIA_TF32_OVERRIDE') else 4)\n")
    assert detrun("record", "-q", str(script), cwd=tmp_path).returncode == 0
    same = detrun("replay", "trace.zst", cwd=tmp_path)
    assert "environment differs" not in same.stderr, same.stderr
    changed = detrun("replay", "trace.zst", cwd=tmp_path, env={"NVIDIA_TF32_OVERRIDE": "0", "OMP_NUM_THREADS": "1"})
    assert "detrun: environment differs from the recording: 1 difference(s) can change bits, 0 cosmetic, 1 pinned" \
        in changed.stderr, changed.stderr
    assert "detrun:   can change bits: env NVIDIA_TF32_OVERRIDE: recorded unset, now '0'" in changed.stderr
    assert "detrun:   pinned to the recorded value: env OMP_NUM_THREADS" in changed.stderr
    line = verdict(changed.stderr)
    # No training state to check: the departure is named beside the verdict, not as the verdict.
    assert line.startswith("detrun: UNVERIFIED"), line
    assert "the replay departed from the recorded events: os.urandom(8) at knob.py:2" in line, line
    shown = detrun("env", "--diff", "trace.zst", cwd=tmp_path, env={"NVIDIA_TF32_OVERRIDE": "0"})
    assert "can change bits: env NVIDIA_TF32_OVERRIDE" in shown.stdout, shown.stdout
    as_json = detrun("env", "--diff", "trace.zst", "--json", cwd=tmp_path, env={"NVIDIA_TF32_OVERRIDE": "0"})
    assert as_json.returncode == 0, as_json.stderr
    by_key = {d["key"]: d for d in json.loads(as_json.stdout)}
    assert by_key["env.NVIDIA_TF32_OVERRIDE"]["impact"] == "can change bits", by_key
    assert by_key["env.NVIDIA_TF32_OVERRIDE"]["current"] == "0"
