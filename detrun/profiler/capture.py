"""Op capture: a TorchDispatchMode that sees every aten op the script runs, forward and backward.

A dispatch mode lives in thread-local state.  Backward on CPU runs in the thread that called
`.backward()`, so the mode pushed around the script sees it directly.  On CUDA the autograd engine
runs backward on its per-device worker threads; the engine copies the caller's
`at::ThreadLocalState` (which holds the dispatch-mode stack) into the graph task and installs it
on the worker for the duration of the task, so the mode is active there too.  tests/test_profile.py
checks the same propagation on CPU through TorchScript's fork, which uses the same
`ThreadLocalState` mechanism on the inter-op pool, and on CUDA directly when a GPU is present.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detrun.profiler import empirical
from detrun.profiler.findings import UNKNOWN_SITE, CallSite
from detrun.profiler.kb import KnowledgeBase, Rule
from detrun.profiler.sites import NodeSites, SiteFinder

MAX_SITES_PER_OP = 16
MAX_SHAPES_PER_OP = 8
MAX_SIGNATURES_PER_OP = 64
MAX_CHECKS_PER_OP = 4
MAX_CHECKS_TOTAL = 5000
MAX_KERNEL_PROBES = 64
MAX_PROBE_BYTES = 256 << 20  # probe inputs stay alive until the run ends: keep them small

# record_function markers (the optimizer wraps step() in one) are bookkeeping, not computation.
_IGNORED_NAMESPACES = frozenset({"profiler"})
_forked_child = False


def _mark_forked_child() -> None:
    # A DataLoader worker forked while the mode is pushed inherits it; its ops are not the
    # training loop's, and re-running them there would only slow data loading down.
    """Stop observing in a process forked while the mode was pushed."""
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_mark_forked_child)


@dataclasses.dataclass
class FuncInfo:
    """What the capture needs to know about one op overload, computed once per overload."""

    name: str  # "aten::index_add_"
    overload: str  # "default", "src", "two", ...
    has_rules: bool
    skip_reason: str | None
    mutable_positions: tuple[int, ...]
    arg_names: tuple[str, ...]

    @property
    def display(self) -> str:
        """Return 'aten::name' for the default overload, 'aten::name.overload' otherwise."""
        return self.name if self.overload == "default" else f"{self.name}.{self.overload}"

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Name the arguments by the op's schema, so KB predicates can ask for 'accumulate'."""
        bound = dict(zip(self.arg_names, args))
        bound.update(kwargs)
        return bound


@dataclasses.dataclass
class OpRecord:
    """Everything captured about one op overload on one device (and one KB rule, if any)."""

    func: Any
    info: FuncInfo
    device: str
    rule: Rule | None  # the KB rule for the reported device (CUDA, or where it ran under --device auto)
    cuda_rule: Rule | None  # the KB rule for CUDA, whatever the reported device
    call_site: CallSite
    count: int = 0
    phases: set[str] = dataclasses.field(default_factory=set)
    call_sites: dict[CallSite, int] = dataclasses.field(default_factory=dict)
    dtypes: set[str] = dataclasses.field(default_factory=set)
    shapes: list[list[list[int]]] = dataclasses.field(default_factory=list)
    signatures: set[tuple[Any, ...]] = dataclasses.field(default_factory=set)
    verdicts: list[empirical.Verdict] = dataclasses.field(default_factory=list)
    probe: tuple[tuple[Any, ...], dict[str, Any]] | None = None
    kernels: list[str] = dataclasses.field(default_factory=list)

    @property
    def measured_nondeterministic(self) -> bool | None:
        """True if a check saw different bits, False if checks ran and agreed, None if none ran."""
        if any(v.differs for v in self.verdicts):
            return True
        if any(v.status == "same" for v in self.verdicts):
            return False
        return None

    def extra_json(self) -> dict[str, Any]:
        """Return no fields beyond SCHEMA.md's op object: torch's are all documented there."""
        return {}


def _device_type(tensor: torch.Tensor) -> str:
    # is_cuda/is_cpu are plain flags; .device builds a torch.device object on every call.
    """Return a tensor's device type cheaply."""
    return "cuda" if tensor.is_cuda else "cpu" if tensor.is_cpu else tensor.device.type


def signature_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """Return the device type of the first tensor and a hashable signature of the call.

    The signature holds each tensor's dtype and shape, and bool/str arguments (mode flags such as
    accumulate=True or reduce='sum'); other scalars are left out so that a loop over offsets does
    not make every call a new signature.  This runs for every op, so it is written for speed.
    """
    device: str | None = None
    parts: list[Any] = []
    append = parts.append
    for value in (args if not kwargs else (*args, *kwargs.values())):
        if isinstance(value, torch.Tensor):
            if device is None:
                device = _device_type(value)
            append((value.dtype, value.shape))  # torch.Size is a hashable tuple
        elif type(value) is list or type(value) is tuple:
            inner = []
            for item in value:
                if isinstance(item, torch.Tensor):
                    if device is None:
                        device = _device_type(item)
                    inner.append((item.dtype, item.shape))
            append(tuple(inner))
        elif value is True or value is False or type(value) is str:
            append(value)
        else:
            append(None)
    if device is None:
        requested = kwargs.get("device")
        device = torch.device(requested).type if requested is not None else "cpu"
    return device, tuple(parts)


