/*
 * uioshim: an LD_PRELOAD library that runs an unmodified uio_hv_generic user (DPDK's netvsc
 * PMD, or this project's own PMD on its production path) against the emulated Hyper-V host.
 *
 * Layer 7 helper (host side tooling); compiled on demand by netvsc.preload.build, never shipped
 * as a binary. Environment:
 *
 *   UIOSHIM_ROOT=DIR    the emulated root (`netvsc host --root DIR`); unset: every call passes
 *                       through untouched.
 *   UIOSHIM_DEVICES=G1,G2  only these devices (instance GUIDs) look bound to uio_hv_generic;
 *                       the others have no uio/ directory, as NICs left to hv_netvsc. DPDK
 *                       22.11's vmbus bus ignores -a/-b and takes every uio device, so this is
 *                       how two DPDK processes share one host, one NIC each.
 *   UIOSHIM_PAGEMAP=0   do not fake /proc/self/pagemap (default: faked, see below).
 *   UIOSHIM_DEBUG=1     one line on stderr per redirected open and per uio operation.
 *
 * What it redirects (the emulated root's layout is netvsc.host.tree's; the contract of
 * ROOT/dev/uioN is netvsc.vmbus.uio's, which this file mirrors for a kernel-style fd):
 *
 * - paths under /sys/bus/vmbus and /sys/devices/LNXSYSTM:00 go to the same path under ROOT.
 *   The tree's symlinks are relative, so the kernel resolves them inside ROOT; realpath()
 *   results are turned back into /sys/... so a program never sees ROOT.
 * - /dev/uioN: stat reports a character device; open connects to ROOT/dev/uioN/open (the
 *   host's "device is open" connection, first open opens the channel, last close closes it) and
 *   returns a Unix datagram socket bound in ROOT/dev/uioN, which is what read/write/poll see:
 *     write(fd, s32, 4)  -> one 4-byte datagram to ROOT/dev/uioN/irq (irqcontrol); dropped, but
 *                           still "written", while the host socket is missing or full;
 *     read(fd, 4)        -> the newest cumulative interrupt count the host sent (blocks unless
 *                           O_NONBLOCK, like the uio fd);
 *     mmap(fd, off=K*PAGE_SIZE) -> ROOT/dev/uioN/mapK mapped from offset 0;
 *     any of these after the host hung up the open connection (device rescinded) -> EIO, and
 *     poll() reports POLLERR, as the kernel's uio core does.
 * - /proc/self/pagemap: reads return "present, frame = virtual page", so physical address ==
 *   virtual address. With it a driver that computes GPAs from pagemap (this project's PMD on a
 *   real VM) sends the same addresses DPDK sends with --iova-mode=va, and the emulated host reads
 *   them in this process's memory (process_vm_readv). The library lets the host's pid trace it
 *   (PR_SET_PTRACER) for Yama-restricted systems.
 *
 * Not covered: a dup() of a uio fd is a plain socket (CPython's mmap dups the fd only to close
 * it later); select()/epoll do not report a rescind (poll does); chdir() into the redirected
 * tree; paths with "//" or ".." before the prefix.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif

/* Prefixes redirected into ROOT: the bus view and the device directories its links point to. */
static const char *const redirected_prefixes[] = {"/sys/bus/vmbus", "/sys/devices/LNXSYSTM:00"};

#define FD_TABLE_SIZE 65536
#define OPEN_ACK_TIMEOUT_MS 10000 /* as netvsc.vmbus.uio.OPEN_ACK_TIMEOUT_S */
#define UIO_MAJOR_NUMBER 240     /* a dynamic major, as uio gets on a real system */
#define PAGEMAP_PRESENT (1ULL << 63)
#define PAGEMAP_PFN_MASK ((1ULL << 55) - 1)
/* Guest irq socket names: irq-guest-<pid>-<n>, the pattern the host answers; n starts high so
 * it cannot collide with netvsc.vmbus.uio.EmulatedUio in the same process. */
#define GUEST_SOCKET_SERIAL_BASE 1000000
#define GUID_LENGTH 36
#define MAX_SELECTED_DEVICES 64

struct uio_handle {
    pid_t owner;     /* the process that opened it: a forked child must not unlink its socket */
    int uio_number;
    int dir_fd;      /* ROOT/dev/uioN, for socket addresses through /proc/self/fd */
    int open_conn;   /* SEQPACKET connection to the host's "open" socket, -1 if none */
    char guest_name[64];
};

static char shim_root[PATH_MAX];
static size_t shim_root_len;
static int fake_pagemap = 1;
static int debug_enabled;
static long system_page_size = 4096;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static struct uio_handle *handles[FD_TABLE_SIZE];
static unsigned char pagemap_fds[FD_TABLE_SIZE];
static unsigned int guest_socket_serial = GUEST_SOCKET_SERIAL_BASE;
static char selected_devices[MAX_SELECTED_DEVICES][GUID_LENGTH + 1];
static int selected_device_count = -1; /* -1: every device is bound */

/* ---- the real functions ------------------------------------------------------------------ */

