/* weft.h: an M:N work-stealing coroutine scheduler.
 *
 * Coroutines are ordinary C functions on their own stacks, run by one worker
 * thread per core; idle workers steal from busy ones. Calls that wait park
 * the calling coroutine (its worker runs others) and block the calling
 * thread when called from a plain thread.
 *
 * Conventions, for every call below unless it says otherwise:
 * - Returns 0 or a positive errno code (as pthreads do) and never sets
 *   errno. A failed call leaves the caller's objects as they were.
 * - Time is int64_t nanoseconds of CLOCK_MONOTONIC (weft_now). Calls that
 *   can wait take an absolute deadline; WEFT_FOREVER waits without limit;
 *   a deadline already passed means "do not wait": the call still succeeds
 *   if it can complete at once, else returns ETIMEDOUT.
 * - "Any thread" means coroutines and plain threads alike.
 * - Arguments are borrowed for the duration of the call. */
#ifndef WEFT_H
#define WEFT_H

#include <stddef.h>
#include <stdint.h>

#include "weft/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ===================================================================== */
/* Runtime                                                               */
/* ===================================================================== */

enum { WEFT_PIN_AUTO = 0, WEFT_PIN_ON = 1, WEFT_PIN_OFF = 2 };

typedef struct weft_config {
    unsigned workers;      /* 0: one per core this process may run on (its
                              affinity mask and cgroup cpuset, via hwloc),
                              at most its cgroup CPU quota (cpu.max) rounded
                              up, as read at the process's first start; the
                              environment's WEFT_WORKERS overrides */
    size_t stack_size;     /* 0: 256 KiB usable; WEFT_STACK_SIZE (bytes, or
                              with a K/M suffix) overrides */
    int pin;               /* WEFT_PIN_AUTO: bind worker i to core i when
                              the workers are one per core the process may
                              use (as by default), else leave them to the
                              kernel; ON: always; OFF: never */
    unsigned blocking_max; /* reserved for the blocking pool; 0: default */
} weft_config;

/* Starts the runtime: its workers, idle until something is spawned.
 * cfg may be NULL (all defaults). Call from a plain thread.
 * The first start of a process also reads the machine's topology with
 * hwloc (about 2 ms on a small machine; later starts reuse it). If the
 * caller is the process's only thread, HWLOC_PLUGINS_BLACKLIST is set in
 * the environment while hwloc initialises, so it loads none of its
 * plugins (5 ms more), then removed; a program that sets
 * HWLOC_PLUGINS_BLACKLIST or HWLOC_PLUGINS_PATH itself keeps its value.
 * Returns 0; EALREADY if running (so also inside a coroutine); EINVAL for a
 * pin value out of range; ENOMEM or EAGAIN if threads or memory run out. */
WEFT_API int weft_start(const weft_config *cfg);

/* Waits until every coroutine (detached ones included) has finished, then
 * stops the workers. Call from a plain thread. The runtime can be started
 * again afterwards.
 * Returns 0; EPERM if not running; EDEADLK inside a coroutine. */
WEFT_API int weft_stop(void);

/* Starts the runtime with cfg, runs fn(arg) as a coroutine, waits for it
 * and for every coroutine started meanwhile, stops, and stores fn's return
 * value in *result (if result is not NULL).
 * Returns 0; EINVAL if fn is NULL; EALREADY if the runtime is running;
 * the errors of weft_start (EALREADY inside a coroutine). */
WEFT_API int weft_main(const weft_config *cfg, void *(*fn)(void *), void *arg, void **result);

/* The number of workers, 0 when the runtime is not running. Any thread. */
WEFT_API unsigned weft_workers(void);

/* The index of the calling worker (0 .. weft_workers()-1), -1 on a plain
 * thread. A coroutine may move between workers at any call that waits. */
WEFT_API int weft_worker(void);

/* ===================================================================== */
/* Coroutines                                                            */
/* ===================================================================== */

typedef struct weft_co weft_co;

