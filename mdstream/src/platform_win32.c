#ifdef _WIN32
/* Windows side of platform.h (MSVC, clang-cl and mingw-w64; also runs under
 * Wine).  See docs/windows.md.
 *
 * Where a ring lives:
 *   - name NULL: an anonymous pagefile-backed section, private to the process
 *     (CreateFileMappingW(INVALID_HANDLE_VALUE), no name).
 *   - a plain name (no '/', '\\' or ':'): a named pagefile-backed section
 *     "Local\mdstream.NAME" in the session namespace.  The creator keeps the
 *     section handle; the name disappears when the creator closes it (an
 *     attacher closes its handle right after mapping), which is the POSIX
 *     "creator removes the name on close" rule.
 *   - anything else: a file path (UTF-8), created with CreateFileW(CREATE_NEW)
 *     and mapped with CreateFileMappingW/MapViewOfFile.  Under Wine,
 *     Z:\dev\shm\NAME is the very file a Linux process maps as
 *     /dev/shm/NAME, so both sides share one ring.
 *
 * Privacy: created objects get a protected DACL with a single ACE granting
 * the current user full access (and the user as owner).  Attaching refuses a
 * reparse point (symlink/junction), anything that is not a regular disk file,
 * an object owned by someone else, a NULL DACL, and any allow-ACE that gives
 * read or write access to a SID other than the user, the token's owner,
 * LocalSystem, Administrators or OWNER RIGHTS.
 *
 * Waits: WaitOnAddress only works inside one process and a futex needs the
 * kernel's help across processes, so a sleeper polls its event word in short
 * slices (SwitchToThread, then Sleep(1)), bounded by the caller's timeout.
 * Wakes are therefore no-ops: the waker's increment of the event word is what
 * the sleeper sees.
 *
 * Under Wine on a Linux host the process has two pids: its Windows pid and
 * the Unix pid of the process that runs it.  Rings are shared with Linux
 * processes there, so a Wine process publishes its Unix pid, and checks a
 * peer's pid on the Unix side (/proc) first, then as a Windows pid. */

#ifndef _CRT_RAND_S
#define _CRT_RAND_S 1 /* rand_s in <stdlib.h> */
#endif
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN 1
#endif
#ifndef UNICODE
#define UNICODE 1
#endif
#ifndef _UNICODE
#define _UNICODE 1
#endif

#include <stdlib.h>
#include <windows.h>
#include <aclapi.h>
#include <sddl.h>

#include "platform.h"
#include "mdstream/atomics.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#if defined(_MSC_VER)
#pragma comment(lib, "advapi32.lib")
#endif

#define MDS_SECTION_PREFIX "Local\\mdstream."
/* Longest wait slice spent yielding before falling back to Sleep(1). */
#define MDS_YIELD_SPINS 32

int mds_set_error(mds_error *err, int status, int sys_errno, const char *fmt, ...) {
    if (err) {
        va_list ap;
        err->status = status;
        err->sys_errno = sys_errno;
        err->abort_code = 0;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        err->message[sizeof err->message - 1] = '\0';
    }
    return status;
}

/* "message (error N)" for GetLastError() codes, in English where possible. */
static const char *win_message(DWORD code, char *buf, size_t size) {
    DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, code,
                             MAKELANGID(LANG_ENGLISH, SUBLANG_ENGLISH_US), buf, (DWORD)size, NULL);
    if (n == 0)
        n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL, code, 0, buf,
                           (DWORD)size, NULL);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '.')) n--;
    if (n == 0) snprintf(buf, size, "Windows error %lu", (unsigned long)code);
    else buf[n] = '\0';
    return buf;
}

static int sys_error(mds_error *err, int status, DWORD code, const char *what, const char *path) {
    char msg[160];
    return mds_set_error(err, status, (int)code, "%s %s: %s (error %lu)", what, path, win_message(code, msg, sizeof msg),
                         (unsigned long)code);
}

/* ---- clock, pid, randomness ------------------------------------------------ */

uint64_t mds_now_ns(void) {
    static LONGLONG frequency; /* set once; a benign race writes the same value */
    LARGE_INTEGER counter, freq;
    uint64_t c, f;
    if (frequency == 0) {
        QueryPerformanceFrequency(&freq);
        frequency = freq.QuadPart > 0 ? freq.QuadPart : 1;
    }
    QueryPerformanceCounter(&counter);
    c = (uint64_t)counter.QuadPart;
    f = (uint64_t)frequency;
    /* c * 1e9 / f without overflowing 64 bits. */
    return (c / f) * 1000000000ull + ((c % f) * 1000000000ull) / f;
}

typedef const char *(__cdecl *wine_get_version_fn)(void);
typedef void(__cdecl *wine_get_host_version_fn)(const char **sysname, const char **release);

/* 1 under Wine, 2 under Wine on a Linux host, 0 on Windows. */
static int wine_host(void) {
    static volatile LONG cached = -1;
    LONG value = cached;
    if (value < 0) {
        HMODULE ntdll = GetModuleHandleW(L"ntdll.dll");
        FARPROC version = ntdll ? GetProcAddress(ntdll, "wine_get_version") : NULL;
        FARPROC host = ntdll ? GetProcAddress(ntdll, "wine_get_host_version") : NULL;
        value = 0;
        if (version) {
            const char *sysname = NULL, *release = NULL;
            value = 1;
            if (host) {
                wine_get_host_version_fn get_host;
                memcpy(&get_host, &host, sizeof get_host);
                get_host(&sysname, &release);
                if (sysname && strcmp(sysname, "Linux") == 0) value = 2;
            }
        }
        cached = value;
    }
    return (int)value;
}