#define REAL(name)                                                                  \
    static void *real_##name##_ptr;                                                 \
    static void *real_##name(void) {                                                \
        void *fn = __atomic_load_n(&real_##name##_ptr, __ATOMIC_ACQUIRE);           \
        if (fn == NULL) {                                                           \
            fn = dlsym(RTLD_NEXT, #name);                                           \
            __atomic_store_n(&real_##name##_ptr, fn, __ATOMIC_RELEASE);             \
        }                                                                           \
        return fn;                                                                  \
    }

REAL(open)
REAL(openat)
REAL(openat64)
REAL(fopen)
REAL(fopen64)
REAL(opendir)
REAL(scandir)
REAL(scandir64)
REAL(stat)
REAL(stat64)
REAL(lstat)
REAL(lstat64)
REAL(fstat)
REAL(fstat64)
REAL(fstatat)
REAL(fstatat64)
REAL(__xstat)
REAL(__xstat64)
REAL(__lxstat)
REAL(__lxstat64)
REAL(__fxstat)
REAL(__fxstat64)
REAL(__fxstatat)
REAL(__fxstatat64)
REAL(statx)
REAL(access)
REAL(faccessat)
REAL(readlink)
REAL(readlinkat)
REAL(__readlink_chk)
REAL(realpath)
REAL(__realpath_chk)
REAL(canonicalize_file_name)
REAL(close)
REAL(read)
REAL(write)
REAL(pread)
REAL(pread64)
REAL(mmap)
REAL(mmap64)
REAL(poll)
REAL(dup2)
REAL(dup3)

#define CALL_REAL(name, type) ((type)real_##name())

static void shim_log(const char *format, ...) {
    if (!debug_enabled)
        return;
    char line[PATH_MAX + 256];
    va_list args;
    va_start(args, format);
    int length = vsnprintf(line, sizeof(line) - 1, format, args);
    va_end(args);
    if (length < 0)
        return;
    if ((size_t)length > sizeof(line) - 2)
        length = (int)sizeof(line) - 2;
    line[length++] = '\n';
    ssize_t (*real_write_fn)(int, const void *, size_t) = CALL_REAL(write, ssize_t (*)(int, const void *, size_t));
    if (real_write_fn != NULL)
        (void)!real_write_fn(2, line, (size_t)length);
}

/* ---- configuration -------------------------------------------------------------------------- */

static void allow_host_to_trace(void) {
    /* Yama (ptrace_scope 1) lets only ancestors trace a process unless it names a tracer; the
     * host reads GPA-direct data with process_vm_readv, which needs that permission. */
    char path[PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/run/netvsc-host.pid", shim_root);
    int (*real_open_fn)(const char *, int, ...) = CALL_REAL(open, int (*)(const char *, int, ...));
    int fd = real_open_fn(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char text[32] = {0};
    ssize_t length = CALL_REAL(read, ssize_t (*)(int, void *, size_t))(fd, text, sizeof(text) - 1);
    CALL_REAL(close, int (*)(int))(fd);
    long host_pid = length > 0 ? strtol(text, NULL, 10) : 0;
    if (host_pid > 0)
        (void)prctl(PR_SET_PTRACER, (unsigned long)host_pid, 0, 0, 0); /* EINVAL without Yama */
}

static int is_guid(const char *text, size_t length) {
    if (length != GUID_LENGTH)
        return 0;
    for (size_t i = 0; i < GUID_LENGTH; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        char c = text[i];
        int hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (dash ? c != '-' : !hex)
            return 0;
    }
    return 1;
}

static void parse_selected_devices(const char *list) {
    selected_device_count = 0;
    while (*list) {
        size_t length = strcspn(list, ", ");
        if (is_guid(list, length) && selected_device_count < MAX_SELECTED_DEVICES) {
            for (size_t i = 0; i < length; i++) {
                char c = list[i];
                selected_devices[selected_device_count][i] = (c >= 'A' && c <= 'F') ? (char)(c - 'A' + 'a') : c;
            }
            selected_devices[selected_device_count++][length] = '\0';
        } else if (length) {
            shim_log("uioshim: UIOSHIM_DEVICES: ignoring %.*s (not a GUID)", (int)length, list);
        }
        list += length;
        list += strspn(list, ", ");
    }
}

static void shim_init(void) {
    const char *root = getenv("UIOSHIM_ROOT");
    const char *devices = getenv("UIOSHIM_DEVICES");
    const char *debug = getenv("UIOSHIM_DEBUG");
    const char *pagemap = getenv("UIOSHIM_PAGEMAP");
    debug_enabled = debug != NULL && debug[0] != '\0' && strcmp(debug, "0") != 0;
    fake_pagemap = !(pagemap != NULL && strcmp(pagemap, "0") == 0);
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        system_page_size = page;
    if (devices != NULL)
        parse_selected_devices(devices);
    if (root == NULL || root[0] == '\0')
        return;
    if (root[0] != '/') {
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd)) == NULL ||
            snprintf(shim_root, sizeof(shim_root), "%s/%s", cwd, root) >= (int)sizeof(shim_root)) {
            shim_root[0] = '\0';
            return;
        }
    } else if (snprintf(shim_root, sizeof(shim_root), "%s", root) >= (int)sizeof(shim_root)) {
        shim_root[0] = '\0';
        return;
    }
    shim_root_len = strlen(shim_root);
    while (shim_root_len > 1 && shim_root[shim_root_len - 1] == '/')
        shim_root[--shim_root_len] = '\0';
    shim_log("uioshim: root %s", shim_root);
    allow_host_to_trace();
}

static int shim_active(void) {
    pthread_once(&init_once, shim_init);
    return shim_root_len != 0;
}

__attribute__((constructor)) static void shim_constructor(void) { (void)shim_active(); }

/* ---- paths ------------------------------------------------------------------------------------ */

static int has_prefix(const char *path, const char *prefix) {
    size_t length = strlen(prefix);
    return strncmp(path, prefix, length) == 0 && (path[length] == '\0' || path[length] == '/');
}

/* N for exactly "/dev/uioN", else -1. */
static int uio_number_of(const char *path) {
    if (path == NULL || strncmp(path, "/dev/uio", 8) != 0 || path[8] == '\0')
        return -1;
    long number = 0;
    for (const char *c = path + 8; *c; c++) {
        if (*c < '0' || *c > '9' || number > 1000000)
            return -1;
        number = number * 10 + (*c - '0');
    }
    return (int)number;
}

/* Whether a path reaches "<guid>/uio" of a device UIOSHIM_DEVICES leaves out. */
static int in_unselected_uio_dir(const char *path) {
    if (selected_device_count < 0)
        return 0;
    const char *component = path;
    while ((component = strchr(component, '/')) != NULL) {
        component++;
        size_t length = strcspn(component, "/");
        if (!is_guid(component, length) || strncmp(component + length, "/uio", 4) != 0 ||
            (component[length + 4] != '\0' && component[length + 4] != '/'))
            continue;
        for (int i = 0; i < selected_device_count; i++)
            if (strncasecmp(component, selected_devices[i], GUID_LENGTH) == 0)
                return 0;
        return 1;
    }
    return 0;
}

/*
 * The path to hand to the kernel: ROOT + path for redirected paths (and /dev/uioN, whose
 * emulated form is a directory), else the path itself. NULL with errno set if it does not fit,
 * or (ENOENT) if it is the uio directory of a device left unbound.
 */
static const char *translate(const char *path, char *buffer, size_t size) {
    if (path == NULL || path[0] != '/' || !shim_active())
        return path;
    int redirect = uio_number_of(path) >= 0;
    for (size_t i = 0; !redirect && i < sizeof(redirected_prefixes) / sizeof(*redirected_prefixes); i++)
        redirect = has_prefix(path, redirected_prefixes[i]);
    if (!redirect)
        return path;
    if (in_unselected_uio_dir(path)) {
        errno = ENOENT;
        return NULL;
    }
    if (snprintf(buffer, size, "%s%s", shim_root, path) >= (int)size) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    return buffer;
}

/* A resolved path inside ROOT, written back as the path the program asked about. */
static char *untranslate(char *resolved) {
    if (resolved != NULL && shim_root_len &&
        strncmp(resolved, shim_root, shim_root_len) == 0 && resolved[shim_root_len] == '/')
        memmove(resolved, resolved + shim_root_len, strlen(resolved + shim_root_len) + 1);
    return resolved;
}

static int is_own_pagemap(const char *path) {
    if (path == NULL || !fake_pagemap || !shim_active())
        return 0;
    if (strcmp(path, "/proc/self/pagemap") == 0 || strcmp(path, "/proc/thread-self/pagemap") == 0)
        return 1;
    char own[64];
    snprintf(own, sizeof(own), "/proc/%ld/pagemap", (long)getpid());
    return strcmp(path, own) == 0;
}

/* ---- uio handles --------------------------------------------------------------------------- */

static struct uio_handle *handle_of(int fd) {
    if (fd < 0 || fd >= FD_TABLE_SIZE)
        return NULL;
    return __atomic_load_n(&handles[fd], __ATOMIC_ACQUIRE);
}

static int is_pagemap_fd(int fd) {
    return fd >= 0 && fd < FD_TABLE_SIZE && __atomic_load_n(&pagemap_fds[fd], __ATOMIC_ACQUIRE);
}

static void proc_fd_path(char *out, size_t size, int dir_fd, const char *name) {
    /* sun_path holds 107 bytes and roots can be deeper: go through the directory's fd. */
    snprintf(out, size, "/proc/self/fd/%d/%s", dir_fd, name);
}

/* Whether the host hung up this open (device rescinded, or host gone). */
static int host_hung_up(const struct uio_handle *handle) {
    if (handle->open_conn < 0)
        return 0;
    struct pollfd entry = {.fd = handle->open_conn, .events = POLLIN};
    int (*real_poll_fn)(struct pollfd *, nfds_t, int) = CALL_REAL(poll, int (*)(struct pollfd *, nfds_t, int));
    if (real_poll_fn(&entry, 1, 0) <= 0)
        return 0;
    if (entry.revents & (POLLHUP | POLLERR | POLLNVAL))
        return 1;
    char byte;
    ssize_t got = recv(handle->open_conn, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return got == 0;
}

static int wait_open_ack(int connection) {
    struct pollfd entry = {.fd = connection, .events = POLLIN};
    int (*real_poll_fn)(struct pollfd *, nfds_t, int) = CALL_REAL(poll, int (*)(struct pollfd *, nfds_t, int));
    int ready;
    do {
        ready = real_poll_fn(&entry, 1, OPEN_ACK_TIMEOUT_MS);
    } while (ready < 0 && errno == EINTR);
    if (ready <= 0)
        return -1;
    char ack[16];
    ssize_t got = recv(connection, ack, sizeof(ack), MSG_DONTWAIT);
    return got == 1 ? 0 : -1;
}

static void free_handle(struct uio_handle *handle) {
    int (*real_close_fn)(int) = CALL_REAL(close, int (*)(int));
    if (handle->guest_name[0] && handle->owner == getpid())
        (void)unlinkat(handle->dir_fd, handle->guest_name, 0);
    if (handle->open_conn >= 0)
        real_close_fn(handle->open_conn); /* the host counts it: the last close closes the channel */
    if (handle->dir_fd >= 0)
        real_close_fn(handle->dir_fd);
    free(handle);
}

/* open("/dev/uioN"): connect the open socket, then bind the datagram socket returned as the fd. */
static int open_uio(int uio_number, const char *emulated_dir, int flags) {
    int (*real_open_fn)(const char *, int, ...) = CALL_REAL(open, int (*)(const char *, int, ...));
    int (*real_close_fn)(int) = CALL_REAL(close, int (*)(int));
    if ((flags & O_ACCMODE) != O_RDWR && (flags & O_ACCMODE) != O_RDONLY && (flags & O_ACCMODE) != O_WRONLY) {
        errno = EINVAL;
        return -1;
    }
    struct uio_handle *handle = calloc(1, sizeof(*handle));
    if (handle == NULL) {
        errno = ENOMEM;
        return -1;
    }
    handle->owner = getpid();
    handle->uio_number = uio_number;
    handle->open_conn = -1;
    handle->dir_fd = real_open_fn(emulated_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (handle->dir_fd < 0) {
        int saved = errno == ENOTDIR ? ENODEV : errno;
        free(handle);
        errno = saved;
        return -1;
    }
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    /* The open contract: connect, wait for the host's one-byte answer (channel open). A refused
     * connection (no host yet, stale socket) opens without one, as EmulatedUio does. */
    int connection = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (connection >= 0) {
        proc_fd_path(address.sun_path, sizeof(address.sun_path), handle->dir_fd, "open");
        if (connect(connection, (struct sockaddr *)&address, sizeof(address)) == 0) {
            if (wait_open_ack(connection) != 0) {
                real_close_fn(connection);
                free_handle(handle);
                shim_log("uioshim: /dev/uio%d: the host did not acknowledge the open", uio_number);
                errno = EIO;
                return -1;
            }
            handle->open_conn = connection;
        } else {
            shim_log("uioshim: /dev/uio%d: no host open socket (%s)", uio_number, strerror(errno));
            real_close_fn(connection);
        }
    }
    int type = SOCK_DGRAM;
    if (flags & O_CLOEXEC)
        type |= SOCK_CLOEXEC;
    if (flags & O_NONBLOCK)
        type |= SOCK_NONBLOCK;
    int fd = socket(AF_UNIX, type, 0);
    if (fd < 0 || fd >= FD_TABLE_SIZE) {
        int saved = fd < 0 ? errno : EMFILE;
        if (fd >= 0)
            real_close_fn(fd);
        free_handle(handle);
        errno = saved;
        return -1;
    }
    unsigned int serial = __atomic_fetch_add(&guest_socket_serial, 1, __ATOMIC_RELAXED);
    snprintf(handle->guest_name, sizeof(handle->guest_name), "irq-guest-%ld-%u", (long)getpid(), serial);
    proc_fd_path(address.sun_path, sizeof(address.sun_path), handle->dir_fd, handle->guest_name);
    if (bind(fd, (struct sockaddr *)&address, sizeof(address)) != 0) {
        int saved = errno;
        handle->guest_name[0] = '\0';
        real_close_fn(fd);
        free_handle(handle);
        errno = saved;
        return -1;
    }
    __atomic_store_n(&handles[fd], handle, __ATOMIC_RELEASE);
    shim_log("uioshim: open /dev/uio%d -> fd %d (%s)", uio_number, fd,
             handle->open_conn >= 0 ? "host acknowledged" : "no host");
    return fd;
}

/* ---- open family ---------------------------------------------------------------------------- */

static int open_common(int dir_fd, const char *path, int flags, mode_t mode,
                       int (*real_at)(int, const char *, int, ...)) {
    if (real_at == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (path != NULL && path[0] == '/' && shim_active()) {
        int uio_number = uio_number_of(path);
        char buffer[PATH_MAX];
        const char *target = translate(path, buffer, sizeof(buffer));
        if (target == NULL)
            return -1;
        if (uio_number >= 0)
            return open_uio(uio_number, target, flags);
        if (is_own_pagemap(path)) {
            int fd = real_at(dir_fd, path, flags, mode);
            if (fd >= 0 && fd < FD_TABLE_SIZE)
                __atomic_store_n(&pagemap_fds[fd], 1, __ATOMIC_RELEASE);
            return fd;
        }
        if (target != path)
            shim_log("uioshim: open %s -> %s", path, target);
        return real_at(dir_fd, target, flags, mode);
    }
    return real_at(dir_fd, path, flags, mode);
}

static mode_t mode_argument(int flags, va_list args) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(args, int) : 0;
}

EXPORT int shim_open(const char *path, int flags, ...) __asm__("open");
EXPORT int shim_open(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    return open_common(AT_FDCWD, path, flags, mode, CALL_REAL(openat, int (*)(int, const char *, int, ...)));
}

EXPORT int shim_open64(const char *path, int flags, ...) __asm__("open64");
EXPORT int shim_open64(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    return open_common(AT_FDCWD, path, flags, mode, CALL_REAL(openat64, int (*)(int, const char *, int, ...)));
}

EXPORT int shim_openat(int dir_fd, const char *path, int flags, ...) __asm__("openat");
EXPORT int shim_openat(int dir_fd, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    return open_common(dir_fd, path, flags, mode, CALL_REAL(openat, int (*)(int, const char *, int, ...)));
}

EXPORT int shim_openat64(int dir_fd, const char *path, int flags, ...) __asm__("openat64");
EXPORT int shim_openat64(int dir_fd, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    return open_common(dir_fd, path, flags, mode, CALL_REAL(openat64, int (*)(int, const char *, int, ...)));
}

/* _FORTIFY_SOURCE entry points: open without a mode argument. */
EXPORT int shim___open_2(const char *path, int flags) __asm__("__open_2");
EXPORT int shim___open_2(const char *path, int flags) {
    return open_common(AT_FDCWD, path, flags, 0, CALL_REAL(openat, int (*)(int, const char *, int, ...)));
}

EXPORT int shim___open64_2(const char *path, int flags) __asm__("__open64_2");
EXPORT int shim___open64_2(const char *path, int flags) {
    return open_common(AT_FDCWD, path, flags, 0, CALL_REAL(openat64, int (*)(int, const char *, int, ...)));
}

EXPORT int shim___openat_2(int dir_fd, const char *path, int flags) __asm__("__openat_2");
EXPORT int shim___openat_2(int dir_fd, const char *path, int flags) {
    return open_common(dir_fd, path, flags, 0, CALL_REAL(openat, int (*)(int, const char *, int, ...)));
}

EXPORT int shim___openat64_2(int dir_fd, const char *path, int flags) __asm__("__openat64_2");
EXPORT int shim___openat64_2(int dir_fd, const char *path, int flags) {
    return open_common(dir_fd, path, flags, 0, CALL_REAL(openat64, int (*)(int, const char *, int, ...)));
}

/* glibc's fopen and opendir open files internally, past the symbols above. */
#define PATH_WRAPPER(ret, fail, name, params, path_param, call_args)            \
    EXPORT ret shim_##name params __asm__(#name);                               \
    EXPORT ret shim_##name params {                                             \
        char buffer[PATH_MAX];                                                  \
        const char *target = translate(path_param, buffer, sizeof(buffer));     \
        ret (*fn) params = CALL_REAL(name, ret(*) params);                      \
        if (target == NULL)                                                     \
            return fail;                                                        \
        if (fn == NULL) {                                                       \
            errno = ENOSYS;                                                     \
            return fail;                                                        \
        }                                                                       \
        return fn call_args;                                                    \
    }

PATH_WRAPPER(FILE *, NULL, fopen, (const char *path, const char *mode), path, (target, mode))
PATH_WRAPPER(FILE *, NULL, fopen64, (const char *path, const char *mode), path, (target, mode))
PATH_WRAPPER(DIR *, NULL, opendir, (const char *path), path, (target))
PATH_WRAPPER(int, -1, scandir,
             (const char *path, struct dirent ***list, int (*filter)(const struct dirent *),
              int (*compare)(const struct dirent **, const struct dirent **)),
             path, (target, list, filter, compare))
PATH_WRAPPER(int, -1, scandir64,
             (const char *path, struct dirent64 ***list, int (*filter)(const struct dirent64 *),
              int (*compare)(const struct dirent64 **, const struct dirent64 **)),
             path, (target, list, filter, compare))
PATH_WRAPPER(int, -1, access, (const char *path, int how), path, (target, how))
PATH_WRAPPER(int, -1, faccessat, (int dir_fd, const char *path, int how, int flags), path,
             (dir_fd, target, how, flags))
PATH_WRAPPER(ssize_t, -1, readlink, (const char *path, char *out, size_t size), path, (target, out, size))
PATH_WRAPPER(ssize_t, -1, readlinkat, (int dir_fd, const char *path, char *out, size_t size), path,
             (dir_fd, target, out, size))
PATH_WRAPPER(ssize_t, -1, __readlink_chk, (const char *path, char *out, size_t size, size_t out_size), path,
             (target, out, size, out_size))

/* ---- stat family: paths are translated; /dev/uioN and uio fds look like character devices --- */

static void as_uio_char_device(struct stat *st, int uio_number) {
    st->st_mode = S_IFCHR | 0600;
    st->st_size = 0;
    st->st_nlink = 1;
    st->st_rdev = makedev(UIO_MAJOR_NUMBER, (unsigned int)uio_number);
    st->st_blocks = 0;
}

static void as_uio_statx(struct statx *stx, int uio_number) {
    stx->stx_mode = S_IFCHR | 0600;
    stx->stx_size = 0;
    stx->stx_nlink = 1;
    stx->stx_rdev_major = UIO_MAJOR_NUMBER;
    stx->stx_rdev_minor = (unsigned int)uio_number;
    stx->stx_blocks = 0;
}

#define STAT_PATH_WRAPPER(name, stat_type, params, path_param, call_args)            \
    EXPORT int shim_##name params __asm__(#name);                                    \
    EXPORT int shim_##name params {                                                  \
        char buffer[PATH_MAX];                                                       \
        const char *target = translate(path_param, buffer, sizeof(buffer));          \
        int (*fn) params = CALL_REAL(name, int (*) params);                          \
        if (target == NULL)                                                          \
            return -1;                                                               \
        if (fn == NULL) {                                                            \
            errno = ENOSYS;                                                          \
            return -1;                                                               \
        }                                                                            \
        int result = fn call_args;                                                   \
        int uio_number = target != path_param ? uio_number_of(path_param) : -1;      \
        if (result == 0 && uio_number >= 0)                                          \
            as_uio_char_device((struct stat *)st, uio_number);                       \
        return result;                                                               \
    }

STAT_PATH_WRAPPER(stat, struct stat, (const char *path, struct stat *st), path, (target, st))
STAT_PATH_WRAPPER(stat64, struct stat64, (const char *path, struct stat64 *st), path, (target, st))
STAT_PATH_WRAPPER(lstat, struct stat, (const char *path, struct stat *st), path, (target, st))
STAT_PATH_WRAPPER(lstat64, struct stat64, (const char *path, struct stat64 *st), path, (target, st))
STAT_PATH_WRAPPER(__xstat, struct stat, (int version, const char *path, struct stat *st), path,
                  (version, target, st))
STAT_PATH_WRAPPER(__xstat64, struct stat64, (int version, const char *path, struct stat64 *st), path,
                  (version, target, st))
STAT_PATH_WRAPPER(__lxstat, struct stat, (int version, const char *path, struct stat *st), path,
                  (version, target, st))
STAT_PATH_WRAPPER(__lxstat64, struct stat64, (int version, const char *path, struct stat64 *st), path,
                  (version, target, st))

/* fstatat: a path (translated), or an fd with AT_EMPTY_PATH (a uio fd is a char device). */
#define FSTATAT_WRAPPER(name, stat_type, params, call_args)                          \
    EXPORT int shim_##name params __asm__(#name);                                    \
    EXPORT int shim_##name params {                                                  \
        char buffer[PATH_MAX];                                                       \
        const char *target = translate(path, buffer, sizeof(buffer));                \
        int (*fn) params = CALL_REAL(name, int (*) params);                          \
        if (target == NULL)                                                          \
            return -1;                                                               \
        if (fn == NULL) {                                                            \
            errno = ENOSYS;                                                          \
            return -1;                                                               \
        }                                                                            \
        int result = fn call_args;                                                   \
        int uio_number = -1;                                                         \
        if (target != path)                                                          \
            uio_number = uio_number_of(path);                                        \
        else if ((flags & AT_EMPTY_PATH) && path != NULL && path[0] == '\0' &&       \
                 handle_of(dir_fd) != NULL)                                          \
            uio_number = handle_of(dir_fd)->uio_number;                              \
        if (result == 0 && uio_number >= 0)                                          \
            as_uio_char_device((struct stat *)st, uio_number);                       \
        return result;                                                               \
    }

