/* Stacks: guarded, committed lazily, pooled. Owns every fiber stack and the
 * SIGSEGV/SIGBUS handler that turns a guard-page hit into a report.
 *
 * A stack is one anonymous mapping: a guard region (64 KiB, so a frame with
 * a large local array cannot jump over it) below the usable stack. Pages are
 * committed by the kernel on first touch, so a coroutine parked a few frames
 * deep costs one or two pages of RSS, not its whole stack.
 *
 * The guard and the mapping budget. vm.max_map_count is 65530 on a stock
 * kernel, and a guard made with mprotect splits the mapping in two: 2
 * mappings a stack, 32,765 stacks at most, short of BENCH.md's 100,000
 * parked coroutines. Three modes, picked at run time:
 *  1. MADV_GUARD_INSTALL (Linux 6.13+): the guard is a page-table marker
 *     inside the one mapping; the mapping stays whole, and adjacent stacks
 *     even merge into one mapping. Every stack is guarded. Probed once with
 *     a real madvise; EINVAL means an older kernel.
 *  2. mprotect guards (older kernels), while the live guarded stacks stay
 *     within a budget of (max_map_count - 8192) / 2, which leaves 8192
 *     mappings to the rest of the program.
 *  3. Past that budget, stacks without a guard page, with a canary word at
 *     their lowest address that every switch away from the stack checks.
 *     An overflow is then caught at the next switch, after the fact but
 *     before it can spread silently; WEFT_DEBUG-free and always on.
 * Rejected: one big region with no guards at all (silent corruption), and
 * failing spawn once the budget is spent (100,000 parked coroutines must
 * work with default settings).
 *
 * Pooling. Freed stacks of the default size go to a per-thread cache (64,
 * no atomics), then to a process-wide pool (up to 1024) that is a lock-free
 * LIFO of type-stable descriptors (atomic.h); beyond that they are
 * unmapped. New default stacks come 32 at a time, carved from address
 * space each thread reserves for several batches at once, to amortise the
 * mmap and madvise calls; their top pages (which every first run writes)
 * are committed in one call rather than 32 page faults. Pooled stacks keep the
 * pages they dirtied: the price of not paying a madvise on every free.
 *
 * The handler runs on an alternate signal stack (each worker gets one;
 * plain threads get one when they make a context or generator). It reads
 * the thread's current fiber: a fault inside that fiber's guard region is
 * an overflow of the running stack, reported by name; anything else goes to
 * the handler that was installed before weft's. */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define WEFT_VALGRIND 1
#endif
#endif

#include "../alloc.h"
#include "../sysfile.h"
#include "ctx.h"
#include "stack.h"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define GUARD_BYTES ((size_t)64 * 1024)
#define DEFAULT_BYTES ((size_t)256 * 1024)
#define MIN_BYTES ((size_t)16 * 1024)
/* The largest stack (stack.h): far beyond any real one, and small enough
 * that no size computation here can wrap (a reserve of 16 batches of 32
 * is under 2^50 bytes). */
#define MAX_BYTES WEFT__STACK_MAX_BYTES
#define CACHE_MAX 64
#define POOL_KEEP 1024
#define BATCH 32
#define RESERVE_MAX_BATCHES 16 /* see take_reserve */

static size_t page_bytes;
static pthread_once_t setup_once = PTHREAD_ONCE_INIT;
/* Relaxed: configuration, set before the runtime's threads read it. */
_Atomic size_t weft__stack_default_bytes;
static _Atomic size_t env_bytes; /* WEFT_STACK_SIZE, 0 if unset */
static _Atomic unsigned mode;    /* enum weft__guard_mode for new stacks */
static long mprotect_budget;
/* Relaxed: a budget counter; being a few stacks off is harmless. */
static _Atomic long mprotect_live;
/* Transparent huge pages are on for every mapping ("always"): only then
 * does a stack mapping need MADV_NOHUGEPAGE. Read once, at setup. */
static bool thp_always;
/* The most batches a thread reserves at once: 16, or 1 under strict
 * overcommit (vm.overcommit_memory 2), which charges reserved address
 * space as memory even with MAP_NORESERVE. Set at setup. */