/* The Unix pid of this process when it runs under Wine on Linux x86-64 or
 * x86, else 0.  Wine runs PE code natively inside a Linux process, so the
 * getpid system call answers directly: `syscall` for 64-bit code, `int $0x80`
 * (the i386 system-call table) for 32-bit code, which works both in Wine's
 * 32-bit Linux process (wine32) and in a 64-bit one running 32-bit code.
 * Never executed on Windows, where these instructions are an NT system call
 * and a fault. */
static uint32_t wine_unix_pid(void) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static uint32_t cached;
    if (cached == 0 && wine_host() == 2) {
        long ret;
#if defined(__x86_64__)
        __asm__ volatile("syscall" : "=a"(ret) : "a"(39L) /* __NR_getpid */ : "rcx", "r11", "memory");
#else
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) /* __NR_getpid (i386) */ : "memory");
#endif
        if (ret > 0 && ret <= 0x7FFFFFFFL) cached = (uint32_t)ret;
    }
    return cached;
#else
    return 0;
#endif
}

uint32_t mds_platform_pid(void) {
    uint32_t unix_pid = wine_unix_pid();
    return unix_pid ? unix_pid : (uint32_t)GetCurrentProcessId();
}

uint64_t mds_platform_random64(void) {
    unsigned int a = 0, b = 0;
    uint64_t value;
    if (rand_s(&a) == 0 && rand_s(&b) == 0) {
        value = ((uint64_t)a << 32) | b;
        if (value != 0) return value;
    }
    /* Fallback mixes time, pid and an address; tokens only need to differ
     * between handles. */
    value = mds_now_ns() ^ ((uint64_t)GetCurrentProcessId() << 32) ^ (uint64_t)(uintptr_t)&value;
    return value ? value : 1;
}

/* ---- liveness ----------------------------------------------------------------- */

/* Under Wine: is pid a live (non-zombie) process on the Unix side?  1 alive,
 * 0 dead, -1 cannot tell.  Wine's "\\?\unix\..." names reach the Unix file
 * system directly. */
static int wine_unix_pid_alive(uint32_t pid) {
    WCHAR path[64];
    HANDLE h;
    char buf[512];
    DWORD got = 0;
    if (wine_host() != 2) return -1;
    _snwprintf(path, sizeof path / sizeof path[0], L"\\\\?\\unix\\proc\\%lu\\stat", (unsigned long)pid);
    path[sizeof path / sizeof path[0] - 1] = L'\0';
    h = CreateFileW(path, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                    0, NULL);
    if (h == INVALID_HANDLE_VALUE) {
        DWORD e = GetLastError();
        if (e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND) {
            /* Distinguish "no such pid" from "no /proc here". */
            DWORD attrs = GetFileAttributesW(L"\\\\?\\unix\\proc\\self");
            return attrs == INVALID_FILE_ATTRIBUTES ? -1 : 0;
        }
        return -1;
    }
    if (ReadFile(h, buf, sizeof buf - 1, &got, NULL) && got > 0) {
        char *paren;
        buf[got] = '\0';
        paren = strrchr(buf, ')');
        CloseHandle(h);
        /* A dead child its parent has not reaped yet: state 'Z' (or 'X'). */
        if (paren && paren[1] == ' ' && (paren[2] == 'Z' || paren[2] == 'X')) return 0;
        return 1;
    }
    CloseHandle(h);
    return 1;
}

static int windows_pid_alive(uint32_t pid) {
    HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, FALSE, pid);
    DWORD code = 0;
    if (h != NULL) {
        DWORD r = WaitForSingleObject(h, 0);
        CloseHandle(h);
        /* Signalled: it has exited (its object may live on while handles to
         * it are open, like an unreaped zombie). */
        if (r == WAIT_OBJECT_0) return 0;
        return 1;
    }
    if (GetLastError() == ERROR_INVALID_PARAMETER) return 0; /* no such process */
    /* Access denied for SYNCHRONIZE: ask for the exit code instead. */
    h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid);
    if (h == NULL) return GetLastError() == ERROR_INVALID_PARAMETER ? 0 : 1; /* exists, someone else's */
    if (!GetExitCodeProcess(h, &code)) code = STILL_ACTIVE;
    CloseHandle(h);
    return code == STILL_ACTIVE;
}

int mds_pid_alive(uint32_t pid) {
    if (pid == 0) return 1;
    if (pid == mds_platform_pid() || pid == (uint32_t)GetCurrentProcessId()) return 1;
    if (wine_host() == 2) {
        /* Rings written under Wine hold Unix pids (mds_platform_pid), and a
         * Linux peer's pid is a Unix pid too.  A pid that is not a Unix
         * process may still be a Windows pid of a Wine process that could not
         * learn its Unix pid (a build without GCC-style inline assembly,
         * e.g. MSVC). */
        int unix_alive = wine_unix_pid_alive(pid);
        if (unix_alive == 1) return 1;
        return windows_pid_alive(pid) || unix_alive < 0;
    }
    return windows_pid_alive(pid);
}

/* ---- waiting -------------------------------------------------------------------- */

void mds_platform_wait_u32(uint32_t *word, uint32_t expected, uint64_t timeout_ns) {
    uint64_t start, deadline;
    int i;
    if (timeout_ns == 0 || mds_load_acquire_u32(word) != expected) return;
    start = mds_now_ns();
    deadline = timeout_ns > UINT64_MAX - start ? UINT64_MAX : start + timeout_ns;
    for (i = 0;; i++) {
        if (i < MDS_YIELD_SPINS) {
            if (!SwitchToThread()) YieldProcessor();
        } else {
            Sleep(1);
        }
        if (mds_load_acquire_u32(word) != expected) return;
        if (mds_now_ns() >= deadline) return;
    }
}

void mds_platform_wake_u32(uint32_t *word) {
    /* Sleepers poll the word (see the top of this file). */
    (void)word;
}

/* ---- names, security ------------------------------------------------------------- */

typedef enum { NAME_SECTION, NAME_PATH } name_kind;

static name_kind classify(const char *name) {
    return strpbrk(name, "/\\:") ? NAME_PATH : NAME_SECTION;
}

