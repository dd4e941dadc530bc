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

# Package directories of compilers whose file-system and helper-module work is cache plumbing,
# found from the imported packages themselves (a user's own folder named `triton` is not one).
# torch.fx is deliberately absent: `torch.fx.symbolic_trace(model)` builds a GraphModule users train.
_TORCH_COMPILER_PACKAGES = ("_dynamo", "_inductor", "_functorch")
# Files of torch._dynamo that wrap and then run the user's code (`torch._disable_dynamo` around
# Optimizer.zero_grad/load_state_dict, torch.utils.checkpoint): a frame there is not compilation.
_WRAPPER_FILES = ("eval_frame.py", "external_utils.py")
_STDLIB_DIR = sysconfig.get_paths()["stdlib"]
_MAX_DEPTH = 400  # a compiler's stack is deep, but a bound keeps a pathological recursion cheap


def _no_compiler_loaded() -> bool:
    """Return whether no compiler is imported yet (the common case, answered without a stack walk)."""
    # torch always imports torch._functorch, but its AOTAutograd compiles only under dynamo.
    return "torch._dynamo" not in sys.modules and "triton" not in sys.modules


def _compiler_roots() -> tuple[str, ...]:
    """Return the directories of the compilers imported in this process, each ending in a separator."""
    roots: list[str] = []
    torch_file = getattr(sys.modules.get("torch"), "__file__", None)
    if isinstance(torch_file, str):
        base = os.path.dirname(torch_file)
        roots.extend(os.path.join(base, package) + os.sep for package in _TORCH_COMPILER_PACKAGES)
    triton_file = getattr(sys.modules.get("triton"), "__file__", None)
    if isinstance(triton_file, str):
        roots.append(os.path.dirname(triton_file) + os.sep)
    return tuple(roots)


def _is_compiler_file(filename: str, roots: tuple[str, ...]) -> bool:
    return filename.startswith(roots) and os.path.basename(filename) not in _WRAPPER_FILES


def inside_compiler(skip: int = 1) -> bool:
    """Return whether any caller, above the `skip` innermost frames, is compiler code."""
    if _no_compiler_loaded():
        return False
    roots = _compiler_roots()
    frame: FrameType | None = sys._getframe(skip + 1)
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        if _is_compiler_file(frame.f_code.co_filename, roots):
            return True
        frame = frame.f_back
        depth += 1
    return False


def called_by_compiler(skip: int = 1) -> bool:
    """Return whether the nearest caller outside the standard library, above `skip` frames, is compiler code."""
    if _no_compiler_loaded():
        return False
    roots = _compiler_roots()
    frame: FrameType | None = sys._getframe(skip + 1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not ((filename.startswith(_STDLIB_DIR) and "site-packages" not in filename)
                or filename.startswith("<frozen")):
            return _is_compiler_file(filename, roots)
        frame = frame.f_back
    return False


def file_opened_by_compiler() -> bool:
    """Return whether a file the audit hook saw was opened by a JIT compiler's cache work.

    Called from a file source's path check, four frames under the program's call (the audit hook,
    the source's event handler, its path check, this function); an open with no Python frame
    above the hook (a C thread) is not the compiler's.
    """
    try:
        return called_by_compiler(skip=4)
    except ValueError:
        return False