typedef struct weft_attr {
    size_t stack_size; /* 0: the runtime's default; rounded up to pages;
                          above 1 TiB: ENOMEM */
    const char *name;  /* copied; shown in overflow reports and traces */
} weft_attr;

/* Spawns fn(arg) as a coroutine. With co == NULL the coroutine is
 * detached; otherwise *co is a handle for exactly one weft_join or
 * weft_detach. attr may be NULL. On one worker, coroutines start in spawn
 * order. The coroutine gets its stack when it first runs. Any thread.
 * Backpressure: a coroutine that has spawned more than 4096 coroutines
 * since it last waited or yielded, while its worker holds more than 4096
 * that have not started, yields after spawning (as weft_yield), so a
 * spawning loop cannot outrun the workers without bound. What a first run
 * needs (a stack; for a detached coroutine, its descriptor) is allocated
 * then: if memory is out at that point the process ends with a message.
 * Returns 0; EINVAL if fn is NULL; EPERM if the runtime is not running;
 * ENOMEM, also for a stack_size above 1 TiB. */
WEFT_API int weft_spawn(weft_co **co, const weft_attr *attr, void *(*fn)(void *), void *arg);

/* Waits for co to finish, stores its return value in *result (if result is
 * not NULL) and frees the handle. A coroutine that has not started yet may
 * run at once on the caller's worker. Any thread (a plain thread blocks).
 * Fork-join code that spawns several children does best to join them
 * newest first: the newest unstarted child is taken back from the queue
 * and run inline, while an older one is claimed where it lies and leaves
 * an entry behind for the queue to discard later (two more atomic
 * operations per join).
 * Returns 0; EINVAL for NULL or for a handle already joined or detached (as
 * far as that can be detected: like a pthread_t, the handle is dead after
 * a successful join); EDEADLK when co is the caller; EPERM if the runtime
 * is not running. */
WEFT_API int weft_join(weft_co *co, void **result);

/* Gives up the handle: the coroutine frees itself when it finishes.
 * Returns 0; EINVAL for NULL or a dead handle; EPERM if not running. */
WEFT_API int weft_detach(weft_co *co);

/* Lets every coroutine that was runnable on this worker run before the
 * caller runs again (FIFO). On a plain thread, sched_yield(). */
WEFT_API void weft_yield(void);

/* The calling coroutine, NULL on a plain thread. */
WEFT_API weft_co *weft_self(void);

/* ===================================================================== */
/* Time                                                                  */
/* ===================================================================== */

#define WEFT_FOREVER ((int64_t)-1)

/* CLOCK_MONOTONIC in nanoseconds. Any thread, no runtime needed. */
WEFT_API int64_t weft_now(void);

/* Sleeps for ns nanoseconds (relative; ns <= 0 returns at once). A
 * coroutine parks; a plain thread blocks. Returns 0. */
WEFT_API int weft_sleep(int64_t ns);

/* Sleeps until weft_now() >= deadline. Returns 0 (also for a deadline
 * already passed); EINVAL for WEFT_FOREVER, which would never return. */
WEFT_API int weft_sleep_until(int64_t deadline);

/* ===================================================================== */
/* Generators                                                            */
/* ===================================================================== */

/* Asymmetric coroutines that yield values, like Python's generators. They
 * run on their own guarded stacks, on plain threads and in coroutines, with
 * or without a running runtime. In a coroutine, fn may call anything that
 * waits: the coroutine parks inside weft_gen_next. A generator is advanced
 * by one caller at a time. */
typedef struct weft_gen weft_gen;

/* Makes a generator that will run fn(g, arg) on the first weft_gen_next.
 * attr may be NULL (stack_size 0: the runtime's default; name copied).
 * Returns 0; EINVAL if g or fn is NULL; ENOMEM. */
WEFT_API int weft_gen_make(weft_gen **g, const weft_attr *attr, void (*fn)(weft_gen *g, void *arg),
                           void *arg);