/* ring->path: the file path as given, or the section's full name. */
static int resolve_name(const char *name, char *out, size_t out_size, name_kind *kind, mds_error *err) {
    int n;
    if (name[0] == '\0') return mds_set_error(err, MDS_ERR_ARG, 0, "empty ring name");
    *kind = classify(name);
    if (*kind == NAME_SECTION) n = snprintf(out, out_size, "%s%s", MDS_SECTION_PREFIX, name);
    else n = snprintf(out, out_size, "%s", name);
    if (n < 0 || (size_t)n >= out_size)
        return mds_set_error(err, MDS_ERR_ARG, 0, "ring name too long (%u bytes)", (unsigned)strlen(name));
    return MDS_OK;
}

static int to_wide(const char *utf8, WCHAR *out, int out_chars, mds_error *err) {
    int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, utf8, -1, out, out_chars);
    if (n <= 0) return mds_set_error(err, MDS_ERR_ARG, (int)GetLastError(), "ring name %s is not valid UTF-8 or too long", utf8);
    return MDS_OK;
}

typedef struct token_sids {
    union {
        TOKEN_USER user;
        BYTE buf[SECURITY_MAX_SID_SIZE + sizeof(TOKEN_USER)];
    } user;
    union {
        TOKEN_OWNER owner;
        BYTE buf[SECURITY_MAX_SID_SIZE + sizeof(TOKEN_OWNER)];
    } owner;
    int have_owner;
} token_sids;

static int get_token_sids(token_sids *sids, mds_error *err) {
    HANDLE token = NULL;
    DWORD got = 0;
    memset(sids, 0, sizeof *sids);
    if (!OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, TRUE, &token) &&
        !OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &token)) {
        DWORD e = GetLastError();
        return mds_set_error(err, MDS_ERR_SYS, (int)e, "cannot open the process token (error %lu)", (unsigned long)e);
    }
    if (!GetTokenInformation(token, TokenUser, &sids->user, sizeof sids->user, &got)) {
        DWORD e = GetLastError();
        CloseHandle(token);
        return mds_set_error(err, MDS_ERR_SYS, (int)e, "cannot read the token's user (error %lu)", (unsigned long)e);
    }
    sids->have_owner = GetTokenInformation(token, TokenOwner, &sids->owner, sizeof sids->owner, &got) ? 1 : 0;
    CloseHandle(token);
    return MDS_OK;
}

/* A protected DACL with one ACE: the current user, full access; the user as
 * owner.  Lives in caller storage. */
typedef struct private_security {
    SECURITY_ATTRIBUTES attributes;
    SECURITY_DESCRIPTOR descriptor;
    union {
        ACL acl;
        BYTE buf[sizeof(ACL) + sizeof(ACCESS_ALLOWED_ACE) + SECURITY_MAX_SID_SIZE];
    } dacl;
    token_sids sids;
} private_security;

static int make_private_security(private_security *ps, DWORD access, mds_error *err) {
    PSID user;
    int rc = get_token_sids(&ps->sids, err);
    if (rc != MDS_OK) return rc;
    user = ps->sids.user.user.User.Sid;
    if (!InitializeAcl(&ps->dacl.acl, sizeof ps->dacl, ACL_REVISION) ||
        !AddAccessAllowedAce(&ps->dacl.acl, ACL_REVISION, access, user) ||
        !InitializeSecurityDescriptor(&ps->descriptor, SECURITY_DESCRIPTOR_REVISION) ||
        !SetSecurityDescriptorDacl(&ps->descriptor, TRUE, &ps->dacl.acl, FALSE) ||
        !SetSecurityDescriptorOwner(&ps->descriptor, user, FALSE) ||
        !SetSecurityDescriptorControl(&ps->descriptor, SE_DACL_PROTECTED, SE_DACL_PROTECTED)) {
        DWORD e = GetLastError();
        return mds_set_error(err, MDS_ERR_SYS, (int)e, "cannot build a private security descriptor (error %lu)",
                             (unsigned long)e);
    }
    ps->attributes.nLength = sizeof ps->attributes;
    ps->attributes.lpSecurityDescriptor = &ps->descriptor;
    ps->attributes.bInheritHandle = FALSE;
    return MDS_OK;
}

static int sid_is_well_known(PSID sid, WELL_KNOWN_SID_TYPE type) {
    return IsWellKnownSid(sid, type) ? 1 : 0;
}

static void sid_text(PSID sid, char *out, size_t size) {
    LPSTR text = NULL;
    if (ConvertSidToStringSidA(sid, &text) && text) {
        snprintf(out, size, "%s", text);
        LocalFree(text);
    } else {
        snprintf(out, size, "(unprintable SID)");
    }
}

