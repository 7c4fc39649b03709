"""The BPF program and the ABI tables: checked by running the program in a small
interpreter for every syscall number, against the kernel headers, and in the kernel."""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path

import pytest

from mirrord_core.interception import probe
from mirrord_core.interception import seccomp_abi as abi
from mirrord_core.interception.bpf_filter import (
    BPF_JMP_JA,
    BPF_JMP_JEQ_K,
    BPF_JMP_JGE_K,
    BPF_LD_W_ABS,
    BPF_RET_K,
    Instruction,
    build_filter,
    compile_filter,
)
from mirrord_core.interception.launcher import launch
from mirrord_core.interception.runner import run_intercepted
from mirrord_core.interception.supervisor import Supervisor

HEADERS = {
    "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "aarch64": Path("/usr/include/asm-generic/unistd.h"),
}


def run_bpf(program: list[Instruction], nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Interpret ``program`` over a ``seccomp_data`` of (nr, arch, args) like the kernel
    does (little-endian)."""
    data = {abi.DATA_OFFSET_NR: nr, abi.DATA_OFFSET_ARCH: arch}
    for index, value in enumerate((*args, 0, 0, 0, 0, 0, 0)[:6]):
        offset = abi.SeccompData.args.offset + 8 * index
        data[offset], data[offset + 4] = value & 0xFFFFFFFF, value >> 32
    accumulator = 0
    pc = 0
    steps = 0
    while True:
        steps += 1
        assert steps <= len(program), "the program loops"
        code, jt, jf, k = program[pc]
        if code == BPF_LD_W_ABS:
            accumulator = data[k]
            pc += 1
        elif code == BPF_JMP_JEQ_K:
            pc += 1 + (jt if accumulator == k else jf)
        elif code == BPF_JMP_JGE_K:
            pc += 1 + (jt if accumulator >= k else jf)
        elif code == BPF_JMP_JA:
            pc += 1 + k
        elif code == BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
        assert 0 <= pc < len(program), "a jump leaves the program"


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize(
    "trapped",
    [set(), {257}, {0, 1, 2, 3, 59, 257, 262, 332, 437, 439}, set(range(0, 600, 2))],
    ids=["none", "one", "several", "300-chunked"],
)
def test_exactly_the_requested_numbers_are_trapped(arch: str, trapped: set[int]) -> None:
    program = build_filter(trapped, arch)
    native = abi.AUDIT_ARCH[arch]
    for nr in range(0, 700):
        expected = abi.SECCOMP_RET_USER_NOTIF if nr in trapped else abi.SECCOMP_RET_ALLOW
        assert run_bpf(program, nr, native) == expected, nr
    # Jump offsets must fit the instruction's 8-bit fields.
    assert all(0 <= i.jt <= 255 and 0 <= i.jf <= 255 for i in program)


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_other_abis_run_natively(arch: str) -> None:
    program = build_filter({2, 56, 257}, arch)
    i386 = 0x40000003  # AUDIT_ARCH_I386: a 32-bit program's numbers mean other syscalls
    for nr in (2, 56, 257):
        assert run_bpf(program, nr, i386) == abi.SECCOMP_RET_ALLOW
    if arch == "x86_64":  # x32 ABI numbers have bit 30 set
        assert run_bpf(program, 257 | abi.X32_SYSCALL_BIT, abi.AUDIT_ARCH_X86_64) == (
            abi.SECCOMP_RET_ALLOW
        )


def test_compile_filter_by_name() -> None:
    program = compile_filter({"open", "openat", "connect"}, "aarch64").program
    aarch64 = abi.AUDIT_ARCH_AARCH64
    # aarch64 has no open(2): the name is skipped, the others are trapped.
    assert run_bpf(program, 56, aarch64) == abi.SECCOMP_RET_USER_NOTIF
    assert run_bpf(program, 203, aarch64) == abi.SECCOMP_RET_USER_NOTIF
    assert run_bpf(program, 2, aarch64) == abi.SECCOMP_RET_ALLOW
    with pytest.raises(ValueError, match="opne"):
        compile_filter({"opne"})


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_conditional_syscalls_are_trapped_only_with_their_argument_set(arch: str) -> None:
    native = abi.AUDIT_ARCH[arch]
    program = build_filter({42, 300}, arch, when_set={44: 4, 45: 4, 300: 0})
    notify, allow = abi.SECCOMP_RET_USER_NOTIF, abi.SECCOMP_RET_ALLOW
    for nr in (44, 45):
        assert run_bpf(program, nr, native, (3, 0x1000, 10, 0, 0, 0)) == allow
        assert run_bpf(program, nr, native, (3, 0x1000, 10, 0, 0x7FFF0000, 16)) == notify
        assert run_bpf(program, nr, native, (3, 0x1000, 10, 0, 1 << 40, 16)) == notify
    # Unconditional wins over conditional; the other numbers are unaffected.
    assert run_bpf(program, 300, native) == notify
    assert run_bpf(program, 42, native) == notify
    for nr in (0, 43, 46, 299, 301):
        assert run_bpf(program, nr, native, (1, 1, 1, 1, 1, 1)) == allow
    assert run_bpf(program, 44, 0x40000003, (0, 0, 0, 0, 1, 1)) == allow
    named = compile_filter({"connect"}, "aarch64", when_set={"sendto": 4}).program
    assert run_bpf(named, 206, abi.AUDIT_ARCH_AARCH64, (0, 0, 0, 0, 8, 16)) == notify
    assert run_bpf(named, 206, abi.AUDIT_ARCH_AARCH64) == allow
    with pytest.raises(ValueError):
        build_filter({}, arch, when_set={44: 6})


def test_out_of_range_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        build_filter({-1})
    with pytest.raises(ValueError):
        build_filter({abi.X32_SYSCALL_BIT})


def _header_numbers(path: Path) -> dict[str, int]:
    text = path.read_text()
    numbers = {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"#define\s+__NR(?:3264)?_(\w+)\s+(\d+)", text)
    }
    # asm-generic names a few through aliases (__NR_newfstatat -> __NR3264_fstatat).
    for alias, target in re.findall(r"#define\s+__NR_(\w+)\s+__NR3264_(\w+)", text):
        if target in numbers:
            numbers.setdefault(alias, numbers[target])
    return numbers


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_syscall_numbers_match_the_kernel_headers(arch: str) -> None:
    header = HEADERS[arch]
    assert header.is_file(), f"{header} is needed (apt-get install linux-libc-dev)"
    known = _header_numbers(header)
    newer = {"fchmodat2": 452}  # newer than the installed headers may be
    for name, number in abi.SYSCALL_NUMBERS[arch].items():
        assert known.get(name, newer.get(name)) == number, (arch, name)
    # aarch64 has only the *at forms: none of the legacy path syscalls may appear there.
    if arch == "aarch64":
        assert not {"open", "stat", "lstat", "access", "mkdir", "rename"} & set(
            abi.SYSCALL_NUMBERS[arch]
        )


def test_structures_and_ioctls_match_the_kernel() -> None:
    # Sizes and request numbers measured on this kind of machine (DESIGN §5).
    assert ctypes.sizeof(abi.SeccompNotif) == 80 == abi.NOTIF_FORMAT.size
    assert ctypes.sizeof(abi.SeccompNotifResp) == 24 == abi.RESP_FORMAT.size
    assert ctypes.sizeof(abi.SeccompNotifAddfd) == 24 == abi.ADDFD_FORMAT.size
    assert ctypes.sizeof(abi.SeccompData) == 64
    assert abi.SECCOMP_IOCTL_NOTIF_RECV == 0xC0502100
    assert abi.SECCOMP_IOCTL_NOTIF_SEND == 0xC0182101
    assert abi.SECCOMP_IOCTL_NOTIF_ID_VALID == 0x40082102
    assert abi.SECCOMP_IOCTL_NOTIF_ADDFD == 0x40182103
    assert abi.SECCOMP_IOCTL_NOTIF_SET_FLAGS == 0x40082104


class _Recorder:
    def __init__(self, syscalls: set[str], trap_only_if_set: dict[str, int] | None = None) -> None:
        self.syscalls = frozenset(syscalls)
        self.trap_only_if_set = trap_only_if_set or {}
        self.seen: list[str] = []

    def handle(self, notification: object) -> None:
        self.seen.append(notification.syscall)  # type: ignore[attr-defined]


def test_the_kernel_traps_only_the_requested_syscalls(tmp_path: Path) -> None:
    """In the kernel: a program doing mkdir, rmdir, getcwd and uname is trapped only for
    mkdir/mkdirat; the rest runs natively (and works)."""
    recorder = _Recorder({"mkdir", "mkdirat"})
    directory = tmp_path / "made"
    code = (
        "import os; os.mkdir({0!r}); os.getcwd(); os.uname(); os.rmdir({0!r}); "
        "print('done', flush=True)"
    ).format(str(directory))
    command = launch(
        [sys.executable, "-c", code],
        compile_filter(recorder.syscalls),
        probe().filter_flags,
    )
    supervisor = Supervisor(command.listener_fd, [recorder])
    supervisor.start()
    try:
        command.go()
        _pid, status = os.waitpid(command.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        supervisor.stop()
    assert recorder.seen and set(recorder.seen) <= {"mkdir", "mkdirat"}
    assert not directory.exists()


def test_the_kernel_traps_sendto_only_with_an_address() -> None:
    """In the kernel, through run_intercepted: a TCP-like send (sendto without an address)
    and recv run natively; a sendto with a destination is trapped."""
    recorder = _Recorder({"sendto", "recvfrom"}, {"sendto": 4, "recvfrom": 4})
    code = (
        "import socket\n"
        "a, b = socket.socketpair()\n"
        "a.send(b'x'); assert b.recv(1) == b'x'\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', 0))\n"
        "u.sendto(b'y', u.getsockname()); assert u.recvfrom(1)[0] == b'y'\n"
    )
    assert run_intercepted([sys.executable, "-c", code], handlers=[recorder]) == 0
    assert sorted(recorder.seen) == ["recvfrom", "sendto"]