static unsigned reserve_most;

static weft__lifo pool = WEFT__LIFO_INIT;  /* default-size stacks */
static _Atomic long pool_count;            /* relaxed: a trim hint */
static weft__lifo spare = WEFT__LIFO_INIT; /* descriptors without stacks */

static WEFT_TLS weft__stack *cache;
static WEFT_TLS unsigned cache_count;
static pthread_key_t thread_key;

static size_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return 0;
    if (*end == 'k' || *end == 'K')
        v <<= 10;
    else if (*end == 'm' || *end == 'M')
        v <<= 20;
    else if (*end == 'g' || *end == 'G')
        v <<= 30;
    return (size_t)v;
}

static void flush_cache(void *unused);
static size_t round_pages(size_t bytes);
static void cache_push(struct weft__stack *s);

/* True when the guard just installed at p really faults. An emulator may
 * accept the madvise and do nothing (qemu-user 7.2 returns 0 for advice it
 * does not know); a guarded page then reads as memory and an overflow would
 * run silently into the stack below. The kernel reading the page for a
 * write() to a pipe gives EFAULT on a real guard, without a signal. */
static int guard_works(const void *p)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    ssize_t n = write(fds[1], p, 1);
    int faulted = n < 0 && errno == EFAULT;
    close(fds[0]);
    close(fds[1]);
    return faulted;
}

