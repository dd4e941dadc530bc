"""Load the knowledge base (kb/<framework>.json) and match captured ops against it.

The knowledge base is data, not code: which ops are nondeterministic on which device, for which
framework versions, what the framework's deterministic mode (`torch.use_deterministic_algorithms(True)`,
TensorFlow's `enable_op_determinism()`) does to them, and where each claim comes from. One loader
reads both files into the same `Rule`s: torch.json holds rules per device; tensorflow.json holds one
entry per op family with its GPU and CPU claims, which become a rule for each device.  The only code here is the loader and a small, closed vocabulary of argument
predicates (`when`), because some ops are nondeterministic only for some arguments
(`index_put_` with `accumulate=True`, `bincount` with `weights`, `scatter_reduce` with
`reduce="sum"`).  Patch names are deliberately absent: they come from
`detrun.patches.patch_for_op`, the one source of truth for patches.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterable, Mapping

KB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kb")
KB_SCHEMA_VERSION = 1
SOURCES = ("docs", "measured-h100")  # torch.json's; a file's own `sources` map names its sources
FRAMEWORKS = ("torch", "tensorflow")


class KnowledgeBaseError(Exception):
    """The knowledge base file is missing or malformed (a packaging bug, not a user error)."""


def parse_version(text: str) -> tuple[int, ...]:
    """Turn '2.13.0+cu130' or '2.6.0a0' into (2, 13, 0); ignore local and pre-release tags."""
    numbers = []
    for part in text.split("+", 1)[0].split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def version_matches(spec: str, version: tuple[int, ...]) -> bool:
    """Check a comma-separated range like '>=2.5,<2.13' against a parsed version."""
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        match = re.fullmatch(r"(>=|<=|==|!=|>|<)\s*([\d.]+)", clause)
        if match is None:
            raise KnowledgeBaseError(f"bad torch version range {spec!r}")
        op, bound_text = match.groups()
        bound = parse_version(bound_text)
        width = max(len(bound), len(version))
        left = version + (0,) * (width - len(version))
        right = bound + (0,) * (width - len(bound))
        ok = {">=": left >= right, "<=": left <= right, "==": left == right,
              "!=": left != right, ">": left > right, "<": left < right}[op]
        if not ok:
            return False
    return True


# --- argument predicates --------------------------------------------------------------------
# Each takes the op's arguments bound to their schema names and says whether the rule applies.

BoundArgs = Mapping[str, Any]


def _first_tensor(args: BoundArgs) -> Any:
    """Return the first tensor argument, or None."""
    import torch

    for value in args.values():
        if isinstance(value, torch.Tensor):
            return value
    return None


def _floating(args: BoundArgs) -> bool:
    """Say whether the op works on floating-point or complex data."""
    tensor = args.get("self", args.get("input"))
    tensor = tensor if tensor is not None else _first_tensor(args)
    return tensor is not None and (tensor.is_floating_point() or tensor.is_complex())


def _reduce_in(*names: str) -> Callable[[BoundArgs], bool]:
    """Build a predicate: the `reduce` argument is one of names."""
    return lambda args: str(args.get("reduce")) in names


def _integer_indices(args: BoundArgs) -> bool:
    """Say whether any index tensor holds integers (which may repeat)."""
    import torch

    indices = args.get("indices") or ()
    # Boolean masks select each position at most once, so no two writes can collide.
    return any(isinstance(i, torch.Tensor) and i.dtype not in (torch.bool, torch.uint8) for i in indices)


def _any_sparse(args: BoundArgs) -> bool:
    """Say whether any tensor argument is sparse."""
    import torch

    return any(isinstance(v, torch.Tensor) and v.layout != torch.strided for v in args.values())


PREDICATES: dict[str, Callable[[BoundArgs], bool]] = {
    "floating": _floating,
    "accumulate": lambda args: bool(args.get("accumulate", False)),
    "not_accumulate": lambda args: not bool(args.get("accumulate", False)),
    "has_weights": lambda args: args.get("weights") is not None,
    "reduce_sum_mean": _reduce_in("sum", "mean", "add"),
    "reduce_prod": _reduce_in("prod", "multiply"),
    "mode_max": lambda args: args.get("mode") == 2,  # EmbeddingBag encodes mode='max' as 2
    "not_mode_max": lambda args: args.get("mode") != 2,
    "integer_indices": _integer_indices,
    "sparse": _any_sparse,
    "dense": lambda args: not _any_sparse(args),
    "quantized": lambda args: bool(getattr(args.get("self"), "is_quantized", False)),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """One knowledge-base claim about a family of ops on one device for a torch version range."""

    id: str
    ops: tuple[str, ...]
    device: str
    versions: str  # the framework version range the claim holds for
    when: tuple[str, ...]
    nondeterministic: bool
    raises_in_det_mode: bool | None  # None: not established (some TensorFlow entries)
    det_mode_fixes: bool | None
    source: tuple[str, ...]
    api: str
    note: str
    measured_h100: Mapping[str, Any] | None
    framework: str = "torch"

    def applies(self, args: BoundArgs) -> bool:
        """Say whether the rule's argument predicates all hold for this call."""
        return all(PREDICATES[name](args) for name in self.when)

    def to_json(self) -> dict[str, Any]:
        """Return what a report entry says about the rule that matched."""
        out: dict[str, Any] = {"id": self.id, "device": self.device, self.framework: self.versions,
                               "api": self.api, "note": self.note}
        if self.measured_h100 is not None:
            out["measured_h100"] = dict(self.measured_h100)
        return out


