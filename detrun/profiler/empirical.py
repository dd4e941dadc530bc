"""The empirical check: run an op twice more on exact copies of its inputs and compare the bits.

It finds nondeterminism the knowledge base has never heard of (a custom op, a new kernel, a CPU
kernel with racy threads), on any device.  It runs inside the dispatch mode's handler, before the
real call, so the inputs are still pristine and nothing needs to be kept afterwards; torch has
already disabled the mode there, so the re-executions are not captured again.

What it must never do is change the user's program, so it:
- copies inputs exactly (same strides, storage offset and overlap) and never touches the originals;
- restores the CPU and CUDA RNG states before each run and afterwards, so the user's random
  stream is the one it would have been, and a seeded random op gives the same bits twice;
- hides warnings and Python-level prints of the copies (the real call still shows them);
- never runs during CUDA graph capture, where extra kernels would be recorded into the graph.

Ops that are random by nature are skipped rather than run: dropout, rand*, normal, bernoulli,
uniform_, randperm, multinomial and anything taking a Generator draw from the RNG, so differing
bits are their purpose, not a defect.  empty*, new_empty*, resize_ and set_ return uninitialised
memory whose contents are garbage by contract.  View ops compute nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import struct
import sys
import warnings
from typing import Any, Iterator

import torch

# Names (the part after 'ns::') of ops whose outputs differ by design; see the module docstring.
_RANDOM_NAME_PARTS = ("rand", "dropout", "normal", "bernoulli", "uniform", "multinomial", "poisson",
                      "exponential_", "geometric_", "cauchy_", "log_normal_", "rrelu", "_standard_gamma",
                      "_sample_dirichlet", "binomial", "random_")
_UNINITIALISED_PREFIXES = ("empty", "new_empty", "_empty", "resize", "set_", "_resize")
# Namespaces whose ops talk to other processes or to tools rather than compute.
_SKIP_NAMESPACES = {"c10d", "_c10d_functional", "_c10d_functional_autograd", "_dtensor", "profiler",
                    "record_stream", "prims_debug"}
# A rough guard against doubling the memory of a huge op on a nearly full GPU.
MAX_INPUT_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one check: 'same', 'differs', 'skipped' or 'error', and why."""

    status: str
    reason: str = ""

    @property
    def differs(self) -> bool:
        """Say whether the two runs gave different bits."""
        return self.status == "differs"


def skip_reason(func: Any) -> str | None:
    """Say why an op must not be re-run, or None when the check applies."""
    namespace, _, name = func._schema.name.partition("::")
    if namespace in _SKIP_NAMESPACES:
        return "communication or tooling op"
    if any(part in name for part in _RANDOM_NAME_PARTS):
        return "random by nature"
    if name.startswith(_UNINITIALISED_PREFIXES):
        return "returns uninitialised memory"
    schema = func._schema
    if any("Generator" in str(arg.type) for arg in schema.arguments):
        return "random by nature"
    returns = schema.returns
    if returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns):
        return "view: computes nothing"
    return None


def mutable_arg_positions(func: Any) -> tuple[int, ...]:
    """Return the schema positions of the arguments the op writes to (in-place and out= ops)."""
    return tuple(i for i, arg in enumerate(func._schema.arguments)
                 if arg.alias_info is not None and arg.alias_info.is_write)


def _exact_copy(tensor: torch.Tensor) -> torch.Tensor:
    """Copy a tensor keeping its strides, storage offset and overlap, so the kernel path is the same."""
    if tensor.is_contiguous() and tensor.storage_offset() == 0:
        return tensor.clone(memory_format=torch.contiguous_format)
    # Views may overlap (expand) or skip memory (slices): copy the whole storage they index into.
    numel = tensor.untyped_storage().nbytes() // tensor.element_size()
    flat = tensor.as_strided((numel,), (1,), 0).clone()
    return flat.as_strided(tensor.size(), tensor.stride(), tensor.storage_offset())


def _copy_tree(value: Any) -> Any:
    """Copy every tensor in a nested args structure exactly; leave other values as they are."""
    if isinstance(value, torch.Tensor):
        return _exact_copy(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    return value


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Yield every tensor in a nested args structure."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _unsupported_tensor(tensor: torch.Tensor) -> str | None:
    """Say why a tensor cannot be copied and compared faithfully, or None."""
    if type(tensor) is not torch.Tensor and not isinstance(tensor, torch.nn.Parameter):
        return "tensor subclass"
    if tensor.layout != torch.strided:
        return "sparse or non-strided tensor"
    if tensor.is_quantized or tensor.is_nested:
        return "quantized or nested tensor"
    if tensor.device.type not in ("cpu", "cuda"):
        return f"{tensor.device.type} tensor"
    return None


def _as_bits(tensor: torch.Tensor) -> torch.Tensor:
    """View a tensor as integers of the same width, so comparison is bitwise and NaN-safe."""
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    if tensor.dtype == torch.bool:
        return tensor.view(torch.uint8)
    if tensor.is_floating_point():
        width = tensor.element_size()
        return tensor.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[width])
    return tensor