static void setup(void)
{
    page_bytes = (size_t)sysconf(_SC_PAGESIZE);
    const char *env = getenv("WEFT_STACK_SIZE");
    size_t from_env = env ? parse_size(env) : 0;
    atomic_store(&env_bytes, from_env);
    atomic_store(&weft__stack_default_bytes, round_pages(from_env ? from_env : DEFAULT_BYTES));

    long max_maps = 65530;
    char line[128];
    if (weft__read_line("/proc/sys/vm/max_map_count", line, sizeof line)) {
        char *end;
        long v = strtol(line, &end, 10);
        if (end != line)
            max_maps = v;
    }
    mprotect_budget = max_maps > 16384 ? (max_maps - 8192) / 2 : max_maps / 4;

    /* The madvise that keeps huge pages off the stacks takes the mapping
     * lock for writing, against every page fault of the other workers:
     * skipped unless THP is "always" (or its mode cannot be read). */
    thp_always = true;
    if (weft__read_line("/sys/kernel/mm/transparent_hugepage/enabled", line, sizeof line))
        thp_always = strstr(line, "[always]") != NULL;
    reserve_most = RESERVE_MAX_BATCHES;
    if (weft__read_line("/proc/sys/vm/overcommit_memory", line, sizeof line) && line[0] == '2')
        reserve_most = 1;

    /* Probe MADV_GUARD_INSTALL on a scratch mapping. */
    unsigned m = WEFT__GUARD_MPROTECT;
    void *probe = mmap(NULL, 2 * page_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (probe != MAP_FAILED) {
        if (madvise(probe, page_bytes, MADV_GUARD_INSTALL) == 0 && guard_works(probe))
            m = WEFT__GUARD_INSTALL;
        munmap(probe, 2 * page_bytes);
    }
    if (atomic_load(&mode) == 0)
        atomic_store(&mode, m);
    pthread_key_create(&thread_key, flush_cache);
}

static void ensure_setup(void)
{
    pthread_once(&setup_once, setup);
}

static size_t round_pages(size_t bytes)
{
    if (bytes < MIN_BYTES)
        bytes = MIN_BYTES;
    if (bytes > MAX_BYTES)
        bytes = MAX_BYTES;
    return (bytes + page_bytes - 1) & ~(page_bytes - 1);
}

size_t weft__stack_round(size_t bytes)
{
    if (bytes == 0)
        return weft__stack_default_size();
    ensure_setup();
    return round_pages(bytes);
}

size_t weft__stack_default_size_slow(void)
{
    ensure_setup();
    return atomic_load_explicit(&weft__stack_default_bytes, memory_order_relaxed);
}

void weft__stack_set_default(size_t bytes)
{
    ensure_setup();
    size_t env = atomic_load(&env_bytes);
    size_t want = env ? env : (bytes ? bytes : DEFAULT_BYTES);
    atomic_store_explicit(&weft__stack_default_bytes, weft__stack_round(want),
                          memory_order_relaxed);
}

unsigned weft__stack_mode(void)
{
    ensure_setup();
    return atomic_load_explicit(&mode, memory_order_relaxed);
}

void weft__stack_force_mode(unsigned m)
{
    ensure_setup();
    atomic_store(&mode, m);
}

static weft__stack *new_desc(void)
{
    weft__stack *s = (weft__stack *)weft__lifo_pop(&spare);
    if (!s) {
        /* Type-stable: descriptors are never freed (see weft__lifo). */
        s = weft__calloc(sizeof *s);
        if (!s)
            return NULL;
    }
    memset(s, 0, sizeof *s);
    return s;
}

static void valgrind_register(weft__stack *s)
{
#if defined(WEFT_VALGRIND)
    /* The id is not kept: the same range is registered again on reuse
     * only when remapped, and valgrind matches deregistration by range. */
    (void)VALGRIND_STACK_REGISTER(s->lo, (char *)s->lo + s->size);
#else
    (void)s;
#endif
}

/* Sets s's guard for the mode chosen; the mapping is [map, map+map_bytes). */
static int guard(weft__stack *s, unsigned want)
{
    char *base = s->map;
    if (want == WEFT__GUARD_INSTALL) {
        if (madvise(base, GUARD_BYTES, MADV_GUARD_INSTALL) == 0) {
            s->mode = WEFT__GUARD_INSTALL;
            return 0;
        }
        want = WEFT__GUARD_MPROTECT;
    }
    if (want == WEFT__GUARD_MPROTECT) {
        long live = atomic_fetch_add_explicit(&mprotect_live, 1, memory_order_relaxed);
        if (live < mprotect_budget && mprotect(base, GUARD_BYTES, PROT_NONE) == 0) {
            s->mode = WEFT__GUARD_MPROTECT;
            return 0;
        }
        atomic_fetch_sub_explicit(&mprotect_live, 1, memory_order_relaxed);
    }
    s->mode = WEFT__GUARD_CANARY;
    *(uint64_t *)s->lo = WEFT__STACK_CANARY;
    return 0;
}

/* Gives the same advice to one range of each of `count` adjacent stacks
 * of `one` bytes ([base + one * i + off, + len)) with a single
 * process_madvise on our own pidfd: one system call for a batch instead
 * of one each (a third cheaper for guards). False if it is not supported
 * or did not cover every range. Linux 6.13 and later take any advice for
 * the calling process; older kernels refuse these (EINVAL). */
#if defined(SYS_process_madvise) && defined(SYS_pidfd_open)
/* The process's own pidfd for process_madvise, opened on first use. A
 * forked child inherits the parent's, which would advise the parent: the
 * child handler closes it at once, before the child's own code can reuse
 * the number, and resets the lock a forking thread may have held. */
static pthread_mutex_t pidfd_lock = PTHREAD_MUTEX_INITIALIZER;
static int pidfd = -1; /* under pidfd_lock */

static void pidfd_after_fork(void)
{
    pthread_mutex_init(&pidfd_lock, NULL);
    if (pidfd >= 0)
        close(pidfd);
    pidfd = -1;
}

static void pidfd_setup(void)
{
    pthread_atfork(NULL, NULL, pidfd_after_fork);
}
#endif

static bool advise_batch(char *base, size_t one, unsigned count, size_t off, size_t len,
                         int advice)
{
#if defined(SYS_process_madvise) && defined(SYS_pidfd_open)
    static pthread_once_t pidfd_once = PTHREAD_ONCE_INIT;
    struct iovec iov[BATCH];
    if (count > BATCH)
        return false;
    pthread_once(&pidfd_once, pidfd_setup);
    /* Once per batch of 32 stacks: a lock is cheap here. */
    pthread_mutex_lock(&pidfd_lock);
    if (pidfd < 0)
        pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    int fd = pidfd;
    pthread_mutex_unlock(&pidfd_lock);
    if (fd < 0)
        return false;
    for (unsigned i = 0; i < count; i++) {
        iov[i].iov_base = base + one * i + off;
        iov[i].iov_len = len;
    }
    long done = syscall(SYS_process_madvise, fd, iov, (size_t)count, advice, 0u);
    return done == (long)(len * count);
#else
    (void)base, (void)one, (void)count, (void)off, (void)len, (void)advice;
    return false;
#endif
}

/* Address space for this thread's next batches. An mmap takes the
 * process's mapping lock for writing, and every page fault and madvise of
 * the other workers waits for it: skynet and timers map a batch every
 * ~100 us per worker. So a thread maps room for several batches at once,
 * doubling from one batch up to 16 (160 MiB of address space, no memory:
 * MAP_NORESERVE, and pages are committed only when touched), and carves
 * its batches from it (timers on 2 workers: 236 -> 213 ms median of 16
 * alternating runs; 64 batches gave no more). What is left of a reserve
 * is unmapped when the thread exits or needs another stack size. */
static WEFT_TLS char *reserve_next, *reserve_end;
static WEFT_TLS size_t reserve_one;
static WEFT_TLS unsigned reserve_batches; /* how many the last reserve held */
/* 0, or less than a reserve that failed to map (RLIMIT_AS, huge stacks):
 * doubling stops below it instead of failing an mmap every batch. */
static WEFT_TLS unsigned reserve_cap;
/* Relaxed: a tally for tests. */
_Atomic unsigned long weft__stack_regions;

static void drop_reserve(void)
{
    if (reserve_next && reserve_next < reserve_end)
        munmap(reserve_next, (size_t)(reserve_end - reserve_next));
    reserve_next = reserve_end = NULL;
}

/* Maps `bytes` of stack address space: never huge pages. */
static char *map_region(size_t bytes)
{
    char *base = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    atomic_fetch_add_explicit(&weft__stack_regions, 1, memory_order_relaxed);
    /* A stack region must never be backed by a huge page: one touched byte
     * would commit 2 MiB. */
    if (thp_always)
        (void)madvise(base, bytes, MADV_NOHUGEPAGE);
    return base;
}

/* The address space for one batch of `count` stacks of `one` bytes each,
 * carved from this thread's reserve. */
static char *take_reserve(size_t one, unsigned count)
{
    size_t batch = one * count;
    if (!reserve_next || reserve_one != one || (size_t)(reserve_end - reserve_next) < batch) {
        drop_reserve();
        unsigned most = reserve_cap ? reserve_cap : reserve_most;
        unsigned n = reserve_batches ? reserve_batches * 2 : 1;
        if (n > most)
            n = most;
        char *base = map_region(batch * n);
        if (!base && n > 1) {
            /* No room for that many (RLIMIT_AS, huge stacks): one batch,
             * and no more attempts at this size. */
            reserve_cap = n / 2;
            n = 1;
            base = map_region(batch);
        }
        if (!base)
            return NULL;
        /* So that the thread's exit gives back what it has not used. */
        pthread_setspecific(thread_key, &cache);
        reserve_batches = n;
        reserve_one = one;
        reserve_next = base;
        reserve_end = base + batch * n;
    }
    char *base = reserve_next;
    reserve_next += batch;
    return base;
}

/* Maps `count` stacks of `bytes` usable (a batch from the reserve, or one
 * stack of its own); returns them as a list. */
static weft__stack *map_stacks(size_t bytes, unsigned count)
{
    size_t one = GUARD_BYTES + bytes;
    char *base = count > 1 ? take_reserve(one, count) : map_region(one);
    if (!base)
        return NULL;
    unsigned want = weft__stack_mode();
    bool guarded = want == WEFT__GUARD_INSTALL && count > 1 &&
                   advise_batch(base, one, count, 0, GUARD_BYTES, MADV_GUARD_INSTALL);
    /* Every stack's first run writes its top page (the first frame, then
     * the coroutine's own): commit those pages of the batch in the same
     * way, one call instead of a page fault each (skynet maps ~1,350
     * batches: its median fell 205 -> 181 ms on 2 workers). A failure
     * (an older kernel, no memory) leaves them to fault in on first use. */
    if (guarded)
        (void)advise_batch(base, one, count, one - page_bytes, page_bytes, MADV_POPULATE_WRITE);
    weft__stack *list = NULL;
    for (unsigned i = count; i-- > 0;) {
        weft__stack *s = new_desc();
        if (!s) {
            /* Unmap what has no descriptor; the rest is still usable. */
            munmap(base, one * (i + 1));
            break;
        }
        s->map = base + one * i;
        s->map_bytes = one;
        s->lo = (char *)s->map + GUARD_BYTES;
        s->size = bytes;
        if (guarded)
            s->mode = WEFT__GUARD_INSTALL;
        else
            guard(s, want);
        valgrind_register(s);
        s->next = list;
        list = s;
    }
    return list;
}

static void release(weft__stack *s)
{
#if defined(WEFT_VALGRIND)
    VALGRIND_DISCARD_TRANSLATIONS(s->lo, s->size);
#endif
    if (s->mode == WEFT__GUARD_MPROTECT)
        atomic_fetch_sub_explicit(&mprotect_live, 1, memory_order_relaxed);
    munmap(s->map, s->map_bytes);
    s->map = NULL;
    weft__lifo_push(&spare, &s->link);
}

int weft__stack_get(size_t bytes, weft__stack **out)
{
    if (bytes > MAX_BYTES)
        return ENOMEM;
    size_t size = weft__stack_round(bytes);
    size_t def = weft__stack_default_size();
    weft__stack *s;
    if (size == def) {
        while ((s = cache) != NULL) {
            cache = s->next;
            cache_count--;
            if (s->size == size)
                goto found;
            release(s); /* cached before the default changed */
        }
        while ((s = (weft__stack *)weft__lifo_pop(&pool)) != NULL) {
            atomic_fetch_sub_explicit(&pool_count, 1, memory_order_relaxed);
            if (s->size == size)
                goto found;
            release(s); /* the default changed since it was pooled */
        }
        /* Map a batch: keep one, cache the rest on this thread. */
        s = map_stacks(size, BATCH);
        if (!s)
            return ENOMEM;
        for (weft__stack *rest = s->next; rest;) {
            weft__stack *n = rest->next;
            cache_push(rest);
            rest = n;
        }
        goto found;
    }
    s = map_stacks(size, 1);
    if (!s)
        return ENOMEM;
found:
    s->next = NULL;
    if (s->mode == WEFT__GUARD_CANARY)
        *(uint64_t *)s->lo = WEFT__STACK_CANARY;
    *out = s;
    return 0;
}

static void cache_push(weft__stack *s)
{
    if (!cache)
        pthread_setspecific(thread_key, &cache); /* so thread exit flushes */
    s->next = cache;
    cache = s;
    cache_count++;
}

static void pool_push(weft__stack *s)
{
    atomic_fetch_add_explicit(&pool_count, 1, memory_order_relaxed);
    weft__lifo_push(&pool, &s->link);
}

void weft__stack_put(weft__stack *s)
{
    if (!s)
        return;
    if (s->size != weft__stack_default_size()) {
        release(s);
        return;
    }
    /* Never unmap here: a munmap is a TLB shootdown on every core running
     * this process, far too dear on the path of every ending coroutine
     * (it made the `timers` workload 10x slower). Idle workers trim the
     * pool instead (weft__stack_trim). */
    if (cache_count < CACHE_MAX)
        cache_push(s);
    else
        pool_push(s);
}

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)(*(weft__stack *const *)a)->map;
    uintptr_t y = (uintptr_t)(*(weft__stack *const *)b)->map;
    return (x > y) - (x < y);
}