/* Runs g until it yields, and stores the value in *value.
 * Returns 0 with a value; ENODATA once fn has returned (then and on every
 * later call); EINVAL if g or value is NULL; EDEADLK when called from g
 * itself. */
WEFT_API int weft_gen_next(weft_gen *g, void **value);

/* Inside g's fn: hands value to the weft_gen_next that is waiting and
 * suspends until the next one. Does nothing when not called from inside g. */
WEFT_API void weft_gen_yield(weft_gen *g, void *value);

/* Inside g's fn: re-yields every value of inner until inner ends, like
 * Python's `yield from`. The caller still frees inner afterwards.
 * Returns 0; EINVAL if g or inner is NULL or they are the same; EPERM when
 * not called from inside g; the errors of weft_gen_next for inner. */
WEFT_API int weft_gen_yield_from(weft_gen *g, weft_gen *inner);

/* Frees g, finished or not: an unfinished generator's stack is released
 * and fn never resumes (its stack is not unwound). Does nothing for NULL or
 * for a generator that is running. */
WEFT_API void weft_gen_free(weft_gen *g);

/* ===================================================================== */
/* Channels                                                              */
/* ===================================================================== */

/* Go's channels: values of elem_size bytes are copied in and out. A
 * channel of capacity 0 is a rendezvous (a send completes only when a
 * receiver takes the value); capacity N buffers up to N values. Any
 * number of senders and receivers, on any workers and plain threads.
 * Waiters are served in FIFO order. A coroutine that waits parks; a plain
 * thread blocks. None of these calls needs a running runtime. */
typedef struct weft_chan weft_chan;

/* Makes a channel for values of elem_size bytes with room for capacity
 * buffered values (0: rendezvous). Any thread.
 * Returns 0; EINVAL if ch is NULL or elem_size is 0; ENOMEM. */
WEFT_API int weft_chan_make(weft_chan **ch, size_t elem_size, size_t capacity);

/* Sends a copy of the elem_size bytes at elem, waiting until a receiver
 * takes it (capacity 0) or there is room in the buffer, or until deadline.
 * Any thread.
 * Returns 0; ETIMEDOUT at deadline (a passed deadline: if it cannot
 * complete at once); EPIPE if ch is closed, or closed while waiting (the
 * value was not sent); EINVAL if ch or elem is NULL. */
WEFT_API int weft_chan_send(weft_chan *ch, const void *elem, int64_t deadline);

/* Receives one value into the elem_size bytes at elem, waiting until one
 * is buffered or a sender offers one, or until deadline. After a close,
 * buffered values are still received. Any thread.
 * Returns 0; ETIMEDOUT at deadline; EPIPE once ch is closed and drained;
 * EINVAL if ch or elem is NULL. */
WEFT_API int weft_chan_recv(weft_chan *ch, void *elem, int64_t deadline);

/* Closes ch: every waiting sender gets EPIPE, every waiting receiver gets
 * EPIPE (receivers wait only when nothing is buffered), later sends get
 * EPIPE, later receives drain the buffer and then get EPIPE. Any thread.
 * Returns 0; EPIPE if already closed; EINVAL if ch is NULL. */
WEFT_API int weft_chan_close(weft_chan *ch);

/* Frees ch, open or closed, with any values still buffered, unless a
 * caller is waiting on it (sending, receiving or in weft_select): then
 * nothing is freed. Nobody may use ch afterwards. Any thread.
 * ch may be freed as soon as no further call on it can come: in
 * particular by its receiver right after it received the last value (or
 * EPIPE after the only sender's close), even while those senders are
 * still returning from weft_chan_send, weft_select or weft_chan_close. No
 * call touches ch after the other side can see its effect (the value
 * taken or delivered, the close). A call whose deadline has passed, and a
 * select that completed on another channel, still count as waiting on ch
 * until they return.
 * Returns 0; EBUSY if ch has waiters (ch is left as it was); EINVAL if ch
 * is NULL. */
