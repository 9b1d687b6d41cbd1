"""A small, valid x64 Windows minidump built in code (no binary files shipped).

``mdstream demo`` replays it through the real callback path; the tests use it
as a dump whose every field is known.  The layout follows what Microsoft's
DbgHelp writes for a ``MiniDumpWithDataSegs | MiniDumpWithProcessThreadData |
MiniDumpWithThreadInfo`` dump of a small process:

- ``MINIDUMP_HEADER`` at 0 (``'MDMP'``, version ``0xA793``), the stream
  directory at 0x20;
- ThreadList (3 threads, each with a 1232-byte x64 ``CONTEXT`` and a stack),
  ModuleList (``sample.exe`` and ``ntdll.dll``, names as ``MINIDUMP_STRING`` and
  CodeView ``RSDS`` records), MemoryList, Exception (an access violation on the
  first thread, with its own context copy), SystemInfo (x64, Windows 7 SP1, the
  ``CSDVersion`` string), MiscInfo (process id and times) and ThreadInfoList;
- memory: the three stacks, the TEBs, the PEB, the process parameters (image
  path, command line, environment: enough for the PyPI ``minidump`` parser to
  read the PEB back) and a data segment of ``sample.exe`` holding
  :data:`MARKER` at :func:`sample_facts` ``["marker_address"]``.

About 330 KiB, every byte deterministic from ``seed``: memory regions are
larger than 1 KiB, so the ``writer`` schedule cuts them into 1 KiB writes like
a real DbgHelp dump.
"""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Any

__all__ = ["MARKER", "build_sample_minidump", "sample_facts"]

MARKER = b"mdstream sample marker: this region is the data segment of sample.exe"

# Stream types and flags (see ../shared/reference/minidump-format.md).
_THREAD_LIST = 3
_MODULE_LIST = 4
_MEMORY_LIST = 5
_EXCEPTION = 6
_SYSTEM_INFO = 7
_MISC_INFO = 15
_THREAD_INFO_LIST = 17

_MINIDUMP_WITH_DATA_SEGS = 0x1
_MINIDUMP_WITH_PROCESS_THREAD_DATA = 0x100
_MINIDUMP_WITH_THREAD_INFO = 0x1000
SAMPLE_FLAGS = _MINIDUMP_WITH_DATA_SEGS | _MINIDUMP_WITH_PROCESS_THREAD_DATA | _MINIDUMP_WITH_THREAD_INFO

_CONTEXT_SIZE = 1232  # x64 CONTEXT
_CONTEXT_ALL_AMD64 = 0x0010001F
_EXCEPTION_ACCESS_VIOLATION = 0xC0000005
_STILL_ACTIVE = 0x103
_FILETIME_EPOCH_DELTA = 116444736000000000  # 1601 -> 1970 in 100 ns units

# Address space of the sampled process (Windows 7 x64 style).
_EXE_BASE = 0x0000_0001_3F5A_0000
_EXE_SIZE = 0x48000
_EXE_DATA = _EXE_BASE + 0x20000
_EXE_DATA_SIZE = 0x20000
_NTDLL_BASE = 0x0000_0000_771E_0000
_NTDLL_SIZE = 0x1A9000
_PEB = 0x0000_07FF_FFFD_8000
_TEB0 = 0x0000_07FF_FFFD_A000
_TEB_SIZE = 0x2000
_PARAMS = 0x0000_0000_002F_0000
_PARAMS_SIZE = 0x1000
_STACKS = [  # (stack base = highest address, bytes dumped below it)
    (0x0000_0000_0013_0000, 0x10000),
    (0x0000_0000_01F3_0000, 0xC000),
    (0x0000_0000_0243_0000, 0x8000),
]
_MARKER_OFFSET = 0x1230  # inside the data segment


