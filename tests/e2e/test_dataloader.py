"""Data order: DataLoader order, worker seeds and RNGs (fork and spawn), per-batch digests, file listings."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import EXAMPLES, detrun, python, verdict, weights_sha

EXAMPLE = str(EXAMPLES / "train_dataloader.py")


@pytest.fixture
def reorderable_tmp() -> Path:
    """Return a temporary directory on tmpfs when there is one: it lists files in creation order,
    so two copies made in different orders really list differently (ext4 orders by name hash)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="detrun-test-", dir=base))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _make_data(root: Path, order: str, count: int = 160) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    result = python(EXAMPLE, "--data", str(root / "data"), "--make-data", str(count), "--make-order", order)
    assert result.returncode == 0, result.stderr
    return root


@pytest.mark.parametrize("context,extra", [("fork", []), ("spawn", ["--persistent"])])
def test_dataloader_runs_differ_plainly_and_replay_exactly(context: str, extra: list[str],
                                                          reorderable_tmp: Path) -> None:
    first = _make_data(reorderable_tmp / "first", "forward")
    args = [EXAMPLE, "--data", "data", "--context", context, "--epochs", "2", *extra]
    plain = [python(*args, cwd=first) for _ in range(2)]
    assert all(p.returncode == 0 for p in plain), plain[0].stderr
    assert weights_sha(plain[0].stdout) != weights_sha(plain[1].stdout)

    recorded = detrun("record", "-q", *args, cwd=first)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "trace.zst", EXAMPLE, cwd=first)
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED"), replayed.stderr
    assert weights_sha(replayed.stdout) == weights_sha(recorded.stdout)

    # The same data in a directory whose files were created in the opposite order.
    second = _make_data(reorderable_tmp / "second", "reverse")
    if reorderable_tmp.parent == Path("/dev/shm"):
        assert os.listdir(first / "data") != os.listdir(second / "data"), "the copy lists in the same order"
    shutil.copy(first / "trace.zst", second / "trace.zst")
    moved = detrun("replay", "trace.zst", EXAMPLE, cwd=second)
    assert verdict(moved.stderr).startswith("detrun: REPRODUCED"), moved.stderr
    assert weights_sha(moved.stdout) == weights_sha(recorded.stdout)

    # The trace holds the workers' own segments, for each worker.
    shown = detrun("show", "trace.zst", cwd=first)
    assert "dl0.i0.w0" in shown.stdout and "dl0.i0.w1" in shown.stdout, shown.stdout
    # The workers recorded the batches they fetched, and the main process none of them.
    # The authentication challenge of each batch's shared-memory connection is not the program's
    # entropy: far fewer entropy events than batches (the workers' start draws a few).
    batches = sum(int(count) for count in re.findall(r"dl0\.i\d+\.w\d +dl\.fetched +(\d+)", shown.stdout))
    entropy = re.search(r"main +os\.entropy +(\d+)", shown.stdout)
    assert batches == 20 and (entropy is None or int(entropy.group(1)) <= 4), shown.stdout
    assert not re.search(r"main +dl\.(batch|indices) ", shown.stdout), shown.stdout


def test_changed_dataset_is_diverged_naming_epoch_and_batch(tmp_path: Path) -> None:
    root = _make_data(tmp_path, "forward")
    args = [EXAMPLE, "--data", "data", "--epochs", "1"]
    assert detrun("record", "-q", *args, cwd=root).returncode == 0

    files = sorted(os.listdir(root / "data"))
    (root / "data" / files[0]).unlink()  # a different length
    shorter = detrun("replay", "trace.zst", EXAMPLE, cwd=root)
    line = verdict(shorter.stderr)
    assert line.startswith("detrun: DIVERGED: the loss of backward() call #1 differs"), line
    assert "first divergent batch: DataLoader #0 epoch 0, batch 0" in line, line
    assert "likely cause: DataLoader #0 epoch 0: the dataset has 159 samples, the recording 160" in line, line
    assert shorter.returncode == 3
    verbose = detrun("replay", "-v", "trace.zst", EXAMPLE, cwd=root)
    assert "cause: os.listdir('data') at train_dataloader.py" in verbose.stderr, verbose.stderr
    assert f"missing ['{files[0]}']" in verbose.stderr, verbose.stderr

    (root / "data" / "0_99999.txt").write_text((root / "data" / files[1]).read_text())  # different files
    different = detrun("replay", "trace.zst", EXAMPLE, cwd=root)
    line = verdict(different.stderr)
    assert line.startswith("detrun: DIVERGED") and "DataLoader #0 epoch 0, batch" in line, line
    assert "added ['0_99999.txt']" in detrun("replay", "-v", "trace.zst", EXAMPLE, cwd=root).stderr