/* Unmaps `n` stacks: sorted by address, stacks mapped side by side (a
 * batch, and often successive batches) go back in one munmap. */
static void unmap_sorted(weft__stack **v, unsigned n)
{
    qsort(v, n, sizeof v[0], by_address);
    for (unsigned i = 0; i < n;) {
        unsigned j = i + 1;
        char *end = (char *)v[i]->map + v[i]->map_bytes;
        while (j < n && v[j]->map == end) {
            end += v[j]->map_bytes;
            j++;
        }
        munmap(v[i]->map, (size_t)(end - (char *)v[i]->map));
        for (unsigned k = i; k < j; k++) {
            if (v[k]->mode == WEFT__GUARD_MPROTECT)
                atomic_fetch_sub_explicit(&mprotect_live, 1, memory_order_relaxed);
            v[k]->map = NULL;
            weft__lifo_push(&spare, &v[k]->link);
        }
        i = j;
    }
}

unsigned weft__stack_trim(unsigned most)
{
    unsigned done = 0;
    while (done < most) {
        long over = atomic_load_explicit(&pool_count, memory_order_relaxed) - POOL_KEEP;
        if (over <= 0)
            break;
        /* All at once where memory allows: the pool is in LIFO order,
         * which scatters addresses, so the larger the sorted set the
         * fewer munmaps (after skynet, 111,000 stacks went back in
         * 15,000 munmaps taken 64 at a time). */
        unsigned want = most - done < (unsigned long)over ? most - done : (unsigned)over;
        weft__stack *small[64];
        weft__stack **v = want > 64 ? weft__alloc(want * sizeof *v) : NULL;
        if (!v) {
            v = small;
            want = want < 64 ? want : 64;
        }
        unsigned n = 0;
        while (n < want) {
            weft__stack *s = (weft__stack *)weft__lifo_pop(&pool);
            if (!s)
                break;
            atomic_fetch_sub_explicit(&pool_count, 1, memory_order_relaxed);
            v[n++] = s;
        }
        if (n)
            unmap_sorted(v, n);
        if (v != small)
            weft__free(v, want * sizeof *v);
        if (n == 0)
            break;
        done += n;
    }
    return done;
}