class _File:
    """The dump being built: space is reserved in file order, then filled."""

    def __init__(self) -> None:
        self.data = bytearray()

    def reserve(self, size: int, align: int = 4) -> int:
        pad = -len(self.data) % align
        self.data += bytes(pad)
        rva = len(self.data)
        self.data += bytes(size)
        return rva

    def put(self, rva: int, blob: bytes) -> None:
        self.data[rva : rva + len(blob)] = blob

    def append(self, blob: bytes, align: int = 4) -> int:
        rva = self.reserve(len(blob), align)
        self.put(rva, blob)
        return rva

    def append_string(self, text: str) -> int:
        """A MINIDUMP_STRING: byte length (without the NUL), UTF-16LE, NUL."""
        encoded = text.encode("utf-16-le")
        return self.append(struct.pack("<I", len(encoded)) + encoded + b"\0\0")


def _guid(seed: int, label: str) -> bytes:
    return hashlib.sha256(f"mdstream-sample:{seed}:{label}".encode()).digest()[:16]


def _context(rip: int, rsp: int, rbp: int, rng: random.Random, teb: int) -> bytes:
    """An x64 CONTEXT (1232 bytes) with the fields DbgHelp fills."""
    ctx = bytearray(_CONTEXT_SIZE)
    struct.pack_into("<II", ctx, 0x30, _CONTEXT_ALL_AMD64, 0x1F80)  # ContextFlags, MxCsr
    struct.pack_into("<6H", ctx, 0x38, 0x33, 0x2B, 0x2B, 0x53, 0x2B, 0x2B)  # Cs Ds Es Fs Gs Ss
    struct.pack_into("<I", ctx, 0x44, 0x246)  # EFlags
    # Rax Rcx Rdx Rbx Rsp Rbp Rsi Rdi R8..R15 at 0x78, then Rip at 0xF8.
    gprs = [rng.choice([0, 1, 0x102, rng.getrandbits(32), teb]) for _ in range(16)]
    gprs[4] = rsp
    gprs[5] = rbp
    struct.pack_into("<16Q", ctx, 0x78, *gprs)
    struct.pack_into("<Q", ctx, 0xF8, rip)
    # FltSave (XMM_SAVE_AREA32) at 0x100: ControlWord, MxCsr, MxCsr_Mask.
    struct.pack_into("<H", ctx, 0x100, 0x27F)
    struct.pack_into("<II", ctx, 0x100 + 0x18, 0x1F80, 0xFFFF)
    return bytes(ctx)


