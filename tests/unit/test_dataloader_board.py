"""Batches from worker processes are digested where they were collated, and recorded by their workers.

The digests a worker records (`dl.fetched`) and posts on the board (replay) must be the ones the
main process would have computed from the batch it received (every trace before them holds those),
and the main process must not digest a batch a worker posted; where it cannot tell which batch it
received (`in_order=False`), it digests.
"""
from __future__ import annotations

import os
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

import detrun
from detrun.engine.session import active_session
from detrun.engine.sources import dataloader as dataloader_source
from detrun.engine.sources.dataloader import BOARD_LEAVES, BatchDigestBoard
from detrun.trace import read_trace, registry


class Augmented(Dataset):
    """An unseeded augmentation in the worker, two fields per sample."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((3,), float(index)) + torch.rand(3), index


class OneSampleShifted(Augmented):
    """The same data but for sample 13 (in batch 1 without shuffling): a changed dataset."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        values, label = super().__getitem__(index)
        return values + (index == 13), label


def _fetched_digests(trace: str) -> list[list[int]]:
    """Return the digests the workers recorded, in the order the program received them (in-order delivery)."""
    found = []
    for role, kinds in read_trace(trace).events.items():
        if role.startswith("dl0.i"):
            first_epoch = int(role.split(".")[1][1:])  # dl0.i<epoch>.w<worker>: the pass's first epoch
            found += [(first_epoch + generation, batch, digests)
                      for generation, batch, _width, _indices, _scalar, digests in kinds.get("dl.fetched", [])]
    return [digests for _epoch, _batch, digests in sorted(found)]


def _xxh3_low32(data: Any) -> int:
    """The definition of a batch field's digest since dl.batch/dl.fetched version 2."""
    return xxhash.xxh3_64_intdigest(data) & 0xFFFFFFFF


def _epochs(loader: DataLoader, epochs: int = 2, digest: Any = _xxh3_low32) -> list[list[int]]:
    """Iterate; return the digest of each field of every batch, as the main process received it."""
    return [[digest(field.numpy()) for field in batch] for _ in range(epochs) for batch in loader]