/* Thread exit: the cached stacks go to the shared pool, the unused
 * reserve back to the kernel. */
static void flush_cache(void *unused)
{
    (void)unused;
    while (cache) {
        weft__stack *s = cache;
        cache = s->next;
        cache_count--;
        pool_push(s);
    }
    drop_reserve();
    /* A later destructor that takes a stack starts small again. */
    reserve_batches = 0;
}

/* --- Overflow reports ------------------------------------------------- */

static const char *kind_name(unsigned kind)
{
    switch (kind) {
    case WEFT__FIBER_COROUTINE:
        return "coroutine";
    case WEFT__FIBER_GENERATOR:
        return "generator";
    case WEFT__FIBER_CONTEXT:
        return "context";
    default:
        return "thread";
    }
}

static void put_str(char *buf, size_t *len, size_t cap, const char *s)
{
    while (*s && *len + 1 < cap)
        buf[(*len)++] = *s++;
}

static void put_u64(char *buf, size_t *len, size_t cap, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n > 0 && *len + 1 < cap)
        buf[(*len)++] = tmp[--n];
}

/* Async-signal-safe: no stdio, no allocation. */
static void report(const char *kind, const char *name, size_t size, const char *how)
{
    char buf[512];
    size_t len = 0;
    put_str(buf, &len, sizeof buf, "weft: stack overflow in ");
    put_str(buf, &len, sizeof buf, kind);
    put_str(buf, &len, sizeof buf, name ? " '" : " ");
    put_str(buf, &len, sizeof buf, name ? name : "(unnamed)");
    put_str(buf, &len, sizeof buf, name ? "' (stack " : " (stack ");
    put_u64(buf, &len, sizeof buf, size);
    put_str(buf, &len, sizeof buf, " bytes)");
    put_str(buf, &len, sizeof buf, how);
    put_str(buf, &len, sizeof buf, "\n");
    ssize_t unused_rc = write(STDERR_FILENO, buf, len);
    (void)unused_rc;
}