FSTATAT_WRAPPER(fstatat, struct stat, (int dir_fd, const char *path, struct stat *st, int flags),
                (dir_fd, target, st, flags))
FSTATAT_WRAPPER(fstatat64, struct stat64, (int dir_fd, const char *path, struct stat64 *st, int flags),
                (dir_fd, target, st, flags))
FSTATAT_WRAPPER(__fxstatat, struct stat,
                (int version, int dir_fd, const char *path, struct stat *st, int flags),
                (version, dir_fd, target, st, flags))
FSTATAT_WRAPPER(__fxstatat64, struct stat64,
                (int version, int dir_fd, const char *path, struct stat64 *st, int flags),
                (version, dir_fd, target, st, flags))

#define FSTAT_WRAPPER(name, stat_type, params, call_args)                            \
    EXPORT int shim_##name params __asm__(#name);                                    \
    EXPORT int shim_##name params {                                                  \
        int (*fn) params = CALL_REAL(name, int (*) params);                          \
        if (fn == NULL) {                                                            \
            errno = ENOSYS;                                                          \
            return -1;                                                               \
        }                                                                            \
        int result = fn call_args;                                                   \
        struct uio_handle *handle = handle_of(fd);                                   \
        if (result == 0 && handle != NULL)                                           \
            as_uio_char_device((struct stat *)st, handle->uio_number);               \
        return result;                                                               \
    }

