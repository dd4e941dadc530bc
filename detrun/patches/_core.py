"""The Patch type and the dispatcher-level install machinery shared by every op family."""
from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

# One torch.library.Library per (patch, dispatch key). Dropping it (``_destroy``) removes our
# kernel from the dispatcher's per-key kernel list, which makes torch's own kernel current again.
# The objects must stay referenced: torch deregisters a Library when it is garbage collected.
_LIBRARIES: dict[tuple[str, str], Any] = {}
_LOCK = threading.RLock()


@dataclass(frozen=True)
class Kernel:
    """One aten overload a patch replaces: its name, the schema it was written against, the function."""

    op: str  # "median.dim" or "bincount" (default overload), without the "aten::" namespace
    schema: str  # str(torch.ops.aten.<op>._schema) as written; a mismatch means torch changed the op
    fn: Callable[..., Any]

    @property
    def qualified_name(self) -> str:
        """Return the name the profiler reports, e.g. "aten::median.dim"."""
        return f"aten::{self.op}"

    @property
    def packet_name(self) -> str:
        """Return the op name without its overload, e.g. "median"."""
        return self.op.split(".", 1)[0]

    @property
    def overload_name(self) -> str:
        """Return the overload, "default" when there is none."""
        parts = self.op.split(".", 1)
        return parts[1] if len(parts) == 2 else "default"


@dataclass(eq=False)
class Patch:
    """A named deterministic replacement for one or more aten overloads."""

    name: str
    kernels: tuple[Kernel, ...]
    impl: Callable[..., Any]  # the main entry point, callable directly (tests, benchmarks)
    upstream: str  # the aten kernel / native_functions.yaml entry this mirrors
    min_torch: tuple[int, int] = (2, 1)
    related_ops: tuple[str, ...] = ()  # forward ops whose (nondeterministic) backward this patch covers
    summary: str = ""
    calls: int = field(default=0, compare=False)  # how often an installed kernel ran; proves routing

    @property
    def ops(self) -> tuple[str, ...]:
        """Return the aten overloads this patch replaces, as "aten::name[.overload]"."""
        return tuple(k.qualified_name for k in self.kernels)

    def unsupported_reason(self) -> str | None:
        """Return why this torch cannot take the patch, or None when it can."""
        import torch

        version = _torch_version(torch.__version__)
        if version < self.min_torch:
            return f"needs torch >= {self.min_torch[0]}.{self.min_torch[1]}, have {torch.__version__}"
        for kernel in self.kernels:
            packet = getattr(torch.ops.aten, kernel.packet_name, None)
            if packet is None or kernel.overload_name not in packet.overloads():
                return f"torch has no aten::{kernel.op}"
            schema = str(getattr(packet, kernel.overload_name)._schema)
            if schema != kernel.schema:
                # The kernel's arguments would be misread; refusing is safer than guessing.
                return f"aten::{kernel.op} changed schema: {schema!r}"
        return None

    def is_installed(self, dispatch_key: str = "CUDA") -> bool:
        """Return whether this patch is registered for ``dispatch_key``."""
        return (self.name, dispatch_key) in _LIBRARIES

    def install(self, dispatch_key: str = "CUDA") -> bool:
        """Register the kernels for ``dispatch_key``; return False (and warn) if this torch cannot take them."""
        with _LOCK:
            if self.is_installed(dispatch_key):
                return True
            reason = self.unsupported_reason()
            if reason is not None:
                warnings.warn(f"detrun: patch {self.name} not installed: {reason}", RuntimeWarning, stacklevel=2)
                return False
            import torch

            library = torch.library.Library("aten", "IMPL")
            try:
                with warnings.catch_warnings():
                    # torch warns once per process that an aten kernel is being overridden: that is the point.
                    warnings.filterwarnings("ignore", message=r"(?s).*Overriding a previously registered kernel")
                    for kernel in self.kernels:
                        library.impl(kernel.op, self._counted(kernel.fn), dispatch_key)
            except BaseException:
                library._destroy()
                raise
            _LIBRARIES[(self.name, dispatch_key)] = library
            return True

    def uninstall(self, dispatch_key: str | None = None) -> None:
        """Drop the registrations for ``dispatch_key`` (all keys when None); torch's kernels are current again."""
        with _LOCK:
            for key in [k for k in _LIBRARIES if k[0] == self.name and dispatch_key in (None, k[1])]:
                _LIBRARIES.pop(key)._destroy()

    def _counted(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap ``fn`` so each dispatcher call is counted on this patch."""

        def kernel(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return fn(*args, **kwargs)

        kernel.__name__ = f"detrun_{self.name}_{fn.__name__}"
        return kernel


def installed_keys() -> list[tuple[str, str]]:
    """Return (patch name, dispatch key) for every live registration."""
    with _LOCK:
        return sorted(_LIBRARIES)


def _torch_version(text: str) -> tuple[int, int]:
    """Parse "2.13.0+cpu" into (2, 13)."""
    major, minor = (text.split("+", 1)[0].split(".") + ["0", "0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)
