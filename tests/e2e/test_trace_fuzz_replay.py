"""Mutated traces through the real `detrun replay` and `detrun show` commands.

A tiny training script whose weights depend on every value replay feeds back (Python's global
seed, os.urandom, numpy's global seed, torch's initial seed and a manual seed) is recorded once.
Then a sample of mutants of its trace is replayed: a well-typed change of any fed-back value (or
of a recorded step) must never be REPRODUCED, and an ill-typed or damaged trace must be refused
with one `detrun: error:` line and exit 2 before the script runs. A few hostile files go through
`detrun show` as a subprocess, with their peak memory measured.
"""
from __future__ import annotations

import concurrent.futures
import copy
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import zstandard

from conftest import detrun, detrun_command, verdict
from detrun.trace.format import DECLARE_KIND, END, make_packer
from detrun.trace.reader import iter_objects

SCRIPT = '''\
import os
import random

import numpy as np
import torch

first = torch.rand(3)  # from the generator torch seeded itself at import
extra = torch.tensor([random.random(), float(np.random.rand()), int.from_bytes(os.urandom(2), "little") / 65536])
torch.manual_seed(1234)
w = torch.nn.Parameter(first + torch.randn(3) + extra)
opt = torch.optim.SGD([w], lr=0.1)
for _ in range(3):
    opt.zero_grad()
    loss = ((w - 1.0) ** 2).sum()
    loss.backward()
    opt.step()
print(w.detach().sum().item())
'''


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """Record the script once; return its directory and the trace's decoded objects."""
    directory = tmp_path_factory.mktemp("fuzz")
    (directory / "fed.py").write_text(SCRIPT)
    done = detrun("record", "-q", "-o", "base.zst", "fed.py", cwd=directory)
    assert done.returncode == 0, done.stderr
    return directory, list(iter_objects(str(directory / "base.zst")))


def _write(directory: Path, name: str, objects: list[Any], raw_tail: bytes = b"") -> str:
    packer = make_packer()
    data = b"".join(o if isinstance(o, bytes) else packer.pack(o) for o in objects)
    (directory / name).write_bytes(zstandard.ZstdCompressor(level=3).compress(data) + raw_tail)
    return name


def _events(objects: list[Any]) -> list[tuple[int, str, str]]:
    """Return (object index, role, kind) of every event, in order."""
    found, role, kinds = [], "main", {}
    for index, obj in enumerate(objects[1:], start=1):
        if isinstance(obj, dict):
            role, kinds = obj["segment"], {}
        elif obj[0] == DECLARE_KIND:
            kinds[obj[1][0]] = obj[1][1]
        elif obj[0] != END:
            found.append((index, role, kinds[obj[0]]))
    return found


def _first(objects: list[Any], kind: str, site: str | None = None) -> list[Any]:
    """Return the payload of the first main-role event of a kind (at a call site of fed.py, if given)."""
    for index, role, name in _events(objects):
        payload = objects[index][1]
        if role == "main" and name == kind and (site is None or str(payload[0]).startswith(site)):
            return payload
    raise AssertionError(f"no {kind} event in the recording")


def _bump(value: Any) -> Any:
    """Return another value of the same type and range."""
    if isinstance(value, bytes):
        return bytes([value[0] ^ 0x40]) + value[1:]
    if isinstance(value, list):
        return [_bump(value[0]), *value[1:]]
    if isinstance(value, float):
        return value * 0.5 + 0.25
    return value - 1 if value > 0 else value + 1


# Well-typed changes of what replay feeds back or checks: none may end REPRODUCED.
CHANGES: list[tuple[str, Callable[[list[Any]], None]]] = [
    ("py.seed", lambda o: _first(o, "py.seed").__setitem__(1, _bump(_first(o, "py.seed")[1]))),
    ("os.entropy", lambda o: _first(o, "os.entropy", "fed.py").__setitem__(1, _bump(_first(o, "os.entropy", "fed.py")[1]))),
    ("np.seed", lambda o: _first(o, "np.seed").__setitem__(1, _bump(_first(o, "np.seed")[1]))),
    ("torch.initial_seed", lambda o: _first(o, "torch.initial_seed").__setitem__(1, _bump(_first(o, "torch.initial_seed")[1]))),
    ("torch.manual_seed", lambda o: _first(o, "torch.manual_seed").__setitem__(1, 4321)),
    ("step digest", lambda o: _first(o, "step").__setitem__(2, _bump(_first(o, "step")[2]))),
    ("step loss", lambda o: _first(o, "step").__setitem__(1, _bump(_first(o, "step")[1]))),
]


def test_baseline_reproduces_and_every_fed_back_change_does_not(recording: tuple[Path, list[Any]]) -> None:
    directory, objects = recording
    jobs = {"baseline": "base.zst"}
    for name, change in CHANGES:
        mutant = _copy(objects)
        change(mutant)
        jobs[name] = _write(directory, f"changed-{name.replace(' ', '-')}.zst", mutant)
    # Two at a time: each is a whole replay with torch, and CI has two cores.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(jobs, pool.map(lambda path: detrun("replay", path, "fed.py", cwd=directory), jobs.values())))
    assert "REPRODUCED" in verdict(runs["baseline"].stderr), runs["baseline"].stderr
    for name, done in runs.items():
        assert "Traceback" not in done.stderr, done.stderr
        if name != "baseline":
            line = verdict(done.stderr)
            assert "REPRODUCED" not in line and "DIVERGED" in line, f"{name}: {line}"


