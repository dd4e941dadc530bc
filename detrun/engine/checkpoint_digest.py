"""Digests of a written file that a replay can compare part by part: tensors, lines or bytes.

A checkpoint's bytes are not its content: torch.save writes a random serialization id into every
archive, Keras a save date. So checkpoints are digested by tensor (and named by the first tensor
that differs), text files by masked line (the stdout mask: a log's durations and timestamps vary),
everything else by sha256:

- a torch.save zip: torch.load(weights_only=True, map_location="cpu"), only when the program
  imported torch itself; each tensor's dtype, shape and word sum (engine/digests.py), each other
  leaf by its repr. Without torch (or when weights_only refuses it): by zip member, the
  serialization id left out;
- a Keras .keras archive: its weights (.h5) by dataset and config.json, when the program imported
  h5py (Keras does); an .h5 file by dataset, likewise; any other zip by member, a JSON member
  without its `date_saved`;
- .npy/.npz: numpy.load(allow_pickle=False), only when the program imported numpy;
- safetensors: its JSON header and each tensor's byte range, parsed here (safetensors not imported);
- text (UTF-8 without NUL, up to TEXT_LIMIT): the crc32 of each masked line, the lines themselves
  for short files;
- anything else: sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import sys
import zipfile
import zlib
from typing import Any, Iterator

from detrun.engine.digests import tensor_word_sum
from detrun.engine.line_mask import MASK, mask_line

TEXT_LIMIT = 16 << 20
KEPT_TEXT_LINES = 200
MAX_TEXT_LINES = 500_000  # the `file.output` schema takes 1M line crcs; longer text is compared by sha256
MAX_TENSORS = 100_000
_SERIALIZATION_ID = ".data/serialization_id"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
VALUE_MARK = "value:"
# A CSV column whose name says it holds a duration or a rate (`epoch_time`, `elapsed`, `samples_per_sec`).
_TIMING_COLUMN = re.compile(r"(?i)time|duration|elapsed|runtime|seconds|per_s|speed|throughput|timestamp|date")


def digest_file(path: str, offset: int = 0) -> dict[str, Any]:
    """Return the comparable digest of a file (from `offset`: what a run appended) as a `file.output` payload."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        handle.seek(0, 2)
        size = handle.tell()
    digest: dict[str, Any] | None = None
    if offset:
        pass  # appended to a file the run found: only its own part, as text or bytes
    elif head.startswith(b"PK\x03\x04"):
        digest = _zip_digest(path)
    elif head.startswith(b"\x93NUMPY"):
        digest = _numpy_digest(path)
    elif len(head) == 8 and path.endswith(".safetensors"):
        digest = _safetensors_digest(path, struct.unpack("<Q", head)[0], size)
    elif head.startswith(_HDF5_SIGNATURE):
        digest = _hdf5_digest(path)
    if digest is None:
        digest = _text_or_bytes(path, size, min(offset, size))
    digest["size"] = size - min(offset, size)
    return digest


def _items(format_name: str, items: Iterator[tuple[str, str]]) -> dict[str, Any]:
    tensors = []
    for item in items:
        tensors.append([item[0][:4096], item[1][:4096]])
        if len(tensors) >= MAX_TENSORS:
            break
    return {"format": format_name, "tensors": tensors}


def _zip_digest(path: str) -> dict[str, Any] | None:
    if path.endswith(".npz"):
        return _numpy_digest(path)
    torch = sys.modules.get("torch")
    if torch is not None and _is_torch_zip(path):
        try:
            loaded = torch.load(path, weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - not weights-only content: compare its members instead
            loaded = None
        else:
            return _items("torch", _leaves(torch, loaded, ""))
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.filename.endswith(_SERIALIZATION_ID)]
            weights = [name for name in names if name.endswith(".h5")]
            if path.endswith(".keras") and weights and "h5py" in sys.modules:
                # A Keras archive: its weights file by dataset; config.json compared too, metadata.json
                # (the Keras version and the save date) left out.
                items = [(f"{name}:{dataset}", digest) for name in weights
                         for dataset, digest in _hdf5_items(io.BytesIO(archive.read(name)))]
                items += [(name, _member_digest(archive, name)) for name in names
                          if name not in weights and name != "metadata.json"]
                return _items("keras", iter(items))
            return _items("zip", ((name, _member_digest(archive, name)) for name in names))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _hdf5_digest(path: str) -> dict[str, Any] | None:
    if "h5py" not in sys.modules:  # only when the program imported it (Keras does, to save .h5)
        return None
    try:
        return _items("hdf5", iter(_hdf5_items(path)))
    except Exception:  # noqa: BLE001 - a file h5py cannot read: compare its bytes
        return None