/* Refuse objects that are not private to this user (see the top). */
static int check_private(HANDLE h, SE_OBJECT_TYPE type, DWORD data_rights, const char *path, mds_error *err) {
    PSID owner = NULL;
    PACL dacl = NULL;
    PSECURITY_DESCRIPTOR sd = NULL;
    token_sids sids;
    DWORD rc;
    int status = MDS_OK;
    ACL_SIZE_INFORMATION info;
    DWORD i;
    char who[96];

    if (get_token_sids(&sids, err) != MDS_OK) return err->status;
    rc = GetSecurityInfo(h, type, OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION, &owner, NULL, &dacl, NULL,
                         &sd);
    if (rc != ERROR_SUCCESS) return sys_error(err, MDS_ERR_PERMISSION, rc, "cannot read the security of ring", path);
    if (owner == NULL || !(EqualSid(owner, sids.user.user.User.Sid) ||
                           (sids.have_owner && EqualSid(owner, sids.owner.owner.Owner)))) {
        if (owner) sid_text(owner, who, sizeof who);
        else snprintf(who, sizeof who, "nobody");
        status = mds_set_error(err, MDS_ERR_PERMISSION, 0, "ring %s belongs to %s, not to this user", path, who);
        goto done;
    }
    if (dacl == NULL) {
        status = mds_set_error(err, MDS_ERR_PERMISSION, 0, "ring %s has no DACL: every user can access it", path);
        goto done;
    }
    if (!GetAclInformation(dacl, &info, sizeof info, AclSizeInformation)) {
        status = sys_error(err, MDS_ERR_PERMISSION, GetLastError(), "cannot read the DACL of ring", path);
        goto done;
    }
    for (i = 0; i < info.AceCount; i++) {
        LPVOID ace_ptr = NULL;
        ACE_HEADER *ace;
        ACCESS_ALLOWED_ACE *allowed;
        PSID sid;
        if (!GetAce(dacl, i, &ace_ptr)) continue;
        ace = (ACE_HEADER *)ace_ptr;
        if (ace->AceType != ACCESS_ALLOWED_ACE_TYPE || (ace->AceFlags & INHERIT_ONLY_ACE)) continue;
        allowed = (ACCESS_ALLOWED_ACE *)ace_ptr;
        sid = (PSID)&allowed->SidStart;
        if ((allowed->Mask & (data_rights | GENERIC_READ | GENERIC_WRITE | GENERIC_ALL)) == 0) continue;
        if (EqualSid(sid, sids.user.user.User.Sid) || (sids.have_owner && EqualSid(sid, sids.owner.owner.Owner)) ||
            EqualSid(sid, owner) || sid_is_well_known(sid, WinLocalSystemSid) ||
            sid_is_well_known(sid, WinBuiltinAdministratorsSid) || sid_is_well_known(sid, WinCreatorOwnerRightsSid))
            continue;
        sid_text(sid, who, sizeof who);
        status = mds_set_error(err, MDS_ERR_PERMISSION, 0,
                               "ring %s is accessible by other users (its DACL grants 0x%08lx to %s); expected "
                               "access for this user only",
                               path, (unsigned long)allowed->Mask, who);
        goto done;
    }
done:
    if (sd) LocalFree(sd);
    return status;
}

/* ---- mapping -------------------------------------------------------------------- */

static void *map_view(HANDLE section, size_t size) {
    return MapViewOfFile(section, FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, size);
}

/* Windows has no fork(): every handle belongs to the process that made it. */
uint64_t mds_platform_fork_generation(void) { return 0; }

/* Role liveness on Windows comes from the recorded pids (mds_pid_alive):
 * no role locks. */
int mds_platform_role_lock(mds_ring *ring, unsigned lock_byte, int *locked, mds_error *err) {
    *locked = 0;
    (void)ring;
    (void)lock_byte;
    (void)err;
    return MDS_OK;
}

void mds_platform_role_unlock(mds_ring *ring, unsigned lock_byte) {
    (void)ring;
    (void)lock_byte;
}

int mds_platform_role_alive(const mds_ring *ring, unsigned lock_byte) {
    (void)ring;
    (void)lock_byte;
    return MDS_UNKNOWN;
}

int mds_platform_map_publish(mds_ring *ring, mds_error *err) {
    (void)ring;
    (void)err;
    return MDS_OK;
}

