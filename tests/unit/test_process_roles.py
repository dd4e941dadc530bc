"""Which processes of a launched command record, under which role, and what a trace may pin for them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detrun import bootstrap
from detrun.engine.process_roles import ProcessKey, claim_role, is_role, key_from_env, read_claims, runs_user_code, \
    target_of
from detrun.engine.process_segments import node_trace_path
from detrun.env.collectives import pinned_collective_env, validated_collective_env
from detrun.runner import Target


def test_the_role_comes_from_the_launchers_environment_never_from_start_order() -> None:
    torchrun = key_from_env({"RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "4",
                             "LOCAL_WORLD_SIZE": "2"})
    assert torchrun == ProcessKey("rank3", 3, 1, 1, 4, 2)
    assert torchrun.label == "rank 3" and torchrun.nodes == 2
    # Lightning's DDP launcher re-runs the script with LOCAL_RANK (and NODE_RANK) only.
    assert key_from_env({"LOCAL_RANK": "1", "NODE_RANK": "0", "WORLD_SIZE": "2"}).role == "rank1"
    assert key_from_env({"LOCAL_RANK": "0", "NODE_RANK": "2"}).role == "node2.local0"
    assert key_from_env({}) is None
    assert key_from_env({"RANK": "1; rm -rf /"}) is None  # not a number: not a rank
    assert all(is_role(r) for r in ("main", "main.2", "rank12", "node1.local0"))
    assert not any(is_role(r) for r in ("../x", "rank", "dl0.i0.w0", "", None))


def test_the_target_is_read_from_the_interpreters_own_command_line() -> None:
    assert target_of(["python", "-u", "train.py", "--lr", "1"]) == (["-u"], Target("train.py", ("--lr", "1")))
    assert target_of(["python", "-X", "dev", "-m", "pkg.train", "-x"]) == (["-X", "dev"],
                                                                           Target("pkg.train", ("-x",), True))
    assert target_of(["python", "-mpkg.train"]) == ([], Target("pkg.train", (), True))
    assert target_of(["python", "-c", "print(1)"]) is None  # multiprocessing's spawn children, too
    assert target_of(["python"]) is None and target_of(["python", "-"]) is None


def test_launchers_and_installed_packages_run_no_user_code(tmp_path: Path) -> None:
    assert not runs_user_code(Target("torch.distributed.run", (), True))
    assert not runs_user_code(Target("torch._inductor.compile_worker", (), True))
    assert not runs_user_code(Target(os.path.join(sys.prefix, "bin", "torchrun")))
    assert runs_user_code(Target("mypkg.train", (), True))
    assert runs_user_code(Target(str(tmp_path / "train.py")))
    assert runs_user_code(Target(os.path.join(sys.prefix, "train.py")))  # a venv made in the project itself


def test_a_role_is_claimed_once_and_main_roles_are_numbered(tmp_path: Path) -> None:
    rank = ProcessKey("rank1", 1, 1, 0, 2, 2)
    assert claim_role(str(tmp_path), rank) == rank
    assert claim_role(str(tmp_path), rank) is None  # a second process with rank 1's environment
    assert claim_role(str(tmp_path), None).role == "main"
    assert claim_role(str(tmp_path), None).role == "main.2"
    (tmp_path / "..evil.role.json").write_text("{}")
    assert sorted(read_claims(str(tmp_path))) == ["main", "main.2", "rank1"]


def test_each_node_of_a_multi_node_run_writes_its_own_file() -> None:
    assert node_trace_path("runs/trace.zst", 1) == os.path.join("runs", "trace.node1.zst")
    assert node_trace_path("trace", 0) == "trace.node0"


def test_strict_pins_the_nccl_algorithm_and_a_trace_can_pin_nothing_else() -> None:
    assert pinned_collective_env("strict", {}) == {"NCCL_ALGO": "Ring", "NCCL_PROTO": "Simple"}
    assert pinned_collective_env("strict", {"NCCL_ALGO": "Tree"})["NCCL_ALGO"] == "Tree"  # the user's wins
    assert pinned_collective_env("off", {}) == {}
    accepted, refused = validated_collective_env({"NCCL_ALGO": "Ring", "LD_PRELOAD": "/tmp/x.so",
                                                  "NCCL_PROTO": "$(reboot)"})
    assert accepted == {"NCCL_ALGO": "Ring"} and len(refused) == 2


def test_the_bootstrap_leaves_other_processes_alone_and_chains_to_an_existing_sitecustomize(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = '1'\n")
    env = bootstrap.prepare(str(tmp_path / "scratch"), {"mode": "record", "command": False, "settings": {}})
    env["PYTHONPATH"] += os.pathsep + str(theirs)
    # Not a rank, not a command: the process runs as plain python, and the user's sitecustomize still runs.
    out = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('THEIRS_RAN'))"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr


def test_a_killed_ranks_flushed_events_are_kept_and_its_end_says_so(tmp_path: Path) -> None:
    from detrun.engine.process_segments import _salvage_segment
    from detrun.trace import TraceWriter, read_trace

    segment = TraceWriter(str(tmp_path / "rank1.seg.partial"), segment="rank1")
    segment.event("process", {"role": "rank1", "rank": 1, "world_size": 2})
    segment.event("py.seed", ["train.py:3", 42])
    segment.flush()  # what a rank killed by SIGKILL leaves: flushed chunks, no end
    _salvage_segment(str(tmp_path / "rank1.seg.partial"), str(tmp_path / "rank1.seg"), "rank1")
    main = TraceWriter(str(tmp_path / "trace.zst"), {"settings": {}})
    main.append_segments([str(tmp_path / "rank1.seg")])
    main.close({"complete": True, "exit_status": 0})
    trace = read_trace(str(tmp_path / "trace.zst"))
    assert trace.of("py.seed", "rank1") == [["train.py:3", 42]]
    rank = trace.of_process("rank1")
    assert not rank.complete and "died before it finished" in rank.end["reason"]
    assert trace.process_keys() == {"rank1": {"role": "rank1", "rank": 1, "world_size": 2}}


def test_a_refusal_cut_short_by_the_launcher_does_not_hide_the_ranks_that_said_why(tmp_path: Path) -> None:
    from detrun.engine.process_segments import _salvage_segment
    from detrun.engine.session import Session
    from detrun.errors import TargetRefused
    from detrun.trace import TraceWriter, read_trace

    segment = TraceWriter(str(tmp_path / "rank0.seg.partial"), segment="rank0")
    segment.event("process", {"role": "rank0", "rank": 0, "world_size": 2})
    segment.flush()
    _salvage_segment(str(tmp_path / "rank0.seg.partial"), str(tmp_path / "rank0.seg"), "rank0")
    main = TraceWriter(str(tmp_path / "trace.zst"), {"settings": {}})
    main.append_segments([str(tmp_path / "rank0.seg")])
    main.close({"complete": True, "exit_status": 0})
    session = Session("replay", trace=read_trace(str(tmp_path / "trace.zst")), quiet=True)
    session.scratch_dir = str(tmp_path / "scratch")
    processes = tmp_path / "scratch" / bootstrap.PROCESSES_DIR
    processes.mkdir(parents=True)
    (processes / "rank0.refused").write_text("")  # a rank killed by the launcher between creating and writing it
    (processes / "rank1.refused").write_text("trace.zst was recorded with world size 2, and this replay runs 3")
    with pytest.raises(TargetRefused, match="world size 2, and this replay runs 3"):
        session.merge_process_reports()


def test_the_scratch_directory_is_removed_with_its_links_never_followed(tmp_path: Path) -> None:
    from detrun.child_process import _remove_tree

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("the user's")
    scratch = tmp_path / "scratch"
    (scratch / "procs" / "deep").mkdir(parents=True)
    (scratch / "boot.json").write_text("{}")
    (scratch / "procs" / "deep" / "main.seg").write_bytes(b"\0" * 10)
    (scratch / "link").symlink_to(outside)
    (scratch / "procs" / "file_link").symlink_to(outside / "keep.txt")
    _remove_tree(str(scratch))
    assert not scratch.exists() and (outside / "keep.txt").read_text() == "the user's"
    _remove_tree(str(scratch))  # already gone: nothing to do, nothing raised