WEFT_API int weft_chan_free_checked(weft_chan *ch);

/* weft_chan_free_checked without the result: does nothing for NULL or for
 * a channel with waiters (see there). Any thread. */
WEFT_API void weft_chan_free(weft_chan *ch);

enum { WEFT_SEND = 1, WEFT_RECV = 2 };

/* One case of weft_select: send the value at elem on ch, or receive into
 * elem (NULL: receive and drop the value). err is set for the case that
 * completes. */
typedef struct weft_case {
    weft_chan *ch; /* NULL: never ready (as Go's nil channel) */
    int op;        /* WEFT_SEND or WEFT_RECV */
    void *elem;
    int err; /* out: 0, or EPIPE when ch was closed */
} weft_case;

/* Waits until at least one of the n cases can complete, then completes
 * exactly one: chosen uniformly at random among those ready at that moment.
 * A closed channel counts as ready (that case gets err EPIPE; a receive
 * from a closed channel still drains buffered values first). Sets *done to
 * the case's index and cases[*done].err. A case whose ch is NULL is never
 * ready; n == 0 (or only NULL channels) waits for the deadline, and with
 * WEFT_FOREVER never returns (as Go's empty select). Any thread.
 * Returns 0; ETIMEDOUT at deadline (*done and the cases' err untouched);
 * EINVAL if done is NULL, cases is NULL with n > 0, an op is neither
 * WEFT_SEND nor WEFT_RECV, or a send case on a channel has a NULL elem;
 * ENOMEM (more than 8 cases need scratch memory). */
WEFT_API int weft_select(weft_case *cases, size_t n, int64_t deadline, size_t *done);

/* ===================================================================== */
/* Synchronisation                                                       */
/* ===================================================================== */

/* Mutex, condition variable, waitgroup and semaphore. They work in
 * coroutines (which park) and on plain threads (which block), with or
 * without a running runtime, and may be mixed between the two. The types
 * are complete so they can be static, embedded or allocated, but their
 * fields are private. Initialise with the WEFT_*_INIT initialisers or the
 * _init calls; there is nothing to destroy (none may be in use when its
 * memory goes). Waiters are served in FIFO order, with direct hand-off:
 * an unlocked mutex or a posted unit goes to the oldest waiter, so no
 * waiter starves. EINVAL for a NULL object everywhere. */

typedef struct weft_mutex {
    unsigned weft_lock_;
    unsigned weft_state_;
    void *weft_owner_;
    void *weft_head_;
    void *weft_tail_;
} weft_mutex;
#define WEFT_MUTEX_INIT                                                                            \
    {                                                                                              \
        0, 0, NULL, NULL, NULL                                                                     \
    }

/* Initialises m unlocked. Returns 0; EINVAL. */
WEFT_API int weft_mutex_init(weft_mutex *m);

/* Locks m, waiting (without deadline) while someone else holds it. The
 * owner is the calling coroutine (it may move between workers while
 * holding m), or on a plain thread the thread. Not recursive. Any thread.
 * Returns 0; EDEADLK if the caller already holds m; EINVAL. */
WEFT_API int weft_mutex_lock(weft_mutex *m);

/* Locks m if it is free, without waiting. Any thread.
 * Returns 0; EBUSY if m is held (also by the caller); EINVAL. */
WEFT_API int weft_mutex_trylock(weft_mutex *m);

/* Unlocks m; with waiters, the oldest becomes the owner at once. Any
 * thread. Returns 0; EPERM if the caller does not hold m (or nobody
 * does); EINVAL. */
WEFT_API int weft_mutex_unlock(weft_mutex *m);

typedef struct weft_cond {
    unsigned weft_lock_;
    void *weft_head_;
    void *weft_tail_;
} weft_cond;
#define WEFT_COND_INIT                                                                             \
    {                                                                                              \
        0, NULL, NULL                                                                              \
    }

