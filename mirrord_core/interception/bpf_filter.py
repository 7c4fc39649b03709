"""The classic BPF program that decides, per syscall, whether the supervisor sees it.

The program checks the architecture, then compares the syscall number with the trapped
ones: a match returns ``SECCOMP_RET_USER_NOTIF``, everything else ``SECCOMP_RET_ALLOW``
and runs natively, at full speed. A syscall can also be trapped only when one of its
arguments is non-zero (``sendto`` with a destination address): the same call without it
(every ``send`` on a TCP socket) then runs natively instead of waiting for the
supervisor. Syscalls of another ABI (32-bit x86 programs, x32) are allowed: their numbers
mean different syscalls and the handlers only understand the native ABI.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from mirrord_core.interception import seccomp_abi as abi

# Opcodes of <linux/filter.h>.
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JMP_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
BPF_JMP_JA = 0x05 | 0x00  # BPF_JMP | BPF_JA
BPF_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

#: Conditional jump offsets are 8 bits: comparisons go in chunks, each ending in its own
#: ``ret USER_NOTIF`` that every comparison of the chunk can reach.
_CHUNK = 128
_DATA_OFFSET_ARGS = abi.SeccompData.args.offset


class Instruction(NamedTuple):
    """One BPF instruction (``struct sock_filter``)."""

    code: int
    jt: int
    jf: int
    k: int


def build_filter(
    numbers: Iterable[int], arch: str | None = None, when_set: Mapping[int, int] | None = None
) -> list[Instruction]:
    """A program trapping syscall ``numbers`` of ``arch`` (default: the running one), and
    the syscalls of ``when_set`` (number -> argument index) when that argument is non-zero
    (a number in both is trapped always).

    >>> [i.code for i in build_filter([], "aarch64")][-1] == BPF_RET_K
    True
    """
    arch = arch or abi.machine()
    try:
        audit_arch = abi.AUDIT_ARCH[arch]
    except KeyError:
        raise abi.UnsupportedArchitecture(f"no seccomp audit arch for {arch}") from None
    trapped = sorted(set(numbers))
    conditional = {n: i for n, i in (when_set or {}).items() if n not in trapped}
    if any(n < 0 or n >= abi.X32_SYSCALL_BIT for n in [*trapped, *conditional]):
        raise ValueError(f"syscall numbers out of range: {trapped + sorted(conditional)}")
    if any(not 0 <= i < 6 for i in conditional.values()):
        raise ValueError(f"syscall argument indexes are 0 to 5: {conditional}")

    allow = Instruction(BPF_RET_K, 0, 0, abi.SECCOMP_RET_ALLOW)
    notify = Instruction(BPF_RET_K, 0, 0, abi.SECCOMP_RET_USER_NOTIF)
    program = [
        Instruction(BPF_LD_W_ABS, 0, 0, abi.DATA_OFFSET_ARCH),
        Instruction(BPF_JMP_JEQ_K, 1, 0, audit_arch),
        allow,  # another ABI
        Instruction(BPF_LD_W_ABS, 0, 0, abi.DATA_OFFSET_NR),
    ]
    if arch == "x86_64":
        program += [Instruction(BPF_JMP_JGE_K, 0, 1, abi.X32_SYSCALL_BIT), allow]
    for number, argument in sorted(conditional.items()):
        program += _trap_when_set(number, argument, allow, notify)
    chunks = [trapped[i : i + _CHUNK] for i in range(0, len(trapped), _CHUNK)]
    for index, chunk in enumerate(chunks):
        size = len(chunk)
        # The comparison at position i jumps over the rest of the chunk and the
        # fall-through instruction to land on this chunk's ``ret USER_NOTIF``.
        program += [Instruction(BPF_JMP_JEQ_K, size - i, 0, n) for i, n in enumerate(chunk)]
        last = index == len(chunks) - 1
        program.append(allow if last else Instruction(BPF_JMP_JA, 0, 0, 1))
        program.append(notify)
    if not chunks:
        program.append(allow)
    return program


def _trap_when_set(
    number: int, argument: int, allow: Instruction, notify: Instruction
) -> list[Instruction]:
    """Syscall ``number`` traps when its 64-bit ``argument`` is non-zero, else runs; other
    syscalls jump over this block with the number still loaded."""
    # Both supported architectures are little-endian: the low half comes first.
    low = _DATA_OFFSET_ARGS + 8 * argument
    high = low + 4
    return [
        Instruction(BPF_JMP_JEQ_K, 0, 7, number),
        Instruction(BPF_LD_W_ABS, 0, 0, low),
        Instruction(BPF_JMP_JEQ_K, 1, 0, 0),
        notify,
        Instruction(BPF_LD_W_ABS, 0, 0, high),
        Instruction(BPF_JMP_JEQ_K, 0, 1, 0),
        allow,
        notify,
    ]


class CompiledFilter:
    """A program in the memory layout seccomp(2) reads; keeps its buffer alive."""

    def __init__(self, program: list[Instruction]) -> None:
        if not 0 < len(program) <= 4096:  # BPF_MAXINSNS
            raise ValueError(f"a BPF program has 1 to 4096 instructions, not {len(program)}")
        self.program = program
        self._instructions = (abi.SockFilter * len(program))(
            *(abi.SockFilter(i.code, i.jt, i.jf, i.k) for i in program)
        )
        self.fprog = abi.SockFprog(len(program), self._instructions)

    def pointer(self) -> int:
        """The address of the ``struct sock_fprog``."""
        return ctypes.addressof(self.fprog)


def compile_filter(
    names: Iterable[str], arch: str | None = None, when_set: Mapping[str, int] | None = None
) -> CompiledFilter:
    """The filter trapping the syscalls called ``names`` on ``arch`` (default: running one),
    and those of ``when_set`` (name -> argument index) when that argument is non-zero.

    Names the architecture lacks (``open`` on aarch64) are skipped: no program there can
    make that syscall. Unknown names raise :class:`ValueError`.
    """
    table = abi.syscall_table(arch)
    wanted = set(names)
    conditional = dict(when_set or {})
    unknown = (wanted | set(conditional)) - abi.KNOWN_SYSCALLS
    if unknown:
        raise ValueError(f"unknown syscall names: {', '.join(sorted(unknown))}")
    numbers = (table[n] for n in wanted if n in table)
    by_number = {table[n]: i for n, i in conditional.items() if n in table}
    return CompiledFilter(build_filter(numbers, arch, by_number))