int mds_platform_map_create(mds_ring *ring, const char *name, size_t map_size, int replace_stale, mds_error *err) {
    uint64_t size64 = (uint64_t)map_size;
    DWORD hi = (DWORD)(size64 >> 32), lo = (DWORD)(size64 & 0xFFFFFFFFu);
    HANDLE section = NULL;
    void *base;
    name_kind kind;
    private_security ps;
    WCHAR wide[MAX_PATH + 64];

    ring->fd = -1;
    ring->path[0] = '\0';
    ring->name[0] = '\0';
    if (name == NULL) {
        section = CreateFileMappingW(INVALID_HANDLE_VALUE, NULL, PAGE_READWRITE | SEC_COMMIT, hi, lo, NULL);
        if (section == NULL)
            return sys_error(err, MDS_ERR_SYS, GetLastError(), "cannot create an anonymous mapping for", "the ring");
        base = map_view(section, map_size);
        CloseHandle(section); /* the view keeps the section */
        if (base == NULL)
            return sys_error(err, MDS_ERR_SYS, GetLastError(), "cannot map", "the anonymous ring");
        ring->map_base = base;
        ring->map_size = map_size;
        return MDS_OK;
    }
    if (resolve_name(name, ring->path, sizeof ring->path, &kind, err) != MDS_OK) return err->status;
    snprintf(ring->name, sizeof ring->name, "%s", name);
    if (to_wide(ring->path, wide, (int)(sizeof wide / sizeof wide[0]), err) != MDS_OK) return err->status;

    if (kind == NAME_SECTION) {
        DWORD e;
        if (make_private_security(&ps, STANDARD_RIGHTS_REQUIRED | SECTION_QUERY | SECTION_MAP_READ |
                                           SECTION_MAP_WRITE | SECTION_EXTEND_SIZE,
                                  err) != MDS_OK)
            return err->status;
        section = CreateFileMappingW(INVALID_HANDLE_VALUE, &ps.attributes, PAGE_READWRITE | SEC_COMMIT, hi, lo, wide);
        e = GetLastError();
        if (section == NULL) return sys_error(err, MDS_ERR_SYS, e, "cannot create ring", ring->path);
        if (e == ERROR_ALREADY_EXISTS) {
            CloseHandle(section);
            return mds_set_error(err, MDS_ERR_EXISTS, (int)e, "ring %s already exists", ring->path);
        }
        base = map_view(section, map_size);
        if (base == NULL) {
            e = GetLastError();
            CloseHandle(section);
            return sys_error(err, MDS_ERR_SYS, e, "cannot map ring", ring->path);
        }
        ring->fd = (intptr_t)section; /* keeps the name alive until close */
    } else {
        HANDLE file;
        FILE_ALLOCATION_INFO alloc;
        FILE_END_OF_FILE_INFO eof;
        DWORD e;
        if (make_private_security(&ps, FILE_ALL_ACCESS, err) != MDS_OK) return err->status;
        /* CREATE_NEW fails on any existing name, a symlink included, and
         * FILE_FLAG_OPEN_REPARSE_POINT keeps it from following one. */
        file = CreateFileW(wide, GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                           &ps.attributes, CREATE_NEW, FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, NULL);
        if (file == INVALID_HANDLE_VALUE && replace_stale) {
            int stale = 0;
            uint32_t creator = 0;
            mds_error ignored;
            e = GetLastError();
            if ((e == ERROR_FILE_EXISTS || e == ERROR_ALREADY_EXISTS) &&
                mds_platform_probe_stale(ring->path, &stale, &creator, &ignored) == MDS_OK && stale) {
                (void)DeleteFileW(wide);
                file = CreateFileW(wide, GENERIC_READ | GENERIC_WRITE,
                                   FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, &ps.attributes, CREATE_NEW,
                                   FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, NULL);
            } else {
                SetLastError(e);
            }
        }
        if (file == INVALID_HANDLE_VALUE) {
            e = GetLastError();
            if (e == ERROR_FILE_EXISTS || e == ERROR_ALREADY_EXISTS)
                return mds_set_error(err, MDS_ERR_EXISTS, (int)e, "ring %s already exists", ring->path);
            return sys_error(err, MDS_ERR_SYS, e, "cannot create ring", ring->path);
        }
        /* Reserve the blocks now (a full disk fails here, not as an
         * in-page error later); advisory where unsupported. */
        alloc.AllocationSize.QuadPart = (LONGLONG)size64;
        (void)SetFileInformationByHandle(file, FileAllocationInfo, &alloc, sizeof alloc);
        eof.EndOfFile.QuadPart = (LONGLONG)size64;
        if (!SetFileInformationByHandle(file, FileEndOfFileInfo, &eof, sizeof eof)) {
            e = GetLastError();
            CloseHandle(file);
            DeleteFileW(wide);
            return sys_error(err, MDS_ERR_SYS, e, "cannot size ring", ring->path);
        }
        section = CreateFileMappingW(file, NULL, PAGE_READWRITE, hi, lo, NULL);
        if (section == NULL) {
            e = GetLastError();
            CloseHandle(file);
            DeleteFileW(wide);
            return sys_error(err, MDS_ERR_SYS, e, "cannot create a mapping of ring", ring->path);
        }
        base = map_view(section, map_size);
        e = GetLastError();
        CloseHandle(section);
        if (base == NULL) {
            CloseHandle(file);
            DeleteFileW(wide);
            return sys_error(err, MDS_ERR_SYS, e, "cannot map ring", ring->path);
        }
        ring->fd = (intptr_t)file;
    }
    ring->map_base = base;
    ring->map_size = map_size;
    return MDS_OK;
}

int mds_platform_map_attach(mds_ring *ring, const char *name, mds_ring_header *header_copy, uint64_t *file_size,
                            mds_error *err) {
    name_kind kind;
    WCHAR wide[MAX_PATH + 64];
    ring->fd = -1;
    ring->map_base = NULL;
    if (name == NULL) return mds_set_error(err, MDS_ERR_ARG, 0, "attach needs a ring name or path");
    if (resolve_name(name, ring->path, sizeof ring->path, &kind, err) != MDS_OK) return err->status;
    snprintf(ring->name, sizeof ring->name, "%s", name);
    if (to_wide(ring->path, wide, (int)(sizeof wide / sizeof wide[0]), err) != MDS_OK) return err->status;

    if (kind == NAME_SECTION) {
        MEMORY_BASIC_INFORMATION mbi;
        HANDLE section = OpenFileMappingW(FILE_MAP_READ | FILE_MAP_WRITE | READ_CONTROL, FALSE, wide);
        void *view;
        if (section == NULL) {
            DWORD e = GetLastError();
            if (e == ERROR_FILE_NOT_FOUND) return mds_set_error(err, MDS_ERR_NOT_FOUND, (int)e, "no ring at %s", ring->path);
            if (e == ERROR_ACCESS_DENIED)
                return mds_set_error(err, MDS_ERR_PERMISSION, (int)e, "ring %s belongs to another user", ring->path);
            return sys_error(err, MDS_ERR_SYS, e, "cannot open ring", ring->path);
        }
        if (check_private(section, SE_KERNEL_OBJECT, SECTION_MAP_READ | SECTION_MAP_WRITE, ring->path, err) != MDS_OK) {
            CloseHandle(section);
            return err->status;
        }
        /* A section is memory, not a file: map it whole (address space only)
         * to learn its size and copy the header. */
        view = map_view(section, 0);
        if (view == NULL) {
            DWORD e = GetLastError();
            CloseHandle(section);
            return sys_error(err, MDS_ERR_SYS, e, "cannot map ring", ring->path);
        }
        CloseHandle(section); /* the name belongs to the creator's handle */
        if (VirtualQuery(view, &mbi, sizeof mbi) == 0 || mbi.RegionSize < sizeof(mds_ring_header)) {
            UnmapViewOfFile(view);
            return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is truncated: smaller than a ring header", ring->path);
        }
        memcpy(header_copy, view, sizeof *header_copy);
        *file_size = (uint64_t)mbi.RegionSize;
        ring->map_base = view;
        ring->map_size = mbi.RegionSize;
        return MDS_OK;
    } else {
        BY_HANDLE_FILE_INFORMATION info;
        LARGE_INTEGER size;
        OVERLAPPED at_zero;
        DWORD got = 0;
        HANDLE file = CreateFileW(wide, GENERIC_READ | GENERIC_WRITE,
                                  FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                                  FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, NULL);
        if (file == INVALID_HANDLE_VALUE) {
            DWORD e = GetLastError();
            if (e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND)
                return mds_set_error(err, MDS_ERR_NOT_FOUND, (int)e, "no ring at %s", ring->path);
            if (e == ERROR_ACCESS_DENIED)
                return mds_set_error(err, MDS_ERR_PERMISSION, (int)e, "cannot open ring %s: access denied", ring->path);
            return sys_error(err, MDS_ERR_SYS, e, "cannot open ring", ring->path);
        }
        if (!GetFileInformationByHandle(file, &info)) {
            DWORD e = GetLastError();
            CloseHandle(file);
            return sys_error(err, MDS_ERR_SYS, e, "cannot query ring", ring->path);
        }
        if (info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) {
            CloseHandle(file);
            return mds_set_error(err, MDS_ERR_PERMISSION, 0, "refusing to follow a symlink or junction at %s", ring->path);
        }
        if ((info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) || GetFileType(file) != FILE_TYPE_DISK) {
            CloseHandle(file);
            return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is not a regular file", ring->path);
        }
        if (check_private(file, SE_FILE_OBJECT, FILE_READ_DATA | FILE_WRITE_DATA | FILE_APPEND_DATA, ring->path, err) !=
            MDS_OK) {
            CloseHandle(file);
            return err->status;
        }
        if (!GetFileSizeEx(file, &size)) {
            DWORD e = GetLastError();
            CloseHandle(file);
            return sys_error(err, MDS_ERR_SYS, e, "cannot read the size of ring", ring->path);
        }
        if ((uint64_t)size.QuadPart < sizeof(mds_ring_header)) {
            CloseHandle(file);
            return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is truncated: %lld bytes, a ring header needs %u",
                                 ring->path, (long long)size.QuadPart, (unsigned)sizeof(mds_ring_header));
        }
        memset(&at_zero, 0, sizeof at_zero);
        if (!ReadFile(file, header_copy, (DWORD)sizeof *header_copy, &got, &at_zero) || got != sizeof *header_copy) {
            DWORD e = GetLastError();
            CloseHandle(file);
            return mds_set_error(err, MDS_ERR_FORMAT, (int)e, "cannot read the header of %s", ring->path);
        }
        *file_size = (uint64_t)size.QuadPart;
        ring->fd = (intptr_t)file;
        return MDS_OK;
    }
}