void weft__stack_check(const weft__stack *s, const char *kind, const char *name)
{
    if (WEFT_UNLIKELY(*(const uint64_t *)s->lo != WEFT__STACK_CANARY)) {
        report(kind, name, s->size, ", caught by its canary");
        abort();
    }
}

static struct sigaction previous[2]; /* SIGSEGV, SIGBUS */

/* True when addr is in the guard below f's stack. */
static bool hits_guard(const weft__fiber *f, const void *addr)
{
    if (!f || !f->stack || f->stack->mode == WEFT__GUARD_CANARY)
        return false;
    const char *a = addr;
    return a >= (const char *)f->stack->map && a < (const char *)f->stack->lo;
}

static void on_fault(int sig, siginfo_t *info, void *uctx)
{
    /* si_code <= 0: sent by kill, raise or sigqueue, not a fault. */
    bool fault = info->si_code > 0;
    weft__fiber *f = NULL;
    /* The switch probes the old stack before it changes the running
     * fiber (ctx.c), so a guard hit is always in the running fiber's. */
    if (fault && hits_guard(weft__tls_fiber, info->si_addr))
        f = weft__tls_fiber;
    if (f) {
        report(kind_name(f->kind), f->name, f->stack->size, "");
        /* Die by this signal: the default action on return re-faults, so
         * a core dump shows the overflowing frame. */
        signal(sig, SIG_DFL);
        return;
    }
    struct sigaction *prev = &previous[sig == SIGBUS];
    if (prev->sa_flags & SA_SIGINFO) {
        prev->sa_sigaction(sig, info, uctx);
    } else if (prev->sa_handler == SIG_IGN) {
        if (fault)
            signal(sig, SIG_DFL); /* a real fault cannot be ignored */
    } else if (prev->sa_handler == SIG_DFL) {
        /* Not ours: the default action. A fault happens again on return;
         * a sent signal must be sent again. */
        signal(sig, SIG_DFL);
        if (!fault)
            raise(sig);
    } else {
        prev->sa_handler(sig);
    }
}