FSTAT_WRAPPER(fstat, struct stat, (int fd, struct stat *st), (fd, st))
FSTAT_WRAPPER(fstat64, struct stat64, (int fd, struct stat64 *st), (fd, st))
FSTAT_WRAPPER(__fxstat, struct stat, (int version, int fd, struct stat *st), (version, fd, st))
FSTAT_WRAPPER(__fxstat64, struct stat64, (int version, int fd, struct stat64 *st), (version, fd, st))

EXPORT int shim_statx(int dir_fd, const char *path, int flags, unsigned int mask, struct statx *stx)
    __asm__("statx");
EXPORT int shim_statx(int dir_fd, const char *path, int flags, unsigned int mask, struct statx *stx) {
    char buffer[PATH_MAX];
    const char *target = translate(path, buffer, sizeof(buffer));
    int (*fn)(int, const char *, int, unsigned int, struct statx *) =
        CALL_REAL(statx, int (*)(int, const char *, int, unsigned int, struct statx *));
    if (target == NULL)
        return -1;
    if (fn == NULL) {
        errno = ENOSYS;
        return -1;
    }
    int result = fn(dir_fd, target, flags, mask, stx);
    int uio_number = -1;
    if (target != path)
        uio_number = uio_number_of(path);
    else if ((flags & AT_EMPTY_PATH) && path != NULL && path[0] == '\0' && handle_of(dir_fd) != NULL)
        uio_number = handle_of(dir_fd)->uio_number;
    if (result == 0 && uio_number >= 0)
        as_uio_statx(stx, uio_number);
    return result;
}

