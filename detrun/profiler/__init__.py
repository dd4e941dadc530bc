"""detrun profile: find the ops of a training script that can make two runs differ bit for bit.

One path for both frameworks: capture → knowledge base → report. Captures: `capture` (torch: a
TorchDispatchMode over every aten op, forward and backward, with user call sites, plus `empirical`,
which re-runs each op signature twice on exact input copies, and `kernel_names`, CUDA kernel names
via torch.profiler) and `tf_capture` (TensorFlow: op callbacks, in a child process that `tf_profile`
runs). Both stop after K steps with `step_limit` and hand over `findings.ObservedOp` records; `kb`
loads the knowledge base (a JSON data file per framework) and matches ops against it; `findings`
gives severity and the table's words; `report` (with `notes` and `text_layout`) prints the table
in the output width, its notes and the summary for both frameworks, and writes the JSON of
SCHEMA.md. `profile_run` ties them together for torch, `tf_profile` for TensorFlow.
Importing this package does not import torch.
"""
from __future__ import annotations

from detrun.profiler.profile_run import ProfileOptions, ProfileResult, run_profile

__all__ = ["ProfileOptions", "ProfileResult", "run_profile"]
