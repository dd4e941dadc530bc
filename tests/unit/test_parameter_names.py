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
