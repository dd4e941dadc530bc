"""Damaged and hostile traces through `detrun show`, in process: one line and exit 2, never a traceback.

A base trace holds an event of every registered kind (in the main role and a worker segment);
hypothesis mutates it at three levels: the compressed bytes (bit flips, truncation, insertions),
the decompressed msgpack bytes, and the decoded objects (wrong types, huge ints, deep nesting,
list keys, missing or duplicated records, renamed kinds). Each mutated trace must be shown
(exit 0) or refused with exactly one `detrun: error:` line and exit 2, quickly.
"""
from __future__ import annotations

import copy
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

from detrun.cli import main as cli_main
from detrun.errors import TraceError
from detrun.trace import read_trace, registry
from detrun.trace.format import DECLARE_KIND, END, FIRST_USER_KIND, FORMAT_NAME, FORMAT_VERSION, make_packer
from detrun.trace.schema import SchemaError

# One valid payload (or more) for every kind, shaped as the sources write them.
SAMPLES: dict[str, list[Any]] = {
    "os.entropy": [["a.py:1", b"\x01" * 16]],
    "py.seed": [["<unknown>", 2**70], ["a.py:2", "text seed"], ["a.py:3", 1.5], ["a.py:3", b"xy"], ["a.py:3", True]],
    "np.seed": [["a.py:4", [1, 2, 3, 4]], ["a.py:5", 7]],
    "np.default_rng": [["a.py:6", 2**127 + 5]],
    "torch.initial_seed": [["a.py:7", 2**64 - 1]],
    "block.rng_states": [{"python": [3, bytes(624 * 4) + (624).to_bytes(4, "little"), None],
                          "numpy": [bytes(624 * 4), 624, 1, 0.5], "torch": bytes(5056), "cuda": [bytes(16)]}],
    "torch.seed": [["a.py:8", 123]],
    "torch.manual_seed": [["a.py:9", -5]],
    "torch.cuda.seed": [["a.py:10", 77]],
    "torch.Generator.seed": [["a.py:11", 88]],
    "threads": [[2, 2]],
    "backends": [{"cudnn.benchmark": False, "float32_matmul_precision": "highest", "sdp": [1, "x"], "n": None}],
    "backends.set": [[2, "a.py:12", "torch.backends.cudnn.benchmark", {"cudnn.benchmark": True}]],
    "threads.set": [[3, "a.py:13", "torch.set_num_threads", [1, 2]]],
    "env.torch": [{"version": "2.13.0", "cuda": "none (CPU build)", "mkldnn": True}],
    "env.cuda": [{"cudnn": 90100, "devices": [{"name": "H100", "capability": [9, 0]}]}],
    "policy": [{"policy": "strict", "patches": ["histc"], "flags": {"deterministic": True}}],
    "kernels": [{"step": 1, "strings": ["gemm", "aten::mm"], "kernels": [1, b"\x00"], "ops": [1, b"\x01"]},
                {"step": 2, "skipped": "the script started a profiler"}],
    "op.digests": [{"step": 1, "strings": ["aten::mm@cpu"], "ops": [1, b"\x00\x00"], "digests": [4, b"\x01\x02\x03\x04" * 2]},
                   {"step": 2, "skipped": "the script's own dispatch mode was active"}],
    "dl.epoch": [[0, 0, 40, 12345, "BatchSampler"], [0, 1, None, None, "BatchSampler"]],
    "dl.indices": [[0, 0, 1, b"\x01\x02", False], [0, 0, 0, ["a", -1], True]],
    "dl.batch": [[0, 0, 0, [1, 2]]],
    "dl.fetched": [[0, 3, 0, [7, 2], False, [1, 2]], [1, 0, 2, b"\x01\x00", True, None]],
    "fs.listing": [["a.py:14", ["b.txt", "a.txt"]]],
    "step": [[0, 0.5, 123, b"\x01\x02"], [0, None, None, b""]],
    "step.names": [[0, ["fc1.weight", "fc1.bias"]], [1, []]],
    "tf.step": [[1, 0.25, 2**32 - 1, b"\xff" * 16]],
    "tf.seed": [["a.py:15", [1, 2]], ["a.py:15", -3]],
    "tf.global_seed": [["import tensorflow", 42]],
    "tf.generator": [["a.py:16", [1, -2, 3]]],
    "tf.threads": [[2, 0]],
    "keras.seed": [["a.py:17", 5]],
    "tf.timestamp": [["a.py:18", 1.7e9]],
    "backward.loss": [0.75, None],
    "final.state": [{"items": [["module:0", 2**40, "Linear"], ["rng:random", 7, "random"]]}],
    "stdout": [{"lines": ["loss 0.5"], "count": 1, "rest": 0}],
    "signal": [[3, 4, 15, 1]],
    "fs.written": [["/tmp/out"]],
    "process": [{"role": "rank1", "rank": 1, "local_rank": 1, "node_rank": 0, "world_size": 2,
                 "local_world_size": 2}],
    "process.end": [{"complete": True, "reason": "exited", "exit_status": 0, "steps": 8, "final_digest": 7,
                     "hook_failures": []}],
    "dist.init": [{"backend": "gloo", "rank": 1, "world_size": 2, "nccl_version": None, "site": "ddp.py:9"}],
    "ddp.config": [{"bucket_bytes_cap": 26214400, "gradient_as_bucket_view": False}],
    "file.input": [{"path": "data/train.csv", "read": 1, "size": 1024, "mtime_ns": 1_700_000_000_000_000_000,
                    "sha256": "3f" * 32, "sampled": False, "lines": b"\x01\x00\x00\x00", "step": 1},
                   {"path": "/data/shard0.bin", "read": 3, "size": 2**31, "mtime_ns": -1, "sha256": "9c" * 32,
                    "sampled": True}],
    "file.kept": [{"path": "runs/last.pt", "read": 1, "sha256": "ab" * 32, "kept": True}],
    "file.output": [{"path": "runs/last.pt", "version": 2, "size": 2431, "format": "torch",
                     "tensors": [["conv1.weight", "float32[4, 1, 2]:00000000000000ff"]]},
                    {"path": "runs/log.csv", "version": 1, "size": 40, "format": "text", "lines": b"\x00" * 8,
                     "text": ["epoch,loss", "0,0.5"], "appended": True},
                    {"path": "out.bin", "version": 1, "size": 3, "format": "bytes", "sha256": "01" * 32}],
}
WORKER_KINDS = ("os.entropy", "py.seed", "np.seed", "torch.initial_seed", "torch.manual_seed", "fs.listing")