/* ---- realpath: resolved inside ROOT, reported outside it ------------------------------------ */

EXPORT char *shim_realpath(const char *path, char *resolved) __asm__("realpath");
EXPORT char *shim_realpath(const char *path, char *resolved) {
    char buffer[PATH_MAX];
    const char *target = translate(path, buffer, sizeof(buffer));
    char *(*fn)(const char *, char *) = CALL_REAL(realpath, char *(*)(const char *, char *));
    if (target == NULL)
        return NULL;
    if (fn == NULL) {
        errno = ENOSYS;
        return NULL;
    }
    char *result = fn(target, resolved);
    return target != path ? untranslate(result) : result;
}

EXPORT char *shim___realpath_chk(const char *path, char *resolved, size_t resolved_size)
    __asm__("__realpath_chk");
EXPORT char *shim___realpath_chk(const char *path, char *resolved, size_t resolved_size) {
    char buffer[PATH_MAX];
    const char *target = translate(path, buffer, sizeof(buffer));
    char *(*fn)(const char *, char *, size_t) = CALL_REAL(__realpath_chk, char *(*)(const char *, char *, size_t));
    if (target == NULL)
        return NULL;
    if (fn == NULL) {
        errno = ENOSYS;
        return NULL;
    }
    char *result = fn(target, resolved, resolved_size);
    return target != path ? untranslate(result) : result;
}

