"""Names of fatal signals and their ``si_code`` values (Linux), and where a
crash report's address comes from.  Pure data: imports nothing of mdstream."""

from __future__ import annotations

import signal as _signal

__all__ = ["FATAL_SIGNALS", "signal_name", "code_name", "crash_reason", "fault_address", "SI_USER_CODES"]

#: The signals a crash report is written for: a fault, an abort, a trap, a bad system call.
FATAL_SIGNALS: tuple[int, ...] = (
    int(_signal.SIGSEGV), int(_signal.SIGBUS), int(_signal.SIGFPE), int(_signal.SIGILL),
    int(_signal.SIGABRT), int(_signal.SIGTRAP), int(_signal.SIGSYS),
)

_GENERIC = {0: "SI_USER", 0x80: "SI_KERNEL", -1: "SI_QUEUE", -2: "SI_TIMER", -3: "SI_MESGQ", -4: "SI_ASYNCIO",
            -5: "SI_SIGIO", -6: "SI_TKILL", -7: "SI_DETHREAD", -60: "SI_ASYNCNL"}

_CODES: dict[int, dict[int, str]] = {
    int(_signal.SIGSEGV): {1: "SEGV_MAPERR", 2: "SEGV_ACCERR", 3: "SEGV_BNDERR", 4: "SEGV_PKUERR",
                           5: "SEGV_ACCADI", 6: "SEGV_ADIDERR", 7: "SEGV_ADIPERR", 8: "SEGV_MTEAERR",
                           9: "SEGV_MTESERR", 10: "SEGV_CPERR"},
    int(_signal.SIGBUS): {1: "BUS_ADRALN", 2: "BUS_ADRERR", 3: "BUS_OBJERR", 4: "BUS_MCEERR_AR", 5: "BUS_MCEERR_AO"},
    int(_signal.SIGFPE): {1: "FPE_INTDIV", 2: "FPE_INTOVF", 3: "FPE_FLTDIV", 4: "FPE_FLTOVF", 5: "FPE_FLTUND",
                          6: "FPE_FLTRES", 7: "FPE_FLTINV", 8: "FPE_FLTSUB", 14: "FPE_FLTUNK", 15: "FPE_CONDTRAP"},
    int(_signal.SIGILL): {1: "ILL_ILLOPC", 2: "ILL_ILLOPN", 3: "ILL_ILLADR", 4: "ILL_ILLTRP", 5: "ILL_PRVOPC",
                          6: "ILL_PRVREG", 7: "ILL_COPROC", 8: "ILL_BADSTK", 9: "ILL_BADIADDR"},
    int(_signal.SIGTRAP): {1: "TRAP_BRKPT", 2: "TRAP_TRACE", 3: "TRAP_BRANCH", 4: "TRAP_HWBKPT", 5: "TRAP_UNK",
                           6: "TRAP_PERF"},
    int(_signal.SIGSYS): {1: "SYS_SECCOMP", 2: "SYS_USER_DISPATCH"},
}

#: si_code values of signals a process sent (kill, tgkill, raise, sigqueue): no fault address.
SI_USER_CODES = frozenset(c for c in _GENERIC if c <= 0)


def signal_name(signo: int) -> str:
    """``11`` -> ``"SIGSEGV"``."""
    try:
        return _signal.Signals(int(signo)).name
    except ValueError:
        if _signal.SIGRTMIN <= int(signo) <= _signal.SIGRTMAX:
            return f"SIGRTMIN+{int(signo) - _signal.SIGRTMIN}"
        return f"signal {int(signo)}"


def code_name(signo: int, code: int) -> str:
    """``(11, 1)`` -> ``"SEGV_MAPERR"``; codes sent by a process are SI_USER, SI_TKILL, ..."""
    code = int(code)
    if code > 0 and code != 0x80:
        name = _CODES.get(int(signo), {}).get(code)
        if name:
            return name
    return _GENERIC.get(code, str(code))


def crash_reason(signo: int, code: int) -> str:
    """``"SIGSEGV / SEGV_MAPERR"``, as minidump-stackwalk names it."""
    return f"{signal_name(signo)} / {code_name(signo, code)}"


def fault_address(signo: int, code: int, si_addr: int, instruction_pointer: int) -> int:
    """The crash address written in the Exception stream and the metadata.

    For a signal the kernel raised (``si_code > 0``, or ``SI_KERNEL``) it is
    ``si_addr``, as Breakpad writes it.  A signal sent by a process (``kill``,
    ``raise``, ``abort``: ``si_code <= 0``) has no fault address: its
    ``si_addr`` bytes hold the sender's pid and uid, so the crashing thread's
    instruction pointer is written instead.
    """
    if int(code) <= 0:
        return int(instruction_pointer) & 0xFFFFFFFFFFFFFFFF
    return int(si_addr) & 0xFFFFFFFFFFFFFFFF
