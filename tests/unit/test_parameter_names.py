"""Parameter names from torch's registration hooks: the scan's names, without the scan."""
from __future__ import annotations

import gc

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from detrun.engine import parameter_names as names_module  # noqa: E402
from detrun.engine.parameter_names import ModuleRegistry, parameter_names  # noqa: E402


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.blocks = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


def test_the_hooks_name_parameters_as_the_scan_does_and_undo(monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = torch.nn.modules.module._global_parameter_registration_hooks
    before = len(hooks)
    registry = ModuleRegistry()
    errors: list[str] = []
    registry.install(torch, lambda where, exc: errors.append(where))
    registry.install(torch, lambda where, exc: errors.append(where))  # idempotent
    assert len(hooks) == before + 1
    model = Encoder()
    model.blocks[2].weight = nn.Parameter(torch.zeros(2, 4))  # a swapped parameter is named too
    optimizer = torch.optim.SGD(list(model.parameters()), lr=0.1)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    scanned = parameter_names(torch, optimizer, params)  # no registry: the scan of every object
    scans: list[int] = []
    real_get_objects = gc.get_objects
    monkeypatch.setattr(names_module.gc, "get_objects", lambda *a: scans.append(1) or real_get_objects(*a))
    hooked = parameter_names(torch, optimizer, params, registry)
    assert hooked == scanned == ["fc.weight", "fc.bias", "blocks.0.weight", "blocks.0.bias",
                                 "blocks.2.weight", "blocks.2.bias"]
    assert scans == [] and errors == []

    registry.uninstall()
    assert len(hooks) == before


def test_a_model_built_before_the_hooks_is_named_by_the_scan() -> None:
    model = Encoder()  # built before install: the registry has no notes of it
    registry = ModuleRegistry()
    registry.install(torch, lambda where, exc: None)
    try:
        loose = nn.Parameter(torch.ones(3))  # in no module at all
        optimizer = torch.optim.SGD([*model.fc.parameters(), loose], lr=0.1)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        assert registry.name(params[0]) is None
        assert parameter_names(torch, optimizer, params, registry) == ["fc.weight", "fc.bias", "param[2](3,)"]
    finally:
        registry.uninstall()


def test_notes_of_collected_modules_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names_module, "_PRUNE_AT", 50)
    registry = ModuleRegistry()
    registry.install(torch, lambda where, exc: None)
    try:
        kept = Encoder()
        for _ in range(200):  # a loop that builds and drops modules: 400 notes without pruning
            nn.Linear(2, 2)
        assert len(registry._holders) <= 60
        # The live model's notes survive the pruning.
        assert [registry.name(p) for p in (kept.fc.weight, kept.blocks[0].weight)] == ["fc.weight", "blocks.0.weight"]
    finally:
        registry.uninstall()
