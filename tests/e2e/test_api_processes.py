"""The in-process API across processes: the hash seed a block cannot choose, and the CLI's refusal of its traces."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import detrun, run

# Training whose input depends on the iteration order of a set of strings (so on PYTHONHASHSEED).
SCRIPT = '''
import sys

import torch
import detrun


def train():
    words = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"}
    order = torch.tensor([float(len(w) * (i + 1)) for i, w in enumerate(words)])
    weights = torch.randn(8, requires_grad=True)
    for _ in range(3):  # by hand: no optimizer, so no torch._dynamo import (seconds) in each process
        ((weights * (order + torch.randn(8))) ** 2).sum().backward()
        with torch.no_grad():
            weights -= 1e-4 * weights.grad
            weights.grad = None


mode, trace = sys.argv[1], sys.argv[2]
if mode == "record":
    with detrun.record(trace, force=True, quiet=True):
        train()
with detrun.replay(trace, quiet=True) as result:
    train()
print(result.verdict)
print(result.causes[0] if result.causes else "")
'''


def test_a_replay_under_another_hash_seed_diverges_naming_it(tmp_path: Path) -> None:
    script = tmp_path / "set_order.py"
    script.write_text(SCRIPT)
    trace = str(tmp_path / "trace.zst")
    # Recorded and replayed in one process: the same hash seed, whatever it is.
    recorded = run([sys.executable, str(script), "record", trace], env={"PYTHONHASHSEED": "1"})
    assert recorded.stdout.splitlines()[0] == "REPRODUCED", recorded.stderr
    other = run([sys.executable, str(script), "replay", trace], env={"PYTHONHASHSEED": "2"})
    verdict, cause = other.stdout.splitlines()
    assert verdict == "DIVERGED" and "PYTHONHASHSEED" in cause, other.stderr
    # The command line replays scripts; an in-process trace has none, and it says so.
    refused = detrun("replay", trace, str(script), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"detrun: error: {trace} was recorded in-process by detrun.record(), not "
                                      "from a script; replay it in Python with `with detrun.replay(...)`")


KERAS = '''
import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf

import detrun


def train():
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(8), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(tf.random.normal((32, 4)), tf.random.normal((32, 1)), epochs=1, batch_size=8, verbose=0)
    return float(tf.reduce_sum(model.layers[0].kernel))


print(train() != train())  # two plain calls differ
train()
with detrun.record(os.environ["TRACE"], quiet=True):
    recorded = train()
train()  # TF's global seed and op-seed counter move on; the replay must not depend on them
with detrun.replay(os.environ["TRACE"], quiet=True) as result:
    replayed = train()
print(recorded == replayed)
print(result.verdict)
'''


@pytest.mark.tensorflow
def test_keras_in_process_replays_although_tensorflow_ran_before_the_block(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    script = tmp_path / "keras_block.py"
    script.write_text(KERAS)
    out = run([sys.executable, str(script)], env={"TRACE": str(tmp_path / "trace.zst")})
    assert out.stdout.split() == ["True", "True", "REPRODUCED"], out.stderr[-2000:]


# The function imports torch and numpy itself: the recorded block found neither imported, but its
# replay, in the same process, finds both imported and their generators moved on.
IMPORTS_INSIDE = '''
import detrun


def train():
    import numpy as np
    import torch

    model = torch.nn.Linear(4, 1)  # unseeded init
    noise = float(np.random.rand())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = ((model(torch.randn(8, 4)) - noise) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [round(v, 8) for v in model.weight.flatten().tolist()]


result = detrun.check(train)  # first: the recorded block finds neither library imported
print(result.verdict, result.reason)
print(train() != train())  # the check can fail: two plain calls differ
'''


def test_check_of_a_function_that_imports_torch_itself_reproduces(tmp_path: Path) -> None:
    (tmp_path / "inside.py").write_text(IMPORTS_INSIDE)
    out = run([sys.executable, "inside.py"], cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith("REPRODUCED") and out[1] == "True", out
