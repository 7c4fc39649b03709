"""Running an mfusepy ``Operations`` object on libfuse3 without ``fuse_main``.

``mfusepy.FUSE`` mounts through ``fuse_main_real``, which installs libfuse's own SIGINT,
SIGTERM and SIGHUP handlers wherever they are still the default: a SIGTERM would then only
end the FUSE loop (at its next request) instead of the process, and mirrord's supervisor
could not forward it. So this module drives libfuse itself — ``fuse_new``, ``fuse_mount``,
``fuse_loop_mt``, ``fuse_unmount``, ``fuse_destroy`` — and keeps mfusepy only for what it
is good at: the ctypes structures and the per-operation C ↔ Python translation.

The loop ends when the file system is unmounted (the kernel then fails the loop's reads
with ENODEV), which is how :class:`FuseDriver` is stopped.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import mfusepy

log = logging.getLogger("mirrord.fs.fuse")

_lib = mfusepy._libfuse


class _FuseArgs(ctypes.Structure):
    _fields_ = [
        ("argc", ctypes.c_int),
        ("argv", ctypes.POINTER(ctypes.c_char_p)),
        ("allocated", ctypes.c_int),
    ]


def _bind(name: str, restype: Any, *argtypes: Any) -> Any:
    function = getattr(_lib, name)
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


# Versioned entry points by their explicit names: the 3.1 fuse_new (args, ops, size,
# user data) and the 3.12 fuse_loop_mt (with a loop config object).
_fuse_new = _bind(
    "fuse_new_31",
    ctypes.c_void_p,
    ctypes.POINTER(_FuseArgs),
    ctypes.POINTER(mfusepy.fuse_operations),
    ctypes.c_size_t,
    ctypes.c_void_p,
)
_fuse_mount = _bind("fuse_mount", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)
_fuse_unmount = _bind("fuse_unmount", None, ctypes.c_void_p)
_fuse_destroy = _bind("fuse_destroy", None, ctypes.c_void_p)
_fuse_loop_mt = _bind("fuse_loop_mt_312", ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_loop_cfg_create = _bind("fuse_loop_cfg_create", ctypes.c_void_p)
_loop_cfg_destroy = _bind("fuse_loop_cfg_destroy", None, ctypes.c_void_p)
_loop_cfg_set_max_threads = _bind(
    "fuse_loop_cfg_set_max_threads", None, ctypes.c_void_p, ctypes.c_uint
)
_loop_cfg_set_idle_threads = _bind(
    "fuse_loop_cfg_set_idle_threads", None, ctypes.c_void_p, ctypes.c_uint
)

#: ``rename`` flags that are passed on (RENAME_NOREPLACE); others answer EINVAL.
RENAME_NOREPLACE = 1

# -- read_buf replies ------------------------------------------------------------------------
# ``read_buf`` answers a read with a ``struct fuse_bufvec`` that libfuse frees (and its
# memory regions) with free(): allocated with malloc here. (mfusepy declares the vector's
# buffer as a pointer; in libfuse it is an array inside the structure, declared here.)

_FUSE_BUF_IS_FD = 1 << 1
_FUSE_BUF_FD_SEEK = 1 << 2


class _FuseBuf(ctypes.Structure):
    _fields_ = [
        ("size", ctypes.c_size_t),
        ("flags", ctypes.c_int),
        ("mem", ctypes.c_void_p),
        ("fd", ctypes.c_int),
        ("pos", ctypes.c_int64),
    ]


class _FuseBufvec(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_size_t),
        ("idx", ctypes.c_size_t),
        ("off", ctypes.c_size_t),
        ("buf", _FuseBuf * 1),
    ]


_libc = ctypes.CDLL(None)
_malloc = _libc.malloc
_malloc.restype = ctypes.c_void_p
_malloc.argtypes = [ctypes.c_size_t]


def _new_bufvec(bufpp: Any) -> _FuseBuf:
    address = _malloc(ctypes.sizeof(_FuseBufvec))
    if not address:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
    vector = _FuseBufvec.from_address(address)
    vector.count, vector.idx, vector.off = 1, 0, 0
    bufpp[0] = ctypes.cast(address, type(bufpp[0]))
    return vector.buf[0]


#: mallopt(3) parameters of glibc.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Allocations up to this size come from the heap, not from a mapping of their own.
_MMAP_THRESHOLD = 4 * 1024 * 1024
#: Free heap memory kept for reuse before it is given back to the kernel.
_TRIM_THRESHOLD = 64 * 1024 * 1024


def _keep_answer_buffers() -> None:
    """Keep libfuse's answer buffers (1 MiB per read answered from a descriptor, allocated
    and freed per answer) in the heap: from a mapping of their own, every answer would
    fault its pages in afresh, which costs as much as the copy itself on a VM. glibc's
    default threshold adapts only after such a buffer was freed, in each thread's arena."""
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:  # not glibc
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


def reply_from_fd(bufpp: Any, fd: int, offset: int, size: int) -> None:
    """Answer a ``read_buf`` with ``size`` bytes at ``offset`` of ``fd``: libfuse reads them
    into its answer itself, in C (no Python bytes, no copy under the GIL). ``fd`` must stay
    open until the read's answer is sent."""
    buf = _new_bufvec(bufpp)
    buf.size, buf.flags, buf.mem = size, _FUSE_BUF_IS_FD | _FUSE_BUF_FD_SEEK, None
    buf.fd, buf.pos = fd, offset