def test_changed_augmentation_names_the_first_divergent_batch(tmp_path: Path) -> None:
    root = _make_data(tmp_path, "forward")
    args = [EXAMPLE, "--data", "data", "--epochs", "2"]
    assert detrun("record", "-q", *args, cwd=root).returncode == 0
    changed = detrun("replay", "trace.zst", EXAMPLE, cwd=root, env={"AUGMENT_SCALE": "0.2"})
    line = verdict(changed.stderr)
    assert line.startswith("detrun: DIVERGED: the loss of backward() call #1 differs"), line
    assert "first divergent batch: DataLoader #0 epoch 0, batch 0" in line, line
    assert "likely cause: DataLoader #0 epoch 0, batch 0: field [0] differs" in line, line


LISTINGS = '''
import glob, os, pathlib
print(os.listdir("d"))
print([e.name for e in os.scandir("d")])
print([(root, sorted(dirs) == dirs or dirs, files) for root, dirs, files in os.walk("d")])
print(glob.glob("d/*"))
print(list(glob.iglob("d/**/*.txt", recursive=True)))
print([p.name for p in pathlib.Path("d").iterdir()])
print([str(p) for p in pathlib.Path("d").glob("*.txt")])
print([str(p) for p in pathlib.Path("d").rglob("*.txt")])
'''


def _make_tree(root: Path, reverse: bool) -> None:
    names = [f"f{i:02d}.txt" for i in range(12)] + ["sub/s1.txt", "sub/s2.txt"]
    for name in reversed(names) if reverse else names:
        (root / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "d" / name).write_text(name)


def test_every_listing_api_replays_the_recorded_order(reorderable_tmp: Path) -> None:
    first, second = reorderable_tmp / "a", reorderable_tmp / "b"
    for root, reverse in ((first, False), (second, True)):
        root.mkdir()
        (root / "listings.py").write_text(LISTINGS)
        _make_tree(root, reverse)
    plain_first, plain_second = (python("listings.py", cwd=r).stdout for r in (first, second))
    if reorderable_tmp.parent == Path("/dev/shm"):
        assert plain_first != plain_second, "the two trees list in the same order"
    recorded = detrun("record", "-q", "listings.py", cwd=first)
    assert recorded.stdout == plain_first
    shutil.copy(first / "trace.zst", second / "trace.zst")
    replayed = detrun("replay", "trace.zst", cwd=second)
    assert replayed.stdout == recorded.stdout
    assert "DIVERGED" not in replayed.stderr, replayed.stderr

    (second / "d" / "extra.txt").write_text("new")
    added = detrun("replay", "trace.zst", cwd=second)
    line = verdict(added.stderr)
    # The printed listing differs, an output check: the listing with other files is named as the cause.
    assert line.startswith("detrun: DIVERGED: stdout line 1 differs"), line
    assert ("likely cause: os.listdir('d') at listings.py:3 lists other files than the recording: added "
            "['extra.txt'], missing []") in line, line


ITERABLE = '''
import numpy as np, torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

class Stream(IterableDataset):
    def __iter__(self):
        info = get_worker_info()
        for i in range(info.id, 64, info.num_workers):
            yield torch.tensor([i + np.random.rand()], dtype=torch.float32)

if __name__ == "__main__":
    total = sum(batch.sum().item() for batch in DataLoader(Stream(), batch_size=8, num_workers=2))
    print(total)
'''


def test_iterable_dataset_batches_are_digested(tmp_path: Path) -> None:
    (tmp_path / "stream.py").write_text(ITERABLE)
    recorded = detrun("record", "-q", "stream.py", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "--json", "verdict.json", "trace.zst", cwd=tmp_path)
    assert replayed.stdout == recorded.stdout
    # Every batch was checked against its digest, but batches are data, not training state.
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: UNVERIFIED") and "nothing of the training state" in line, line
    assert json.loads((tmp_path / "verdict.json").read_text())["checks"]["batches"] == 8
    shown = detrun("show", "--json", "trace.zst", cwd=tmp_path)
    events = json.loads(shown.stdout)["events"]
    # The workers recorded what they collated: the 8 batches, and each worker's end of its stream.
    assert sum(kinds.get("dl.fetched", 0) for role, kinds in events.items() if role.startswith("dl0.i0.w")) == 10
    assert "dl.batch" not in events["main"]


