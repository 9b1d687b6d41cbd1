VERSION: int
HELLO_MAGIC: int
READY_MAGIC: int
REPORT_MAGIC: int
ACK_MAGIC: int
HELLO_TRACEBACKS: int
MAX_ANNOTATIONS: int
FLAG_FPREGS: int
FLAG_LATE_HELLO: int
ALTSTACK_SIZE: int
TB_NONE: int
TB_COMPLETE: int
TB_FAILED: int
TB_UNAVAILABLE: int
HELLO_SIZE: int
MESSAGE_SIZE: int
ACK_SIZE: int

def install(
    sock: int,
    memfd: int,
    watcher_pid: int,
    peer_pid: int,
    timeout: float,
    hard_timeout: float,
    address: bytes,
    annotations: bytes,
    python_tracebacks: bool,
    quiet: bool = ...,
) -> None: ...
def uninstall() -> int: ...
def is_installed() -> bool: ...
def set_connection(sock: int, memfd: int) -> None: ...
def altstack_enter() -> tuple[int, int]: ...
def altstack_leave(address: int, size: int) -> None: ...
def altstack_all_threads(timeout_ms: int = ...) -> tuple[int, int]: ...
def altstack_release_all(timeout_ms: int = ...) -> int: ...
def altstack_count() -> int: ...
def install_windows(rendezvous: bytes | None, timeout: float, flags: int = ..., quiet: bool = ...) -> None: ...