def reply_from_bytes(bufpp: Any, data: bytes) -> None:
    """Answer a ``read_buf`` with ``data`` (copied once, into memory libfuse frees)."""
    buf = _new_bufvec(bufpp)  # the vector is freed by libfuse even if what follows fails
    memory = _malloc(max(1, len(data)))
    if not memory:
        buf.size, buf.flags, buf.mem, buf.fd, buf.pos = 0, 0, None, -1, 0
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
    ctypes.memmove(memory, data, len(data))
    buf.size, buf.flags, buf.mem, buf.fd, buf.pos = len(data), 0, memory, -1, 0


class FuseError(OSError):
    """libfuse could not create or mount the file system."""


class _Translator(mfusepy.FUSE):
    """mfusepy's C ↔ Python translation, without its ``fuse_main`` based constructor."""

    def __init__(self, operations: mfusepy.Operations) -> None:
        # Deliberately not calling mfusepy.FUSE.__init__: it would mount and run.
        self.operations = operations
        self.raw_fi = True
        self.encoding = "utf-8"
        self.errors = "surrogateescape"
        self.use_ns = True
        self._FUSE__critical_exception = None
        self._libfuse2_options_moved_into_libfuse3_config: dict[str, Any] = {}

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops the flags; a RENAME_NOREPLACE silently done as a plain rename
        # would overwrite what `mv -n` promised to keep.
        return self.operations.rename(
            old.decode(self.encoding, self.errors),
            new.decode(self.encoding, self.errors),
            flags,
        )

    def read_buf_fuse_3(
        self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any
    ) -> int:
        # With the open file (mfusepy would decode a NULL path: nullpath_ok is on).
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.read_buf(decoded, bufpp, size, offset, fip.contents)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        # With the open file: ftruncate(2) of a renamed or unlinked file has no path.
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.truncate(decoded, length, fip.contents if fip else None)

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.chmod(decoded, mode, fip.contents if fip else None)

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # Raw (seconds, nanoseconds) pairs: mfusepy folds UTIME_NOW/UTIME_OMIT (special
        # nanosecond values) into plain times.
        times = None
        if buf:
            times = (
                (buf.contents.actime.tv_sec, buf.contents.actime.tv_nsec),
                (buf.contents.modtime.tv_sec, buf.contents.modtime.tv_nsec),
            )
        decoded = None if path is None else path.decode(self.encoding, self.errors)
        return self.operations.utimens(decoded, times, fip.contents if fip else None)

    def operations_struct(self) -> mfusepy.fuse_operations:
        """The C operations table: every method the operations object implements."""
        table = mfusepy.fuse_operations()
        for field in mfusepy.fuse_operations._fields_:
            name, prototype = field[:2]
            implemented_as = name[1:] if name in ("ftruncate", "fgetattr") else name
            method = getattr(self.operations, implemented_as, None)
            if name != "init" and (method is None or getattr(method, "libfuse_ignore", False)):
                # Left NULL: libfuse answers ENOSYS or falls back (read for read_buf …).
                continue
            translate = getattr(self, f"{name}_fuse_3", None) or getattr(self, name)
            setattr(table, name, prototype(functools.partial(self._wrapper, translate)))
        return table


class FuseDriver:
    """One libfuse3 file system: ``mount()`` then ``run()`` (blocks), ``destroy()`` after.

    ``options`` are ``-o`` options for libfuse and the kernel (``fsname=…``, ``ro``,
    ``auto_unmount`` …); ``max_threads`` bounds libfuse's worker threads, each of which
    runs one operation at a time.
    """

    def __init__(
        self,
        operations: mfusepy.Operations,
        mountpoint: str,
        options: Sequence[str],
        *,
        max_threads: int = 16,
    ) -> None:
        self.mountpoint = mountpoint
        self._translator = _Translator(operations)
        # Kept referenced for as long as libfuse may call through them.
        self._table = self._translator.operations_struct()
        self._argv = [b"mirrord-fs", b"-o", ",".join(options).encode()]
        self._max_threads = max_threads
        self._fuse: int | None = None
        self._mounted = False

    def mount(self) -> None:
        """Create the libfuse instance and mount it (the kernel's INIT follows in ``run``)."""
        _keep_answer_buffers()
        argv = (ctypes.c_char_p * len(self._argv))(*self._argv)
        args = _FuseArgs(len(self._argv), argv, 0)
        fuse = _fuse_new(
            ctypes.byref(args), ctypes.byref(self._table), ctypes.sizeof(self._table), None
        )
        if not fuse:
            raise FuseError(errno.EINVAL, f"libfuse refused the options {self._argv[2]!r}")
        self._fuse = fuse
        if _fuse_mount(fuse, os.fsencode(self.mountpoint)) != 0:
            _fuse_destroy(fuse)
            self._fuse = None
            raise FuseError(errno.EIO, f"cannot mount FUSE at {self.mountpoint}")
        self._mounted = True

    def run(self) -> int:
        """Serve requests until the file system is unmounted; libfuse's exit status."""
        assert self._fuse is not None, "mount() first"
        config = _loop_cfg_create()
        try:
            _loop_cfg_set_max_threads(config, self._max_threads)
            # Idle workers beyond this many exit; keeps a quiet mount cheap.
            _loop_cfg_set_idle_threads(config, 4)
            return int(_fuse_loop_mt(self._fuse, config))
        finally:
            _loop_cfg_destroy(config)

    def destroy(self) -> None:
        """Release libfuse's instance (unmounting it if it is still mounted)."""
        if self._fuse is None:
            return
        if self._mounted:
            # Harmless after an external unmount: libfuse sees the dead connection first.
            _fuse_unmount(self._fuse)
            self._mounted = False
        _fuse_destroy(self._fuse)
        self._fuse = None
