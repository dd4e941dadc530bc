"""detrun profile: find the ops of a training script that can make two runs differ bit for bit.

Pieces: capture (a TorchDispatchMode over every aten op, forward and backward, with user call
sites), empirical (re-run each op signature twice on exact input copies and compare bits), kb (the
knowledge base, a JSON data file per framework), kernels (CUDA kernel names via torch.profiler),
report (severity, rich table, JSON) and session (runs the script and ties them together).
Importing this package does not import torch.
"""
from __future__ import annotations

from detrun.profiler.profile_run import ProfileOptions, ProfileResult, run_profile

__all__ = ["ProfileOptions", "ProfileResult", "run_profile"]
