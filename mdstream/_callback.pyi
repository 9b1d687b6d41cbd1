import os
from typing import Any, Callable, Iterable

import numpy as np
import numpy.typing as npt

from mdstream._ring import Ring
from mdstream.dbghelp import CallbackType

CALLBACK_TYPE_COUNT: int

Hook = Callable[[CallbackType | int, int, int], bool | None]

class DumpCallback:
    ring: Ring
    hook: Hook | None
    hook_error: BaseException | None
    def __init__(
        self,
        ring: Ring,
        *,
        deadline: float | None = ...,
        include_modules: bool = ...,
        include_threads: bool = ...,
        module_write_flags_mask: int = ...,
        thread_write_flags_mask: int = ...,
        read_memory_failure_status: int = ...,
        is_process_snapshot_status: int = ...,
        coalesce: bool = ...,
        publish_bytes: int = ...,
        extra_memory: Iterable[tuple[int, int]] = ...,
        hook: Hook | None = ...,
        spill_path: str | os.PathLike[str] | None = ...,
        spill_after: float | None = ...,
        dump_deadline: float | None = ...,
    ) -> None: ...
    @property
    def information_address(self) -> int: ...
    @property
    def routine_address(self) -> int: ...
    @property
    def param_address(self) -> int: ...
    @property
    def counters(self) -> dict[str, Any]: ...
    @property
    def writes(self) -> int: ...
    @property
    def bytes_written(self) -> int: ...
    @property
    def highest_end(self) -> int: ...
    @property
    def failed(self) -> bool: ...
    @property
    def failure(self) -> tuple[int, str] | None: ...
    @property
    def failure_exception(self) -> Exception | None: ...
    @property
    def finished(self) -> bool: ...
    def raise_pending(self) -> None: ...
    def reset(self, *, spill_path: str | os.PathLike[str] | None = ..., ring: Ring | None = ...) -> None: ...
    @property
    def spill_path(self) -> str | None: ...
    @property
    def spill(self) -> dict[str, Any] | None: ...

class Simulation:
    def __init__(
        self,
        routine_address: int,
        param_address: int,
        buffer: bytes | bytearray | memoryview | npt.NDArray[np.uint8],
        offsets: npt.ArrayLike,
        lengths: npt.ArrayLike,
        sources: npt.ArrayLike,
        *,
        io_handle: int = ...,
        keepalive: object = ...,
        abandon: bool = ...,
        time_calls: bool = ...,
    ) -> None: ...
    def start(self) -> None: ...
    def wait(self, timeout: float | None = ...) -> bool: ...
    @property
    def done(self) -> bool: ...
    @property
    def completed(self) -> int: ...
    @property
    def count(self) -> int: ...
    @property
    def succeeded(self) -> bool: ...
    @property
    def failure(self) -> dict[str, Any] | None: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def longest_call(self) -> tuple[float, int]: ...