WORKER_RNGS = '''
import random, sys
import numpy as np, torch
from torch.utils.data import DataLoader, Dataset

class Noisy(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, index):
        # Every RNG a worker can reach, none seeded by the script: default_rng() draws OS entropy.
        return torch.tensor([np.random.default_rng().random(), random.random(), float(torch.rand(()))])

if __name__ == "__main__":
    loader = DataLoader(Noisy(), batch_size=4, num_workers=2, multiprocessing_context=sys.argv[1])
    for epoch in range(2):
        print([batch.sum().item() for batch in loader])
'''


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_rngs_are_recorded_and_replayed_in_the_workers(context: str, tmp_path: Path) -> None:
    (tmp_path / "noisy.py").write_text(WORKER_RNGS)
    plain = [python("noisy.py", context, cwd=tmp_path).stdout for _ in range(2)]
    assert plain[0] != plain[1]
    recorded = detrun("record", "-q", "noisy.py", context, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    replayed = detrun("replay", "trace.zst", cwd=tmp_path)
    assert replayed.stdout == recorded.stdout
    line = verdict(replayed.stderr)
    assert line.startswith("detrun: UNVERIFIED") and "departed" not in line, line  # no model: data only


def _differing_then_recorded(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    """Write a script, assert that two plain runs of it print differently, and return its recording."""
    (tmp_path / name).write_text(source)
    plain = [python(name, cwd=tmp_path) for _ in range(2)]
    assert all(p.returncode == 0 for p in plain), plain[0].stderr
    assert plain[0].stdout != plain[1].stdout
    recorded = detrun("record", "-q", name, cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    return recorded


REUSING_SAMPLER = '''
import numpy as np, torch
from torch.utils.data import DataLoader

class RefillingBatchSampler:
    """Yield numpy indices in one list it refills, as some fast samplers do."""
    def __init__(self, count, size):
        self.count, self.size = count, size

    def __iter__(self):
        batch = []
        for index in np.random.permutation(self.count):  # unseeded, and numpy integers
            batch.append(index)
            if len(batch) == self.size:
                yield batch
                batch.clear()

    def __len__(self):
        return self.count // self.size

data = torch.arange(64, dtype=torch.float32).reshape(32, 2)
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
for batch in DataLoader(data, batch_sampler=RefillingBatchSampler(32, 4)):
    optimizer.zero_grad()
    model(batch).pow(2).mean().backward()
    optimizer.step()
print([round(float(p.sum()), 6) for p in model.parameters()], float(batch.sum()))
'''


def test_a_sampler_of_numpy_indices_that_refills_its_list_is_recorded_as_it_yielded(tmp_path: Path) -> None:
    # The batched sampler events hold a copy of each batch of indices, as numpy integers become plain ones.
    recorded = _differing_then_recorded(tmp_path, "refill.py", REUSING_SAMPLER)
    replayed = detrun("replay", "trace.zst", "refill.py", cwd=tmp_path)
    assert verdict(replayed.stderr).startswith("detrun: REPRODUCED (8 steps"), replayed.stderr
    assert replayed.stdout == recorded.stdout
    shown = detrun("show", "--json", "trace.zst", cwd=tmp_path)
    assert json.loads(shown.stdout)["events"]["main"]["dl.indices"] == 8


UNPRINTABLE_IN_WORKERS = '''
import os, torch
from torch.utils.data import DataLoader

MAIN = os.getpid()

class Source:
    """A batch field that cannot be printed in a worker process (its repr raises there)."""
    def __repr__(self):
        if os.getpid() != MAIN:
            raise RuntimeError("no repr in a worker")
        return "Source()"

def collate(items):
    return torch.stack(items), Source()

data = torch.rand(32, 2)  # unseeded: two plain runs differ
model = torch.nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=1, collate_fn=collate,
                    multiprocessing_context="fork")
for batch, _source in loader:
    optimizer.zero_grad()
    model(batch).pow(2).mean().backward()
    optimizer.step()
print([round(float(p.sum()), 6) for p in model.parameters()])
'''


def test_a_hook_failure_in_a_recording_worker_is_in_the_trace_and_lowers_the_verdict(tmp_path: Path) -> None:
    # The worker's batch digest fails (the field's repr raises there): the program runs on unchanged,
    # and the trace's end record says so, or a replay would vouch for batches nobody recorded.
    recorded = _differing_then_recorded(tmp_path, "unprintable.py", UNPRINTABLE_IN_WORKERS)
    assert "internal error in DataLoader worker batches" in recorded.stderr, recorded.stderr

    summary = json.loads(detrun("show", "--json", "trace.zst", cwd=tmp_path).stdout)
    assert [f.split(":")[:2] for f in summary["hook_failures"]] == [["dl0.i0.w0", " DataLoader worker batches"]]
    shown = detrun("show", "trace.zst", cwd=tmp_path).stdout
    assert "warning    1 detrun hook failure(s) while recording" in shown, shown

    replayed = detrun("replay", "--json", "verdict.json", "trace.zst", "unprintable.py", cwd=tmp_path)
    assert replayed.stdout == recorded.stdout  # the run itself was replayed
    assert verdict(replayed.stderr).startswith(
        "detrun: UNVERIFIED (a detrun hook failed (while recording: dl0.i0.w0: DataLoader worker batches"), \
        replayed.stderr
    # The replay's worker fails the same way, but there the main process digests the batch itself.
    failures = json.loads((tmp_path / "verdict.json").read_text())["hook_failures"]
    assert [f.split(": ")[:3] for f in failures] == [["while recording", "dl0.i0.w0", "DataLoader worker batches"]]
