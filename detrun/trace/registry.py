"""Every event kind of a trace, declared once: its name, payload schema, version and purpose.

The sources import their kind names from here, the writer writes them, and the reader checks
every payload against its kind's schema as it reads it, so a source only ever sees values of the
types it wrote (a trace from a stranger can hand `np.random.seed` nothing numpy would refuse).
The header, the end record and the segment markers have schemas here too.

Payload shapes follow the sources that write them (detrun/engine/sources/*.py). `site` is the
`file:line` of the call (engine/call_sites.py). Ranges are those the consuming API accepts, so a
value that passes is a value the program could have been given when recording.
"""
from __future__ import annotations

from typing import NamedTuple

from detrun.trace.schema import (
    Bool,
    Bytes,
    Check,
    Data,
    Float,
    Int,
    ListOf,
    MapOf,
    Null,
    OneOf,
    Record,
    Schema,
    Str,
    Tuple,
)

# ------------------------------------------------------------------ shared pieces

U32 = Int(0, (1 << 32) - 1)
U63 = Int(0, (1 << 63) - 1)
U64 = Int(0, (1 << 64) - 1)
I64 = Int(-(1 << 63), (1 << 63) - 1)
TORCH_SEED_VALUE = Int(-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed accepts
STEP_COUNT = Int(0, (1 << 63) - 1)  # an optimizer step count
SMALL = Int(0, (1 << 31) - 1)  # loader ids, epochs, batch numbers, optimizer indices
# Python's int() -> str limit is 4,300 digits; 8,192 bits is 2,467 digits, so every int a trace
# holds can still be printed.
BIG_INT = Int(-(1 << 8192), 1 << 8192)
SITE = Str(4096)
NAME = Str(256)
THREAD_COUNT = Int(1, 1 << 16)
DATA = Data()
SMALL_DATA = Data(max_depth=3, max_len=4096)
PACKED_WIDTHS = (1, 2, 4, 8)  # detrun.trace.format.pack_indices


def _packed_ok(value: list[object]) -> bool:
    width, data = value
    return width in PACKED_WIDTHS and len(data) % width == 0  # type: ignore[arg-type, operator]


# [width, bytes] as written by pack_indices, or a plain list of ids
PACKED_IDS = OneOf(Check(Tuple(Int(1, 8), Bytes(1 << 24)), _packed_ok, "packed ids need width 1, 2, 4 or 8 "
                         "and a whole number of words"),
                   ListOf(U64, 1 << 21))


def _seeded(value: Schema) -> Schema:
    """Return the schema of an `exchange` payload: [site, value]."""
    return Tuple(SITE, value)


# ------------------------------------------------------------------ the registry


# A NamedTuple, not a dataclass: a replay's launcher validates the trace's header with this module
# before its child starts, and dataclasses would bring inspect (~5 ms of start-up).
class EventKind(NamedTuple):
    """One kind of event: its stable name, payload schema and version, and what it is for.

    `fed_back`: replay hands the value back to the program (changing it changes the run).
    `streamed`: one event per training step, read lazily as the replay consumes it, never held.
    """

    name: str
    version: int
    schema: Schema
    purpose: str
    source: str
    fed_back: bool = False
    streamed: bool = False


KINDS: dict[str, EventKind] = {}


def _declare(name: str, version: int, schema: Schema, purpose: str, source: str, *, fed_back: bool = False,
             streamed: bool = False) -> str:
    assert name not in KINDS, f"event kind {name} declared twice"
    KINDS[name] = EventKind(name, version, schema, purpose, source, fed_back, streamed)
    return name


def kind(name: str) -> EventKind | None:
    """Return the declaration of an event kind, or None for a name detrun does not know."""
    return KINDS.get(name)


def current_version(name: str) -> int:
    """Return the payload version this detrun writes a kind's events in (1 for a name it does not know)."""
    declared = KINDS.get(name)
    return declared.version if declared is not None else 1


# --- Python, OS entropy, NumPy (also recorded inside DataLoader workers)

OS_ENTROPY = _declare(
    "os.entropy", 1, _seeded(Bytes(1 << 24)),
    "bytes returned by os.urandom/os.getrandom (SystemRandom, secrets, uuid4 read them)", "os_entropy", fed_back=True)
PY_SEED = _declare(
    "py.seed", 1, _seeded(OneOf(BIG_INT, Bool, Float(), Str(1 << 20), Bytes(1 << 20))),
    "every seed that reaches random.Random.seed (None is recorded as the seed drawn for it)",
    "python_random", fed_back=True)
NP_SEED = _declare(
    "np.seed", 1, _seeded(OneOf(U32, ListOf(U32, 1 << 16, min_len=1))),
    "numpy.random.seed() values (the legacy global RandomState); numpy's own accepted range",
    "numpy_random", fed_back=True)
NP_DEFAULT_RNG = _declare(
    "np.default_rng", 1, _seeded(Int(0, (1 << 128) - 1)),
    "the 128-bit seed handed to numpy.random.default_rng() called without one", "numpy_random", fed_back=True)

# --- an in-process block's start (detrun.api)


def _mt_words_ok(value: list[object]) -> bool:
    return len(value[1]) == 625 * 4 and int.from_bytes(value[1][-4:], "little") <= 624  # type: ignore[arg-type, index]


def _np_words_ok(value: list[object]) -> bool:
    return len(value[0]) == 624 * 4  # type: ignore[arg-type]


BLOCK_RNG_STATES = _declare(
    "block.rng_states", 1,
    Record(required={"python": Check(Tuple(Int(1, 3), Bytes(625 * 4), OneOf(Null, Float())), _mt_words_ok,
                                     "625 words, the last a position of at most 624")},
           optional={"numpy": Check(Tuple(Bytes(624 * 4), Int(0, 624), Int(0, 1), Float()), _np_words_ok,
                                    "624 words"),
                     "torch": Bytes(1 << 16), "cuda": ListOf(Bytes(1 << 16), 256)}),
    "the global generators' exact states when an in-process block started", "block_rng_state", fed_back=True)

# --- torch seeds

TORCH_INITIAL_SEED = _declare(
    "torch.initial_seed", 1, _seeded(U64), "torch.initial_seed() when torch was imported", "torch_random",
    fed_back=True)
TORCH_SEED = _declare(
    "torch.seed", 1, _seeded(TORCH_SEED_VALUE), "the seed torch.seed() drew", "torch_random", fed_back=True)
TORCH_MANUAL_SEED = _declare(
    "torch.manual_seed", 1, _seeded(TORCH_SEED_VALUE), "torch.manual_seed(x) values (x may come from the clock)",
    "torch_random", fed_back=True)
TORCH_CUDA_SEED = _declare(
    "torch.cuda.seed", 1, _seeded(TORCH_SEED_VALUE), "the seed torch.cuda.seed()/seed_all() drew", "torch_random",
    fed_back=True)
TORCH_GENERATOR_SEED = _declare(
    "torch.Generator.seed", 1, _seeded(TORCH_SEED_VALUE), "the seed torch.Generator().seed() drew", "torch_random",
    fed_back=True)

# --- threads, backend flags, policy, torch's view of the environment

TORCH_THREADS = _declare(
    "threads", 1, Tuple(THREAD_COUNT, THREAD_COUNT), "[intra_op, inter_op] torch thread counts at import; pinned on replay",
    "thread_counts", fed_back=True)
FLAG_VALUE = OneOf(Null, Bool, BIG_INT, Float(), Str(256), ListOf(OneOf(Null, Bool, BIG_INT, Float(), Str(256)), 64))
FLAGS = MapOf(NAME, FLAG_VALUE, 4096)
BACKENDS = _declare(
    "backends", 1, FLAGS, "{flag: value} of every cuDNN/cuBLAS/TF32/SDPA/oneDNN flag at torch import; pinned",
    "backend_flags", fed_back=True)
BACKENDS_SET = _declare(
    "backends.set", 1, Tuple(STEP_COUNT, SITE, NAME, FLAGS),
    "[step, site, api, {flag: new value}] for each call that changed backend flags", "backend_flags", fed_back=True)
THREADS_SET = _declare(
    "threads.set", 1, Tuple(STEP_COUNT, SITE, NAME, Tuple(THREAD_COUNT, THREAD_COUNT)),
    "[step, site, api, [intra_op, inter_op]] for each torch.set_num_threads/set_num_interop_threads",
    "backend_flags")
ENV_TORCH = _declare(
    "env.torch", 1, MapOf(NAME, SMALL_DATA, 1024), "torch's build facts at import (compared, never fed back)",
    "backend_flags")
ENV_CUDA = _declare(
    "env.cuda", 1, MapOf(NAME, SMALL_DATA, 1024), "cuDNN/NCCL versions and devices once CUDA is initialised",
    "backend_flags")
POLICY = _declare(
    "policy", 1, Record(optional={"policy": OneOf(Null, NAME), "patches": ListOf(NAME, 4096),
                                  "flags": MapOf(NAME, SMALL_DATA, 4096)}),
    "the determinism policy applied at torch import: its name, patches and flags", "determinism_policy")

# --- CUDA kernels of the first K steps

KERNELS = _declare(
    "kernels", 1, OneOf(
        Record(required={"step": STEP_COUNT, "skipped": Str(4096)}),
        Record(required={"step": STEP_COUNT, "strings": ListOf(Str(1 << 16), 1 << 20), "kernels": PACKED_IDS,
                         "ops": PACKED_IDS}, optional={"truncated": STEP_COUNT})),
    "the CUDA kernel names launched in one of the first K optimizer steps (a growing string table)",
    "cuda_kernels")

# --- op output digests of chosen steps (`record --op-digests K`, for `detrun explain`)

OP_DIGESTS = _declare(
    "op.digests", 1, OneOf(
        Record(required={"step": STEP_COUNT, "skipped": Str(4096)}),
        Record(required={"step": STEP_COUNT, "strings": ListOf(Str(4096), 1 << 20), "ops": PACKED_IDS,
                         "digests": PACKED_IDS}, optional={"truncated": STEP_COUNT})),
    "[step, op keys, 32-bit digest of each op's outputs] of the first K and every Nth optimizer step "
    "(a growing string table); compared op by op on replay", "op_digests", streamed=True)

# --- the DataLoader

DL_EPOCH = _declare(
    "dl.epoch", 1, Tuple(SMALL, SMALL, OneOf(Null, U63), OneOf(Null, U63), NAME),
    "[loader, epoch, dataset_len, base_seed, sampler] when a DataLoader epoch starts; the base seed is fed back",
    "dataloader", fed_back=True)


def _indices_ok(value: list[object]) -> bool:
    width, packed = value[2], value[3]
    if width == 0:
        return type(packed) is list
    return width in PACKED_WIDTHS and type(packed) is bytes and len(packed) % width == 0  # type: ignore[operator]


DL_INDICES = _declare(
    "dl.indices", 1,
    Check(Tuple(SMALL, SMALL, Int(0, 8), OneOf(Bytes(1 << 24), ListOf(SMALL_DATA, 1 << 21)), Bool), _indices_ok,
          "packed indices need width 1, 2, 4 or 8 and a whole number of words (width 0: a plain list)"),
    "[loader, epoch, width, packed, scalar]: one index or batch of indices the sampler yielded; forced on replay",
    "dataloader", fed_back=True)
# dl.batch and dl.fetched version 2: a field's digest is the low 32 bits of XXH3 of its bytes (version
# 1: crc32, some six times slower); a replay digests with the version its trace recorded.
DL_BATCH = _declare(
    "dl.batch", 2, Tuple(SMALL, SMALL, SMALL, ListOf(U32, 1 << 16)),
    "[loader, epoch, batch, [digest per field]] of every collated batch; checked on replay", "dataloader")
DL_FETCHED = _declare(
    "dl.fetched", 2,
    Check(Tuple(SMALL, SMALL, Int(0, 8), OneOf(Bytes(1 << 24), ListOf(SMALL_DATA, 1 << 21)), Bool,
                OneOf(Null, ListOf(U32, 1 << 16))), _indices_ok,
          "packed indices need width 1, 2, 4 or 8 and a whole number of words (width 0: a plain list)"),
    "in a DataLoader worker's segment: [pass, batch, width, packed, scalar, [digest per field] or null] for "
    "each batch the worker was sent (pass counts a persistent worker's epochs); the indices are forced and "
    "the digests checked on replay", "dataloader", fed_back=True)

# --- file-listing order

FS_LISTING = _declare(
    "fs.listing", 1, _seeded(ListOf(Str(4096), 1 << 21)),
    "the names os.listdir/os.scandir returned, in order; that order is replayed for the same names",
    "listing_order", fed_back=True)

# --- per-step digests (streamed: the only kinds that grow with the length of training)

# `lanes`, by payload version: 1 byte per lane (the low byte of each parameter's 64-bit word sum) in
# version 1; 2 bytes per lane (the 16-bit fold of all 64 bits) in version 2, so a change to any word of
# a parameter shows in its lane, and a chance collision hides it 1 time in 65,536 instead of 256.
STEP_PAYLOAD = Tuple(SMALL, OneOf(Null, Float()), OneOf(Null, U32), Bytes(32))


def step_lane_bytes(version: int) -> int:
    """Return the bytes per lane of a step event of this payload version."""
    return 1 if version == 1 else 2


STEP = _declare(
    "step", 2, STEP_PAYLOAD,
    "[optimizer_index, loss, digest, lanes] after every torch optimizer step: the state check", "torch_steps",
    streamed=True)
STEP_NAMES = _declare(
    "step.names", 1, Tuple(SMALL, ListOf(Str(4096), 1 << 20)),
    "[optimizer_index, names] of an optimizer's parameters, once when it first steps (names the lanes of its steps)",
    "torch_steps")
TF_STEP = _declare(
    "tf.step", 2, STEP_PAYLOAD, "[optimizer_index, loss, digest, lanes] after every TensorFlow/Keras training step",
    "tf_steps", streamed=True)

# --- TensorFlow and Keras

TF_SEED = _declare(
    "tf.seed", 1, _seeded(OneOf(TORCH_SEED_VALUE, ListOf(TORCH_SEED_VALUE, 16, min_len=1))),
    "tf.random.set_seed / set_random_seed / Generator.from_seed values", "tf_runtime", fed_back=True)
TF_GLOBAL_SEED = _declare(
    "tf.global_seed", 1, _seeded(Int(0, (1 << 31) - 1)), "the global seed injected when TensorFlow had none",
    "tf_runtime", fed_back=True)
TF_GENERATOR = _declare(
    "tf.generator", 1, _seeded(ListOf(I64, 16, min_len=1)),
    "the state of tf.random.Generator.from_non_deterministic_state()", "tf_runtime", fed_back=True)
TF_THREADS = _declare(
    "tf.threads", 1, Tuple(Int(0, 1 << 16), Int(0, 1 << 16)), "[intra_op, inter_op] TensorFlow thread pool sizes",
    "tf_runtime", fed_back=True)
KERAS_SEED = _declare(
    "keras.seed", 1, _seeded(TORCH_SEED_VALUE), "keras.utils.set_random_seed() values", "tf_runtime", fed_back=True)
TF_TIMESTAMP = _declare(
    "tf.timestamp", 1, _seeded(Float()), "values of tf.timestamp(), which op determinism refuses to run",
    "tf_runtime", fed_back=True)

# --- kinds that main's verdict work added after this registry was written (final state, output,
# interrupts, written directories, losses before the first step); declared here so that their traces
# read once the branches meet.

BACKWARD_LOSS = _declare(
    "backward.loss", 1, OneOf(Null, Float()),
    "the loss of each backward() before the first optimizer step (checked; grows with a run that never steps)",
    "torch_steps", streamed=True)
FINAL_STATE = _declare(
    "final.state", 1, Record(required={"items": ListOf(Tuple(Str(4096), U64, Str(4096)), 100_001)},
                             optional={"count": STEP_COUNT}),
    "[key, digest, label] of every model, optimizer, __main__ weight and RNG state at the end (checked)",
    "final_state")
STDOUT = _declare(
    "stdout", 1, Record(optional={"lines": ListOf(Str(1 << 16), 1 << 20), "count": STEP_COUNT, "rest": U32}),
    "the script's stdout lines, masked, and a checksum of those past the kept ones (checked)", "stdout_lines")
SIGNAL = _declare(
    "signal", 1, Tuple(STEP_COUNT, STEP_COUNT, Int(1, 64), Int(0, 2)),
    "[steps, backward_calls, signum, last_event] of a SIGINT/SIGTERM the script caught; delivered there on replay",
    "interrupts", fed_back=True)
FS_WRITTEN = _declare(
    "fs.written", 1, ListOf(Str(4096), 1 << 16), "the directories the run created or wrote into (at the end)",
    "listing_order")

# ------------------------------------------------------------------ processes of a launched command (ranks)

OPTIONAL_RANK = OneOf(Null, Int(0, 10_000_000))
PROCESS_KEY = Record(required={"role": Str(128, r"[A-Za-z0-9_.\-]+")},
                     optional={name: OPTIONAL_RANK for name in ("rank", "local_rank", "node_rank", "world_size",
                                                                  "local_world_size")})
PROCESS = _declare(
    "process", 1, PROCESS_KEY,
    "the process's place in a distributed run, from its launcher's environment (first event of its segment)",
    "_child")
PROCESS_END = _declare(
    "process.end", 1, Record(optional={
        "complete": Bool, "reason": Str(4096), "exit_status": OneOf(Null, Int(-(1 << 31), (1 << 31) - 1)),
        "steps": STEP_COUNT, "final_digest": OneOf(Null, U32), "hook_failures": ListOf(Str(1 << 16), 1024)}),
    "how a rank's process ended: its end record inside the command's trace (last event of its segment)",
    "process_segments")
DIST_INIT = _declare(
    "dist.init", 1, Record(optional={"backend": Str(64), "rank": OPTIONAL_RANK, "world_size": OPTIONAL_RANK,
                                     "nccl_version": OneOf(Null, Str(32)), "site": SITE}),
    "torch.distributed.init_process_group: the backend, rank and world size it set up (compared)",
    "distributed")
DDP_CONFIG = _declare(
    "ddp.config", 1, MapOf(NAME, FLAG_VALUE, 64),
    "the bucketing and synchronisation settings of each DistributedDataParallel the run built (compared)",
    "distributed")

# --- files the program reads and writes (file_inputs, file_outputs)

SHA256 = Str(64, r"[0-9a-f]{64}")
FILE_PATH = Str(4096)
FILE_INPUT = _declare(
    "file.input", 1, Record(required={"path": FILE_PATH, "read": STEP_COUNT, "size": U63, "mtime_ns": I64,
                                      "sha256": SHA256, "sampled": Bool},
                            optional={"lines": Bytes(1 << 20), "step": STEP_COUNT}),
    "a file the program opened for reading: its read ordinal (the first open is 1), size, mtime and sha256 "
    "(sampled for large files), one per version seen; checked when the replay opens it", "file_inputs")
FILE_KEPT = _declare(
    "file.kept", 1, Record(required={"path": FILE_PATH, "read": STEP_COUNT, "sha256": SHA256, "kept": Bool}),
    "an input the run overwrote or removed after reading it: the full sha256 of the version it read, and whether "
    "a copy is kept in the `<trace>.inputs/` directory (named by that sha256) for the replay to read",
    "file_inputs", fed_back=True)
FILE_OUTPUT = _declare(
    "file.output", 1, Record(required={"path": FILE_PATH, "version": STEP_COUNT, "size": U63, "format": NAME},
                             optional={"sha256": SHA256, "appended": Bool, "tensors": ListOf(Tuple(Str(4096), Str(4096)), 1 << 20),
                                       "lines": Bytes(1 << 22), "text": ListOf(Str(1 << 12), 1 << 12)}),
    "a file the program wrote, one per version: checkpoints by tensor, text by masked line, others by sha256 "
    "(checked)", "file_outputs")

# ------------------------------------------------------------------ header, end record, segments

# Child processes write their events in segments named after their role (`dl0.i1.w2`).
ROLE = Str(128, r"[A-Za-z0-9_.\-]+")
SEGMENT_MARKER = Record(required={"segment": ROLE})

# A declaration `[kind_id, name]` (or `[kind_id, name, payload_version]` for versions after 1).
KIND_ID = Int(2, (1 << 31) - 1)
DECLARATION = OneOf(Tuple(KIND_ID, Str(128)), Tuple(KIND_ID, Str(128), Int(1, 1 << 16)))


def _hashseed_ok(value: str) -> bool:
    return int(value) <= (1 << 32) - 1  # PYTHONHASHSEED's own range


HASHSEED = Check(Str(10, r"[0-9]{1,10}"), _hashseed_ok, "hashseed must be in [0, 4294967295]")
SETTINGS = Record(optional={
    # Python refuses to start on any other value, before detrun could say why.
    "hashseed": HASHSEED,
    "hashseed_from_user": Bool,
    # Only thread-count variables with numeric values; the launcher restores these into the child.
    "thread_env": MapOf(Str(64, r"[A-Z][A-Z0-9_]*_THREADS"), OneOf(Null, Str(32, r"[0-9, ]*")), 64),
    "digest_every": Int(0, (1 << 31) - 1),  # 0: auto (engine/digest_cadence.py)
    "digest_last_step": Bool,
    "policy": Str(16, r"strict|minimal|off"),
    "policy_ops": ListOf(NAME, 4096),
    "tf_op_determinism": Bool,
    "kernel_steps": Int(0, 1 << 20),
    # Op output digests: the first `op_digests` optimizer steps, and every `op_digest_every`th (0: none).
    "op_digests": Int(0, 1 << 20),
    "op_digest_every": Int(0, (1 << 31) - 1),
    # Recorded by detrun.api in the recording's own process (no child, no script, no hash seed set).
    "in_process": Bool,
    # hash() of a fixed str in that process: which hash seed it ran with, without revealing it.
    "hash_probe": Int(0, (1 << 64) - 1),
    # `detrun record -- COMMAND`: the collective-algorithm variables the launcher pinned for every rank
    # (strict policy); replay pins them again, after checking each against engine.collectives' list.
    "nccl_env": MapOf(Str(64, r"NCCL_[A-Z0-9_]+"), Str(64, r"[A-Za-z0-9_,^:.\-]*"), 16),
    # How many bytes of overwritten inputs a recording keeps beside its trace (record --keep-inputs).
    "keep_inputs": Int(0, 1 << 62),
})
ENV_FINGERPRINT = Record(optional={name: MapOf(NAME, DATA, 4096) for name in ("python", "os", "cpu", "libraries")},
                         extra=DATA)
HEADER = Record(
    required={"format": Str(64), "version": Int(0, (1 << 31) - 1)},
    optional={
        "detrun_version": Str(64),
        "created": Str(64),
        "env": ENV_FINGERPRINT,
        "script": Record(optional={"name": Str(4096), "module": Bool, "path": OneOf(Null, Str(4096)),
                                   "sha256": OneOf(Null, Str(64, r"[0-9a-f]{64}"))}),
        "argv": ListOf(Str(1 << 16), 1 << 16),
        "command": ListOf(Str(1 << 16), 1 << 16),  # `detrun record -- COMMAND`: the command, as typed
        "cwd": Str(4096),
        # `detrun merge`: each node's environment and hash seed, by node rank
        "node_envs": MapOf(Str(16, r"[0-9]{1,6}"), ENV_FINGERPRINT, 4096),
        "node_hashseeds": MapOf(Str(16, r"[0-9]{1,6}"), HASHSEED, 4096),
        "node_commands": MapOf(Str(16, r"[0-9]{1,6}"), ListOf(Str(1 << 16), 1 << 16), 4096),
        "settings": SETTINGS,
    })
END_RECORD = Record(optional={
    "complete": Bool,
    "reason": Str(4096),
    "exit_status": OneOf(Null, Int(-(1 << 31), (1 << 31) - 1)),
    "steps": STEP_COUNT,
    "final_digest": OneOf(Null, U32),
    "counts": MapOf(Str(128), STEP_COUNT, 4096),
    "hook_failures": ListOf(Str(1 << 16), 1024),
})
