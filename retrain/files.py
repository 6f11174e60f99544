"""Files as retrain writes them: atomic, byte-reproducible safetensors, honouring the umask.

* ``atomic_write_bytes``: a reader sees the old file or the new one, never a part
  (``atomic_write_files``: several files, all or none).  The bytes go
  to ``.tmp-<pid>-<random>-<name>`` beside the target, are fsynced and renamed over it.  A process
  killed in between leaves its temporary file behind; the next write to the same target removes
  those of processes that no longer run (on this machine).  The new file gets the mode of the
  file it replaces, else ``0o666`` less the umask (as ``open`` would give), not mkstemp's 0600.
  A symbolic link is written through, as ``open(path, "w")``, ``torch.save`` and ``numpy.save``
  do (``write_target``): the file it leads to gets the new bytes and the link stays a link (a
  deployment link ``current -> v7/model.safetensors`` keeps pointing at v7), the temporary and
  the rename being in the target's folder, on the target's file system.
* ``safetensors_bytes``: the safetensors format (an 8-byte little-endian header length, a JSON
  header, the raw little-endian tensor bytes) with the header written deterministically (sorted
  keys, tensors in name order, no whitespace), so equal content gives equal bytes.
* ``read_safetensors``: tensors (numpy) and metadata of a safetensors file.
"""
from __future__ import annotations

import errno
import json
import os
import re
import struct
import tempfile

import numpy as np

from .errors import InputError

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64",
           np.dtype(np.int32): "I32", np.dtype(np.uint64): "U64", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
_TMP_PREFIX = ".tmp-"


def safetensors_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    """The safetensors file of ``tensors`` (name -> numpy array or CPU torch tensor) and
    ``metadata`` (str -> str), byte-for-byte the same for the same content."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(_numpy(tensors[name]))
        if array.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r}: dtype {array.dtype} is not stored by retrain")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def as_path(path, what: str) -> str:
    """``os.fspath(path)``, or InputError naming ``what`` for what is no path (an int, None: os's
    TypeError named neither the argument nor the value)."""
    try:
        return os.fspath(path)
    except TypeError:
        raise InputError(f"{what} must be a file path (str or os.PathLike), got {path!r}") from None


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; InputError when it is missing or not one."""
    from safetensors import safe_open

    path = as_path(path, "model file")
    if not os.path.isfile(path):
        raise InputError(f"model file {path} is a folder, expected a file" if os.path.isdir(path)
                         else f"model file not found: {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise InputError(f"{path}: not a safetensors file ({exc})") from None


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring); through ``path``'s
    symbolic links (``write_target``)."""
    atomic_write_files([(path, data)])


def atomic_write_files(files: list[tuple[object, bytes]]) -> None:
    """Write each ``(path, data)`` atomically, all or none: every temporary is written and fsynced
    before the first is renamed over its target, so a failure while writing (a full disk, a bad
    folder) leaves every target as it was.  (The renames themselves cannot fail for want of space;
    a process killed between two of them leaves the first file new and the second old.)

    Each path is written through its symbolic links (``write_target``); two paths that lead to
    the same file (the same name, or a link to the other) are an InputError before anything is
    written: one of the two contents would be lost."""
    targets = {}  # target -> the path given for it
    for path, _ in files:
        target = write_target(path)
        if target in targets:
            raise InputError(f"{os.fspath(path)} and {targets[target]} are the same file ({target}): two outputs "
                             "must name two files")
        targets[target] = os.fspath(path)
    staged = []  # (temporary, target)
    try:
        for target, (_, data) in zip(targets, files):
            staged.append((_write_temporary(target, data), target))
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise


def write_target(path) -> str:
    """The file that writing ``path`` writes, as an absolute path: ``path`` with every symbolic
    link resolved (``os.path.realpath``: each link of a chain, and links among its folders).

    A dangling link names the file to create, as ``open`` creates it, when that file's folder
    exists; else FileNotFoundError naming the link and its target.  A loop of links: OSError
    (ELOOP), as ``open`` raises; a folder: IsADirectoryError."""
    path = os.fspath(path)
    if os.path.isdir(path):  # else the rename fails, naming the temporary
        raise IsADirectoryError(errno.EISDIR, f"{os.strerror(errno.EISDIR)}, expected a file name", path)
    target = os.path.realpath(path)
    if os.path.islink(target):  # realpath stops at a loop
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    if os.path.islink(path) and not os.path.isdir(os.path.dirname(target)):
        raise FileNotFoundError(errno.ENOENT, f"{os.strerror(errno.ENOENT)}: the folder of {target}, where the "
                                "link leads", path)
    return target


def _write_temporary(path: str, data: bytes) -> str:
    """``data`` in a fsynced temporary beside ``path`` (a ``write_target``), with the mode
    ``path`` will have; its name."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    name = os.path.basename(path)
    remove_stale_temporaries(directory, name)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{_TMP_PREFIX}{os.getpid()}-", suffix=f"-{name}")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def remove_stale_temporaries(directory: str, name: str) -> list[str]:
    """Remove ``.tmp-<pid>-*-<name>`` files in ``directory`` whose process no longer runs; returns them."""
    pattern = re.compile(rf"^{re.escape(_TMP_PREFIX)}(\d+)-.+-{re.escape(name)}$")
    removed = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry)
        if match and not _process_runs(int(match.group(1))):
            try:
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
            except FileNotFoundError:  # another writer removed it first
                pass
    return removed


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a thread of ours may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _mode_for(path: str) -> int:
    """The permission bits of the file being replaced, else ``0o666`` less the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so that nothing changes it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path, what: str) -> None:
    """InputError unless a file could be written at ``path`` (the folder of its ``write_target``
    exists or can be created, and is writable; ``path`` is not a folder).  Lets a long run fail
    before it starts."""
    path = as_path(path, what)
    if not path:
        raise InputError(f"{what} is empty, expected a file name")
    if os.path.isdir(path) or not os.path.basename(path):  # "new/" names a folder too
        raise InputError(f"{what} {path} is a folder, expected a file name")
    try:
        directory = os.path.dirname(write_target(path))  # a link's target is what will be written
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be written: {exc.strerror}") from None
    existing = directory
    while not os.path.exists(existing):  # the folders that makedirs would create
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"{what} {path} cannot be written: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path} cannot be written (no write permission in {existing})")