int mds_platform_map_attach_finish(mds_ring *ring, size_t map_size, mds_error *err) {
    HANDLE section;
    void *base;
    DWORD e;
    if (ring->map_base != NULL) {
        /* Section: already mapped whole; its size was validated against the
         * header, so the first map_size bytes are all there. */
        if (map_size > ring->map_size) {
            mds_platform_unmap(ring);
            return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is smaller than its header promises", ring->path);
        }
        return MDS_OK;
    }
    section = CreateFileMappingW((HANDLE)ring->fd, NULL, PAGE_READWRITE, 0, 0, NULL);
    if (section == NULL) {
        e = GetLastError();
        mds_platform_unmap(ring);
        return sys_error(err, MDS_ERR_SYS, e, "cannot create a mapping of ring", ring->path);
    }
    base = map_view(section, map_size);
    e = GetLastError();
    CloseHandle(section);
    if (base == NULL) {
        mds_platform_unmap(ring);
        return sys_error(err, MDS_ERR_SYS, e, "cannot map ring", ring->path);
    }
    ring->map_base = base;
    ring->map_size = map_size;
    return MDS_OK;
}

int mds_platform_check_mapping(mds_ring *ring, mds_error *err) {
    /* Windows cannot shrink a file while a view of it is mapped. */
    (void)ring;
    (void)err;
    return MDS_OK;
}

void mds_platform_unmap(mds_ring *ring) {
    if (ring->map_base) UnmapViewOfFile(ring->map_base);
    ring->map_base = NULL;
    if (ring->fd != -1) CloseHandle((HANDLE)ring->fd);
    ring->fd = -1;
}

int mds_platform_unlink(const char *name, mds_error *err) {
    char path[512];
    WCHAR wide[MAX_PATH + 64];
    name_kind kind;
    if (resolve_name(name, path, sizeof path, &kind, err) != MDS_OK) return err->status;
    if (to_wide(path, wide, (int)(sizeof wide / sizeof wide[0]), err) != MDS_OK) return err->status;
    if (kind == NAME_SECTION) {
        /* A section's name lives exactly as long as its creator's handle:
         * nothing to remove, only report whether it is still there. */
        HANDLE section = OpenFileMappingW(FILE_MAP_READ, FALSE, wide);
        if (section == NULL) {
            DWORD e = GetLastError();
            if (e == ERROR_FILE_NOT_FOUND) return mds_set_error(err, MDS_ERR_NOT_FOUND, (int)e, "no ring at %s", path);
            return MDS_OK;
        }
        CloseHandle(section);
        return MDS_OK;
    }
    if (!DeleteFileW(wide)) {
        DWORD e = GetLastError();
        if (e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND)
            return mds_set_error(err, MDS_ERR_NOT_FOUND, (int)e, "no ring at %s", path);
        return sys_error(err, MDS_ERR_SYS, e, "cannot remove ring", path);
    }
    return MDS_OK;
}

/* ---- private files ------------------------------------------------------------ */

#define MAX_PATH_CHARS (MDS_RING_PATH_SIZE + 8) /* spill paths may be long: \\?\ prefixes */

static int file_error(mds_error *err, DWORD code, const char *what, const char *path) {
    char msg[160];
    int status = (code == ERROR_FILE_EXISTS || code == ERROR_ALREADY_EXISTS) ? MDS_ERR_EXISTS : MDS_ERR_SYS;
    return mds_set_error(err, status, (int)code, "%s %s: %s", what, path, win_message(code, msg, sizeof msg));
}

