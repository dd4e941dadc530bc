"""The DataLoader: sampler order, worker base seeds, the RNGs inside workers, and per-batch digests.

Events, keyed by loader (in order of first iteration) and epoch (each `iter(loader)`):
- `dl.epoch`   `[loader, epoch, dataset_len, base_seed, sampler]` when an epoch starts; base_seed
  is None for the later epochs of persistent workers, which keep the seed they started with;
- `dl.indices` `[loader, epoch, width, packed, scalar]` for every index (or batch of indices) the
  sampler yields: `width` 0 and the sampler's own list (what it usually is), or numpy integers
  packed by the trace codec;
- `dl.batch`   `[loader, epoch, batch, digests]`: a digest of every tensor/array/value in each
  collated batch the program receives (`batch_digester`: XXH3's low 32 bits; crc32 in a trace
  whose `dl.batch` and `dl.fetched` are of version 1);
- `dl.fetched` `[pass, batch, width, packed, scalar, digests]`, in a worker's segment: the indices
  a worker was sent for a batch, and the digests of the batch it collated from them (null for a
  pass delivered out of order, whose batches the main process digests in the order it receives
  them). `pass` counts the epochs of persistent workers (0 for the first).

Where a pass has worker processes, its workers record what they were sent and what they collated
(`dl.fetched`), and the main process records nothing per batch: every batch's round trip through
the main process is on the critical path of a DataLoader-bound epoch, and the workers have the
indices (unpickled) and the batch (in their caches) anyway. Recording the indices and digests in
the main process cost it some 100,000 instructions a batch (benchmarks/instructions.py). A loader
without workers records `dl.indices` and `dl.batch` in the main process.

On replay, a batch from worker processes is digested by the worker that collated it, and the
digests reach the main process through a small shared file (`BatchDigestBoard`) beside the batch
itself: digesting a CIFAR-sized batch (1.5 MB) in the main process cost it some 0.6 ms of CPU a
batch, and the board about 40 µs (benchmarks/overhead.py --only images). The main process digests a
batch itself when the board has no entry for it (more than BOARD_LEAVES fields, a worker loop
detrun does not know, `in_order=False`): the board is never the only way a batch gets checked.

On replay the recorded order and base seeds are forced even if the sampler would now produce
something else (the sampler still runs, so its RNG side effects stay the same), and every batch is
checked against its digest: the first differing batch is named by epoch, batch index and field.
A batch whose indices no worker recorded was drawn by the sampler but never fetched (a prefetch
when the program stopped iterating, or a worker stopped before its queue was empty): the sampler's
own indices are used, and if the program receives that batch, its missing digest is a mismatch.
Worker processes (fork or spawn, persistent or not) run under a session of their own whose events
land in a trace segment named `dl<loader>.i<iteration>.w<worker>`.
"""
from __future__ import annotations

import array
import os
import struct
import weakref
import zlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

from detrun.engine.patcher import ImportTimeSource
from detrun.trace.format import pack_indices, unpack_indices
from detrun.trace.registry import (  # the kinds, their payload schemas and versions
    DL_BATCH as BATCH_KIND,
    DL_EPOCH as EPOCH_KIND,
    DL_FETCHED as FETCHED_KIND,
    DL_INDICES as INDICES_KIND,
)

if TYPE_CHECKING:
    from detrun.engine.session import Session


# Record: how many sampler and batch events wait to be written together (two per batch).
PENDING_EVENTS = 128

# The digest board: per slot, the tag ((generation << 32 | batch index) + 1, 0 when empty), the
# number of digests and up to BOARD_LEAVES 32-bit digests. A batch index uses slot `index % slots`; at most
# prefetch_factor * num_workers batches are in flight, and the board has at least four times as
# many slots. A batch with more fields is not posted: its slot keeps another tag.
BOARD_LEAVES = 8
_BOARD_SLOT = struct.Struct(f"<QI{BOARD_LEAVES}I")

# Set in the main process at install; a forked worker inherits it, a spawned one imports this
# module afresh and finds torch's own function still in place.
_original_worker_loop: Any = None


# A batch the recording has no indices or digests for.
_MISSING: Any = object()