HEADER: dict[str, Any] = {
    "format": FORMAT_NAME, "version": FORMAT_VERSION, "detrun_version": "0.1.0",
    "created": "2026-01-01T00:00:00+00:00",
    "env": {"python": {"version": "3.11.7"}, "os": {"system": "Linux"}, "cpu": {"machine": "x86_64"},
            "libraries": {"torch": "2.13.0"}, "gpus": {"devices": []}},
    "script": {"name": "train.py", "module": False, "path": "/tmp/train.py", "sha256": "ab" * 32},
    "argv": ["--epochs", "1"], "cwd": "/tmp",
    "settings": {"hashseed": "12345", "hashseed_from_user": False,
                 "thread_env": {"OMP_NUM_THREADS": "4", "MKL_NUM_THREADS": None}, "digest_every": 1,
                 "policy": "strict", "policy_ops": [], "tf_op_determinism": True, "kernel_steps": 2},
}


def base_objects() -> list[Any]:
    """Return the decoded objects of a valid trace with every kind, a worker segment and an end record."""
    objects: list[Any] = [copy.deepcopy(HEADER)]
    counts: dict[str, int] = {}

    def segment(kinds: list[str]) -> None:
        ids: dict[str, int] = {}
        for name in kinds:
            for payload in SAMPLES[name]:
                if name not in ids:
                    ids[name] = len(ids) + FIRST_USER_KIND
                    objects.append([DECLARE_KIND, [ids[name], name]])
                objects.append([ids[name], copy.deepcopy(payload)])
                counts[name] = counts.get(name, 0) + 1

    segment(list(SAMPLES))
    objects.append({"segment": "dl0.i0.w0"})
    segment(list(WORKER_KINDS))
    objects.append({"segment": "main"})
    objects.append([END, {"complete": True, "reason": "exited", "exit_status": 0, "steps": 2,
                          "final_digest": 123, "counts": counts}])
    return objects


