"""The pure helpers of the file checks: fingerprints, sampled ranges, line counts, checkpoint digests."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from detrun.engine import checkpoint_digest, file_fingerprint
from detrun.engine.checkpoint_digest import digest_file, first_difference
from detrun.engine.file_fingerprint import describe_change, fingerprint, sample_ranges, trace_path
from detrun.engine.replay_backups import ReplayBackups, holds_backups, restore_leftovers


def test_small_files_are_hashed_whole_with_line_crcs(tmp_path: Path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("a,b\n1,2\n3,4\n")
    before = fingerprint(str(data))
    assert not before.sampled and before.size == 12 and len(before.lines or b"") == 12
    data.write_text("a,b\n1,9\n3,4\n")
    after = fingerprint(str(data))
    assert after.sha256 != before.sha256
    assert describe_change("data/train.csv", before.sha256, after, before.lines) == (
        f"data/train.csv changed since the recording (sha256 {before.sha256[:4]}… → {after.sha256[:4]}…, "
        "1 line differs)")
    data.write_text("a,b\n1,2\n0,0\n3,4\n5,5\n")  # two lines added
    assert describe_change("x", before.sha256, fingerprint(str(data)), before.lines).endswith("2 lines differ)")


def test_large_files_are_sampled_at_offsets_fixed_by_their_size(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(file_fingerprint, "FULL_HASH_LIMIT", 1 << 20)
    big = tmp_path / "shard.bin"
    payload = bytearray(np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes())
    big.write_bytes(payload)
    first = fingerprint(str(big))
    assert first.sampled and first.lines is None
    ranges = sample_ranges(len(payload))
    assert ranges[0] == (0, 1 << 20) and ranges[-1] == (len(payload) - (1 << 20), 1 << 20)
    # A change inside a sampled block changes the digest; the sample reads a fraction of the file.
    offset = ranges[3][0] + 5
    payload[offset] ^= 1
    big.write_bytes(payload)
    assert fingerprint(str(big)).sha256 != first.sha256
    assert sum(length for _, length in ranges) == 3 << 20  # 2 MB of edges + 16 blocks of 64 kB


def test_trace_paths_are_relative_under_the_run_directory() -> None:
    assert trace_path("/work/run/data/a.csv", "/work/run") == "data/a.csv"
    assert trace_path("/data/a.csv", "/work/run") == "/data/a.csv"
    assert trace_path("/work/running/a.csv", "/work/run") == "/work/running/a.csv"


def test_npz_and_safetensors_are_compared_by_tensor(tmp_path: Path) -> None:
    path = tmp_path / "w.npz"
    np.savez(path, conv1=np.ones(3, np.float32), fc=np.zeros(2))
    recorded = digest_file(str(path))
    np.savez(path, conv1=np.ones(3, np.float32), fc=np.full(2, 1e-9))
    assert recorded["format"] == "numpy"
    assert first_difference(recorded, digest_file(str(path))) == ("tensor 'fc' differs", True)

    def safetensors(values: bytes) -> dict:
        header = json.dumps({"__metadata__": {"format": "pt"},
                             "conv1.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
        (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + values)
        return digest_file(str(tmp_path / "m.safetensors"))

    same, other = safetensors(b"\0" * 8), safetensors(b"\0" * 7 + b"\1")
    assert same["format"] == "safetensors" and first_difference(same, safetensors(b"\0" * 8)) is None
    assert first_difference(same, other) == ("tensor 'conv1.weight' differs", True)


def test_text_is_masked_like_stdout_and_by_timing_columns(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("epoch,loss,epoch_time\n0,0.5,1.25\n1,0.4,1.31\n")
    recorded = digest_file(str(log))
    log.write_text("epoch,loss,epoch_time\n0,0.5,0.98\n1,0.4,1.02\n")
    assert first_difference(recorded, digest_file(str(log))) is None
    log.write_text("epoch,loss,epoch_time\n0,0.5,0.98\n1,0.41,1.02\n")
    assert first_difference(recorded, digest_file(str(log))) == (
        "line 3 differs: recorded '1,0.4,…', got '1,0.41,…'", False)  # a cause: text may hold the clock
    note = tmp_path / "note.txt"
    note.write_text("took 3.2s at 2026-11-30 12:00:01\n")
    recorded = digest_file(str(note))
    note.write_text("took 4.0s at 2026-11-30 12:05:07\n")
    assert first_difference(recorded, digest_file(str(note))) is None


def test_appended_rows_are_masked_by_the_files_header(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("epoch,seconds\n0,1.5\n")
    start = log.stat().st_size
    with log.open("a") as out:
        out.write("1,2.5\n")
    digest = digest_file(str(log), start)
    assert digest["text"] == ["1,…"] and digest["size"] == 6


def test_opaque_bytes_differ_as_a_cause_only(tmp_path: Path) -> None:
    blob = tmp_path / "state.bin"
    blob.write_bytes(b"\0\1\2")
    recorded = digest_file(str(blob))
    blob.write_bytes(b"\0\1\3")
    message, trusted = first_difference(recorded, digest_file(str(blob)))  # type: ignore[misc]
    assert message.startswith("bytes differ (sha256 ") and not trusted


def test_a_torch_checkpoint_is_compared_by_tensor_and_values_apart(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "last.pt"
    torch.save({"model": {"conv1.weight": torch.ones(2, 2)}, "epoch": 3, "saved_at": 1.5}, path)
    recorded = digest_file(str(path))
    assert recorded["format"] == "torch"
    torch.save({"model": {"conv1.weight": torch.ones(2, 2)}, "epoch": 3, "saved_at": 2.5}, path)
    assert first_difference(recorded, digest_file(str(path))) == ("entry 'saved_at' differs", False)
    torch.save({"model": {"conv1.weight": torch.ones(2, 2) * 2}, "epoch": 3, "saved_at": 1.5}, path)
    assert first_difference(recorded, digest_file(str(path))) == ("tensor 'model.conv1.weight' differs", True)
    assert checkpoint_digest.VALUE_MARK in dict(recorded["tensors"])["epoch"]


def test_replay_backups_put_the_recordings_files_back(tmp_path: Path) -> None:
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    run.mkdir(), scratch.mkdir()
    (run / "last.pt").write_bytes(b"recorded")
    (run / "log.csv").write_text("row 1\n")
    backups = ReplayBackups(str(scratch), str(run))
    backups.before_change(str(run / "last.pt"), content_needed=False)
    (run / "last.pt").write_bytes(b"replayed")
    backups.before_change(str(run / "log.csv"), content_needed=True)
    assert (run / "log.csv").read_text() == "row 1\n"  # still there for the script to append to
    with (run / "log.csv").open("a") as out:
        out.write("row 2\n")
    backups.before_change(str(run / "new.txt"), content_needed=False)
    (run / "new.txt").write_text("made by the replay")
    assert backups.restore(str(tmp_path / "out")) == (3, [])
    assert (run / "last.pt").read_bytes() == b"recorded" and (run / "log.csv").read_text() == "row 1\n"
    assert not (run / "new.txt").exists() and (tmp_path / "out" / "new.txt").exists()
    assert (tmp_path / "out" / "last.pt").read_bytes() == b"replayed"


def test_a_replay_that_dies_loses_none_of_the_recordings_files(tmp_path: Path) -> None:
    scratch, run = tmp_path / "scratch", tmp_path / "run"
    scratch.mkdir()
    run.mkdir()
    (run / "last.pt").write_bytes(b"recorded checkpoint")
    backups = ReplayBackups(str(scratch), str(run))
    backups.before_change(str(run / "last.pt"), content_needed=False)  # moved away, not copied
    (run / "last.pt").write_bytes(b"the replay's checkpoint")
    # The replay is killed here: no restore(). The scratch directory must not be deleted, and the
    # launcher puts the recording's file back.
    assert holds_backups(str(scratch))
    assert restore_leftovers(str(scratch)) == [str(run / "last.pt")]
    assert (run / "last.pt").read_bytes() == b"recorded checkpoint"
    assert not holds_backups(str(scratch))


def test_hdf5_weights_are_compared_by_dataset(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "model.weights.h5"

    def save(kernel: float) -> dict:
        with h5py.File(path, "w") as out:
            out.create_dataset("layers/dense/vars/0", data=np.full((2, 2), kernel, np.float32))
            out.create_dataset("layers/dense/vars/1", data=np.zeros(2, np.float32))
        return digest_file(str(path))

    recorded = save(1.0)
    assert recorded["format"] == "hdf5" and first_difference(recorded, save(1.0)) is None
    assert first_difference(recorded, save(1.5)) == ("tensor 'layers/dense/vars/0' differs", True)