def _stack_contents(size: int, low: int, high: int, rng: random.Random) -> bytes:
    """Plausible stack memory: frame pointers, return addresses into the modules, locals."""
    words = []
    for _ in range(size // 8):
        kind = rng.random()
        if kind < 0.45:
            words.append(0)
        elif kind < 0.65:
            words.append(rng.randrange(low, high) & ~7)
        elif kind < 0.80:
            words.append(_EXE_BASE + 0x1000 + rng.randrange(0x1F000))
        elif kind < 0.90:
            words.append(_NTDLL_BASE + 0x1000 + rng.randrange(0x100000))
        else:
            words.append(rng.getrandbits(rng.choice((8, 16, 32, 64))))
    return struct.pack(f"<{len(words)}Q", *words)


def _unicode_string(length: int, buffer: int) -> bytes:
    """An x64 UNICODE_STRING: Length, MaximumLength, padding, Buffer."""
    return struct.pack("<HH4xQ", length, length + 2, buffer)


def _layout(seed: int) -> tuple[bytes, dict[str, Any]]:
    rng = random.Random(seed)
    f = _File()
    timestamp = 1_700_000_000 + (seed % 10_000_000)
    pid = 0x1000 + 4 * rng.randrange(0x2000)
    tids = [0x1000 + 4 * rng.randrange(0x4000) for _ in _STACKS]
    while len(set(tids)) != len(tids):
        tids = [0x1000 + 4 * rng.randrange(0x4000) for _ in _STACKS]

    # -- header and directory --------------------------------------------
    streams = [_THREAD_LIST, _MODULE_LIST, _MEMORY_LIST, _EXCEPTION, _SYSTEM_INFO, _MISC_INFO, _THREAD_INFO_LIST]
    header_rva = f.reserve(32)
    directory_rva = f.reserve(12 * len(streams))
    assert header_rva == 0 and directory_rva == 0x20
    locations: dict[int, tuple[int, int]] = {}

    # -- SystemInfo: x64, Windows 7 SP1 ------------------------------------
    sysinfo_rva = f.reserve(56)
    csd_rva = f.append_string("Service Pack 1")
    f.put(sysinfo_rva, struct.pack(
        "<HHHBBIIIIIHH12sIII",
        9,  # PROCESSOR_ARCHITECTURE_AMD64
        6,  # ProcessorLevel
        0x3A09,  # ProcessorRevision
        8,  # NumberOfProcessors
        1,  # ProductType: VER_NT_WORKSTATION
        6, 1, 7601,  # Major, Minor, Build
        2,  # PlatformId: VER_PLATFORM_WIN32_NT
        csd_rva,
        0x100,  # SuiteMask: VER_SUITE_SINGLEUSERTS
        0,
        b"GenuineIntel", 0x000306A9, 0xBFEBFBFF, 0,  # X86CpuInfo
    ))
    locations[_SYSTEM_INFO] = (56, sysinfo_rva)

    # -- MiscInfo (MINIDUMP_MISC_INFO, 24 bytes) ---------------------------
    misc = struct.pack("<IIIIII", 24, 0x3, pid, timestamp - 3600 - rng.randrange(3600), rng.randrange(1, 30),
                       rng.randrange(1, 10))
    locations[_MISC_INFO] = (24, f.append(misc))

    # -- ThreadList: reserve now, fill once contexts and stacks have RVAs ---
    thread_list_size = 4 + 48 * len(_STACKS)
    thread_list_rva = f.reserve(thread_list_size)
    locations[_THREAD_LIST] = (thread_list_size, thread_list_rva)

    # -- ThreadInfoList ------------------------------------------------------
    process_start = (timestamp - 3600) * 10_000_000 + _FILETIME_EPOCH_DELTA
    info = struct.pack("<III", 12, 64, len(_STACKS))
    for i, tid in enumerate(tids):
        start_address = _EXE_BASE + 0x1F10 if i == 0 else _NTDLL_BASE + 0x2F3C0
        info += struct.pack(
            "<IIIIQQQQQQ", tid, 0, 0, _STILL_ACTIVE, process_start + i * 5_000_000 + rng.randrange(1000), 0,
            rng.randrange(10**7), rng.randrange(10**8), start_address, 0xFF)
    locations[_THREAD_INFO_LIST] = (len(info), f.append(info))

    # -- ModuleList ------------------------------------------------------------
    modules = [
        # (path, base, size, checksum, timestamp, file version MS/LS, file type, pdb, age)
        (r"C:\Program Files\mdstream\sample.exe", _EXE_BASE, _EXE_SIZE, 0, 0x5F3A1C00 + seed % 1000,
         (0x00010000, 0x00000000), 1, r"C:\build\sample\x64\Release\sample.pdb", 1),
        (r"C:\Windows\SYSTEM32\ntdll.dll", _NTDLL_BASE, _NTDLL_SIZE, 0x1A932F, 0x5CF15ED8,
         (0x00060001, 0x1DB15FE1), 2, "ntdll.pdb", 2),
    ]
    module_list_size = 4 + 108 * len(modules)
    module_list_rva = f.reserve(module_list_size)
    locations[_MODULE_LIST] = (module_list_size, module_list_rva)
    module_records = b""
    for path, base, size, checksum, stamp, (ver_ms, ver_ls), ftype, pdb, age in modules:
        name_rva = f.append_string(path)
        cv = b"RSDS" + _guid(seed, pdb) + struct.pack("<I", age) + pdb.encode("utf-8") + b"\0"
        cv_rva = f.append(cv)
        version = struct.pack("<13I", 0xFEEF04BD, 0x00010000, ver_ms, ver_ls, ver_ms, ver_ls, 0x3F, 0,
                              0x00040004, ftype, 0, 0, 0)
        module_records += struct.pack("<QIIII", base, size, checksum, stamp, name_rva) + version
        module_records += struct.pack("<IIIIQQ", len(cv), cv_rva, 0, 0, 0, 0)
    f.put(module_list_rva, struct.pack("<I", len(modules)) + module_records)

    # -- Exception stream (its context is written with the threads') ---------
    exception_rva = f.reserve(168)
    locations[_EXCEPTION] = (168, exception_rva)

    # -- Thread contexts ---------------------------------------------------------
    threads: list[dict[str, Any]] = []
    contexts: list[tuple[int, int]] = []
    for i, (stack_base, stack_size) in enumerate(_STACKS):
        low = stack_base - stack_size
        rsp = low + 0x48 + 8 * rng.randrange(16)
        rbp = rsp + 0x20 + 16 * rng.randrange(0x40)
        rip = _EXE_BASE + 0x1A2B if i == 0 else _NTDLL_BASE + 0x5135A + 0x20 * i
        teb = _TEB0 + _TEB_SIZE * i
        ctx = _context(rip, rsp, rbp, rng, teb)
        contexts.append((rip, rsp))
        threads.append({"tid": tids[i], "teb": teb, "stack": (low, stack_size), "rip": rip, "rsp": rsp,
                        "context_rva": f.append(ctx, 16)})
    exception_context_rva = f.append(_context(contexts[0][0], contexts[0][1], contexts[0][1] + 0x40,
                                              random.Random(seed), threads[0]["teb"]), 16)

    # -- MemoryList and the memory itself --------------------------------------
    regions: list[tuple[int, bytes]] = []
    for i, (stack_base, stack_size) in enumerate(_STACKS):
        low = stack_base - stack_size
        regions.append((low, _stack_contents(stack_size, low, stack_base, rng)))

    # Process parameters, with their strings and the environment block.
    image = modules[0][0]
    command_line = f'"{image}" --crash-on-purpose --seed={seed}'
    current_directory = "C:\\Program Files\\mdstream\\"
    window_title = image
    dll_path = r"C:\Windows\system32;C:\Windows"
    environment = ["ALLUSERSPROFILE=C:\\ProgramData", "MDSTREAM_SAMPLE=1", f"MDSTREAM_SEED={seed}",
                   "PATH=C:\\Windows\\system32;C:\\Windows", "SystemRoot=C:\\Windows"]
    params = bytearray(_PARAMS_SIZE)
    cursor = 0x400

    def put_text(text: str) -> tuple[int, int]:
        nonlocal cursor
        encoded = text.encode("utf-16-le")
        params[cursor : cursor + len(encoded)] = encoded
        where = _PARAMS + cursor
        cursor += (len(encoded) + 2 + 7) & ~7
        return len(encoded), where

    struct.pack_into("<III", params, 0, 0x400, 0x400, 0x6001)  # MaximumLength, Length, Flags
    struct.pack_into("<QQQ", params, 0x20, 0x3, 0x7, 0xB)  # StandardInput/Output/Error handles
    for offset, text in ((0x38, current_directory), (0x50, dll_path), (0x60, image), (0x70, command_line),
                         (0xB0, window_title)):
        params[offset : offset + 16] = _unicode_string(*put_text(text))
    env_block = ("\0".join(environment) + "\0\0").encode("utf-16-le")
    cursor = 0x800
    params[cursor : cursor + len(env_block)] = env_block
    struct.pack_into("<Q", params, 0x80, _PARAMS + cursor)  # Environment
    regions.append((_PARAMS, bytes(params)))

    # The data segment of sample.exe, with the marker.
    data_segment = bytearray(rng.randbytes(_EXE_DATA_SIZE))
    data_segment[0x800:_MARKER_OFFSET] = bytes(_MARKER_OFFSET - 0x800)
    data_segment[_MARKER_OFFSET : _MARKER_OFFSET + len(MARKER)] = MARKER
    regions.append((_EXE_DATA, bytes(data_segment)))

    # The PEB: BeingDebugged, ImageBaseAddress, Ldr (not dumped), ProcessParameters.
    peb = bytearray(0x1000)
    struct.pack_into("<B", peb, 0x2, 0)
    struct.pack_into("<QQQ", peb, 0x10, _EXE_BASE, 0, _PARAMS)
    struct.pack_into("<I", peb, 0xB8, 8)  # NumberOfProcessors
    regions.append((_PEB, bytes(peb)))

    # TEBs: NT_TIB (ExceptionList, StackBase, StackLimit, ..., Self), ClientId, PEB.
    for i, thread in enumerate(threads):
        stack_base, stack_size = _STACKS[i]
        teb_memory = bytearray(_TEB_SIZE)
        struct.pack_into("<QQQ", teb_memory, 0x0, 0, stack_base, stack_base - stack_size)
        struct.pack_into("<Q", teb_memory, 0x30, thread["teb"])
        struct.pack_into("<QQ", teb_memory, 0x40, pid, thread["tid"])
        struct.pack_into("<Q", teb_memory, 0x60, _PEB)
        regions.append((thread["teb"], bytes(teb_memory)))

    regions.sort()
    memory_list_size = 4 + 16 * len(regions)
    memory_list_rva = f.reserve(memory_list_size)
    locations[_MEMORY_LIST] = (memory_list_size, memory_list_rva)
    descriptors = b""
    memory_rvas: dict[int, int] = {}
    for address, blob in regions:
        rva = f.append(blob, 16)
        memory_rvas[address] = rva
        descriptors += struct.pack("<QII", address, len(blob), rva)
    f.put(memory_list_rva, struct.pack("<I", len(regions)) + descriptors)

    # -- Fill what referred forward ------------------------------------------------
    thread_list = struct.pack("<I", len(threads))
    for i, thread in enumerate(threads):
        low, size = thread["stack"]
        thread_list += struct.pack("<IIIIQQIIII", thread["tid"], 0 if i == 0 else 1, 0x20, 0, thread["teb"],
                                   low, size, memory_rvas[low], _CONTEXT_SIZE, thread["context_rva"])
    f.put(thread_list_rva, thread_list)

    f.put(exception_rva, struct.pack(
        "<IIIIQQII15QII", tids[0], 0, _EXCEPTION_ACCESS_VIOLATION, 0, 0, contexts[0][0], 2, 0,
        1, 0, *([0] * 13), _CONTEXT_SIZE, exception_context_rva))

    f.put(header_rva, struct.pack("<4sIIIIIQ", b"MDMP", 0xA793, len(streams), directory_rva, 0, timestamp,
                                  SAMPLE_FLAGS))
    f.put(directory_rva, b"".join(struct.pack("<III", t, *locations[t]) for t in streams))

    facts = {
        "seed": seed,
        "size": len(f.data),
        "timestamp": timestamp,
        "flags": SAMPLE_FLAGS,
        "process_id": pid,
        "streams": streams,
        "threads": [{"id": t["tid"], "teb": t["teb"], "stack_start": t["stack"][0], "stack_size": t["stack"][1],
                     "rip": t["rip"], "rsp": t["rsp"]} for t in threads],
        "modules": [{"name": m[0], "base": m[1], "size": m[2], "pdb": m[7]} for m in modules],
        "memory": [(address, len(blob)) for address, blob in regions],
        "memory_bytes": sum(len(blob) for _, blob in regions),
        "marker_address": _EXE_DATA + _MARKER_OFFSET,
        "image_path": image,
        "command_line": command_line,
        "exception_code": _EXCEPTION_ACCESS_VIOLATION,
        "csd_version": "Service Pack 1",
    }
    return bytes(f.data), facts


def build_sample_minidump(seed: int = 0) -> bytes:
    """A small valid x64 minidump (about 330 KiB), identical for identical ``seed``."""
    return _layout(int(seed))[0]


def sample_facts(seed: int = 0) -> dict[str, Any]:
    """What :func:`build_sample_minidump` put in the dump: thread ids, stacks, modules,
    memory ranges, the marker's address, sizes — for checking a parser's reading."""
    return _layout(int(seed))[1]