def pack(objects: list[Any]) -> bytes:
    packer = make_packer()
    return b"".join(o if isinstance(o, bytes) else packer.pack(o) for o in objects)


def compress(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(raw)


def show(path: Path, as_json: bool = False) -> tuple[int, str, str, float]:
    """Run `detrun show` in process; return (exit code, stdout, stderr, seconds); fail on any traceback."""
    started = time.perf_counter()
    result = CliRunner().invoke(cli_main, ["show", *(["--json"] if as_json else []), str(path)])
    seconds = time.perf_counter() - started
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback from show: {result.exception!r}") from result.exception
    return result.exit_code, result.stdout, result.stderr, seconds


def assert_shown_or_refused(path: Path, as_json: bool = False) -> int:
    code, out, err, seconds = show(path, as_json)
    assert seconds < 20, f"show took {seconds:.1f} s"
    assert "Traceback" not in out + err
    if currently_in_test_context():
        event("shown" if code == 0 else "refused")
    if code == 0:
        assert out.strip()
    else:
        assert code == 2, (code, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("detrun: error: "), err
    return code


# ------------------------------------------------------------------ the registry itself


def test_every_registered_kind_has_a_sample_that_its_schema_accepts() -> None:
    assert set(SAMPLES) == set(registry.KINDS) and len(registry.KINDS) >= 34
    for name, payloads in SAMPLES.items():
        for payload in payloads:
            registry.KINDS[name].schema.check(payload)
    registry.HEADER.check(HEADER)


@pytest.mark.parametrize("name, payload", [
    ("step", [0, 0.5, 2**32, b""]), ("step", [-1, None, None, b""]), ("step", [0, 1, None, b""]),
    ("step", [0, None, None, b"x" * 33]), ("np.seed", ["a:1", 2**32]), ("np.seed", ["a:1", "7"]),
    ("np.seed", ["a:1", []]), ("py.seed", ["a:1", [1]]), ("py.seed", ["a:1", 10**5000]), ("threads", [0, 1]),
    ("threads", [True, 1]), ("dl.indices", [0, 0, 3, b"\x00\x01\x02\x03", False]),
    ("dl.indices", [0, 0, 2, b"\x00", False]), ("dl.fetched", [0, 0, 0, [1], False]),
    ("dl.fetched", [0, 0, 3, b"\x00\x01\x02", False, None]), ("dl.fetched", [0, 0, 0, [1], False, [-1]]),
    ("kernels", {"step": 1}), ("policy", {"patches": [["x"]]}),
    ("backends", {"a": {"deep": 1}}), ("fs.listing", ["a:1", [b"bytes"]]), ("signal", [0, 0, 99, 0]),
    ("backward.loss", 1), ("final.state", {"items": [["k", -1, "x"]]}), ("stdout", {"lines": "x"}),
])
def test_schemas_refuse_ill_typed_payloads(name: str, payload: Any) -> None:
    with pytest.raises(SchemaError):
        registry.KINDS[name].schema.check(payload)


def test_the_base_trace_reads_and_shows(tmp_path: Path) -> None:
    path = tmp_path / "base.zst"
    path.write_bytes(compress(pack(base_objects())))
    trace = read_trace(str(path))
    assert trace.counts["main"] == {name: len(p) for name, p in SAMPLES.items()}
    assert list(trace.of("step")) == SAMPLES["step"]
    assert trace.of("py.seed", "dl0.i0.w0") == SAMPLES["py.seed"]
    assert assert_shown_or_refused(path) == 0 and assert_shown_or_refused(path, as_json=True) == 0


@pytest.mark.parametrize("name, objects, says", [
    ("undeclared", [HEADER, [7, 1]], "undeclared event kind 7"),
    ("bad declaration", [HEADER, [DECLARE_KIND, {"x": 1}]], "kind declaration"),
    ("unknown kind", [HEADER, [DECLARE_KIND, [2, "os.system"]]], "unknown event kind 'os.system'"),
    ("newer payload", [HEADER, [DECLARE_KIND, [2, "step", 9]]], "newer detrun"),
    ("list key", [HEADER, b"\x92\x02\x81\x91\x01\x01"], "not allowed for map key"),
    ("deep", [HEADER, b"\x92\x02" + b"\x91" * 5000 + b"\xc0"], "nested too deeply"),
    ("huge int", [HEADER, [DECLARE_KIND, [2, "py.seed"]], [2, ["a:1", 10**5000]]], "max_ext_len"),
    ("np seed type", [HEADER, [DECLARE_KIND, [2, "np.seed"]], [2, ["a:1", "7"]]], "np.seed event #0 of role main"),
    ("no end", [HEADER], "no end record"),
    ("end not a map", [HEADER, [END, [1]]], "the end record"),
    ("digest type", [HEADER, [END, {"final_digest": "ff"}]], "final_digest"),
    ("after end", [HEADER, [END, {}], [END, {}]], "after its end"),
    ("segment", [HEADER, {"segment": ["x"]}], "segment marker"),
    ("script", [{**HEADER, "script": "train.py"}], "header.script"),
    ("argv", [{**HEADER, "argv": [1]}], "header.argv"),
    ("hashseed", [{**HEADER, "settings": {"hashseed": "abc"}}], "hashseed"),
    ("thread env", [{**HEADER, "settings": {"thread_env": {"LD_PRELOAD": "/x.so"}}}], "thread_env"),
    ("unknown setting", [{**HEADER, "settings": {"report_base": "/etc/passwd"}}], "report_base"),
])
def test_each_defect_is_one_line_naming_it(tmp_path: Path, name: str, objects: list[Any], says: str) -> None:
    path = tmp_path / "t.zst"
    path.write_bytes(compress(pack(objects)))
    with pytest.raises(TraceError, match=says.replace("(", r"\(")):
        read_trace(str(path))
    assert assert_shown_or_refused(path) == 2


def test_foreign_bytes_between_frames_are_refused(tmp_path: Path) -> None:
    skippable = b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + b"PK\x03\x04...."
    frame = compress(pack([HEADER, [END, {"complete": True}]]))
    path = tmp_path / "t.zst"
    path.write_bytes(frame + skippable)
    with pytest.raises(TraceError, match="not a zstd frame"):
        read_trace(str(path))


# ------------------------------------------------------------------ bounded resources


def rle_frame(byte: int, blocks: int) -> bytes:
    """Return a hand-made zstd frame of `blocks` run-length blocks of 128 KiB each: 4 bytes per block."""
    frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x58")  # magic; no size, no checksum; a 2 MiB window
    for index in range(blocks):
        last = 1 if index == blocks - 1 else 0
        header = last | (1 << 1) | ((128 * 1024) << 3)  # RLE block of 128 KiB
        frame += header.to_bytes(3, "little") + bytes([byte])
    return bytes(frame)


_READ_IN_CHILD = """
import resource, sys, time
from detrun.errors import TraceError
from detrun.trace import read_trace, reader
# Caps scaled down 10-fold so the suite stays fast: the refusal is the same code at any size.
reader.MAX_EVENTS, reader.MAX_HELD_EVENTS = reader.MAX_EVENTS // 10, reader.MAX_HELD_EVENTS // 10
started = time.perf_counter()
try:
    read_trace(sys.argv[1])
    message = "read"
except TraceError as exc:
    message = str(exc)
# VmHWM is this program's own high-water mark; ru_maxrss would include a large parent's at fork.
hwm = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]
peak = int(hwm[0]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(peak // 1024, time.perf_counter() - started)
print(message)
"""


def _read_in_child(path: Path) -> tuple[int, float, str]:
    """Read a trace in a fresh interpreter; return (peak RSS in MB, seconds reading, outcome)."""
    done = subprocess.run([sys.executable, "-c", _READ_IN_CHILD, str(path)], capture_output=True, text=True,
                          timeout=120, cwd=path.parent)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    numbers, message = done.stdout.split("\n", 1)
    peak, seconds = numbers.split()
    return int(peak), float(seconds), message.strip()


def test_a_small_file_that_decompresses_to_4_gb_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zst"
    # A header, then one bin record claiming 4 GB, then 4 GB of zeros in 128 kB of run-length blocks.
    path.write_bytes(compress(pack([HEADER]) + b"\xc6\xff\xff\xff\xf0") + rle_frame(0, 32768))
    assert path.stat().st_size < 200_000
    peak, seconds, message = _read_in_child(path)
    assert ("refused" in message or "larger than" in message) and seconds < 5 and peak < 150, (peak, seconds, message)


@pytest.mark.parametrize("kind, payload", [("step", [0, None, None, b""]), ("threads", [1, 1])])
def test_millions_of_tiny_events_are_refused_quickly(tmp_path: Path, kind: str, payload: list[Any]) -> None:
    path = tmp_path / "flood.zst"
    chunk = make_packer().pack([2, payload]) * (1 << 16)
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as z:
        z.write(pack([HEADER, [DECLARE_KIND, [2, kind]]]))
        for _ in range(300):  # 20 million events, 100-180 MB decoded
            z.write(chunk)
    assert path.stat().st_size < 3_000_000
    peak, seconds, message = _read_in_child(path)
    # At full size: 10 million events in well under a minute, 4 million held in about 400 MB.
    assert "refused" in message and seconds < 20 and peak < 120, (peak, seconds, message)


def test_a_long_genuine_trace_holds_no_step_events_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "long.zst"
    packer = make_packer()
    steps = [[0, n * 1e-3, (n * 2654435761) & 0xFFFFFFFF, n.to_bytes(4, "little")] for n in range(50_000)]
    with open(path, "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as z:
        z.write(pack([HEADER, [DECLARE_KIND, [2, "step"]]]))
        z.write(b"".join(packer.pack([2, step]) for step in steps))
        z.write(pack([[END, {"complete": True, "steps": len(steps)}]]))
    trace = read_trace(str(path))
    assert "step" not in trace.events["main"] and trace.counts["main"]["step"] == len(steps)
    lazy = trace.of("step")
    assert len(lazy) == len(steps) and lazy[0] == steps[0] and lazy[1] == steps[1] and lazy[-1] == steps[-1]
    assert lazy[:3] == steps[:3] and list(lazy) == steps


# ------------------------------------------------------------------ the fuzz campaign

NASTY = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 2**31, 2**63, 2**64, -(2**64), 2**200, 1.5, math.nan, math.inf,
                     "", "x" * 5000, b"", b"\x00" * 40, [], {}, [[]], {"k": "v"}, [1, 2, 3, 4, 5],
                     10**5000, msgpack.ExtType(5, b"x"), {(1, 2): 3}, {"segment": "main"}]),
    st.integers(), st.floats(), st.text(max_size=20), st.binary(max_size=20),
    st.recursive(st.none() | st.integers(-5, 5), lambda inner: st.lists(inner, max_size=3), max_leaves=8),
    st.integers(2, 300).map(lambda depth: _nested(depth)),
)


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Return the paths of every node inside a decoded object (the object itself included)."""
    paths = [path]
    if isinstance(value, list):
        for index, item in enumerate(value):
            paths += _nodes(item, path + (index,))
    elif isinstance(value, dict):
        for key, item in value.items():
            paths += _nodes(item, path + (key,))
    return paths


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _replace(value[path[0]], path[1:], new)
    return value


@st.composite
def structural_mutations(draw: st.DrawFn) -> list[Any]:
    """Return the base trace's objects after one to three structure-aware edits."""
    objects = base_objects()
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "duplicate", "swap", "rename",
                                       "drop key", "add key", "truncate list"]))
        index = draw(st.integers(0, len(objects) - 1))
        target = objects[index]
        if action == "replace":
            paths = _nodes(target)
            objects[index] = _replace(target, draw(st.sampled_from(paths)), draw(NASTY))
        elif action == "delete" and len(objects) > 1:
            del objects[index]
        elif action == "duplicate":
            objects.insert(draw(st.integers(0, len(objects))), copy.deepcopy(target))
        elif action == "swap":
            other = draw(st.integers(0, len(objects) - 1))
            objects[index], objects[other] = objects[other], objects[index]
        elif action == "rename":
            declarations = [i for i, o in enumerate(objects) if isinstance(o, list) and o and o[0] == DECLARE_KIND]
            chosen = objects[draw(st.sampled_from(declarations))]
            if isinstance(chosen[1], list) and len(chosen[1]) > 1:  # an earlier edit may have replaced it
                chosen[1][1] = draw(st.sampled_from([*registry.KINDS, "evil", ""]))
        elif action in ("drop key", "add key"):
            maps = [p for p in _nodes(target) if isinstance(_get(target, p), dict)]
            if maps:
                node = _get(target, draw(st.sampled_from(maps)))
                if action == "drop key" and node:
                    del node[draw(st.sampled_from(sorted(node, key=repr)))]
                else:
                    node[draw(st.text(max_size=8))] = draw(NASTY)
        elif action == "truncate list":
            lists = [p for p in _nodes(target) if isinstance(_get(target, p), list) and _get(target, p)]
            if lists:
                node = _get(target, draw(st.sampled_from(lists)))
                del node[draw(st.integers(0, len(node) - 1)):]
    return objects


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