def _rule_from_json(entry: Mapping[str, Any], device: str, known_sources: Iterable[str] = SOURCES) -> Rule:
    """Validate one torch.json rule and build it for one device."""
    for field in ("id", "ops", "torch", "nondeterministic", "raises_in_det_mode", "det_mode_fixes", "source"):
        if field not in entry:
            raise KnowledgeBaseError(f"knowledge base entry {entry.get('id', '?')!r} lacks {field!r}")
    when = tuple(entry.get("when", ()))
    unknown = [w for w in when if w not in PREDICATES]
    if unknown:
        raise KnowledgeBaseError(f"entry {entry['id']!r} uses unknown predicate(s) {unknown}")
    source = tuple(entry["source"]) if isinstance(entry["source"], list) else (entry["source"],)
    bad = [s for s in source if s not in known_sources]
    if bad:
        raise KnowledgeBaseError(f"entry {entry['id']!r} cites unknown source(s) {bad}")
    return Rule(id=entry["id"], ops=tuple(entry["ops"]), device=device, versions=entry["torch"], when=when,
                nondeterministic=bool(entry["nondeterministic"]),
                raises_in_det_mode=bool(entry["raises_in_det_mode"]),
                det_mode_fixes=bool(entry["det_mode_fixes"]), source=source,
                api=entry.get("api", ""), note=entry.get("note", ""),
                measured_h100=entry.get("measured_h100"))


def _tf_rules_from_json(entry: Mapping[str, Any], known_sources: Iterable[str]) -> list[Rule]:
    """Validate one tensorflow.json entry and build its GPU ('cuda') and CPU rules."""
    for field in ("ops", "nondeterministic_gpu", "raises_with_op_determinism", "op_determinism_fixes", "source"):
        if field not in entry:
            raise KnowledgeBaseError(f"knowledge base entry {entry.get('ops', '?')!r} lacks {field!r}")
    source = tuple(entry["source"]) if isinstance(entry["source"], list) else (entry["source"],)
    bad = [s for s in source if s not in known_sources]
    if bad:
        raise KnowledgeBaseError(f"entry {entry['ops']!r} cites unknown source(s) {bad}")
    claims = {"cuda": bool(entry["nondeterministic_gpu"]), "cpu": bool(entry.get("nondeterministic_cpu", False))}
    return [Rule(id=entry["ops"][0], ops=tuple(entry["ops"]), device=device, versions=entry.get("tf") or "",
                 when=(), nondeterministic=nondeterministic, raises_in_det_mode=entry["raises_with_op_determinism"],
                 det_mode_fixes=entry["op_determinism_fixes"], source=source, api=entry.get("api", ""),
                 note=entry.get("note", ""), measured_h100=None, framework="tensorflow")
            for device, nondeterministic in claims.items()]


def installed_version(*distributions: str) -> str | None:
    """Return the version of the first installed distribution, without importing it; None if none is."""
    from importlib.metadata import PackageNotFoundError, version

    for distribution in distributions:
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return None


class KnowledgeBase:
    """The rules of one framework that apply to the installed version, indexed by op name."""

    def __init__(self, rules: Iterable[Rule], framework_version: str | None, path: str,
                 framework: str = "torch") -> None:
        self.path = path
        self.framework = framework
        self.framework_version = framework_version
        self.rules = list(rules)
        self._by_op: dict[tuple[str, str], list[Rule]] = {}
        for rule in self.rules:
            for op in rule.ops:
                self._by_op.setdefault((rule.device, op), []).append(rule)

    @classmethod
    def load(cls, framework_version: str | None, path: str | None = None,
             framework: str = "torch") -> "KnowledgeBase":
        """Read kb/<framework>.json and keep the rules whose version range covers framework_version.

        An unknown version (None) keeps every rule.
        """
        if framework not in FRAMEWORKS:
            raise KnowledgeBaseError(f"no knowledge base for {framework!r}")
        path = path or os.path.join(KB_DIR, f"{framework}.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise KnowledgeBaseError(f"cannot read knowledge base {path}: {exc}") from None
        if data.get("schema_version") != KB_SCHEMA_VERSION:
            raise KnowledgeBaseError(f"{path}: unsupported schema_version {data.get('schema_version')!r}")
        known_sources = tuple(data.get("sources") or SOURCES)
        candidates: list[Rule] = []
        if framework == "tensorflow":
            for entry in data.get("ops", []):
                candidates += _tf_rules_from_json(entry, known_sources)
        else:
            for entry in data.get("rules", []):
                devices = entry.get("device", "cuda")
                for device in devices if isinstance(devices, list) else [devices]:
                    candidates.append(_rule_from_json(entry, device, known_sources))
        version = parse_version(framework_version) if framework_version else None
        rules = [rule for rule in candidates
                 if version is None or not rule.versions or version_matches(rule.versions, version)]
        return cls(rules, framework_version, path, framework)

    def has_op(self, name: str, overload: str) -> bool:
        """Say whether any rule names this op (by base name or name.overload) on any device."""
        return any(self.candidates(device, name, overload) for device in ("cuda", "cpu"))

    def candidates(self, device: str, name: str, overload: str) -> list[Rule]:
        """Return the rules for an op on a device: `name.overload` rules first, then `name` rules."""
        exact = self._by_op.get((device, f"{name}.{overload}"), [])
        return exact + self._by_op.get((device, name), [])

    def match(self, device: str, name: str, overload: str, args: BoundArgs) -> Rule | None:
        """Return the first rule whose predicates hold for this call, or None."""
        for rule in self.candidates(device, name, overload):
            if rule.applies(args):
                return rule
        return None
