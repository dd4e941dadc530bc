"""Distributed runs, recorded as a user would: `detrun record -- torchrun ...`, Lightning's DDP, two nodes.

Every test runs real torch.distributed on gloo (CPU) with real launchers, as subprocesses. The
core pattern holds per rank: two plain runs differ (the script is unseeded), record -> replay is
identical on every rank, and a perturbation on one rank is reported on that rank and step.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, SCRIPTS, detrun, detrun_command, python, run, verdict

pytest.importorskip("torch.distributed")
torch = pytest.importorskip("torch")
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("this torch has no gloo backend", allow_module_level=True)

DDP = str(SCRIPTS / "ddp_gloo.py")
EXAMPLES_TRAIN = EXAMPLES / "train_unseeded.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(port: int, *extra: str, nproc: int = 2, script: str = DDP) -> list[str]:
    """Return a torchrun command line (as `python -m torch.distributed.run`, the launcher's own module)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={port}", *extra, script]


def rank_weights(stdout: str) -> dict[int, str]:
    found = {int(r): w for r, w in re.findall(r"rank (\d+) weights sha256 ([0-9a-f]{64})", stdout)}
    assert found, f"no per-rank weights in:\n{stdout}"
    return found


def test_torchrun_two_ranks_record_replay_and_a_divergence_on_rank_1(tmp_path: Path) -> None:
    port = free_port()
    plain = [run(torchrun(port), cwd=tmp_path) for _ in range(2)]
    for result in plain:
        assert result.returncode == 0, result.stderr[-3000:]
    first, second = (rank_weights(r.stdout) for r in plain)
    assert first[0] != second[0] and first[1] != second[1], "two unseeded plain runs must differ on every rank"

    recorded = detrun("record", "--", *torchrun(port), cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    assert "recorded 2 process(es)" in recorded.stderr and "rank 1: 8 steps" in recorded.stderr
    assert not (tmp_path / "trace.node0.zst").exists(), "a one-node run writes the one file -o names"

    replayed = detrun("replay", "trace.zst", "--", *torchrun(port), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED (8 steps"), replayed.stderr[-2000:]
    assert rank_weights(replayed.stdout) == rank_weights(recorded.stdout)

    perturbed = detrun("replay", "trace.zst", "--", *torchrun(port), cwd=tmp_path, env={"PERTURB_RANK": "1"})
    assert perturbed.returncode == 3, perturbed.stderr[-3000:]
    assert verdict(perturbed.stderr).startswith("detrun: DIVERGED at step 5 on rank 1: "), perturbed.stderr[-2000:]

    shown = detrun("show", "trace.zst", cwd=tmp_path)
    assert "processes  2 (world size 2)" in shown.stdout
    assert re.search(r"rank1 +rank 1, node 0, local rank 1: 8 steps, complete", shown.stdout), shown.stdout

    # Another world size is refused in one line, after the launcher's own report of the failed ranks.
    wider = detrun("replay", "--allow-changed-args", "trace.zst", "--", *torchrun(port, nproc=3), cwd=tmp_path)
    assert wider.returncode == 2, wider.stderr[-3000:]
    assert wider.stderr.strip().splitlines()[-1].endswith(
        "was recorded with world size 2, and this replay runs world size 3: replay with the recorded number of "
        "processes and nodes")


def test_a_command_trace_is_replayed_only_with_the_command_the_user_gives(tmp_path: Path) -> None:
    port = free_port()
    assert detrun("record", "-q", "--", *torchrun(port), cwd=tmp_path).returncode == 0
    bare = detrun("replay", "trace.zst", cwd=tmp_path)
    assert bare.returncode == 2 and "recorded a command; replay it by giving the command: detrun replay trace.zst -- " \
        in bare.stderr, bare.stderr
    other = detrun("replay", "trace.zst", "--", *torchrun(port, "--max_restarts=0"), cwd=tmp_path)
    assert other.returncode == 2 and "the command differs from the recorded one" in other.stderr


def test_two_nodes_on_one_machine_record_merge_and_replay(tmp_path: Path) -> None:
    port = free_port()

    def node(rank: int, *detrun_args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                   "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", DDP]
        # Both nodes name the same output: neither may overwrite the other's.
        return subprocess.Popen([*detrun_command(), *detrun_args, "--", *command], cwd=tmp_path, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def both(*detrun_args: str) -> list[tuple[int, str, str]]:
        processes = [node(rank, *detrun_args) for rank in (0, 1)]
        return [(p.wait(timeout=300), *p.communicate()) for p in processes]

    recorded = both("record", "-o", "trace.zst")
    for status, _, stderr in recorded:
        assert status == 0, stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("trace*.zst")) == ["trace.node0.zst", "trace.node1.zst"]

    merged = detrun("merge", "-o", "trace.zst", "trace.node1.zst", "trace.node0.zst", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert "merged 2 nodes, 2 ranks" in merged.stderr
    alone = detrun("merge", "-o", "half.zst", "trace.node0.zst", "trace.node0.zst", cwd=tmp_path)
    assert alone.returncode == 2 and "both hold node 0" in alone.stderr

    replayed = both("replay", "trace.zst")
    weights = {}
    for status, stdout, stderr in replayed:
        assert status == 0, stderr[-3000:]
        assert verdict(stderr).startswith("detrun: REPRODUCED (8 steps"), stderr[-2000:]
        weights.update(rank_weights(stdout))
    assert weights == {**rank_weights(recorded[0][1]), **rank_weights(recorded[1][1])}


def test_fsdp2_fully_shard_ranks_digest_their_own_shards(tmp_path: Path) -> None:
    pytest.importorskip("torch.distributed.fsdp", reason="this torch has no FSDP2")
    port = free_port()
    command = torchrun(port, script=str(SCRIPTS / "fsdp2_gloo.py"))
    plain = [run(command, cwd=tmp_path) for _ in range(2)]
    assert all(r.returncode == 0 for r in plain), plain[0].stderr[-3000:]
    assert rank_weights(plain[0].stdout) != rank_weights(plain[1].stdout)
    recorded = detrun("record", "--", *command, cwd=tmp_path)
    assert recorded.returncode == 0 and "detrun: warning" not in recorded.stderr, recorded.stderr[-3000:]
    replayed = detrun("replay", "trace.zst", "--", *command, cwd=tmp_path)
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED (6 steps"), replayed.stderr[-2000:]
    assert rank_weights(replayed.stdout) == rank_weights(recorded.stdout)


LIGHTNING_DDP = '''
import hashlib
import torch
import lightning as L
from torch.utils.data import DataLoader, TensorDataset


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    torch.set_num_threads(1)
    x = torch.randn(64, 8)
    y = x.sum(1, keepdim=True)
    model = Regressor()
    trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    weights = b"".join(p.detach().numpy().tobytes() for p in model.parameters())
    print(f"rank {trainer.global_rank} weights sha256 {hashlib.sha256(weights).hexdigest()}")
    # Without this, about 1 plain run in 6 aborts at exit ("terminate called without an active
    # exception": gloo's threads outlive the interpreter), with or without detrun.
    torch.distributed.destroy_process_group()
'''


def test_lightning_ddp_ranks_are_recorded_through_plain_detrun_record(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    (tmp_path / "train_ddp.py").write_text(LIGHTNING_DDP)
    env = {"MASTER_PORT": str(free_port())}
    plain = [python("train_ddp.py", cwd=tmp_path, env=env) for _ in range(2)]
    for result in plain:
        assert result.returncode == 0, result.stderr[-3000:]
    assert rank_weights(plain[0].stdout)[1] != rank_weights(plain[1].stdout)[1]

    recorded = detrun("record", "train_ddp.py", cwd=tmp_path, env=env)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    assert "rank 1: 4 steps" in recorded.stderr, recorded.stderr[-2000:]
    replayed = detrun("replay", "trace.zst", "train_ddp.py", cwd=tmp_path, env=env)
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED (4 steps"), replayed.stderr[-2000:]
    assert rank_weights(replayed.stdout) == rank_weights(recorded.stdout)


def test_a_shell_script_command_records_the_python_it_runs_as_main(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text(f"#!/bin/sh\n'{sys.executable}' -c 'print(1)'\n'{sys.executable}' '{EXAMPLES_TRAIN}'\n")
    script.chmod(0o755)
    recorded = detrun("record", "--", "./run.sh", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr[-3000:]
    assert "recorded 1 process(es)" in recorded.stderr and "main: 200 steps" in recorded.stderr, recorded.stderr
    replayed = detrun("replay", "trace.zst", "--", "./run.sh", cwd=tmp_path)
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED (200 steps"), replayed.stderr[-2000:]
    assert replayed.stdout == recorded.stdout