int mds_platform_file_create(const char *path, intptr_t *file, mds_error *err) {
    WCHAR wide[MAX_PATH_CHARS];
    private_security ps;
    HANDLE h;
    *file = -1;
    if (to_wide(path, wide, MAX_PATH_CHARS, err) != MDS_OK) return err->status;
    if (make_private_security(&ps, FILE_ALL_ACCESS, err) != MDS_OK) return err->status;
    h = CreateFileW(wide, GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ, &ps.attributes, CREATE_NEW,
                    FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, NULL);
    if (h == INVALID_HANDLE_VALUE) return file_error(err, GetLastError(), "cannot create", path);
    *file = (intptr_t)h;
    return MDS_OK;
}

int mds_platform_file_pwrite(intptr_t file, const void *data, uint64_t length, uint64_t offset, mds_error *err) {
    const uint8_t *p = (const uint8_t *)data;
    while (length > 0) {
        DWORD chunk = length > (1u << 30) ? (DWORD)(1u << 30) : (DWORD)length, written = 0;
        OVERLAPPED ov;
        memset(&ov, 0, sizeof ov);
        ov.Offset = (DWORD)(offset & 0xFFFFFFFFu);
        ov.OffsetHigh = (DWORD)(offset >> 32);
        if (!WriteFile((HANDLE)file, p, chunk, &written, &ov)) return file_error(err, GetLastError(), "write failed in", "the spill file");
        if (written == 0) return mds_set_error(err, MDS_ERR_SYS, 0, "write made no progress at offset %llu", (unsigned long long)offset);
        p += written;
        offset += written;
        length -= written;
    }
    return MDS_OK;
}

int mds_platform_file_extend(intptr_t file, uint64_t size, mds_error *err) {
    LARGE_INTEGER current;
    FILE_END_OF_FILE_INFO eof;
    if (!GetFileSizeEx((HANDLE)file, &current)) return file_error(err, GetLastError(), "cannot size", "the spill file");
    if ((uint64_t)current.QuadPart >= size) return MDS_OK;
    eof.EndOfFile.QuadPart = (LONGLONG)size;
    if (!SetFileInformationByHandle((HANDLE)file, FileEndOfFileInfo, &eof, sizeof eof))
        return file_error(err, GetLastError(), "cannot extend", "the spill file");
    return MDS_OK;
}

int mds_platform_file_sync(intptr_t file, mds_error *err) {
    if (!FlushFileBuffers((HANDLE)file)) return file_error(err, GetLastError(), "cannot flush", "the spill file");
    return MDS_OK;
}

void mds_platform_file_close(intptr_t file) {
    if (file != -1 && file != 0) CloseHandle((HANDLE)file);
}

static uint64_t filetime_unix_ns(LONGLONG t) { /* 100 ns since 1601 */
    return t > 116444736000000000LL ? (uint64_t)(t - 116444736000000000LL) * 100ull : 0;
}

static HANDLE open_plain(const char *path, DWORD access, mds_error *err) {
    WCHAR wide[MAX_PATH_CHARS];
    HANDLE h;
    if (to_wide(path, wide, MAX_PATH_CHARS, err) != MDS_OK) return INVALID_HANDLE_VALUE;
    h = CreateFileW(wide, access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                    FILE_ATTRIBUTE_NORMAL | FILE_FLAG_OPEN_REPARSE_POINT, NULL);
    if (h == INVALID_HANDLE_VALUE) file_error(err, GetLastError(), "cannot open", path);
    return h;
}

