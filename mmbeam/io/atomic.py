"""Local files that appear whole or not at all, even when the writer is killed, inside their folder.

:func:`write_atomic` writes the bytes to an unnamed file in the target's folder (Linux
``O_TMPFILE``) and links it into place once complete: a writer killed mid-write (SIGKILL, OOM
kill) leaves no file at all, and the kernel frees its blocks; no later cleanup is needed and no
reader can see a partial file. Replacing a file that is already there links the finished file
under a short hidden temporary name and renames it over the target (a kill between the two
leaves a complete hidden file). Where ``O_TMPFILE`` is missing (macOS, NFS, some FUSE mounts) the
bytes go to a short hidden temporary name and are renamed into place. Temporary names are at
most ~35 bytes, so every legal final name (up to 255 bytes) works.

:func:`check_inside` refuses a path whose folder resolves outside the destination root (a symlink
already in the destination that points elsewhere).

Hand-written because mmbeam's guarantees (no visible partial file after SIGKILL, no temp name
longer than the final one) are not what ``tempfile``/``atomicwrites``-style helpers give.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os

from mmbeam.errors import UnsafePathError

__all__ = ["check_inside", "write_atomic"]

_TOKEN = os.urandom(4).hex()  # with the pid: unique across hosts sharing a folder
_IDS = itertools.count()  # next() is atomic: unique across the threads of a process
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_EXCL = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
# an unnamed file is linked into place through /proc (linkat with AT_EMPTY_PATH needs a privilege)
_TMPFILE = getattr(os, "O_TMPFILE", 0) if os.path.isdir("/proc/self/fd") else 0
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS)
_checked: dict[tuple[str, str], None] = {}  # (root, folder) pairs found inside, per process
_root_fd: list[int] = []


def _link(fd: int, path: str) -> None:
    """Give the unnamed file ``fd`` the name ``path`` (FileExistsError if taken)."""
    if not _root_fd:  # any directory fd makes os.link call linkat(AT_SYMLINK_FOLLOW): plain
        _root_fd.append(os.open("/", os.O_RDONLY | _CLOEXEC))  # link() would not follow /proc
    os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=_root_fd[0], follow_symlinks=True)


def _temp_name(folder: str) -> str:
    return os.path.join(folder, f".mmbeam-{_TOKEN}{os.getpid():x}-{next(_IDS):x}.tmp")


def _open(folder: str) -> tuple[int, str | None]:
    """An fd to write to and its temporary name (None: an unnamed ``O_TMPFILE``). The folder is
    made only when the first open finds it missing: no mkdir call per file."""
    for attempt in (0, 1):
        try:
            if _TMPFILE:
                try:
                    return os.open(folder, _TMPFILE | os.O_WRONLY | _CLOEXEC, 0o666), None
                except OSError as exc:
                    if exc.errno not in _NO_TMPFILE:
                        raise
            temp = _temp_name(folder)
            return os.open(temp, _EXCL, 0o666), temp
        except FileNotFoundError:
            if attempt:
                raise
            os.makedirs(folder, exist_ok=True)
    raise AssertionError("unreachable")  # pragma: no cover


def write_atomic(path: str, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` to ``path`` so that no reader, and no crash, ever exposes a partial file."""
    folder = os.path.dirname(path) or "."
    fd, temp = _open(folder)
    try:  # from here on the temporary file is ours: removed on any failure
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if temp is None:  # an unnamed file: link it into place
                try:
                    _link(fd, path)
                    return
                except FileExistsError:  # link cannot replace: link beside it, rename over it
                    temp = _temp_name(folder)
                    _link(fd, temp)
            os.replace(temp, path)
        finally:
            os.close(fd)
    except BaseException:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.remove(temp)
        raise


def check_inside(root: str, path: str) -> None:
    """Raise UnsafePathError if ``path``'s folder, symlinks resolved, is not under ``root``.

    Each (root, folder) pair is resolved once per process: a symlink already in the destination
    is refused; one created while the pipeline runs is the writer of that folder's own doing.
    """
    folder = os.path.dirname(path)
    if (root, folder) in _checked:
        return
    real_root = os.path.realpath(root)
    real = os.path.realpath(folder)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"{path!r} would be written to {real!r}, outside the destination {real_root!r}: "
            "a symlink inside the destination points outside it"
        )
    if len(_checked) > 100_000:
        _checked.clear()
    _checked[(root, folder)] = None
