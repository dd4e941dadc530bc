"""The pytest plugin: the detrun_check fixture passes a training that replays and fails one that cannot."""
from __future__ import annotations

import pytest

from detrun.trace import read_header

pytest_plugins = ["pytester"]

# `-p detrun.pytest_plugin` loads the plugin whether or not this checkout's entry point is installed.
PLUGIN = ("-p", "detrun.pytest_plugin")

TRAINING = '''
import hashlib
import random
import time

import torch
from torch import nn


def train(steps=8, clock=False):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))  # unseeded init
    if clock:  # a value detrun does not record: the clock
        with torch.no_grad():
            model[2].bias[0] = float(time.perf_counter_ns() % 1000003)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        x = torch.randn(16, 4)
        loss = ((model(x) - x.sum(1, keepdim=True) * random.random()) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
'''


def test_fixture_passes_a_replayable_training_and_fails_an_unrecorded_source(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(training=TRAINING)
    pytester.makepyfile(test_training='''
import pytest

from training import train


def test_unseeded_training_replays(detrun_check):
    assert train() != train()  # two plain runs differ
    result = detrun_check(train, steps=6)
    assert result.verdict == "REPRODUCED" and result.checks["steps"] == 6


def test_clock_in_the_weights(detrun_check):
    detrun_check(train, clock=True)


@pytest.mark.detrun_policy("off")
def test_without_the_policy(detrun_check):
    detrun_check(train, steps=2)
''')
    traces = pytester.path / "kept"
    run = pytester.runpytest(*PLUGIN, f"--detrun-traces={traces}", "-q")
    run.assert_outcomes(passed=2, failed=1)
    # The failure names the verdict and its reason, not a traceback into detrun.
    run.stdout.fnmatch_lines(["*detrun: DIVERGED*the loss of backward() call #1 differs*",
                              "*FAILED test_training.py::test_clock_in_the_weights*"])
    assert "detrun/api.py" not in run.stdout.str()
    assert sorted(p.name for p in traces.iterdir()) == ["test_clock_in_the_weights.zst",
                                                        "test_unseeded_training_replays.zst",
                                                        "test_without_the_policy.zst"]
    policies = {p.stem: read_header(str(p))["settings"]["policy"] for p in traces.iterdir()}
    assert policies["test_without_the_policy"] == "off" and policies["test_clock_in_the_weights"] == "strict"


def test_plugin_module_imports_nothing_heavy(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_light='''
import sys


def test_nothing_heavy_after_collection():
    assert [m for m in ("torch", "numpy", "detrun.api", "detrun.engine.session") if m in sys.modules] == []
''')
    # In a fresh interpreter: this process imported torch long ago.
    run = pytester.runpytest_subprocess(*PLUGIN, "-q", "-p", "no:cacheprovider")
    run.assert_outcomes(passed=1)
