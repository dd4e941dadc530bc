"""Which processes of a launched command run the user's training, and the stable role each one records under.

A distributed run is many Python processes: a launcher (`torchrun`, `accelerate launch`), one
process per rank, each rank's DataLoader workers, the compiler's workers. Each process that runs
the user's script gets a session and a trace segment named by its role, and a replay matches each
replayed process to its segment by the same name. The role comes from the torch.distributed
environment the launcher sets, never from the order in which the processes happen to start:

- `RANK` set (torchrun, `accelerate launch`, Slurm-style launchers): `rank<RANK>`;
- only `LOCAL_RANK` set (Lightning's own DDP launcher re-runs the script with it): `rank<LOCAL_RANK>`
  on node 0, `node<NODE_RANK>.local<LOCAL_RANK>` elsewhere;
- neither: the command's own script, `main` (the first such process; later ones `main.2`, ...).
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Mapping, NamedTuple

from detrun.runner import Target

# Launchers and compiler or pool workers: they start the training processes, or serve them, and run
# none of the user's code themselves (a module's top-level package, or a console script's name).
_INFRASTRUCTURE_MODULES = frozenset({"torch", "triton", "accelerate", "deepspeed", "lightning", "pytorch_lightning",
                                     "lightning_fabric", "transformers", "multiprocessing", "concurrent", "pip",
                                     "setuptools", "detrun", "ray", "horovod", "colossalai", "pytest"})
_ROLE = re.compile(r"(main(\.[0-9]{1,6})?|rank[0-9]{1,7}|node[0-9]{1,6}\.local[0-9]{1,6})")
_INT = re.compile(r"[0-9]{1,7}")


# A NamedTuple, not a dataclass: every session imports this module, and dataclasses brings inspect.
class ProcessKey(NamedTuple):
    """Where a process sits in a distributed run, from the environment its launcher gave it."""

    role: str
    rank: int | None = None
    local_rank: int | None = None
    node_rank: int | None = None
    world_size: int | None = None
    local_world_size: int | None = None

    @property
    def label(self) -> str:
        """Return how messages name the process: `rank 1`, or `` for a single process."""
        if self.rank is not None:
            return f"rank {self.rank}"
        if self.local_rank is not None:
            return f"node {self.node_rank or 0} local rank {self.local_rank}"
        return "" if self.role == "main" else self.role

    @property
    def nodes(self) -> int | None:
        """Return the number of nodes when the launcher says it (WORLD_SIZE / LOCAL_WORLD_SIZE)."""
        if self.world_size and self.local_world_size and self.world_size % self.local_world_size == 0:
            return self.world_size // self.local_world_size
        return None

    def as_dict(self) -> dict[str, object]:
        """Return the key as plain data (the `process` event, the claim file)."""
        return self._asdict()


def is_role(name: object) -> bool:
    """Return whether a name is a role this module gives (a trace's role names are checked with it)."""
    return isinstance(name, str) and _ROLE.fullmatch(name) is not None


def key_from_env(env: Mapping[str, str]) -> ProcessKey | None:
    """Return the distributed key of a rank process, or None when the environment names no rank."""
    rank, local_rank = _int(env.get("RANK")), _int(env.get("LOCAL_RANK"))
    if rank is None and local_rank is None:
        return None
    node_rank = _int(env.get("GROUP_RANK")) if "GROUP_RANK" in env else _int(env.get("NODE_RANK"))
    world_size, local_world_size = _int(env.get("WORLD_SIZE")), _int(env.get("LOCAL_WORLD_SIZE"))
    if rank is not None:
        role = f"rank{rank}"
    elif not node_rank:
        role, rank = f"rank{local_rank}", local_rank  # one node: the local rank is the global rank
    else:
        role = f"node{node_rank}.local{local_rank}"
    return ProcessKey(role, rank, local_rank, node_rank, world_size, local_world_size)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and _INT.fullmatch(value) else None


def target_of(orig_argv: list[str]) -> tuple[list[str], Target] | None:
    """Split `python [OPTIONS] SCRIPT|-m MODULE [ARGS]` into the interpreter options and the target.

    None for what runs no user script: `-c CODE`, a script on stdin, an interactive interpreter.
    """
    options: list[str] = []
    words = orig_argv[1:]
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-m" and index + 1 < len(words):
            return options, Target(words[index + 1], tuple(words[index + 2:]), True)
        if word.startswith("-m") and len(word) > 2:
            return options, Target(word[2:], tuple(words[index + 1:]), True)
        if word in ("-c", "-") or (word.startswith("-c") and not word.startswith("--")):
            return None
        if word in ("-X", "-W", "--check-hash-based-pycs") and index + 1 < len(words):
            options += [word, words[index + 1]]
            index += 2
            continue
        if word == "--":
            index += 1
            break
        if word.startswith("-") and word != "-":
            options.append(word)
            index += 1
            continue
        break
    if index >= len(words) or words[index] == "-":
        return None
    return options, Target(words[index], tuple(words[index + 1:]), False)


def runs_user_code(target: Target) -> bool:
    """Return whether a target is the user's code, not a launcher, a library's worker or a console script."""
    if target.is_module:
        return target.name.split(".")[0] not in _INFRASTRUCTURE_MODULES
    path = os.path.realpath(target.name)
    if any(part in ("site-packages", "dist-packages") for part in path.split(os.sep)):
        return False
    # The interpreter's own trees (console scripts in bin/, the standard library in lib/), not the
    # prefix itself: a virtual environment made in the project's own directory holds its scripts.
    trees = {os.path.join(os.path.realpath(p), tree) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)
             for tree in ("bin", "lib", "lib64", "Scripts", "Lib")}
    return not any(path.startswith(tree + os.sep) for tree in trees)


def claim_role(directory: str, key: ProcessKey | None) -> ProcessKey | None:
    """Claim a role name in the run's scratch directory, atomically; None if a rank's role is taken.

    Two processes can never record under one name: a duplicate rank (a compiler worker that inherited
    its rank's environment and slipped past `runs_user_code`) gets None and is reported as unrecorded.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    candidates = [key] if key is not None else [ProcessKey("main" if n == 1 else f"main.{n}") for n in range(1, 1000)]
    for candidate in candidates:
        try:
            fd = os.open(os.path.join(directory, f"{candidate.role}.role.json"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as claim:
            json.dump(candidate.as_dict(), claim)
        return candidate
    return None


def read_claims(directory: str) -> dict[str, ProcessKey]:
    """Return the roles claimed in a run's scratch directory, by role name."""
    claims: dict[str, ProcessKey] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return claims
    for name in names:
        role = name.removesuffix(".role.json")
        if role == name or not is_role(role):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as claim:
                data = json.load(claim)
            claims[role] = ProcessKey(**{k: data.get(k) for k in ("role", "rank", "local_rank", "node_rank",
                                                                   "world_size", "local_world_size")})
        except (OSError, ValueError, TypeError):
            continue
    return claims