/* Initialises c with no waiters. Returns 0; EINVAL. */
WEFT_API int weft_cond_init(weft_cond *c);

/* Atomically releases m (which the caller holds) and waits for a signal,
 * a broadcast or deadline; then locks m again before returning, whatever
 * the result. May wake spuriously: re-check the condition in a loop. Any
 * thread. Returns 0; ETIMEDOUT at deadline (a passed deadline returns it
 * at once, m held throughout); EPERM if the caller does not hold m;
 * EINVAL if c or m is NULL. */
WEFT_API int weft_cond_wait(weft_cond *c, weft_mutex *m, int64_t deadline);

/* Wakes the oldest waiter of c, if any. Any thread. Returns 0; EINVAL. */
WEFT_API int weft_cond_signal(weft_cond *c);

/* Wakes every waiter of c. Any thread. Returns 0; EINVAL. */
WEFT_API int weft_cond_broadcast(weft_cond *c);

typedef struct weft_wg {
    unsigned weft_lock_;
    int weft_count_;
    void *weft_head_;
    void *weft_tail_;
} weft_wg;
#define WEFT_WG_INIT                                                                               \
    {                                                                                              \
        0, 0, NULL, NULL                                                                           \
    }

/* Initialises g with a count of 0. Returns 0; EINVAL. */
WEFT_API int weft_wg_init(weft_wg *g);

/* Adds delta (may be negative) to g's count; when it reaches 0, every
 * waiter is woken. Any thread. Returns 0; EINVAL if g is NULL or the count
 * would go below 0 or above INT_MAX (the count is unchanged). */
WEFT_API int weft_wg_add(weft_wg *g, int delta);

/* weft_wg_add(g, -1). */
WEFT_API int weft_wg_done(weft_wg *g);

/* Waits until g's count is 0 (returns at once if it is), or until
 * deadline. Any thread. Returns 0; ETIMEDOUT; EINVAL. */
WEFT_API int weft_wg_wait(weft_wg *g, int64_t deadline);

typedef struct weft_sem {
    unsigned weft_lock_;
    unsigned weft_count_;
    void *weft_head_;
    void *weft_tail_;
} weft_sem;
#define WEFT_SEM_INIT(n)                                                                           \
    {                                                                                              \
        0, (n), NULL, NULL                                                                         \
    }

/* Initialises s with n units. Returns 0; EINVAL. */
WEFT_API int weft_sem_init(weft_sem *s, unsigned n);

/* Takes one unit, waiting until one is posted or until deadline. Any
 * thread. Returns 0; ETIMEDOUT; EINVAL. */
WEFT_API int weft_sem_wait(weft_sem *s, int64_t deadline);

/* Posts one unit: to the oldest waiter if there is one, else to the count.
 * Any thread. Returns 0; EOVERFLOW if the count is at UINT_MAX; EINVAL. */
WEFT_API int weft_sem_post(weft_sem *s);

/* ===================================================================== */
/* Observability                                                         */
/* ===================================================================== */

typedef struct weft_stats {  /* totals since the runtime started */
    uint64_t spawned;        /* coroutines spawned (weft_main's included) */
    uint64_t finished;       /* coroutines that returned */
    uint64_t switches;       /* switches into a coroutine */
    uint64_t steals;         /* coroutines taken from another worker */
    uint64_t steal_attempts; /* visits to a victim's queue */
    uint64_t parks;          /* waits that parked a coroutine */
    uint64_t wakeups;        /* parked coroutines made runnable again */
    uint64_t blocking_calls; /* calls run on the blocking pool */
    uint64_t handoffs;       /* woken coroutines run next on the waker's worker */
} weft_stats;

/* Sums the counters of every worker. They are gathered without stopping
 * the workers, so a running runtime's figures are a moment's estimate.
 * Returns 0; EINVAL if out is NULL; EPERM if the runtime is not running. */
WEFT_API int weft_stats_get(weft_stats *out);

#ifdef __cplusplus
}
#endif

#endif