class _Epoch:
    """What one pass over one loader recorded, or what its replay has consumed so far."""

    def __init__(self, loader: int, epoch: int, iterable: bool) -> None:
        self.loader = loader
        self.epoch = epoch
        self.iterable = iterable
        self.batch = 0
        self.sent_in_workers = False  # record: the workers record the indices they are sent
        self.digested_in_workers = False  # record: and the digests of the batches they collate (in order)
        self.indices: dict[int, Any] = {}  # replay: the recorded sampler output by batch
        # replay: whether `indices` holds every batch the sampler yielded (the main process recorded
        # them), not only those a worker fetched
        self.all_drawn = True
        self.next_index = 0  # replay: the batch whose indices are forced next
        self.digests: dict[int, Any] = {}  # replay: the recorded batch digests by batch (see _kept_ints)
        # replay: `digests` are keyed by the index the main process sent each batch's indices with (the
        # workers recorded them), not by the order the program received the batches
        self.digests_by_sent = False
        self.missing_told = False  # replay: a batch without a recorded digest was reported
        self.unforced = False  # replay: the dataset changed size, so the sampler's own order is used
        self.board: BatchDigestBoard | None = None  # the workers' digests of this pass's batches
        self.prefix = ""  # the pass's worker segments are `<prefix>.w<worker>`
        self.generation = 0  # persistent workers: the passes their board served before this one

    @property
    def label(self) -> str:
        return f"DataLoader #{self.loader} epoch {self.epoch}"


