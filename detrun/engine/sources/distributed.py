"""torch.distributed: the process group and DDP's bucketing, recorded by every rank and compared on replay.

What a rank computes depends on the process group it joined (backend, rank, world size) and on how
DistributedDataParallel buckets its gradients: the all-reduce sums each bucket as one message, so
another bucket size adds the same gradients in other groups. Neither is random, so nothing is fed
back; a replay that differs in either is named as the likely cause of a divergence. The NCCL
version is recorded too: another one may pick another reduction order (env/collectives.py pins
the algorithm under the strict policy).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from detrun.engine.call_sites import call_site
from detrun.engine.patcher import Patcher
from detrun.engine.session import MISSING
from detrun.trace.registry import DDP_CONFIG, DIST_INIT

if TYPE_CHECKING:
    from detrun.engine.session import Session

# DistributedDataParallel attributes that decide how gradients are grouped and synchronised
# (torch.nn.parallel.DistributedDataParallel.__init__, torch 2.x).
_DDP_SETTINGS = ("bucket_bytes_cap", "gradient_as_bucket_view", "find_unused_parameters", "static_graph",
                 "broadcast_buffers")


class DistributedSource:
    """Record or compare the process group each rank joins and each DDP wrapper's bucketing."""

    def __init__(self) -> None:
        self._patcher = Patcher()
        self._session: Session | None = None

    def install(self, session: Session) -> None:
        if self._session is not None:
            return
        self._session = session
        session.when_imported("torch.distributed", self._hook_init)
        session.when_imported("torch.nn.parallel.distributed", self._hook_ddp)

    def uninstall(self) -> None:
        self._patcher.undo()
        self._session = None

    def _hook_init(self, dist: Any) -> None:
        c10d = getattr(dist, "distributed_c10d", None)
        original = getattr(c10d, "init_process_group", None)
        if original is None or getattr(original, "__detrun_original__", None) is not None:
            return
        source = self

        # Mirrors torch.distributed.distributed_c10d.init_process_group (torch 2.x): called unchanged.
        def init_process_group(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            session = source._session
            if session is not None:
                try:
                    source._joined(session, dist, call_site())
                except Exception as exc:  # noqa: BLE001 - never change what the program does
                    session.hook_failed("the torch.distributed hook", exc)
            return result

        init_process_group.__wrapped__ = original  # type: ignore[attr-defined]
        init_process_group.__detrun_original__ = original  # type: ignore[attr-defined]
        init_process_group.__doc__ = original.__doc__
        # `dist.init_process_group` is the package's copy of the c10d function: both names are patched.
        self._patcher.setattr(c10d, "init_process_group", init_process_group)
        if getattr(dist, "init_process_group", None) is original:
            self._patcher.setattr(dist, "init_process_group", init_process_group)

    def _joined(self, session: Session, dist: Any, site: str) -> None:
        """Record the process group just set up, or compare it with the recorded one."""
        observed = {"backend": str(dist.get_backend()), "rank": int(dist.get_rank()),
                    "world_size": int(dist.get_world_size()), "nccl_version": _nccl_version(), "site": site}
        recorded = _record_or_take(session, DIST_INIT, observed)
        if recorded is None:
            return
        for name in ("backend", "rank", "world_size"):
            if recorded.get(name) != observed[name]:
                session.mismatch(DIST_INIT, f"torch.distributed {name} recorded {recorded.get(name)}, "
                                            f"replay {observed[name]} (init_process_group at {site})")
        if recorded.get("nccl_version") != observed["nccl_version"] and "nccl" in observed["backend"]:
            session.note_cause(f"NCCL {recorded.get('nccl_version')} recorded, {observed['nccl_version']} here: "
                               "another NCCL may reduce in another order", likely=True)

    def _hook_ddp(self, module: Any) -> None:
        ddp = getattr(module, "DistributedDataParallel", None)
        if ddp is None or getattr(ddp.__init__, "__detrun_original__", None) is not None:
            return
        original = ddp.__init__
        source = self

        # Mirrors torch.nn.parallel.DistributedDataParallel.__init__ (torch 2.x): called unchanged.
        def __init__(wrapper: Any, *args: Any, **kwargs: Any) -> None:
            original(wrapper, *args, **kwargs)
            session = source._session
            if session is not None:
                try:
                    source._built(session, wrapper)
                except Exception as exc:  # noqa: BLE001
                    session.hook_failed("the DistributedDataParallel hook", exc)

        __init__.__doc__ = original.__doc__
        __init__.__detrun_original__ = original  # type: ignore[attr-defined]
        self._patcher.setattr(ddp, "__init__", __init__)

    def _built(self, session: Session, wrapper: Any) -> None:
        """Record a DDP wrapper's bucketing settings, or compare them with the recorded ones."""
        observed = {name: _plain(getattr(wrapper, name, None)) for name in _DDP_SETTINGS}
        recorded = _record_or_take(session, DDP_CONFIG, observed)
        if recorded is None:
            return
        changed = [f"{name} recorded {recorded.get(name)}, replay {value}" for name, value in observed.items()
                   if recorded.get(name) != value]
        if changed:
            session.mismatch(DDP_CONFIG, f"DistributedDataParallel settings differ: {'; '.join(changed)}")


def _record_or_take(session: Session, kind: str, observed: dict[str, Any]) -> dict[str, Any] | None:
    """Record `observed` and return None; on replay, return the recorded payload to compare it with (None if none)."""
    if session.recording:
        session.emit(kind, observed)
        return None
    recorded = session.take(kind)
    return None if recorded is MISSING else recorded


def _plain(value: object) -> bool | int | None:
    return value if isinstance(value, (bool, int)) or value is None else None


def _nccl_version() -> str | None:
    """Return the NCCL version torch was built with, when it has CUDA; None otherwise."""
    import sys

    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_available():
            return None
        version = torch.cuda.nccl.version()
        return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception:  # noqa: BLE001 - a CPU build has no NCCL
        return None