@pytest.fixture
def main_digests(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the batches the main process digests itself (forked workers count in their own copy)."""
    counted: list[int] = []
    original, main = dataloader_source.batch_digests, os.getpid()

    def counting(torch_module: Any, data: Any, digest: Any) -> list[int]:
        if os.getpid() == main:
            counted.append(1)
        return original(torch_module, data, digest)

    monkeypatch.setattr(dataloader_source, "batch_digests", counting)
    return counted


@pytest.mark.parametrize("options", [{}, {"persistent_workers": True}, {"prefetch_factor": 5},
                                     {"multiprocessing_context": "spawn", "persistent_workers": True}])
def test_worker_digests_are_the_received_batches_and_replay_checks_them(options: dict[str, Any], tmp_path: Path,
                                                                       main_digests: list[int]) -> None:
    trace = str(tmp_path / "trace.zst")
    with detrun.record(trace, quiet=True):
        received = _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2, **options))
    assert _fetched_digests(trace) == received  # the workers' digests are the bytes the program received
    assert "dl.batch" not in read_trace(trace).events["main"]
    assert main_digests == []  # and the main process digested none of them
    plain = _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2, **options))
    assert plain != received  # the augmentation is unseeded: a run without detrun differs

    with detrun.replay(trace, quiet=True) as result:
        replayed = _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2, **options))
    assert replayed == received
    assert result.checks.get("batches") == len(received), result


def test_a_trace_of_crc32_batch_digests_replays_with_crc32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A trace recorded before XXH3 (dl.batch and dl.fetched version 1): its digests keep their meaning.
    trace = str(tmp_path / "trace.zst")
    with monkeypatch.context() as old_detrun:
        for name in ("dl.batch", "dl.fetched"):
            old_detrun.setitem(registry.KINDS, name, registry.KINDS[name]._replace(version=1))
        with detrun.record(trace, quiet=True):
            received = _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2), digest=zlib.crc32)
        with detrun.record(str(tmp_path / "main.zst"), quiet=True):
            in_main = _epochs(DataLoader(Augmented(), batch_size=8), epochs=1, digest=zlib.crc32)
    assert read_trace(trace).version("dl.fetched") == 1
    assert _fetched_digests(trace) == received  # crc32s, as that detrun recorded them
    assert [payload[3] for payload in read_trace(str(tmp_path / "main.zst")).events["main"]["dl.batch"]] == in_main
    assert _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2), digest=zlib.crc32) != received

    with detrun.replay(trace, quiet=True) as result:
        replayed = _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2), digest=zlib.crc32)
    assert replayed == received
    assert result.checks.get("batches") == len(received) and not result.divergences, result
    with detrun.replay(str(tmp_path / "main.zst"), quiet=True) as result:
        assert _epochs(DataLoader(Augmented(), batch_size=8), epochs=1, digest=zlib.crc32) == in_main
    assert result.checks.get("batches") == len(in_main) and not result.divergences, result
    # The checks can fail: the same trace, a changed dataset.
    with detrun.replay(trace, quiet=True) as result:
        _epochs(DataLoader(OneSampleShifted(), batch_size=8, num_workers=2), epochs=1)
    assert any("epoch 0, batch 1: field [0] differs" in line for line in [*result.divergences, *result.causes,
                                                                         result.reason]), result


def test_out_of_order_delivery_is_digested_by_the_main_process(tmp_path: Path, main_digests: list[int]) -> None:
    trace = str(tmp_path / "trace.zst")
    with detrun.record(trace, quiet=True):
        received = _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2, in_order=False), epochs=1)
    assert len(main_digests) == len(received) == 5
    recorded = [payload[3] for payload in read_trace(trace).events["main"]["dl.batch"]]
    assert recorded == received


def test_a_replayed_worker_batch_that_differs_is_named(tmp_path: Path) -> None:
    trace = str(tmp_path / "trace.zst")
    with detrun.record(trace, quiet=True):
        _epochs(DataLoader(Augmented(), batch_size=8, num_workers=2), epochs=1)
    # The sampler order and the worker RNGs replay; a dataset that now adds 1 to one sample does not.
    with detrun.replay(trace, quiet=True) as result:
        _epochs(DataLoader(OneSampleShifted(), batch_size=8, num_workers=2), epochs=1)
    assert result.verdict != "REPRODUCED"
    named = [*result.divergences, *result.causes, result.reason]
    assert any("DataLoader #0 epoch 0, batch 1: field [0] differs" in line for line in named), result


def test_the_board_keeps_a_batch_by_pass_and_index(tmp_path: Path) -> None:
    path = str(tmp_path / "board")
    main = BatchDigestBoard(path, 64, create=True)
    worker = BatchDigestBoard(path, 64, create=False)
    assert main.take(0, 3) is None  # nothing posted
    worker.post(0, 3, [1, 2**32 - 1])
    assert main.take(0, 3) == [1, 2**32 - 1]
    assert main.take(1, 3) is None and main.take(0, 67) is None  # another pass, or the slot's next batch
    worker.post(0, 4, [])
    assert main.take(0, 4) == []
    worker.post(0, 5, list(range(BOARD_LEAVES + 1)))
    assert main.take(0, 5) is None  # too many fields for a slot: the main process digests them
    with pytest.raises(FileExistsError):
        BatchDigestBoard(path, 64, create=True)
    main.close()
    worker.close()


def _iterate_and_drop(loader: DataLoader) -> None:
    """Start a pass and drop it, then make three whole passes."""
    iterator = iter(loader)
    del iterator
    for _ in range(3):
        assert sum(1 for _batch in loader) == 5


def test_a_pass_closes_and_removes_its_board_when_its_iterator_goes(tmp_path: Path) -> None:
    trace = str(tmp_path / "trace.zst")
    with detrun.record(trace, quiet=True):
        _iterate_and_drop(DataLoader(Augmented(), batch_size=8, num_workers=2))
    with detrun.replay(trace, quiet=True):  # the board serves a replay: a recording's workers record their digests
        scratch = Path(active_session().scratch_path("x")).parent
        loader = DataLoader(Augmented(), batch_size=8, num_workers=2)
        iterator = iter(loader)
        assert len(list(scratch.glob("*.board"))) == 1
        descriptors = len(os.listdir("/proc/self/fd"))
        del iterator
        for _ in range(3):
            assert sum(1 for _batch in loader) == 5
        # One pass's board at a time: each goes (file and mapping) with its iterator.
        assert not list(scratch.glob("*.board"))
        assert len(os.listdir("/proc/self/fd")) <= descriptors


class UnevenStream(IterableDataset):
    """Worker 0 yields one batch of two, worker 1 three: batch numbers and send indices part ways."""

    def __iter__(self) -> Any:
        count = 2 if get_worker_info().id == 0 else 6
        for index in range(count):
            yield torch.rand(2) + index


def test_an_iterable_dataset_whose_workers_run_out_unevenly_replays_without_a_false_departure(tmp_path: Path) -> None:
    trace = str(tmp_path / "trace.zst")
    with detrun.record(trace, quiet=True):
        received = [zlib.crc32(batch.numpy()) for batch in DataLoader(UnevenStream(), batch_size=2, num_workers=2)]
    assert len(received) == 4
    assert received != [zlib.crc32(batch.numpy()) for batch in DataLoader(UnevenStream(), batch_size=2, num_workers=2)]
    with detrun.replay(trace, quiet=True) as result:
        replayed = [zlib.crc32(batch.numpy()) for batch in DataLoader(UnevenStream(), batch_size=2, num_workers=2)]
    assert replayed == received
    assert result.checks.get("batches") == 4 and "departed" not in result.line, result


class SlowAugmented(Augmented):
    """Slow to load, so that the workers still have indices queued when the program leaves the pass."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        time.sleep(0.01)
        return super().__getitem__(index)


def _train_on_two_batches(data: Augmented) -> list[float]:
    """Train a tiny model on the first two batches of a shuffled pass, then stop iterating (prefetched batches wait)."""
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for number, (values, _labels) in enumerate(DataLoader(data, batch_size=4, shuffle=True, num_workers=2)):
        if number == 2:
            break
        optimizer.zero_grad()
        model(values).pow(2).mean().backward()
        optimizer.step()
    return [float(value) for value in model.weight.detach().flatten()]


def test_a_pass_left_early_replays_reproduced_though_its_workers_never_fetched_the_rest(tmp_path: Path) -> None:
    # The sampler drew indices for batches the workers were still to fetch when the program left the
    # pass; no worker recorded those, and the replay must not take that for a departure.
    trace = str(tmp_path / "trace.zst")
    assert _train_on_two_batches(SlowAugmented()) != _train_on_two_batches(SlowAugmented())  # shuffled, augmented
    with detrun.record(trace, quiet=True):
        recorded = _train_on_two_batches(SlowAugmented())
    fetched = sum(len(kinds.get("dl.fetched", [])) for kinds in read_trace(trace).events.values())
    assert 2 <= fetched < 10  # the workers left some of the pass's batches unfetched
    with detrun.replay(trace, quiet=True) as result:
        replayed = _train_on_two_batches(SlowAugmented())
    assert replayed == recorded
    assert result.verdict == "REPRODUCED" and "departed" not in result.line, result


def _shuffled_epoch(seed: int) -> list[list[int]]:
    """One pass over a shuffled loader whose generator the program seeds itself, with workers."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return _epochs(DataLoader(Augmented(), batch_size=8, shuffle=True, num_workers=2, generator=generator), epochs=1)


def test_a_sampler_that_departs_is_counted_and_the_recorded_order_forced(tmp_path: Path) -> None:
    trace = str(tmp_path / "trace.zst")
    with detrun.record(trace, quiet=True):
        received = _shuffled_epoch(1)
    with detrun.replay(trace, quiet=True) as same:
        assert _shuffled_epoch(1) == received
    assert not any("another order" in cause for cause in same.causes), same
    # Another seed draws another permutation: every batch departs, and the forced recorded order
    # still gives the recorded batches.
    with detrun.replay(trace, quiet=True) as departed:
        assert _shuffled_epoch(2) == received
    assert "DataLoader #0 epoch 0: the sampler produced another order in 5 batches" in " ".join(departed.causes)


def test_sampler_output_is_compared_index_by_index_with_the_kept_recording() -> None:
    same_sampler = dataloader_source._same_indices
    recorded = dataloader_source._decode_indices(0, [4, 9, 1, 7, 3], False)
    assert same_sampler([4, 9, 1, 7, 3], recorded)
    assert not same_sampler([4, 9, 2, 7, 3], recorded)  # one index inside the batch
    assert not same_sampler([4, 9, 1, 7], recorded) and not same_sampler([4, 9, 1, 7, 3, 0], recorded)
    assert same_sampler((4, 9, 1, 7, 3), recorded)  # a tuple: compared as plain values
    assert same_sampler([torch.tensor(4), torch.tensor(9)], dataloader_source._decode_indices(0, [4, 9], False))
    assert not same_sampler([4, "9", 1, 7, 3], recorded)
    assert same_sampler(3, dataloader_source._decode_indices(0, [3], True))
    assert not same_sampler(3, recorded)
    assert dataloader_source._as_list(recorded) == [4, 9, 1, 7, 3]
    kept_as_is = dataloader_source._decode_indices(0, [1, True, "a"], False)  # not all plain ints
    assert kept_as_is == [1, True, "a"] and same_sampler([1, True, "a"], kept_as_is)
    assert dataloader_source._kept_ints([2**64], "q") == [2**64]  # out of range: kept as the trace has it