EXPORT char *shim_canonicalize_file_name(const char *path) __asm__("canonicalize_file_name");
EXPORT char *shim_canonicalize_file_name(const char *path) {
    char buffer[PATH_MAX];
    const char *target = translate(path, buffer, sizeof(buffer));
    char *(*fn)(const char *) = CALL_REAL(canonicalize_file_name, char *(*)(const char *));
    if (target == NULL)
        return NULL;
    if (fn == NULL) {
        errno = ENOSYS;
        return NULL;
    }
    char *result = fn(target);
    return target != path ? untranslate(result) : result;
}

/* ---- the uio fd: read, write, mmap, poll, close --------------------------------------------- */

static ssize_t uio_read(struct uio_handle *handle, int fd, void *out, size_t count) {
    if (count != sizeof(int32_t)) {
        errno = EINVAL; /* the uio core accepts exactly one s32 */
        return -1;
    }
    int blocking = !(fcntl(fd, F_GETFL) & O_NONBLOCK);
    int (*real_poll_fn)(struct pollfd *, nfds_t, int) = CALL_REAL(poll, int (*)(struct pollfd *, nfds_t, int));
    for (;;) {
        if (host_hung_up(handle)) {
            errno = EIO;
            return -1;
        }
        int32_t latest = 0;
        int have = 0;
        char datagram[16];
        ssize_t got;
        /* Counts are cumulative: drain the queue, keep the newest. */
        while ((got = recv(fd, datagram, sizeof(datagram), MSG_DONTWAIT)) >= 0) {
            if (got == (ssize_t)sizeof(int32_t)) {
                memcpy(&latest, datagram, sizeof(latest));
                have = 1;
            }
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        if (have) {
            memcpy(out, &latest, sizeof(latest));
            return (ssize_t)sizeof(latest);
        }
        if (!blocking) {
            errno = EAGAIN;
            return -1;
        }
        struct pollfd entries[2] = {{.fd = fd, .events = POLLIN}, {.fd = handle->open_conn, .events = POLLIN}};
        if (real_poll_fn(entries, handle->open_conn >= 0 ? 2 : 1, -1) < 0 && errno != EINTR)
            return -1;
    }
}

static ssize_t uio_write(struct uio_handle *handle, int fd, const void *data, size_t count) {
    if (count != sizeof(int32_t)) {
        errno = EINVAL;
        return -1;
    }
    if (host_hung_up(handle)) {
        errno = EIO;
        return -1;
    }
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    proc_fd_path(address.sun_path, sizeof(address.sun_path), handle->dir_fd, "irq");
    if (sendto(fd, data, count, MSG_DONTWAIT, (struct sockaddr *)&address, sizeof(address)) < 0) {
        /* No host socket yet, or its queue is full of unread kicks: the write is dropped, as in
         * EmulatedUio; the host re-checks every ring when it starts or catches up. */
        if (errno != ENOENT && errno != ECONNREFUSED && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        shim_log("uioshim: /dev/uio%d: irq write dropped (%s)", handle->uio_number, strerror(errno));
    }
    return (ssize_t)count;
}

/* pagemap entries saying "present, frame = virtual page": physical address == virtual address. */
static ssize_t pagemap_fill(void *out, size_t count, off_t offset) {
    const size_t entry_size = sizeof(uint64_t);
    if (offset < 0 || offset % (off_t)entry_size || count % entry_size) {
        errno = EINVAL; /* the kernel's rule for pagemap reads */
        return -1;
    }
    uint64_t first_page = (uint64_t)offset / entry_size;
    size_t entries = count / entry_size;
    for (size_t i = 0; i < entries; i++) {
        uint64_t entry = PAGEMAP_PRESENT | ((first_page + i) & PAGEMAP_PFN_MASK);
        memcpy((char *)out + i * entry_size, &entry, entry_size);
    }
    return (ssize_t)count;
}

EXPORT ssize_t shim_read(int fd, void *out, size_t count) __asm__("read");
EXPORT ssize_t shim_read(int fd, void *out, size_t count) {
    struct uio_handle *handle = handle_of(fd);
    if (handle != NULL)
        return uio_read(handle, fd, out, count);
    if (is_pagemap_fd(fd)) {
        off_t position = lseek(fd, 0, SEEK_CUR);
        ssize_t done = pagemap_fill(out, count, position);
        if (done > 0)
            lseek(fd, position + done, SEEK_SET);
        return done;
    }
    return CALL_REAL(read, ssize_t (*)(int, void *, size_t))(fd, out, count);
}

EXPORT ssize_t shim_pread(int fd, void *out, size_t count, off_t offset) __asm__("pread");
EXPORT ssize_t shim_pread(int fd, void *out, size_t count, off_t offset) {
    if (is_pagemap_fd(fd))
        return pagemap_fill(out, count, offset);
    return CALL_REAL(pread, ssize_t (*)(int, void *, size_t, off_t))(fd, out, count, offset);
}

EXPORT ssize_t shim_pread64(int fd, void *out, size_t count, off_t offset) __asm__("pread64");
EXPORT ssize_t shim_pread64(int fd, void *out, size_t count, off_t offset) {
    if (is_pagemap_fd(fd))
        return pagemap_fill(out, count, offset);
    return CALL_REAL(pread64, ssize_t (*)(int, void *, size_t, off_t))(fd, out, count, offset);
}

EXPORT ssize_t shim_write(int fd, const void *data, size_t count) __asm__("write");
EXPORT ssize_t shim_write(int fd, const void *data, size_t count) {
    struct uio_handle *handle = handle_of(fd);
    if (handle != NULL)
        return uio_write(handle, fd, data, count);
    return CALL_REAL(write, ssize_t (*)(int, const void *, size_t))(fd, data, count);
}

static void *uio_mmap(struct uio_handle *handle, void *address, size_t length, int protection, int flags,
                      off_t offset, void *(*real_mmap_fn)(void *, size_t, int, int, int, off_t)) {
    /* The offset only selects the map: K * PAGE_SIZE, the mapping starts at the map's beginning. */
    if (offset < 0 || offset % system_page_size || offset / system_page_size > 4 || length == 0) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    if (host_hung_up(handle)) {
        errno = EIO;
        return MAP_FAILED;
    }
    char name[8];
    snprintf(name, sizeof(name), "map%u", (unsigned int)(offset / system_page_size));
    int (*real_openat_fn)(int, const char *, int, ...) = CALL_REAL(openat, int (*)(int, const char *, int, ...));
    int map_fd = real_openat_fn(handle->dir_fd, name, ((protection & PROT_WRITE) ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (map_fd < 0) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    struct stat st;
    int (*real_fstat_fn)(int, struct stat *) = CALL_REAL(fstat, int (*)(int, struct stat *));
    void *mapped = MAP_FAILED;
    long rounded = 0;
    if (real_fstat_fn(map_fd, &st) == 0) {
        rounded = (st.st_size + system_page_size - 1) / system_page_size * system_page_size;
        if ((off_t)length <= rounded)
            mapped = real_mmap_fn(address, length, protection, flags, map_fd, 0);
        else
            errno = EINVAL; /* longer than the map */
    }
    int saved = errno;
    CALL_REAL(close, int (*)(int))(map_fd);
    shim_log("uioshim: mmap /dev/uio%d %s (%zu bytes of %ld) -> %p", handle->uio_number, name, length, rounded,
             mapped);
    errno = saved;
    return mapped;
}

EXPORT void *shim_mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset)
    __asm__("mmap");
EXPORT void *shim_mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset) {
    void *(*fn)(void *, size_t, int, int, int, off_t) = CALL_REAL(mmap, void *(*)(void *, size_t, int, int, int, off_t));
    struct uio_handle *handle = handle_of(fd);
    if (handle != NULL)
        return uio_mmap(handle, address, length, protection, flags, offset, fn);
    return fn(address, length, protection, flags, fd, offset);
}

EXPORT void *shim_mmap64(void *address, size_t length, int protection, int flags, int fd, off_t offset)
    __asm__("mmap64");
EXPORT void *shim_mmap64(void *address, size_t length, int protection, int flags, int fd, off_t offset) {
    void *(*fn)(void *, size_t, int, int, int, off_t) =
        CALL_REAL(mmap64, void *(*)(void *, size_t, int, int, int, off_t));
    struct uio_handle *handle = handle_of(fd);
    if (handle != NULL)
        return uio_mmap(handle, address, length, protection, flags, offset, fn);
    return fn(address, length, protection, flags, fd, offset);
}

/* A rescinded uio fd polls as POLLERR (as the uio core reports an unregistered device). */
EXPORT int shim_poll(struct pollfd *entries, nfds_t count, int timeout) __asm__("poll");
EXPORT int shim_poll(struct pollfd *entries, nfds_t count, int timeout) {
    int (*fn)(struct pollfd *, nfds_t, int) = CALL_REAL(poll, int (*)(struct pollfd *, nfds_t, int));
    int rescinded = 0;
    for (nfds_t i = 0; i < count; i++) {
        struct uio_handle *handle = handle_of(entries[i].fd);
        if (handle != NULL && host_hung_up(handle))
            rescinded = 1;
    }
    int ready = fn(entries, count, rescinded ? 0 : timeout);
    if (ready < 0 || !rescinded)
        return ready;
    for (nfds_t i = 0; i < count; i++) {
        struct uio_handle *handle = handle_of(entries[i].fd);
        if (handle != NULL && host_hung_up(handle)) {
            if (entries[i].revents == 0)
                ready++;
            entries[i].revents |= POLLERR;
        }
    }
    return ready;
}

/* A descriptor number reused by dup2/dup3 is no longer the uio fd it was. */
static void forget_fd(int fd) {
    if (fd < 0 || fd >= FD_TABLE_SIZE)
        return;
    struct uio_handle *handle = __atomic_exchange_n(&handles[fd], NULL, __ATOMIC_ACQ_REL);
    __atomic_store_n(&pagemap_fds[fd], 0, __ATOMIC_RELEASE);
    if (handle != NULL) {
        shim_log("uioshim: close /dev/uio%d fd %d", handle->uio_number, fd);
        free_handle(handle);
    }
}

EXPORT int shim_dup2(int old_fd, int new_fd) __asm__("dup2");
EXPORT int shim_dup2(int old_fd, int new_fd) {
    if (old_fd != new_fd && handle_of(new_fd) != NULL)
        forget_fd(new_fd);
    return CALL_REAL(dup2, int (*)(int, int))(old_fd, new_fd);
}

EXPORT int shim_dup3(int old_fd, int new_fd, int flags) __asm__("dup3");
EXPORT int shim_dup3(int old_fd, int new_fd, int flags) {
    if (old_fd != new_fd && handle_of(new_fd) != NULL)
        forget_fd(new_fd);
    return CALL_REAL(dup3, int (*)(int, int, int))(old_fd, new_fd, flags);
}

/* At exit the kernel closes the sockets; the names bound in ROOT/dev/uioN are ours to remove. */
__attribute__((destructor)) static void shim_destructor(void) {
    for (int fd = 0; fd < FD_TABLE_SIZE; fd++) {
        struct uio_handle *handle = __atomic_load_n(&handles[fd], __ATOMIC_ACQUIRE);
        if (handle != NULL && handle->guest_name[0] && handle->owner == getpid())
            (void)unlinkat(handle->dir_fd, handle->guest_name, 0);
    }
}

EXPORT int shim_close(int fd) __asm__("close");
EXPORT int shim_close(int fd) {
    forget_fd(fd);
    return CALL_REAL(close, int (*)(int))(fd);
}
