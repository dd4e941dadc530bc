"""One module per source of nondeterminism, each behind the same small interface.

A source has `install(session)` (idempotent), `uninstall()` (restores the originals in reverse
order) and stable event kind names. Sources never import each other; the session is the only
meeting point.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from detrun.engine.session import Session


class Source(Protocol):
    """The interface every source implements."""

    def install(self, session: Session) -> None:
        """Install the hooks for record or replay (a second call is a no-op)."""

    def uninstall(self) -> None:
        """Restore everything install() changed, last change first."""


def all_sources(in_process: bool = False) -> list[Source]:
    """Return a fresh instance of every source, in installation order.

    `in_process` (detrun.api's `with` blocks) leaves out the two that own process-wide things a
    block does not: file descriptor 1 (a notebook's output is not written there) and the signal
    handlers (Ctrl-C ends the block with KeyboardInterrupt, as without detrun).
    """
    from detrun.engine.sources import (
        backend_flags,
        block_rng_state,
        child_processes,
        cuda_kernels,
        dataloader,
        determinism_policy,
        distributed,
        final_state,
        interrupts,
        op_digests,
        stdout_lines,
        tf_runtime,
        tf_steps,
        thread_counts,
        torch_steps,
    )

    from detrun.engine.sources.worker_set import worker_sources

    return [
        determinism_policy.PolicySource(),  # first: its flags must be in place before anything records them
        # Before the RNG sources: a replayed block imports what the recorded one found imported.
        *([block_rng_state.BlockRngStateSource()] if in_process else []),
        *worker_sources(),
        backend_flags.BackendsSource(),
        # After the flags: its step-end checks and its end-of-run notes follow theirs, as its
        # set_num_threads tracking did when the flags source held it.
        thread_counts.ThreadsSource(),
        cuda_kernels.KernelSequence(),
        op_digests.OpDigestSource(),
        dataloader.DataLoaderSource(),
        tf_runtime.TensorFlowSource(),
        child_processes.ChildProcessSource(),
        distributed.DistributedSource(),
        *([] if in_process else [interrupts.InterruptSource(), stdout_lines.StdoutSource()]),
        torch_steps.StepVerifier(),
        tf_steps.TFStepVerifier(),
        # After the step verifiers: its digests at the end run after theirs are flushed.
        final_state.FinalStateSource(),
    ]