def _leaves(data: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (field path, leaf) for a collated batch: tuples, lists and dicts are walked."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, f"{path}[{key!r}]")
    elif isinstance(data, (list, tuple)) and not hasattr(data, "_fields"):
        for index, value in enumerate(data):
            yield from _leaves(value, f"{path}[{index}]")
    elif hasattr(data, "_fields"):  # namedtuple: name the fields
        for name in data._fields:
            yield from _leaves(getattr(data, name), f"{path}.{name}")
    else:
        yield path or "batch", data


# A leaf's digest: a function of a buffer (bytes, or a C-contiguous array: anything else raises).
Digester = Callable[[Any], int]


def batch_digester(version: int) -> Digester:
    """Return the function that digests a batch field's bytes in `dl.batch`/`dl.fetched` events of `version`."""
    if version < 2:
        return zlib.crc32
    import xxhash  # start-up: only a program that imports torch needs it (1 ms)

    xxh3 = xxhash.xxh3_64_intdigest

    def xxh3_low32(data: Any) -> int:
        # XXH3 reads some 22 GB/s here and zlib's crc32 3.4 (a CIFAR-sized batch, 1.5 MB: 72 against
        # 470 µs), on every byte of every batch. The low 32 bits: the events, the board and the
        # recording's arrays hold 32-bit digests, as crc32's were.
        return xxh3(data) & 0xFFFFFFFF

    return xxh3_low32


def _digest_version(session: Session) -> int:
    """Return the version of the batch digests a session records, or compares with (the trace's own)."""
    # A trace is written by one detrun, and a kind it lacks reads as this detrun's own version.
    return min(session.event_version(BATCH_KIND), session.event_version(FETCHED_KIND))


def _digest_leaf(torch: Any, leaf: Any, digest: Digester) -> int:
    """Return the digest of a leaf's bytes (tensors and arrays without a copy when contiguous)."""
    if isinstance(leaf, torch.Tensor):
        # One torch call where it suffices (a contiguous CPU tensor of a numpy dtype, outside autograd):
        # right after a batch arrives from a worker each torch call costs some 20 µs, cold, and the
        # general path below makes five. The bytes, and so the digest, are the same.
        try:
            return digest(leaf.numpy())
        except Exception:  # noqa: BLE001 - CUDA, bf16, requires_grad, conj or non-contiguous: the general path
            pass
        flat = leaf.detach().resolve_conj().resolve_neg()  # the values, not a lazily conjugated or negated view
        if flat.device.type != "cpu":
            flat = flat.cpu()
        # A byte view works for every dtype, bf16 and bool included, and numpy() of it never copies.
        return digest(flat.contiguous().reshape(-1).view(torch.uint8).numpy())
    if hasattr(leaf, "__array_interface__") and hasattr(leaf, "tobytes"):
        return digest(leaf.tobytes())
    return digest(repr(leaf).encode())


def batch_digests(torch: Any, data: Any, digest: Digester) -> list[int]:
    """Return the digests of a collated batch's leaves, in the order `_leaves` names them."""
    # The usual batches, a tensor or a plain tuple or list of tensors, without the generator's frames:
    # every Python call at a batch costs microseconds, cold.
    tensor = torch.Tensor
    if isinstance(data, tensor):
        return [_digest_leaf(torch, data, digest)]
    if (type(data) is tuple or type(data) is list) and all(isinstance(item, tensor) for item in data):
        return [_digest_leaf(torch, item, digest) for item in data]
    return [_digest_leaf(torch, leaf, digest) for _name, leaf in _leaves(data)]


class BatchDigestBoard:
    """A shared file where DataLoader workers post each batch's digests for the main process to take."""

    def __init__(self, path: str, slots: int, create: bool) -> None:
        self.path = path
        self.slots = slots
        self._creator = os.getpid() if create else None  # a forked worker's copy never removes the file
        import mmap  # start-up: only a run whose DataLoader has workers needs it

        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        descriptor = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(descriptor, slots * _BOARD_SLOT.size)  # zeros: every slot empty
            self._memory = mmap.mmap(descriptor, slots * _BOARD_SLOT.size)
        finally:
            os.close(descriptor)

    def post(self, generation: int, index: int, digests: list[int]) -> None:
        """Post a batch's digests (a worker, before it sends the batch); one with too many fields is not posted."""
        count = len(digests)
        if count <= BOARD_LEAVES:
            _BOARD_SLOT.pack_into(self._memory, (index % self.slots) * _BOARD_SLOT.size, ((generation << 32) | index) + 1,
                                  count, *digests, *([0] * (BOARD_LEAVES - count)))

    def take(self, generation: int, index: int) -> list[int] | None:
        """Return the digests posted for a batch the main process received, or None if none were."""
        slot = _BOARD_SLOT.unpack_from(self._memory, (index % self.slots) * _BOARD_SLOT.size)
        if slot[0] != ((generation << 32) | index) + 1:
            return None
        return list(slot[2:2 + slot[1]])

    def close(self, remove: bool = False) -> None:
        """Unmap the board (mmap holds a descriptor of its own until then); `remove` deletes its file too."""
        self._memory.close()
        if remove and os.getpid() == self._creator:
            try:
                os.unlink(self.path)
            except OSError:
                pass  # the scratch directory went first (the end of the run)


class _WorkerBatches:
    """What a worker was sent and what it collated: recorded (record), or its digests posted on the board (replay)."""

    def __init__(self, session: Session, board: BatchDigestBoard | None, record_digests: bool,
                 digest: Digester) -> None:
        import torch
        from torch._utils import ExceptionWrapper
        from torch.utils.data._utils import worker as worker_module

        self._session = session if session.recording else None
        self._board = board
        self._digests = record_digests or board is not None
        self._digest = digest
        self._torch = torch
        self._resume = worker_module._ResumeIteration
        self._not_batches = (ExceptionWrapper, worker_module._IterableDatasetStopIteration)
        self._generation = 0
        self._sent: dict[int, Any] = {}  # record: batch -> the indices it was sent with, until it is put

    def received(self, item: Any) -> None:
        """Note what the worker took from its index queue."""
        # Mirrors torch.utils.data._utils.worker._worker_loop's `r = index_queue.get(...)` (torch 2.x): a
        # persistent worker's next pass starts with `_ResumeIteration`, then `(idx, index)` per batch.
        if isinstance(item, self._resume):
            self._sent.clear()  # what it was sent and dropped when the last pass ended
        elif type(item) is tuple and len(item) == 2 and type(item[0]) is int:  # only a recording watches gets
            indices = item[1]
            self._sent[item[0]] = list(indices) if isinstance(indices, (list, tuple)) else indices

    def sending(self, item: Any) -> None:
        """Record, or post on the board, a batch the worker is about to put on its data queue."""
        # Mirrors _worker_loop's `data_queue.put((idx, data))` (torch 2.x), and its acknowledgement
        # `(_ResumeIteration, None)` of a persistent worker's next pass.
        index, data = item
        if isinstance(index, self._resume):
            self._generation += 1
            return
        if type(index) is not int:
            return
        digests = None
        if self._digests and data is not None and not isinstance(data, self._not_batches):
            try:
                digests = batch_digests(self._torch, data, self._digest)
            except Exception as exc:  # noqa: BLE001 - reported; the batch's indices are still recorded below
                self.failed(exc)
            else:
                if self._board is not None:
                    self._board.post(self._generation, index, digests)
        if self._session is None:
            return
        indices = self._sent.pop(index, _MISSING)
        if indices is _MISSING:
            return
        scalar = not isinstance(indices, list)
        payload = [self._generation, index, 0, [indices] if scalar else indices, scalar, digests]
        try:
            self._session.emit(FETCHED_KIND, payload)
        except TypeError:  # numpy integers from the sampler, which msgpack does not take: as plain ints
            self._session.emit(FETCHED_KIND, _with_encoded_indices(payload))

    def failed(self, exc: Exception) -> None:
        """Report a failure in the queues' hooks: a recorded batch may lack its indices or digests."""
        if self._session is not None:
            self._session.hook_failed("DataLoader worker batches", exc)


class _WatchedQueue:
    """A worker's queue, seen by `_WorkerBatches`; everything but the watched method is the queue's own."""

    def __init__(self, queue: Any, batches: _WorkerBatches) -> None:
        self._queue = queue
        self._batches = batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


class _ReceivingQueue(_WatchedQueue):
    """A worker's index queue that tells `_WorkerBatches` what the worker took."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        item = self._queue.get(*args, **kwargs)
        try:
            self._batches.received(item)
        except Exception as exc:  # noqa: BLE001 - the worker goes on; a batch without indices is not forced on replay
            self._batches.failed(exc)
        return item


class _SendingQueue(_WatchedQueue):
    """A worker's data queue that lets `_WorkerBatches` record or post each batch before the main process gets it."""

    def put(self, item: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            self._batches.sending(item)
        except Exception as exc:  # noqa: BLE001 - the batch still goes; on replay the main process digests it itself
            self._batches.failed(exc)
        return self._queue.put(item, *args, **kwargs)


def _encode_indices(value: Any) -> tuple[int, Any, bool]:
    """Return (width, packed, scalar) for a sampler output, or width 0 with the value as a list."""
    scalar = not isinstance(value, (list, tuple))
    items = [value] if scalar else list(value)
    if all(type(i) is int and i >= 0 for i in items):
        width, packed = pack_indices(items)
        return width, packed, scalar
    return 0, [i.tolist() if hasattr(i, "tolist") else i for i in items], scalar


def _with_encoded_indices(payload: list[Any]) -> list[Any]:
    """Return a `dl.indices` or `dl.fetched` payload with its sampler output (`0, items, scalar`) as plain ints."""
    items, scalar = payload[3], payload[4]
    return [*payload[:2], *_encode_indices(items[0] if scalar else items), *payload[5:]]


def _as_plain(value: Any) -> Any:
    """Return a sampler output as plain ints, to compare it with a decoded recording."""
    if isinstance(value, (list, tuple)):
        return [i.tolist() if hasattr(i, "tolist") else i for i in value]
    return value.tolist() if hasattr(value, "tolist") else value


# A batch of n sampler indices packed as the recording keeps it (_kept_ints), by n: a loader has one
# or two batch lengths (the last batch's is shorter), each Struct compiled once.
_INDEX_PACKERS: dict[int, Callable[..., bytes]] = {}


def _same_indices(current: Any, forced: Any) -> bool:
    """Return whether the sampler's output equals the recorded one (as _kept_ints keeps it)."""
    if type(current) is list and type(forced) is array.array:
        try:
            # The sampler's ints packed, against the recording's buffer: compared without making or
            # touching an int object of the recording's (see _kept_ints).
            pack = _INDEX_PACKERS.get(len(current))
            if pack is None:  # once per batch length: a format string built and hashed every batch cost ~0.8 µs
                pack = struct.Struct(f"{len(current)}q").pack
                if len(_INDEX_PACKERS) < 64:  # a sampler of ever new lengths (buckets) keeps a few
                    _INDEX_PACKERS[len(current)] = pack
            return pack(*current) == forced.tobytes()
        except (struct.error, TypeError, OverflowError):  # not plain ints: compared as plain values below
            pass
    try:
        return bool(_as_plain(current) == _as_list(forced))
    except ValueError:  # items that do not compare as one value (arrays): another order
        return False


def _decode_indices(width: int, packed: Any, scalar: bool) -> Any:
    """Return a recorded sampler output for replay: a batch of plain ints as an array (see _kept_ints)."""
    items = unpack_indices(width, packed) if width else packed
    return items[0] if scalar else _kept_ints(items, "q")


def _kept_ints(items: list[Any], typecode: str) -> Any:
    """Return a recorded list of plain ints as an array of `typecode`; any other list as it is.

    The decoded trace is allocated before a DataLoader forks its workers, and an int object's
    reference count is written whenever the object is used: handing the program a batch of the
    trace's own ints, or comparing them, copied two or three shared pages a batch (a page fault
    each, some 3.6 µs on the 2-core benchmark machine, on the epoch's critical path). An array
    keeps the values in a buffer that is only read; a batch that must be forced gets fresh ints
    (`_as_list`).
    """
    if type(items) is list and {*map(type, items)} <= {int}:
        try:
            return array.array(typecode, items)
        except OverflowError:  # out of the array's range: kept as the trace has it
            pass
    return items


def _as_list(kept: Any) -> Any:
    """Return what _kept_ints kept as a fresh list (anything else as it is)."""
    return kept.tolist() if type(kept) is array.array else kept


class DataLoaderSource(ImportTimeSource):
    """Hook torch.utils.data's iterators once torch is imported."""

    module = "torch"

    def hook(self, session: Session, torch: Any) -> None:
        global _original_worker_loop
        import torch.utils.data.dataloader as dataloader_module
        from torch.utils.data._utils import worker as worker_module

        base = dataloader_module._BaseDataLoaderIter
        iterable_kind = dataloader_module._DatasetKind.Iterable
        original_init = base.__init__
        original_reset = base._reset
        original_next_index = base._next_index
        original_next = base.__next__
        _original_worker_loop = worker_module._worker_loop

        loader_ids: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        epochs_started: dict[int, int] = {}
        # Each live iterator's epoch, keyed by a weak reference: what a WeakKeyDictionary does, without
        # its Python-level get() at every batch.
        states: dict[weakref.ref[Any], _Epoch] = {}
        weak = weakref.ref

        def forget(iterator_ref: weakref.ref[Any]) -> None:
            states.pop(iterator_ref, None)

        live_worker_iterators: weakref.WeakSet[Any] = weakref.WeakSet()
        # Replay: the batches whose sampler output departed from the recording, by pass label; kept
        # here, not in the pass's state, which goes with its iterator, before the end of the run.
        sampler_departures: dict[str, int] = {}
        # Replay: the batches checked, told to the session at the end, not under its lock at every batch.
        batches_checked = [0]
        recorded_epochs = _index_recording(session) if not session.recording else {}
        # The batch digests' function, here and in this session's workers: the recording's, on replay.
        digest_version = _digest_version(session)
        digest = batch_digester(digest_version)
        fetched_passes = _index_fetched(session) if not session.recording else {}
        # Record: the sampler's indices and the batch digests wait here for a batch of events, or the
        # session's flush (about a second, between steps), or the end: emitting at each batch cost
        # some 20 µs per event, cold, right after the batch arrived from a worker.
        pending: list[tuple[str, list[Any]]] = []

        def write_pending() -> None:
            """Write the batched sampler and batch events to the trace, in their order."""
            count = len(pending)  # taken, then deleted: an append from another thread meanwhile stays
            taken = pending[:count]
            del pending[:count]
            for kind, payload in taken:
                try:
                    session.emit(kind, payload)
                except TypeError:  # numpy integers from the sampler, which msgpack does not take: as plain ints
                    session.emit(kind, _with_encoded_indices(payload))

        def start_epoch(iterator: Any, loader: Any, base_seed: Any) -> _Epoch:
            """Open a new epoch for a loader, record or check its start, and return its state."""
            loader_id = loader_ids.setdefault(loader, len(loader_ids))
            epoch = epochs_started.get(loader_id, 0)
            epochs_started[loader_id] = epoch + 1
            iterable = loader._dataset_kind == iterable_kind
            state = _Epoch(loader_id, epoch, iterable)
            try:
                length = len(loader.dataset)
            except TypeError:
                length = None
            sampler = type(loader._index_sampler).__name__
            observed = [loader_id, epoch, length, base_seed, sampler]
            if session.recording:
                session.emit(EPOCH_KIND, observed)
            else:
                recorded = recorded_epochs.get((loader_id, epoch))
                if recorded is None:
                    session.mismatch(EPOCH_KIND, f"{state.label} was not in the recording (it has "
                                                f"{sum(1 for k in recorded_epochs if k[0] == loader_id)} epochs "
                                                f"of this loader)")
                else:
                    start, indices, state.digests = recorded
                    if start[2] != length:
                        # Recorded indices may not exist any more: let the sampler choose, and let
                        # the batch digests say where the data departs.
                        session.mismatch(EPOCH_KIND, f"{state.label}: the dataset has {length} samples, the "
                                                    f"recording {start[2]}", batch=f"{state.label}, batch 0")
                        state.unforced = True
                    else:
                        state.indices = indices
                    if base_seed is not None and start[3] is not None:
                        iterator._base_seed = start[3]
            states[weak(iterator, forget)] = state
            return state

        def attach_fetched(state: _Epoch) -> None:
            """Replay: take a pass's indices and digests from its workers' segments, if they recorded them."""
            recorded = fetched_passes.get((state.prefix, state.generation))
            if recorded is None:
                return
            indices, digests = recorded
            if not state.indices and not state.unforced:
                state.indices, state.all_drawn = indices, False
            if not state.digests and digests:
                state.digests, state.digests_by_sent = digests, True

        def pass_prefix(state: _Epoch) -> str:
            """Return the name of a pass's worker files: `dl<loader>.i<epoch>`, after the rank's role in a rank."""
            prefix = f"dl{state.loader}.i{state.epoch}"
            if session.process_key is not None:  # a rank's workers: unique across the command's trace
                prefix = f"{session.role}.{prefix}"
            return prefix

        def worker_entry(state: _Epoch, num_workers: int) -> Any:
            """Return the picklable worker target for this iterator's workers, registering their files."""
            prefix = state.prefix
            roles = [f"{prefix}.w{worker}" for worker in range(num_workers)]
            if session.recording:
                config: dict[str, Any] = {"mode": "record", "prefix": prefix, "base": session.scratch_path("seg"),
                                          "digests": state.digested_in_workers}
                session.segment_paths.extend(f"{config['base']}.{role}" for role in roles)
            else:
                trace = session.trace
                # Without the batches the workers fetched: the main process forces and checks those.
                config = {"mode": "replay", "prefix": prefix, "base": session.scratch_path("report"),
                          "complete": trace.complete,
                          "events": {role: {kind: payloads for kind, payloads in trace.events.get(role, {}).items()
                                            if kind != FETCHED_KIND} for role in roles}}
                session.report_paths.extend(f"{config['base']}.{role}.json" for role in roles)
            config["digest_version"] = digest_version
            if state.board is not None:
                config["board"] = [state.board.path, state.board.slots]
            return _WorkerEntry(config)

        def open_board(state: _Epoch, loader: Any, iterator: Any) -> None:
            """Give a pass of worker processes a board for their batch digests (in-order delivery only)."""
            if getattr(loader, "in_order", True) is not True:
                return  # batches arrive out of order: the main process cannot tell which one it received
            in_flight = max(1, loader.prefetch_factor or 2) * loader.num_workers
            slots = 64
            while slots < 4 * in_flight:
                slots *= 2
            state.board = BatchDigestBoard(session.scratch_path(f"{pass_prefix(state)}.board"), slots, create=True)
            # Closed with its iterator: a run of many epochs must not keep a descriptor for each.
            weakref.finalize(iterator, state.board.close, True)

        # Mirrors torch.utils.data.dataloader._BaseDataLoaderIter.__init__ (torch 2.x): the base
        # seed is drawn there, before _MultiProcessingDataLoaderIter starts its workers with it.
        def __init__(self: Any, loader: Any) -> None:
            original_init(self, loader)
            try:
                state = start_epoch(self, loader, self._base_seed)
                if loader.num_workers > 0:
                    state.prefix = pass_prefix(state)
                    if session.recording:
                        # The workers record what they are sent and, delivered in order, what they collate.
                        state.sent_in_workers = True
                        state.digested_in_workers = getattr(loader, "in_order", True) is True
                    else:
                        attach_fetched(state)
                        try:
                            open_board(state, loader, self)
                        except Exception:  # noqa: BLE001 - no board: the main process digests the batches itself
                            state.board = None
                    worker_module._worker_loop = worker_entry(state, loader.num_workers)
                    live_worker_iterators.add(self)
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("DataLoader iteration", exc)

        # Mirrors _BaseDataLoaderIter._reset (torch 2.x): persistent workers start later epochs here.
        def _reset(self: Any, loader: Any, first_iter: bool = False) -> None:
            previous = states.get(weak(self)) if not first_iter else None
            if previous is not None:
                try:
                    state = start_epoch(self, loader, None)
                    # The same workers, told of the new pass before their next batch.
                    state.board, state.prefix, state.generation = previous.board, previous.prefix, previous.generation + 1
                    state.sent_in_workers, state.digested_in_workers = previous.sent_in_workers, previous.digested_in_workers
                    if not session.recording:
                        attach_fetched(state)
                except Exception as exc:  # noqa: BLE001
                    session.hook_failed("DataLoader iteration", exc)
            return original_reset(self, loader, first_iter)

        # Mirrors _BaseDataLoaderIter._next_index (torch 2.x): the sampler's next index or batch.
        def _next_index(self: Any) -> Any:
            state = states.get(weak(self))
            if state is None or state.iterable or state.unforced or state.sent_in_workers:
                return original_next_index(self)
            if session.recording:
                value = original_next_index(self)
                try:
                    scalar = not isinstance(value, (list, tuple))
                    # A plain list (width 0) of the sampler's own ints, packed by msgpack in C: a check
                    # and packing of each index in Python cost three times as much, at every batch,
                    # for about 7% fewer bytes after compression. A copy: a sampler may reuse its list.
                    pending.append((INDICES_KIND, [state.loader, state.epoch, 0, [value] if scalar else list(value),
                                                   scalar]))
                    if len(pending) >= PENDING_EVENTS:
                        write_pending()
                except Exception as exc:  # noqa: BLE001
                    session.hook_failed("DataLoader sampler order", exc)
                return value
            try:
                current = original_next_index(self)
            except StopIteration:
                current = StopIteration
            forced = state.indices.get(state.next_index, _MISSING)
            if forced is _MISSING:
                if not state.all_drawn:  # drawn but never fetched by a worker, or never drawn: the sampler's own
                    if current is StopIteration:
                        raise StopIteration
                    state.next_index += 1
                    return current
                if current is not StopIteration:
                    session.mismatch(INDICES_KIND, f"{state.label}: the sampler yields more batches than recorded")
                raise StopIteration
            state.next_index += 1
            if current is not StopIteration and _same_indices(current, forced):
                return current  # the sampler's own output, as a run without detrun hands it on
            sampler_departures[state.label] = sampler_departures.get(state.label, 0) + 1
            return _as_list(forced)

        # Mirrors _BaseDataLoaderIter.__next__ (torch 2.x): the collated batch the program receives.
        def __next__(self: Any) -> Any:
            data = original_next(self)
            state = states.get(weak(self))
            if state is None or state.digested_in_workers:
                return data
            try:
                check_batch(state, data, self)
            except Exception as exc:  # noqa: BLE001
                session.hook_failed("DataLoader batch digest", exc)
            return data

        def check_batch(state: _Epoch, data: Any, iterator: Any) -> None:
            digests = None
            batch = key = state.batch
            state.batch += 1
            if state.board is not None or state.digests_by_sent:
                # Mirrors _MultiProcessingDataLoaderIter._next_data (torch 2.x): with in-order delivery
                # the batch it returned is the one before `_rcvd_idx`. The same as `batch` but where an
                # iterable dataset's worker ran out before another.
                received = getattr(iterator, "_rcvd_idx", None)
                if type(received) is int:
                    if state.board is not None:
                        digests = state.board.take(state.generation, received - 1)
                    if state.digests_by_sent:
                        key = received - 1
            if digests is None:
                digests = batch_digests(torch, data, digest)
            if session.recording:
                pending.append((BATCH_KIND, [state.loader, state.epoch, batch, digests]))
                return
            recorded = _as_list(state.digests.get(key))
            if recorded is None:
                if not state.missing_told:
                    state.missing_told = True
                    session.mismatch(BATCH_KIND, f"{state.label}, batch {batch}: the recording has no such batch "
                                                f"({len(state.digests)} in this epoch)",
                                    batch=f"{state.label}, batch {batch}")
                return
            batches_checked[0] += 1
            if recorded != digests:
                names = [name for name, _leaf in _leaves(data)]
                differing = [name for name, a, b in zip(names, recorded, digests) if a != b] or names
                fields = ", ".join(differing[:4])
                session.mismatch(BATCH_KIND, f"{state.label}, batch {batch}: field {fields} differs from the "
                                            "recording (the data, its order or its augmentation changed)",
                                batch=f"{state.label}, batch {batch}, field {fields}")

        def shut_down_workers() -> None:
            """Stop live (persistent) workers so that they close their trace segments."""
            for iterator in list(live_worker_iterators):
                shutdown = getattr(iterator, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
            if batches_checked[0]:
                session.count_check("batches", batches_checked[0])
                batches_checked[0] = 0
            for label, count in list(sampler_departures.items())[:1]:
                session.note_cause(f"{label}: the sampler produced another order in {count} batches (the "
                                   "recorded order was forced)")

        patch = self.patcher.setattr
        patch(base, "__init__", __init__)
        patch(base, "_reset", _reset)
        patch(base, "_next_index", _next_index)
        patch(base, "__next__", __next__)
        patch(worker_module, "_worker_loop", _original_worker_loop)  # restored on uninstall
        session.on_stop(shut_down_workers)
        if session.recording:
            session.on_flush(write_pending)
            session.on_stop(write_pending)


def _index_recording(session: Session) -> dict[tuple[int, int], tuple[list[Any], dict[int, Any], dict[int, Any]]]:
    """Group the main process's recorded DataLoader events by (loader, epoch) for replay: start, indices, digests."""
    grouped: dict[tuple[int, int], tuple[list[Any], dict[int, Any], dict[int, Any]]] = {}
    for start in session.take_all(EPOCH_KIND):
        grouped[(start[0], start[1])] = (start, {}, {})
    for loader, epoch, width, packed, scalar in session.take_all(INDICES_KIND):
        if (loader, epoch) in grouped:
            indices = grouped[(loader, epoch)][1]
            indices[len(indices)] = _decode_indices(width, packed, scalar)
    for loader, epoch, batch, digests in session.take_all(BATCH_KIND):
        if (loader, epoch) in grouped:
            grouped[(loader, epoch)][2][batch] = _kept_ints(digests, "I")
    return grouped


def _index_fetched(session: Session) -> dict[tuple[str, int], tuple[dict[int, Any], dict[int, Any]]]:
    """Group what the recording's DataLoader workers fetched by (pass prefix, pass) for replay: indices, digests."""
    assert session.trace is not None
    grouped: dict[tuple[str, int], tuple[dict[int, Any], dict[int, Any]]] = {}
    for role, kinds in session.trace.events.items():
        payloads = kinds.get(FETCHED_KIND)
        if not payloads or ".w" not in role:
            continue
        prefix = role.rsplit(".w", 1)[0]  # `<prefix>.w<worker>`: the segment of one worker of one pass
        for generation, batch, width, packed, scalar, digests in payloads:
            indices, digests_by_batch = grouped.setdefault((prefix, generation), ({}, {}))
            indices[batch] = _decode_indices(width, packed, scalar)
            if digests is not None:
                digests_by_batch[batch] = _kept_ints(digests, "I")
    return grouped


class _WorkerEntry:
    """The DataLoader worker target: run torch's worker loop under a session of the worker's own.

    An instance is what multiprocessing pickles for spawn, so it holds only plain data.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from torch.utils.data._utils import worker as worker_module

        loop = _original_worker_loop or worker_module._worker_loop
        session = None
        try:
            import inspect  # here, in the worker: at start-up it costs the main process some 8 ms

            bound = inspect.signature(loop).bind(*args, **kwargs)
            worker_id = bound.arguments["worker_id"]
            session = _start_worker_session(self.config, f"{self.config['prefix']}.w{worker_id}")
            args, kwargs = _watching_batches(self.config, bound, session)
        except Exception as exc:  # noqa: BLE001 - the worker must run even if detrun cannot follow it
            import sys

            print(f"detrun: warning: internal error starting a DataLoader worker session: {exc!r}", file=sys.stderr)
        try:
            return loop(*args, **kwargs)
        finally:
            if session is not None:
                session.finish_child()


def _watching_batches(config: dict[str, Any], bound: Any, session: Any) -> tuple[Any, Any]:
    """Return the worker loop's arguments with queues that record its batches, or post their digests, if it can."""
    arguments = bound.arguments
    if "index_queue" not in arguments or "data_queue" not in arguments:
        if session.recording:  # a worker loop detrun does not know: its batches go unrecorded
            session.hook_failed("DataLoader worker batches", TypeError("the worker loop has no index_queue/data_queue"))
        return bound.args, bound.kwargs
    board = None
    if config.get("board") is not None:
        try:
            board = BatchDigestBoard(*config["board"], create=False)
        except Exception:  # noqa: BLE001 - no board: the main process digests this worker's batches itself
            board = None
    if not session.recording and board is None:
        return bound.args, bound.kwargs
    batches = _WorkerBatches(session, board, record_digests=bool(config.get("digests")),
                             digest=batch_digester(config["digest_version"]))
    if session.recording:
        arguments["index_queue"] = _ReceivingQueue(arguments["index_queue"], batches)
    arguments["data_queue"] = _SendingQueue(arguments["data_queue"], batches)
    return bound.args, bound.kwargs


def _start_worker_session(config: dict[str, Any], role: str) -> Any:
    """Replace any inherited (forked) session by one for this worker, and install its sources."""
    from detrun.engine.session import Session, active_session
    from detrun.engine.sources.worker_set import worker_sources
    from detrun.trace import Trace, TraceWriter

    inherited = active_session()
    if inherited is not None:
        inherited.detach()
    if config["mode"] == "record":
        writer = TraceWriter(f"{config['base']}.{role}.partial", segment=role)
        session = Session("record", writer=writer, quiet=True, role=role)
    else:
        trace = Trace(path="", header={}, events={role: config["events"].get(role, {})},
                      end={"complete": config["complete"]}, size=0)
        session = Session("replay", trace=trace, quiet=True, role=role,
                          settings={"report_path": f"{config['base']}.{role}.json"})
    session.install(worker_sources())
    return session