static void install_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous[0]);
    sigaction(SIGBUS, &sa, &previous[1]);
}

static pthread_once_t handler_once = PTHREAD_ONCE_INIT;
static pthread_key_t altstack_key;
WEFT_TLS void *weft__altstack_mine;
static size_t altstack_bytes;

/* Alternate stacks of exited threads, kept for the next ones: a stop and
 * start of the runtime would otherwise unmap and map one per worker, and
 * every unmap is a TLB shootdown across the running workers. Slots are
 * filled and emptied by atomic exchange, so no lock is held across a
 * fork. At most ALTSTACK_SPARES (64 KiB each, untouched but for signal
 * handling) stay mapped. */
#define ALTSTACK_SPARES 64
static _Atomic(void *) altstack_spare[ALTSTACK_SPARES];

static void free_altstack(void *p)
{
    stack_t ss = { .ss_flags = SS_DISABLE };
    sigaltstack(&ss, NULL);
    for (int i = 0; i < ALTSTACK_SPARES; i++) {
        void *empty = NULL;
        /* Relaxed: the memory is only ever handed to sigaltstack. */
        if (atomic_compare_exchange_strong_explicit(&altstack_spare[i], &empty, p,
                                                    memory_order_relaxed, memory_order_relaxed))
            return;
    }
    munmap(p, altstack_bytes);
}

static void *spare_altstack(void)
{
    for (int i = 0; i < ALTSTACK_SPARES; i++) {
        if (atomic_load_explicit(&altstack_spare[i], memory_order_relaxed)) {
            void *p = atomic_exchange_explicit(&altstack_spare[i], NULL, memory_order_relaxed);
            if (p)
                return p;
        }
    }
    return NULL;
}

static void handler_setup(void)
{
    altstack_bytes = (size_t)64 * 1024;
    long min = sysconf(_SC_MINSIGSTKSZ);
    if (min > 0 && (size_t)min * 4 > altstack_bytes)
        altstack_bytes = (size_t)min * 4;
    pthread_key_create(&altstack_key, free_altstack);
    install_handlers();
}

void weft__overflow_init(void)
{
    pthread_once(&handler_once, handler_setup);
    if (weft__altstack_mine)
        return;
    stack_t old;
    if (sigaltstack(NULL, &old) == 0 && !(old.ss_flags & SS_DISABLE)) {
        weft__altstack_mine = old.ss_sp; /* the thread has one (ASan's, or the program's) */
        return;
    }
    size_t bytes = altstack_bytes;
    void *p = spare_altstack();
    if (!p)
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    stack_t ss = { .ss_sp = p, .ss_size = bytes, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) != 0) {
        munmap(p, bytes);
        return;
    }
    weft__altstack_mine = p;
    pthread_setspecific(altstack_key, p);
}
