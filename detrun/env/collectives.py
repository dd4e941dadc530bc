"""The collective-communication settings that make reductions repeat, pinned under the strict policy.

NCCL picks its reduction algorithm (ring, tree, CollNet, NVLS) and protocol per call from the
message size and the topology, and the order in which a sum is accumulated follows the algorithm:
two runs that pick differently add in another order and differ in the last bits. Pinning
`NCCL_ALGO=Ring` and `NCCL_PROTO=Simple` makes every all-reduce of a given size accumulate the same
way on the same topology (gloo's CPU algorithms are fixed already). The user's own values win and
are recorded; replay sets the recorded values again, after checking each against this list, so
that a trace can set nothing else.
"""
from __future__ import annotations

import re
from typing import Mapping

# The defaults the strict policy pins when the user has not set the variable.
STRICT_NCCL = {"NCCL_ALGO": "Ring", "NCCL_PROTO": "Simple"}
# Every variable a trace may ask replay to set, with the values it may hold.
_ALLOWED = {"NCCL_ALGO": re.compile(r"[A-Za-z,^:;]{1,64}"), "NCCL_PROTO": re.compile(r"[A-Za-z0-9,^:;]{1,64}"),
            "NCCL_MIN_NCHANNELS": re.compile(r"[0-9]{1,4}"), "NCCL_MAX_NCHANNELS": re.compile(r"[0-9]{1,4}")}


def pinned_collective_env(policy: str, environ: Mapping[str, str]) -> dict[str, str]:
    """Return the NCCL variables a recording runs with: the user's own, and under strict the pinned defaults."""
    chosen = {name: environ[name] for name in _ALLOWED if name in environ}
    if policy == "strict":
        for name, value in STRICT_NCCL.items():
            chosen.setdefault(name, value)
    return chosen


def validated_collective_env(recorded: object) -> tuple[dict[str, str], list[str]]:
    """Split a trace's recorded NCCL variables into those replay pins and descriptions of refused ones."""
    if not isinstance(recorded, dict):
        return {}, ([] if recorded is None else ["nccl_env (not a map)"])
    accepted: dict[str, str] = {}
    refused: list[str] = []
    for name, value in recorded.items():
        pattern = _ALLOWED.get(name) if isinstance(name, str) else None
        if pattern is not None and isinstance(value, str) and pattern.fullmatch(value):
            accepted[name] = value
        else:
            refused.append(ascii(name)[:40])
    return accepted, refused