int mds_platform_file_identity(const char *path, uint64_t *device, uint64_t *inode, mds_error *err) {
    BY_HANDLE_FILE_INFORMATION info;
    HANDLE h = open_plain(path, 0, err);
    if (h == INVALID_HANDLE_VALUE) return err->status;
    if (!GetFileInformationByHandle(h, &info) ||
        (info.dwFileAttributes & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT))) {
        CloseHandle(h);
        return mds_set_error(err, MDS_ERR_ARG, 0, "%s is not a regular file", path);
    }
    CloseHandle(h);
    *device = info.dwVolumeSerialNumber;
    *inode = ((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow;
    return MDS_OK;
}

int mds_platform_file_open_registered(const char *path, uint64_t device, uint64_t inode, uint64_t not_before_unix_ns,
                                      intptr_t *file, uint64_t *size, mds_error *err) {
    BY_HANDLE_FILE_INFORMATION info;
    FILE_BASIC_INFO basic;
    LARGE_INTEGER length;
    HANDLE h;
    int rc;
    *file = -1;
    *size = 0;
    h = open_plain(path, GENERIC_READ | READ_CONTROL, err);
    if (h == INVALID_HANDLE_VALUE) return err->status;
    if (!GetFileInformationByHandle(h, &info) || !GetFileInformationByHandleEx(h, FileBasicInfo, &basic, sizeof basic) ||
        !GetFileSizeEx(h, &length) ||
        (info.dwFileAttributes & (FILE_ATTRIBUTE_DIRECTORY | FILE_ATTRIBUTE_REPARSE_POINT)) || info.nNumberOfLinks > 2 ||
        info.dwVolumeSerialNumber != device || (((uint64_t)info.nFileIndexHigh << 32) | info.nFileIndexLow) != inode ||
        filetime_unix_ns(basic.ChangeTime.QuadPart) + 2000000000ull < not_before_unix_ns) {
        CloseHandle(h);
        return mds_set_error(err, MDS_ERR_PERMISSION, 0,
                             "%s is not the consumer's output registered for this dump (links, identity or age do not "
                             "match); not used", path);
    }
    rc = check_private(h, SE_FILE_OBJECT, FILE_READ_DATA | FILE_WRITE_DATA, path, err);
    if (rc != MDS_OK) {
        CloseHandle(h);
        return rc;
    }
    *file = (intptr_t)h;
    *size = (uint64_t)length.QuadPart;
    return MDS_OK;
}

int mds_platform_file_copy_range(intptr_t src, intptr_t dst, uint64_t offset, uint64_t length, uint64_t deadline_ns,
                                 uint64_t *copied, mds_error *err) {
    uint64_t done = 0;
    uint8_t buf[16384];
    *copied = 0;
    while (done < length) {
        DWORD want = length - done > sizeof buf ? (DWORD)sizeof buf : (DWORD)(length - done), got = 0;
        OVERLAPPED ov;
        int rc;
        if (deadline_ns && (done & ((8u << 20) - 1)) < sizeof buf && mds_now_ns() >= deadline_ns) break;
        memset(&ov, 0, sizeof ov);
        ov.Offset = (DWORD)((offset + done) & 0xFFFFFFFFu);
        ov.OffsetHigh = (DWORD)((offset + done) >> 32);
        if (!ReadFile((HANDLE)src, buf, want, &got, &ov)) {
            DWORD e = GetLastError();
            if (e == ERROR_HANDLE_EOF) break;
            *copied = done;
            return file_error(err, e, "cannot read", "the consumer's output");
        }
        if (got == 0) break;
        rc = mds_platform_file_pwrite(dst, buf, got, offset + done, err);
        if (rc != MDS_OK) {
            *copied = done;
            return rc;
        }
        done += got;
    }
    *copied = done;
    return MDS_OK;
}

int mds_platform_file_set_size(intptr_t file, uint64_t size, mds_error *err) {
    FILE_END_OF_FILE_INFO eof;
    eof.EndOfFile.QuadPart = (LONGLONG)size;
    if (!SetFileInformationByHandle((HANDLE)file, FileEndOfFileInfo, &eof, sizeof eof))
        return file_error(err, GetLastError(), "cannot size", "the spill file");
    return MDS_OK;
}

int mds_platform_probe_stale(const char *name, int *stale, uint32_t *creator_pid, mds_error *err) {
    char path[512];
    name_kind kind;
    mds_ring_header h;
    HANDLE file;
    DWORD got = 0;
    OVERLAPPED ov;
    *stale = 0;
    *creator_pid = 0;
    if (resolve_name(name, path, sizeof path, &kind, err) != MDS_OK) return err->status;
    if (kind == NAME_SECTION) {
        /* A named section exists only while some process holds it open. */
        WCHAR wide[MAX_PATH + 64];
        HANDLE section;
        if (to_wide(path, wide, (int)(sizeof wide / sizeof wide[0]), err) != MDS_OK) return err->status;
        section = OpenFileMappingW(FILE_MAP_READ, FALSE, wide);
        if (section == NULL) return mds_set_error(err, MDS_ERR_NOT_FOUND, (int)GetLastError(), "no ring at %s", path);
        CloseHandle(section);
        return MDS_OK;
    }
    file = open_plain(path, GENERIC_READ, err);
    if (file == INVALID_HANDLE_VALUE) return err->status;
    memset(&h, 0, sizeof h);
    memset(&ov, 0, sizeof ov);
    if (!ReadFile(file, &h, (DWORD)sizeof h, &got, &ov) || got < offsetof(mds_ring_header, write_pos) ||
        memcmp(h.magic, MDS_RING_MAGIC, 8) != 0) {
        CloseHandle(file);
        return mds_set_error(err, MDS_ERR_FORMAT, 0, "%s is not an mdstream ring", path);
    }
    CloseHandle(file);
    *creator_pid = h.creator_pid;
    *stale = !((h.creator_pid && mds_pid_alive(h.creator_pid)) ||
               (h.producer_token && h.producer_pid && mds_pid_alive(h.producer_pid)) ||
               (h.consumer_token && h.consumer_pid && mds_pid_alive(h.consumer_pid)));
    return MDS_OK;
}

int mds_platform_remove_stale(const char *name, int *removed, mds_error *err) {
    char path[512];
    name_kind kind;
    WCHAR wide[MAX_PATH + 64];
    int stale = 0;
    uint32_t creator = 0;
    *removed = 0;
    if (resolve_name(name, path, sizeof path, &kind, err) != MDS_OK) return err->status;
    if (kind == NAME_SECTION) return MDS_OK; /* a named section goes with its last handle */
    if (mds_platform_probe_stale(path, &stale, &creator, err) != MDS_OK) return err->status;
    if (!stale) return MDS_OK;
    if (to_wide(path, wide, (int)(sizeof wide / sizeof wide[0]), err) != MDS_OK) return err->status;
    /* No live holder by pid (Windows rings take no locks): the creator check in map_create does the same. */
    *removed = DeleteFileW(wide) ? 1 : 0;
    return MDS_OK;
}

/* A file view followed by more pages at a fixed address needs placeholder
 * mappings (Windows 10 1803+); the caller reads the file instead. */
int mds_platform_map_private_with_room(intptr_t file, uint64_t size, uint64_t room, void **mapping,
                                       uint64_t *mapping_size, mds_error *err) {
    (void)file;
    (void)size;
    (void)room;
    *mapping = NULL;
    *mapping_size = 0;
    return mds_set_error(err, MDS_ERR_ARG, 0, "private file mappings with room are not supported here");
}

void mds_platform_unmap_private(void *mapping, uint64_t mapping_size) {
    (void)mapping;
    (void)mapping_size;
}

int mds_platform_path_is_absolute(const char *path) {
    return (((path[0] | 0x20) >= 'a' && (path[0] | 0x20) <= 'z') && path[1] == ':' && (path[2] == '\\' || path[2] == '/')) ||
           (path[0] == '\\' && path[1] == '\\');
}

uint64_t mds_platform_realtime_ns(void) {
    FILETIME ft;
    uint64_t t;
    GetSystemTimeAsFileTime(&ft);
    t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime; /* 100 ns since 1601 */
    return (t - 116444736000000000ull) * 100ull;
}

#endif /* _WIN32 */