def _copy(objects: list[Any]) -> list[Any]:
    return copy.deepcopy(objects)


def _set(kind: str, position: int, value: Any) -> Callable[[list[Any]], list[Any]]:
    def mutate(objects: list[Any]) -> list[Any]:
        _first(objects, kind)[position] = value
        return objects

    return mutate


def _header(key: str, value: Any) -> Callable[[list[Any]], list[Any]]:
    def mutate(objects: list[Any]) -> list[Any]:
        objects[0]["settings"][key] = value
        return objects

    return mutate


# Ill-typed or damaged traces: refused before the script runs.
BAD: list[tuple[str, Callable[[list[Any]], list[Any]]]] = [
    ("np.seed not an int", _set("np.seed", 1, "12345")),
    ("np.seed out of numpy's range", _set("np.seed", 1, -1)),
    ("py.seed huge int", _set("py.seed", 1, 10**5000)),
    ("os.entropy as text", _set("os.entropy", 1, "abcd")),
    ("step lanes too long", _set("step", 3, b"x" * 64)),
    ("unknown kind", lambda o: [*o[:1], [DECLARE_KIND, [90, "os.system"]], *o[1:]]),
    ("no end record", lambda o: [x for x in o if not (isinstance(x, list) and x[0] == END)]),
    ("hashseed", _header("hashseed", "abc")),
    ("thread env key", _header("thread_env", {"PYTHONPATH": "/tmp"})),
    ("deep nesting", lambda o: [*o[:-1], b"\x92\x02" + b"\x91" * 4000 + b"\xc0", o[-1]]),
    ("list as map key", lambda o: [*o[:-1], b"\x92\x02\x81\x91\x01\x01", o[-1]]),
]


@pytest.mark.parametrize("name", [name for name, _ in BAD])
def test_ill_typed_or_damaged_traces_are_refused_before_the_script_runs(
        recording: tuple[Path, list[Any]], name: str) -> None:
    directory, objects = recording
    mutate = dict(BAD)[name]
    path = _write(directory, f"bad-{abs(hash(name))}.zst", mutate(_copy(objects)))
    done = detrun("replay", path, "fed.py", cwd=directory, timeout=60)
    _refused(done)
    assert done.stdout == ""  # the script never ran


def test_byte_damage_is_refused(recording: tuple[Path, list[Any]]) -> None:
    directory, _ = recording
    data = (directory / "base.zst").read_bytes()
    rng = random.Random(11)
    for number in range(3):
        damaged = bytearray(data)
        if number == 0:
            del damaged[len(damaged) // 2:]  # a partial copy
        else:
            for _ in range(3):
                damaged[rng.randrange(8, len(damaged))] ^= 1 << rng.randrange(8)
        (directory / "damaged.zst").write_bytes(bytes(damaged))
        done = detrun("replay", "damaged.zst", "fed.py", cwd=directory, timeout=60)
        _refused(done)


def _refused(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "Fatal Python error" not in done.stderr, done.stderr
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("detrun: error: ")]
    assert len(errors) == 1, done.stderr


_PEAK = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
    "sys.stderr.write(done.stderr)\n"
)


def _rle_bomb(gigabytes: int) -> bytes:
    """Return a zstd frame of zeros made of 4-byte run-length blocks of 128 KiB each."""
    blocks = gigabytes * 8192
    frame = bytearray(b"\x28\xb5\x2f\xfd\x00\x58")
    for index in range(blocks):
        frame += (int(index == blocks - 1) | 2 | (128 * 1024) << 3).to_bytes(3, "little") + b"\x00"
    return bytes(frame)


def test_show_refuses_hostile_files_in_bounded_memory(recording: tuple[Path, list[Any]]) -> None:
    directory, objects = recording
    header = objects[0]
    flood = make_packer().pack([2, [0, None, None, b""]]) * (1 << 16)
    with open(directory / "flood.zst", "wb") as f, zstandard.ZstdCompressor(level=1).stream_writer(f) as z:
        z.write(make_packer().pack(header) + make_packer().pack([DECLARE_KIND, [2, "step"]]))
        for _ in range(30):  # 2 million step events: checked as they stream past, never held
            z.write(flood)
    _write(directory, "bomb.zst", [header, b"\xc6\xff\xff\xff\xf0"], raw_tail=_rle_bomb(4))
    assert (directory / "bomb.zst").stat().st_size < 200_000
    for name in ("bomb.zst", "flood.zst"):
        done = subprocess.run([sys.executable, "-c", _PEAK, *detrun_command(), "show", name], cwd=directory,
                              capture_output=True, text=True, timeout=60)
        code, peak_mb = map(int, done.stdout.split())
        assert code == 2 and peak_mb < 300, (name, code, peak_mb, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("detrun: error: "), done.stderr
        assert ("refused" if name == "bomb.zst" else "no end record") in lines[0] or "larger than" in lines[0], lines