def _hdf5_items(source: Any) -> list[tuple[str, str]]:
    """Return (dataset name, dtype, shape and digest of its values) for every dataset of an HDF5 file."""
    h5py = sys.modules["h5py"]
    items: list[tuple[str, str]] = []
    with h5py.File(source, "r") as handle:
        def visit(name: str, node: Any) -> None:
            if isinstance(node, h5py.Dataset):
                values = node[()]
                data = values.tobytes() if hasattr(values, "tobytes") else repr(values).encode()
                items.append((name, f"{node.dtype.str}{list(node.shape)}:"
                                    f"{hashlib.blake2b(data, digest_size=8).hexdigest()}"))
        handle.visititems(visit)
    return items


def _is_torch_zip(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") for name in archive.namelist()[:8])
    except (zipfile.BadZipFile, OSError):
        return False


def _member_digest(archive: zipfile.ZipFile, name: str) -> str:
    data = archive.read(name)
    if name.endswith(".json"):
        try:
            document = json.loads(data)
        except ValueError:
            pass
        else:
            if isinstance(document, dict):
                document.pop("date_saved", None)  # Keras writes the save time into metadata.json
            data = json.dumps(document, sort_keys=True).encode()
    return f"sha256:{hashlib.sha256(data).hexdigest()[:32]}"


def _leaves(torch: Any, value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    """Yield (dotted name, digest) for every leaf of a loaded checkpoint, in its own order."""
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            value = value.to_dense()
        yield prefix or "<tensor>", f"{str(value.dtype).replace('torch.', '')}{list(value.shape)}:" \
                                    f"{tensor_word_sum(torch, value):016x}"
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(torch, item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(torch, item, f"{prefix}.{index}" if prefix else str(index))
    else:
        # Not a tensor: an epoch counter, a timestamp, a path. Marked so a difference there stays a cause.
        yield prefix or "<value>", f"{VALUE_MARK}{type(value).__name__}:{zlib.crc32(repr(value).encode()):08x}"


def _numpy_digest(path: str) -> dict[str, Any] | None:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    try:
        loaded = numpy.load(path, allow_pickle=False)
        if isinstance(loaded, numpy.ndarray):
            return _items("numpy", iter([("<array>", _array_digest(loaded))]))
        with loaded:
            return _items("numpy", ((name, _array_digest(loaded[name])) for name in loaded.files))
    except Exception:  # noqa: BLE001 - pickled object arrays, a truncated file: compare the bytes
        return None


def _array_digest(array: Any) -> str:
    data = array.tobytes()
    return f"{array.dtype.str}{list(array.shape)}:{hashlib.blake2b(data, digest_size=8).hexdigest()}"


def _safetensors_digest(path: str, header_size: int, size: int) -> dict[str, Any] | None:
    if header_size > min(size - 8, 100 << 20):
        return None
    with open(path, "rb") as handle:
        handle.seek(8)
        try:
            header = json.loads(handle.read(header_size))
        except ValueError:
            return None
        if not isinstance(header, dict):
            return None
        items = []
        for name, entry in header.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                items.append((str(name), f"json:{zlib.crc32(json.dumps(entry, sort_keys=True).encode()):08x}"))
                continue
            start, end = (entry.get("data_offsets") or [0, 0])[:2]
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= size):
                return None
            handle.seek(8 + header_size + start)
            data = handle.read(end - start)
            items.append((str(name), f"{entry.get('dtype')}{entry.get('shape')}:"
                                     f"{hashlib.blake2b(data, digest_size=8).hexdigest()}"))
    return _items("safetensors", iter(items))


def _text_or_bytes(path: str, size: int, offset: int) -> dict[str, Any]:
    with open(path, "rb") as handle:
        # Appended rows of a CSV log are masked by the columns of the header at the file's start.
        header = handle.readline(4096).decode("utf-8", "replace").rstrip("\r\n") if offset else None
        handle.seek(offset)
        data = handle.read(TEXT_LIMIT + 1) if size - offset <= TEXT_LIMIT else b""
    if data and b"\0" not in data[:8192]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            split = text.splitlines()
            if len(split) > MAX_TEXT_LINES:
                return {"format": "bytes", "sha256": hashlib.sha256(data).hexdigest()}
            lines = _mask_columns([mask_line(line) for line in split], header)
            digest: dict[str, Any] = {"format": "text", "lines": struct.pack(
                f"<{len(lines)}I", *(zlib.crc32(line.encode()) for line in lines))}
            if len(lines) <= KEPT_TEXT_LINES:
                digest["text"] = [line[:1000] for line in lines]  # the schema's 4096 bytes, in any script
            return digest
    sha = hashlib.sha256(data) if data else _file_sha(path, offset)
    return {"format": "bytes", "sha256": sha.hexdigest()}


def _mask_columns(lines: list[str], header: str | None = None) -> list[str]:
    """Mask the columns of a CSV/TSV log whose header names a duration, rate or time (their values vary).

    `header`: the file's first line when `lines` are what a run appended after it.
    """
    first = header if header is not None else lines[0] if lines else ""
    separator = "," if first.count(",") else "\t" if first.count("\t") else None
    if separator is None:
        return lines
    timed = {index for index, name in enumerate(first.split(separator)) if _TIMING_COLUMN.search(name)}
    if not timed:
        return lines
    masked = [] if header is not None else lines[:1]
    for line in lines[len(masked):]:
        fields = line.split(separator)
        masked.append(separator.join(MASK if i in timed and f else f for i, f in enumerate(fields)))
    return masked


def _file_sha(path: str, offset: int) -> Any:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(1 << 20):
            sha.update(chunk)
    return sha


def first_difference(recorded: dict[str, Any], observed: dict[str, Any]) -> tuple[str, bool] | None:
    """Return what differs between two digests of a file, and whether it is content the verdict can trust.

    A tensor that differs decides the verdict (`tensor 'conv1.weight' differs`). A masked text line,
    a checkpoint's other values or an opaque binary file may hold what detrun does not replay (the
    clock: a time-derived seed written to metrics.json, a run's duration, an id): a cause only, so
    that they never make a false DIVERGED; the training state they report is checked step by step.
    """
    if recorded.get("tensors") is not None and observed.get("tensors") is not None:
        mine = {name: digest for name, digest in observed["tensors"]}
        opaque = recorded.get("format") == "zip"
        for name, digest in recorded["tensors"]:
            if name not in mine:
                return f"tensor {name!r} is missing", not opaque
            if mine[name] != digest:
                trusted = not opaque and not digest.startswith(VALUE_MARK) and not mine[name].startswith(VALUE_MARK)
                return (f"{'tensor' if trusted else 'entry'} {name!r} differs", trusted)
        theirs = {name for name, _ in recorded["tensors"]}
        extra = [name for name, _ in observed["tensors"] if name not in theirs]
        return (f"tensor {extra[0]!r} was not in the recording's file", not opaque) if extra else None
    if recorded.get("lines") is not None and observed.get("lines") is not None:
        difference = _line_difference(recorded, observed)
        return (difference, False) if difference else None
    if recorded.get("format") != observed.get("format"):
        return f"written as {observed.get('format')} where the recording wrote {recorded.get('format')}", False
    if recorded.get("sha256") != observed.get("sha256"):
        return (f"bytes differ (sha256 {str(recorded.get('sha256'))[:8]}… → {str(observed.get('sha256'))[:8]}…, "
                f"{recorded.get('size')} → {observed.get('size')} bytes)", False)
    return None


def _line_difference(recorded: dict[str, Any], observed: dict[str, Any]) -> str | None:
    old, new = recorded["lines"], observed["lines"]
    old_crcs = struct.unpack(f"<{len(old) // 4}I", old)
    new_crcs = struct.unpack(f"<{len(new) // 4}I", new)
    for index, (a, b) in enumerate(zip(old_crcs, new_crcs)):
        if a != b:
            text_old, text_new = recorded.get("text"), observed.get("text")
            if text_old and text_new and index < min(len(text_old), len(text_new)):
                return f"line {index + 1} differs: recorded {text_old[index][:80]!r}, got {text_new[index][:80]!r}"
            return f"line {index + 1} differs"
    if len(old_crcs) != len(new_crcs):
        return f"has {len(new_crcs)} lines, the recording's {len(old_crcs)}"
    return None