def bitwise_equal(a: Any, b: Any) -> bool:
    """Compare two op results bit for bit: tensors, nested tuples/lists, floats (NaN, -0.0) and others."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
            return False
        if a.layout != torch.strided or b.layout != torch.strided:
            return bool(torch.equal(a.to_dense(), b.to_dense()))
        if a.is_quantized:
            return bool(torch.equal(a.int_repr(), b.int_repr()))
        return bool(torch.equal(_as_bits(a), _as_bits(b)))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(bitwise_equal(x, y) for x, y in zip(a, b)))
    if isinstance(a, float) and isinstance(b, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, complex) and isinstance(b, complex):
        return bitwise_equal(a.real, b.real) and bitwise_equal(a.imag, b.imag)
    try:
        return bool(a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    except Exception:  # noqa: BLE001 - objects without a usable ==: call them equal only if identical
        return a is b


class _RngState:
    """The CPU and (when initialised) CUDA generator states, to put back after each run."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        # is_initialized() first: never initialise CUDA on the user's behalf.
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        """Put the saved generator states back."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


@contextlib.contextmanager
def _quiet(hide_prints: bool) -> Iterator[None]:
    """Hide warnings (and Python prints, for custom ops) of the extra runs; the real call shows them.

    Swapping `showwarning` rather than using catch_warnings leaves the filters alone, so the
    user's "show once" bookkeeping is not reset.
    """
    saved_show = warnings.showwarning
    warnings.showwarning = lambda *args, **kwargs: None
    saved_out, saved_err = sys.stdout, sys.stderr
    if hide_prints:
        sys.stdout = sys.stderr = io.StringIO()
    try:
        yield
    finally:
        warnings.showwarning = saved_show
        if hide_prints:
            sys.stdout, sys.stderr = saved_out, saved_err


def _capturing_cuda_graph() -> bool:
    """Say whether the current CUDA stream is capturing a graph (without initialising CUDA)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def copy_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Return exact copies of an op's arguments (kept for the CUDA kernel probe)."""
    return _copy_tree(args), _copy_tree(kwargs)


def input_bytes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Return the storage bytes behind an op's tensor arguments."""
    return sum(t.untyped_storage().nbytes() for t in _tensors((args, kwargs)))


def run_twice(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
              mutable_positions: tuple[int, ...]) -> Verdict:
    """Run func twice on exact copies of args/kwargs and compare outputs and written-to arguments."""
    for tensor in _tensors((args, kwargs)):
        problem = _unsupported_tensor(tensor)
        if problem:
            return Verdict("skipped", problem)
    if input_bytes(args, kwargs) > MAX_INPUT_BYTES:
        return Verdict("skipped", "inputs larger than 1 GiB")
    if _capturing_cuda_graph():
        return Verdict("skipped", "during CUDA graph capture")
    custom = func.namespace not in ("aten", "prims")
    rng = _RngState()
    results = []
    try:
        with torch.no_grad(), _quiet(hide_prints=custom):
            for _ in range(2):
                run_args, run_kwargs = _copy_tree(args), _copy_tree(kwargs)
                rng.restore()
                out = func(*run_args, **run_kwargs)
                written = [run_args[i] for i in mutable_positions if i < len(run_args)]
                written += [v for k, v in run_kwargs.items() if k in _write_kwarg_names(func)]
                results.append((out, written))
    except Exception as exc:  # noqa: BLE001 - the real call will show the user any genuine error
        return Verdict("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200])
    finally:
        rng.restore()
    (out_a, written_a), (out_b, written_b) = results
    if not bitwise_equal(out_a, out_b):
        return Verdict("differs", "outputs differ")
    if not bitwise_equal(written_a, written_b):
        return Verdict("differs", "written-to arguments differ")
    return Verdict("same")


def _write_kwarg_names(func: Any) -> set[str]:
    """Return the names of keyword-only arguments the op writes to (out=)."""
    return {arg.name for arg in func._schema.arguments
            if arg.kwarg_only and arg.alias_info is not None and arg.alias_info.is_write}
