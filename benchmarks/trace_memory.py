"""Peak memory of reading a long trace the way replay does: every step event taken through the session.

Writes synthetic but genuine traces (the writer detrun records with, a header like `detrun record`
writes, the seed events of a small torch script, then one `step` event per optimizer step with a
loss, a digest and four attribution lanes), then, in a fresh interpreter for each, reads the
trace with `read_trace`, opens a replay Session on it and takes every step event in order, as the
step verifier does. Prints the peak resident set size (ru_maxrss) of that interpreter, and of one
that only imports the same modules, so the difference is what the trace costs.

    python benchmarks/trace_memory.py                       # 20,000 and 1,000,000 steps
    python benchmarks/trace_memory.py --steps 1000000 --torch   # with torch imported, as in a replay child
    python benchmarks/trace_memory.py --real 20000 --src . --src ../old   # real record, replay with two trees

Set DETRUN_SRC to measure another checkout's reader (its own `detrun` package directory's parent).
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONSUME = r"""
import resource, sys, time
if {torch!r}:
    import torch  # a replay child has torch imported: measure on top of it
from detrun.engine.session import MISSING, Session
from detrun.trace import read_trace
started = time.perf_counter()
taken = 0
if {read!r}:
    session = Session("replay", trace=read_trace(sys.argv[1]), quiet=True)
    while session.take("step") is not MISSING:
        taken += 1
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, taken, time.perf_counter() - started)
"""


def write_trace(path: str, steps: int) -> int:
    """Write a trace of `steps` optimizer steps; return its size in bytes."""
    sys.path.insert(0, ROOT)
    from detrun.trace import TraceWriter

    rng = random.Random(0)
    header = {
        "detrun_version": "0.1.0", "created": "2026-01-01T00:00:00+00:00", "env": {"libraries": {"torch": "2.13.0"}},
        "script": {"name": "steps.py", "module": False, "path": "/tmp/steps.py", "sha256": "0" * 64},
        "argv": [], "cwd": "/tmp",
        "settings": {"hashseed": "12345", "hashseed_from_user": False, "thread_env": {"OMP_NUM_THREADS": None},
                     "digest_every": 1, "policy": "strict", "policy_ops": [], "tf_op_determinism": True,
                     "kernel_steps": 2},
    }
    writer = TraceWriter(path, header)
    writer.event("py.seed", ["<unknown>", rng.getrandbits(64)])
    writer.event("np.seed", ["steps.py:3", [rng.getrandbits(32) for _ in range(4)]])
    writer.event("torch.initial_seed", ["steps.py:4", rng.getrandbits(64)])
    writer.event("threads", [2, 2])
    writer.event("torch.manual_seed", ["steps.py:6", rng.getrandbits(63)])
    loss = 2.0
    for _ in range(steps):
        loss *= 0.999999
        # A float32 loss widened to float64, as torch reports it: not compressible to nothing.
        loss32 = struct.unpack("<f", struct.pack("<f", loss + rng.random() * 1e-3))[0]
        writer.event("step", [0, loss32, rng.getrandbits(32), bytes(rng.getrandbits(8) for _ in range(4))])
    return writer.close({"complete": True, "reason": "exited", "exit_status": 0, "steps": steps,
                         "final_digest": 1})


def measure(path: str, *, torch: bool, read: bool = True) -> tuple[float, int, float]:
    """Return (peak RSS in MB, steps taken, seconds) of a fresh interpreter reading the trace."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("DETRUN_SRC", ROOT)}
    out = subprocess.run([sys.executable, "-c", _CONSUME.format(torch=torch, read=read), path],
                         env=env, cwd=os.path.dirname(path), capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]), float(out[2])


_SCRIPT = """
import torch
torch.manual_seed(0)
w = torch.nn.Parameter(torch.zeros(4))
opt = torch.optim.SGD([w], lr=1e-3, momentum=0.9)
grads = torch.randn(64, 4)
for step in range({steps}):
    w.grad = grads[step % 64]  # a real optimizer step on a real parameter, without autograd's cost
    opt.step()
print(float(w.sum()))
"""


def real(steps: int, sources: list[str]) -> None:
    """Record a tiny torch script of `steps` steps once; replay it with each detrun source tree, printing peak RSS."""
    detrun = os.path.join(os.path.dirname(sys.executable), "detrun")
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "steps.py")
        with open(script, "w") as f:
            f.write(_SCRIPT.format(steps=steps))
        trace = os.path.join(tmp, "trace.zst")
        started = time.perf_counter()
        subprocess.run([detrun, "record", "-q", "-o", trace, script], cwd=tmp, check=True, capture_output=True)
        print(f"recorded {steps:,} steps in {time.perf_counter() - started:.0f} s: trace "
              f"{os.path.getsize(trace) / 1e6:.1f} MB", flush=True)
        for source in sources:
            # A wrapper process whose only child is the replay, so RUSAGE_CHILDREN is that replay's peak.
            wrapper = ("import resource, subprocess, sys, time\n"
                       "t = time.perf_counter()\n"
                       "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                       "lines = done.stderr.strip().splitlines()\n"
                       "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, "
                       "round(time.perf_counter() - t), lines[-1] if lines else '?')\n")
            env = {**os.environ, "PYTHONPATH": source}
            out = subprocess.run([sys.executable, "-c", wrapper, detrun, "replay", trace, script], cwd=tmp,
                                 env=env, capture_output=True, text=True, check=True).stdout.split(maxsplit=2)
            print(f"  replay with {source}: peak RSS {out[0]} MB, {out[1]} s; {out[2].strip()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="*", default=[20_000, 1_000_000])
    parser.add_argument("--torch", action="store_true", help="import torch first, as a replay child has")
    parser.add_argument("--real", type=int, metavar="N", help="record and replay a real N-step torch script instead")
    parser.add_argument("--src", action="append", default=[], metavar="DIR",
                        help="with --real: replay with the detrun package under DIR (repeatable; default this tree)")
    args = parser.parse_args()
    if args.real:
        real(args.real, args.src or [ROOT])
        return
    with tempfile.TemporaryDirectory() as tmp:
        baseline, _, _ = measure(os.path.join(tmp, "none"), torch=args.torch, read=False)
        print(f"baseline (imports only{', torch' if args.torch else ''}): peak RSS {baseline:.0f} MB")
        for steps in args.steps:
            path = os.path.join(tmp, f"t{steps}.zst")
            size = write_trace(path, steps)
            peak, taken, seconds = measure(path, torch=args.torch)
            assert taken == steps, (taken, steps)
            print(f"{steps:>9,} steps: trace {size / 1e6:6.1f} MB, peak RSS {peak:6.0f} MB "
                  f"(+{peak - baseline:.0f} MB over baseline), read and take all steps in {seconds:.1f} s")


if __name__ == "__main__":
    main()
