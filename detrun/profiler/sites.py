"""Find the line of user code behind an aten op, in forward and in backward.

Forward ops run with the user's Python frames on the stack, so the first frame outside torch,
detrun and the standard library is the call site.  Backward ops run from the autograd engine,
where the stack shows at best the `loss.backward()` line (on CUDA the engine's device threads
have no user frames at all).  To name the forward line instead, the capture notes, for every
forward op that created an autograd node, the node's sequence number and the op's call site;
in backward, `torch._C._current_autograd_node()` gives the node being executed and its
sequence number leads back to the forward line.  This costs one dict entry per node, dropped
at every optimizer step, instead of anomaly mode's full traceback per node.
"""
from __future__ import annotations

import os
import sys
import sysconfig
import types

import torch

from detrun.profiler.findings import CallSite

_DETRUN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def _internal_prefixes() -> tuple[str, ...]:
    """Return the directories whose frames are never the user's call site."""
    prefixes = {_DETRUN_DIR, _TORCH_DIR}
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            prefixes.add(os.path.abspath(path))
    return tuple(p + os.sep for p in sorted(prefixes))


_INTERNAL = _internal_prefixes()


class SiteFinder:
    """Resolve the user frame of the current Python stack, with per-code-object caching."""

    def __init__(self) -> None:
        self._internal_code: dict[types.CodeType, bool] = {}
        # Interning keeps one CallSite per (code, line): cheap to hash, compare and count.
        self._sites: dict[tuple[types.CodeType, int], CallSite] = {}

    def _is_internal(self, code: types.CodeType) -> bool:
        """Say whether frames of this code object belong to torch, detrun or the stdlib."""
        internal = self._internal_code.get(code)
        if internal is None:
            name = code.co_filename
            if name.startswith("<frozen") or name.startswith("<built-in"):
                internal = True
            else:
                internal = os.path.abspath(name).startswith(_INTERNAL) if name[:1] != "<" else False
            self._internal_code[code] = internal
        return internal

    def current(self, skip: int = 1) -> CallSite | None:
        """Return the innermost user frame's site, or None when the stack holds none."""
        frame: types.FrameType | None = sys._getframe(skip)
        while frame is not None:
            code = frame.f_code
            if not self._is_internal(code):
                key = (code, frame.f_lineno)
                site = self._sites.get(key)
                if site is None:
                    site = CallSite(os.path.abspath(code.co_filename) if code.co_filename[:1] != "<"
                                    else code.co_filename, frame.f_lineno, code.co_name)
                    self._sites[key] = site
                return site
            frame = frame.f_back
        return None


class NodeSites:
    """Map autograd nodes, by sequence number, to the forward call site that created them."""

    # Bounded so a script that never steps an optimizer cannot grow it without limit.
    MAX_ENTRIES = 1_000_000

    def __init__(self) -> None:
        self._by_seq: dict[int, CallSite] = {}
        self._last_seq = torch._C._autograd._get_sequence_nr()

    def note_forward(self, site_of: "SiteFinder", skip: int) -> CallSite | None:
        """After a forward op reached dispatch, remember its site if it created an autograd node.

        Autograd creates the node (taking the next sequence number) before it redispatches to
        the op, so a sequence counter that moved since the previous op means this op made node
        `counter - 1`.  Returns the site when it had to be computed, else None.
        """
        seq = torch._C._autograd._get_sequence_nr()
        if seq == self._last_seq:
            return None
        self._last_seq = seq
        site = site_of.current(skip + 1)
        if site is not None:
            if len(self._by_seq) >= self.MAX_ENTRIES:
                self._by_seq.clear()
            self._by_seq[seq - 1] = site
        return site

    def for_node(self, node: object) -> CallSite | None:
        """Return the forward call site of the autograd node being executed, if it was noted."""
        try:
            seq = node._sequence_nr()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a node kind without a sequence number
            return None
        return self._by_seq.get(seq)

    def clear(self) -> None:
        """Forget all nodes: called at an optimizer step, when the step's backward is over."""
        self._by_seq.clear()