def _dtype_name(dtype: torch.dtype) -> str:
    """Return 'float32' for torch.float32."""
    return str(dtype).replace("torch.", "")


def _signature_dtypes_shapes(signature: tuple[Any, ...]) -> tuple[set[str], list[list[int]]]:
    """Return the dtype names and tensor shapes a signature holds, for the report."""
    dtypes: set[str] = set()
    shapes: list[list[int]] = []
    for part in signature:
        items = part if isinstance(part, tuple) and part and isinstance(part[0], tuple) else (part,)
        for item in items:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], torch.dtype):
                dtypes.add(_dtype_name(item[0]))
                shapes.append(list(item[1]))
    return dtypes, shapes


class OpCapture(TorchDispatchMode):
    """Record every aten op with its user call site, KB rule and empirical verdict."""

    def __init__(self, kb: KnowledgeBase, *, kb_device: str | None, run_empirical: bool,
                 keep_kernel_probes: bool, on_hook_error: Callable[[str], None]) -> None:
        super().__init__()
        self.kb = kb
        self.kb_device = kb_device  # "cuda" for CUDA predictions; None: the device each op ran on
        self.run_empirical = run_empirical
        self.keep_kernel_probes = keep_kernel_probes
        self.records: dict[tuple[Any, str, str | None, str | None], OpRecord] = {}
        self.hook_errors: list[str] = []
        self.checks_run = 0
        self.check_seconds = 0.0
        self._on_hook_error = on_hook_error
        self._funcs: dict[Any, FuncInfo] = {}
        self._finder = SiteFinder()
        self._node_sites = NodeSites()
        self._lock = threading.RLock()
        self._probes = 0
        self.enabled = True

    # -- the hot path ----------------------------------------------------------------------------

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs if kwargs is not None else {}
        if self.enabled and not _forked_child and func.namespace not in _IGNORED_NAMESPACES:
            try:
                self._observe(func, args, kwargs)
            except Exception as exc:  # noqa: BLE001 - a bug here must not change the user's program
                self._hook_failed(func, exc)
        # Outside the try: the user's own errors (shape mismatch, det-mode RuntimeError) pass unchanged.
        return func(*args, **kwargs)

    def _observe(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Count one op call and note its call site, KB rule and, for a new signature, its check."""
        info = self._funcs.get(func)
        if info is None:
            info = self._describe(func)
        node = torch._C._current_autograd_node()
        if node is None:
            phase = "forward"
            site = self._node_sites.note_forward(self._finder, 1) or self._finder.current(1)
        else:
            phase = "backward"
            # The forward line that created this node; failing that, the `.backward()` line.
            site = self._node_sites.for_node(node) or self._finder.current(1)
        site = site or UNKNOWN_SITE
        device, signature = signature_of(args, kwargs)
        rule = cuda_rule = None
        if info.has_rules:
            bound = info.bind(args, kwargs)
            cuda_rule = self.kb.match("cuda", info.name, info.overload, bound)
            report_device = self.kb_device or device
            rule = cuda_rule if report_device == "cuda" else self.kb.match(report_device, info.name,
                                                                            info.overload, bound)
        key = (func, device, rule.id if rule is not None else None,
               cuda_rule.id if cuda_rule is not None else None)
        record = self.records.get(key)
        if record is None:
            with self._lock:
                record = self.records.get(key)
                if record is None:
                    record = OpRecord(func, info, device, rule, cuda_rule, site)
                    self.records[key] = record
        record.count += 1
        record.phases.add(phase)
        sites = record.call_sites
        if site in sites:
            sites[site] += 1
        elif len(sites) < MAX_SITES_PER_OP:
            sites[site] = 1
        if signature not in record.signatures and len(record.signatures) < MAX_SIGNATURES_PER_OP:
            self._new_signature(record, signature, args, kwargs)

    # -- once per signature ----------------------------------------------------------------------

    def _new_signature(self, record: OpRecord, signature: tuple[Any, ...], args: tuple[Any, ...],
                       kwargs: dict[str, Any]) -> None:
        """Note a signature not seen before: shapes, the empirical check, the kernel probe."""
        with self._lock:
            if signature in record.signatures:
                return
            record.signatures.add(signature)
            dtypes, shapes = _signature_dtypes_shapes(signature)
            record.dtypes |= dtypes
            if len(record.shapes) < MAX_SHAPES_PER_OP:
                record.shapes.append(shapes)
            verdict = None
            info = record.info
            if self.run_empirical:
                if info.skip_reason is not None:
                    if not record.verdicts:
                        record.verdicts.append(empirical.Verdict("skipped", info.skip_reason))
                elif (len([v for v in record.verdicts if v.status != "skipped"]) < MAX_CHECKS_PER_OP
                      and self.checks_run < MAX_CHECKS_TOTAL):
                    started = time.perf_counter()
                    verdict = empirical.run_twice(record.func, args, kwargs, info.mutable_positions)
                    self.check_seconds += time.perf_counter() - started
                    self.checks_run += 1
                    record.verdicts.append(verdict)
            if (self.keep_kernel_probes and record.probe is None and record.device == "cuda"
                    and self._probes < MAX_KERNEL_PROBES and info.skip_reason is None
                    and ((record.cuda_rule is not None and record.cuda_rule.nondeterministic)
                         or (verdict is not None and verdict.differs))
                    and empirical.input_bytes(args, kwargs) <= MAX_PROBE_BYTES):
                # Pristine copies (the real call has not run yet) to replay under torch.profiler later.
                record.probe = empirical.copy_inputs(args, kwargs)
                self._probes += 1

    def _describe(self, func: Any) -> FuncInfo:
        # OpOverload._name carries the overload ("aten::squeeze.dim"); the schema name does not.
        """Compute and cache what the capture needs to know about an op overload."""
        name, overload = func._schema.name, func._overloadname
        try:
            skip = empirical.skip_reason(func)
            mutable = empirical.mutable_arg_positions(func)
            arg_names = tuple(arg.name for arg in func._schema.arguments)
        except Exception as exc:  # noqa: BLE001 - an exotic schema: capture it, never re-run it
            skip, mutable, arg_names = f"unreadable schema ({type(exc).__name__})", (), ()
        info = FuncInfo(name, overload, self.kb.has_op(name, overload), skip, mutable, arg_names)
        self._funcs[func] = info
        return info

    # -- bookkeeping -----------------------------------------------------------------------------

    def on_optimizer_step(self) -> None:
        """Drop the node-to-site map: the step's backward passes are over."""
        self._node_sites.clear()

    def _hook_failed(self, func: Any, exc: Exception) -> None:
        """Keep a hook failure for the report and say it once on stderr."""
        message = f"{getattr(func, '_name', func)}: {type(exc).__name__}: {exc}"
        if len(self.hook_errors) < 20:
            self.hook_errors.append(message)
            if len(self.hook_errors) == 1:
                self._on_hook_error(message)

    def __enter__(self) -> "OpCapture":
        return super().__enter__()  # type: ignore[return-value]


_PROFILER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


_MODE_PLUMBING = ("_compile.py", "eval_frame.py", "_python_dispatch.py", "_ops.py", "overrides.py")


def _is_mode_plumbing(tb: Any) -> bool:
    """Say whether a traceback entry is torch's dispatch-mode plumbing."""
    return os.path.basename(tb.tb_frame.f_code.co_filename) in _MODE_PLUMBING


def hide_capture_frames(exc: BaseException) -> None:
    """Drop the dispatch mode's frames from a user exception's traceback, so it reads as without detrun.

    An op that raises under the mode unwinds through torch's mode plumbing, __torch_dispatch__ and
    torch's OpOverload call; plain `python` would show only the user's lines.  Each capture frame
    and the runs of torch frames directly around it are unlinked (tb_next is writable), here and in
    chained exceptions.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        entries = []
        tb = exc.__traceback__
        while tb is not None:
            filename = tb.tb_frame.f_code.co_filename
            kind = ("capture" if filename.startswith(_PROFILER_DIR)
                    else "torch" if filename.startswith(_TORCH_DIR) else "user")
            entries.append((tb, kind))
            tb = tb.tb_next
        drop = [kind == "capture" for _, kind in entries]
        for i, (_, kind) in enumerate(entries):
            if kind != "capture":
                continue
            j = i - 1  # above: torch's mode plumbing, not the torch code the user called
            while j >= 0 and entries[j][1] == "torch" and _is_mode_plumbing(entries[j][0]):
                drop[j] = True
                j -= 1
            j = i + 1  # below: everything torch ran on the capture's behalf
            while j < len(entries) and entries[j][1] == "torch":
                drop[j] = True
                j += 1
        kept = [tb for (tb, _), dropped in zip(entries, drop) if not dropped]
        if len(kept) != len(entries):
            for current, following in zip(kept, kept[1:] + [None]):
                current.tb_next = following
            exc.__traceback__ = kept[0] if kept else None
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
