"""Tell whether code runs on behalf of a JIT compiler (dynamo, AOTAutograd, inductor, triton).

A compiler's own work depends on its on-disk cache, not on the program: a cold cache compiles and
builds helper modules and lists cache directories; a warm one loads them. Two runs of the same
program therefore differ there by design, so the sources that watch module construction and
directory listings leave that work alone.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from types import FrameType

# Package directories of compilers whose file-system and helper-module work is cache plumbing.
# torch.fx is deliberately absent: `torch.fx.symbolic_trace(model)` builds a GraphModule users train.
_COMPILER_DIRS = tuple(os.sep + os.path.join(*parts) + os.sep for parts in (
    ("torch", "_dynamo"), ("torch", "_inductor"), ("torch", "_functorch"), ("triton",)))
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]
_MAX_DEPTH = 400  # a compiler's stack is deep, but a bound keeps a pathological recursion cheap


def _no_compiler_loaded() -> bool:
    """Return whether no compiler is imported yet (the common case, answered without a stack walk)."""
    # torch always imports torch._functorch, but its AOTAutograd compiles only under dynamo.
    return "torch._dynamo" not in sys.modules and "triton" not in sys.modules


def _is_compiler_file(filename: str) -> bool:
    return any(part in filename for part in _COMPILER_DIRS)


def inside_compiler(skip: int = 1) -> bool:
    """Return whether any caller, above the `skip` innermost frames, is compiler code."""
    if _no_compiler_loaded():
        return False
    frame: FrameType | None = sys._getframe(skip + 1)
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        if _is_compiler_file(frame.f_code.co_filename):
            return True
        frame = frame.f_back
        depth += 1
    return False


def called_by_compiler(skip: int = 1) -> bool:
    """Return whether the nearest caller outside the standard library, above `skip` frames, is compiler code."""
    if _no_compiler_loaded():
        return False
    frame: FrameType | None = sys._getframe(skip + 1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not ((filename.startswith(_STDLIB_DIR) and "site-packages" not in filename)
                or filename.startswith("<frozen")):
            return _is_compiler_file(filename)
        frame = frame.f_back
    return False
