"""detrun: record and replay ML training runs bit for bit.

`import detrun` stays cheap: the in-process API (`detrun.record`, `detrun.replay`, `detrun.check`,
see `detrun.api`) is imported on first use, and nothing here imports torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API_NAMES = frozenset({"record", "replay", "check", "check_call", "ReplayResult", "VerdictError",
                        "DivergedError", "UnverifiedError", "SessionActiveError"})


def __getattr__(name: str) -> Any:
    """Import the in-process API on first use of one of its names."""
    if name in _API_NAMES:
        from detrun import api

        return getattr(api, name)
    raise AttributeError(f"module 'detrun' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API_NAMES})