FUZZ = settings(max_examples=700, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])


@FUZZ
@given(objects=structural_mutations(), as_json=st.booleans())
def test_structure_aware_mutations_never_crash_show(tmp_path: Path, objects: list[Any], as_json: bool) -> None:
    try:
        raw = pack(objects)
    except (ValueError, TypeError, OverflowError):
        return  # not encodable at all (nesting past msgpack's packer limit): nothing to read
    path = tmp_path / "m.zst"
    path.write_bytes(compress(raw))
    assert_shown_or_refused(path, as_json)


BASE_RAW = pack(base_objects())
BASE_ZST = compress(BASE_RAW)


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    """Return the base trace with bit flips, a truncation or inserted bytes, compressed or not."""
    in_plain = draw(st.booleans())  # damage the msgpack bytes (then recompress) or the zstd bytes
    data = bytearray(BASE_RAW if in_plain else BASE_ZST)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "splice"]))
        position = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[position:]
            if not data:
                data = bytearray(b"\x00")
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[position:position] = b"\x91" * draw(st.integers(1, 3000)) + b"\xdd\xff\xff\xff\xff"
    return compress(bytes(data)) if in_plain else bytes(data)


@FUZZ
@given(data=byte_mutations())
def test_byte_mutations_never_crash_show(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "b.zst"
    path.write_bytes(data)
    assert_shown_or_refused(path)
