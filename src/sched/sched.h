/* The scheduler's internal interface: workers, coroutine descriptors, and
 * the park/wake protocol every waiting call is built on. The design, and a
 * coroutine's path through these files, is in docs/scheduler.md. */
#ifndef WEFT_SCHED_SCHED_H
#define WEFT_SCHED_SCHED_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../atomic.h"
#include "../ctx/ctx.h"
#include "deque.h"
#include "lock.h"
#include "weft.h"

struct weft__worker;
struct weft__waiter;

/* A timer heap entry: the deadline sits in the heap array itself, and
 * the entry names a cell of its worker's dense cell array that holds the
 * waiter and the entry's position. Ordering the heap, which moves entries
 * and updates their positions, then never touches a waiter: each lives on
 * its own coroutine's stack page, a cache and TLB miss per touch. */
struct weft__timer_entry {
    int64_t deadline;
    uint32_t cell;
};

struct weft__timer_cell {
    struct weft__waiter *waiter; /* NULL while free */
    uint32_t index;              /* its entry's heap position */
    uint32_t next_free;          /* free-list link while free */
};

/* Why a coroutine switched back to its worker's scheduler. */
enum weft__why { WEFT__WHY_YIELD = 1, WEFT__WHY_PARK, WEFT__WHY_DONE };

/* The handle word of a coroutine (weft_co.join): NULL while attached and
 * running, a weft__waiter pointer once a joiner waits, or one of these. */
#define WEFT__JOIN_DETACHED ((struct weft__waiter *)(uintptr_t)1)
#define WEFT__JOIN_DONE ((struct weft__waiter *)(uintptr_t)2)
#define WEFT__JOIN_DEAD ((struct weft__waiter *)(uintptr_t)3) /* joined; handle freed */

/* weft_co.qstate bits. A queued coroutine is started by whoever sets
 * TAKEN first (a worker taking its queue entry) or CLAIMED first (its
 * joiner, which runs it inline); the queue entry of a claimed one is a
 * tombstone. The descriptor is freed by the second of the joiner (DONE)
 * and the tombstone's taker (CONSUMED). */
enum {
    WEFT__Q_TAKEN = 1,
    WEFT__Q_CLAIMED = 2,
    WEFT__Q_JOINER_DONE = 4,
    WEFT__Q_CONSUMED = 8,
};

/* A coroutine descriptor. Ownership: while queued, the queue holds it;
 * while running, its worker; while parked, whoever will wake it (a waiter
 * registered with a channel, a timer, a joiner). Fields without a note are
 * written by the thread running or scheduling the coroutine, with the queue
 * hand-offs (release/acquire) ordering them. */
struct weft_co {
    weft__fiber fiber;   /* its own stack (stack NULL until first run);
                            fiber.name is the coroutine's owned copy of
                            attr->name, or NULL, from the spawn on */
    weft__fiber *resume; /* where it continues: its fiber, or a
                            generator's fiber it parked inside; NULL
                            before the first run */
    void *(*fn)(void *);
    void *arg;
    void *result;
    struct weft_co *next; /* free lists and the injection queue */
    size_t stack_size;    /* requested; 0: the default */
    /* Handle state (see WEFT__JOIN_*). Exchanged by the finishing side,
     * CASed by join and detach: acq_rel, so the result written before the
     * finish is visible to the joiner. */
    _Atomic(struct weft__waiter *) join;
    /* Queue state of a spawned coroutine that has not run yet (see
     * WEFT__Q_*): lets a joiner claim it out of the middle of a queue,
     * leaving a tombstone for whoever takes the entry. Acq_rel RMWs. */
    _Atomic unsigned qstate;
    unsigned why;             /* enum weft__why, set before switching back */
    bool (*after)(void *arg); /* park: run on the scheduler's stack */
    void *after_arg;
};
#if !defined(WEFT_ASAN) && !defined(WEFT_TSAN)
/* A million queued or parked coroutines are a million jemalloc objects:
 * 128 bytes is a size class, 136 would be 160. Sanitizer builds add
 * fields to the fiber. */
_Static_assert(sizeof(struct weft_co) <= 128, "weft_co fits jemalloc's 128-byte class");
#endif

/* Per-worker statistics, written by the owning worker only (relaxed
 * stores of load+1: nothing orders on them), summed by weft_stats_get. */
typedef struct weft__counters {
    _Atomic uint64_t spawned, finished, switches, steals, steal_attempts, parks, wakeups, handoffs;
} weft__counters;

typedef struct weft__worker {
    weft__deque deque;       /* spawned and yielding coroutines (deque.c) */
    weft__deque wakeq;       /* woken coroutines: served first, within a bound */
    weft__fiber fiber;       /* the scheduler's own stack */
    weft_co *current;        /* running coroutine (owner only) */
    weft_co *runnext;        /* woken coroutine to run next (owner only) */
    weft_co *prev;           /* switched away from, not yet settled */
    unsigned runnext_streak; /* consecutive runnext runs (starvation bound) */
    unsigned wake_streak;    /* consecutive wakeq runs (starvation bound) */
    unsigned spawn_burst;    /* spawns by the current coroutine since it
                                was switched in (co.c's backpressure) */
    unsigned index;
    unsigned inject_in;     /* rounds until the injection queue's turn */
    uint64_t tick;          /* scheduling rounds */
    uint64_t rng;           /* victim randomisation (xorshift) */
    unsigned *victims;      /* other workers, nearest first */
    unsigned *victim_level; /* their distance class, for shuffling */
    pthread_t thread;
    /* Sleeping: 0 asleep or about to; 1 woken. Futex word. */
    _Atomic uint32_t wake_word;
    bool spinning;
    bool placed; /* victims sorted and thread bound by the topology */
    /* Timers (timer.c): a 4-ary min-heap of entries by deadline and the
     * cells they name, guarded by timer_lock (the owner inserts and fires;
     * others remove, and a thief fires a busy owner's due timers). */
    weft__lock timer_lock;
    struct weft__timer_entry *timers;
    size_t timers_len, timers_cap;
    struct weft__timer_cell *cells;
    uint32_t cells_cap, cells_free; /* cells_free: UINT32_MAX when none */
    _Atomic int64_t timer_next;     /* earliest deadline, INT64_MAX if none */
    /* Live-count credit (owner only): units of weft__rt.live this worker
     * reserved and has not used for a live coroutine yet. */
    long live_credit;
    /* Recycled descriptors (owner only). */
    weft_co *free_cos;
    unsigned free_count;
    weft__counters stats;
} weft__worker;

/* A wait in progress: lives on the waiting coroutine's (or thread's)
 * stack until the wait returns. Claimed exactly once, by CAS on state:
 * by the waker, by the timer at its deadline, or by the waiter itself (a
 * plain thread's timeout). The claimer sets result, then readies it. */
typedef struct weft__waiter {
    _Atomic uint32_t state; /* WEFT__WAIT_* */
    int result;             /* 0, ETIMEDOUT, EPIPE, ... by the claimer */
    weft_co *co;            /* the coroutine, or NULL: a plain thread */
    int64_t deadline;       /* WEFT_FOREVER: none */
    /* Timer bookkeeping (timer.c), under the owner's timer_lock. */
    struct weft__worker *timer_owner;
    uint32_t timer_cell; /* its cell in timer_owner's array */
    size_t sel;          /* weft_select: the case that completed (chan.c) */
} weft__waiter;

enum {
    WEFT__WAIT_WAITING = 0, /* claimable */
    WEFT__WAIT_CLAIMED,     /* claimed; a plain thread waits for WOKEN */
    WEFT__WAIT_WOKEN,       /* the claimer is done with the waiter */
};

/* --- runtime state (worker.c) ----------------------------------------- */
typedef struct weft__runtime {
    _Atomic int state; /* 0 stopped, 1 running, 2 stopping */
    unsigned nworkers;
    weft__worker **workers;
    /* Coroutines alive plus the credit workers hold (see weft__live_*):
     * never below the true count, so 0 means nothing is alive. Alone on
     * its cache line: spawns and ends on every worker touch it. */
    _Alignas(WEFT_CACHELINE) _Atomic long live;
    char live_pad[WEFT_CACHELINE - sizeof(long)];
    _Atomic uint64_t spawned_outside; /* spawns from plain threads */
    /* Injection queue: spawns and wake-ups from plain threads. */
    weft__lock inject_lock;
    weft_co *inject_head, *inject_tail;
    _Atomic long inject_len;
    /* Idle workers. */
    _Alignas(WEFT_CACHELINE) weft__lock idle_lock;
    unsigned *idle; /* stack of sleeping worker indexes */
    unsigned idle_len;
    _Atomic unsigned sleeping, spinning;
    /* weft_stop waits here for live == 0. */
    _Atomic uint32_t quiescent; /* futex word: becomes 1 when live hits 0 while stopping */
} weft__runtime;

extern weft__runtime weft__rt;

/* The calling thread's worker, NULL on a plain thread. Not inlined: see
 * weft__fiber_current. */
WEFT_NOINLINE weft__worker *weft__worker_self(void);

/* Queue entries are descriptor pointers; a spawn's entry has bit 0 set,
 * so a taker knows to check qstate (it may be a tombstone) and a retract
 * finds exactly the spawn entry, not a later wake-up of the same
 * coroutine. A ticket's entry (below) has bit 1 set. Descriptors and
 * tickets are at least 8-byte aligned. */
static inline weft_co *weft__spawn_entry(weft_co *co)
{
    return (weft_co *)((uintptr_t)co | 1);
}
static inline bool weft__is_spawn_entry(const weft_co *entry)
{
    return (uintptr_t)entry & 1;
}
static inline weft_co *weft__entry_co(weft_co *entry)
{
    return (weft_co *)((uintptr_t)entry & ~(uintptr_t)1);
}

/* A detached coroutine spawned on a worker without attributes is queued
 * as a ticket: its function and argument, 16 bytes instead of a 128-byte
 * descriptor, which the worker that starts it takes from its own free
 * list (co.c: weft__co_from_ticket). Nobody holds a handle to it before
 * it starts, so nothing needs the descriptor earlier. */
typedef struct weft__ticket {
    void *(*fn)(void *);
    void *arg;
} weft__ticket;

static inline weft_co *weft__ticket_entry(weft__ticket *t)
{
    return (weft_co *)((uintptr_t)t | 2);
}
static inline bool weft__is_ticket_entry(const weft_co *entry)
{
    return (uintptr_t)entry & 2;
}
static inline weft__ticket *weft__entry_ticket(weft_co *entry)
{
    return (weft__ticket *)((uintptr_t)entry & ~(uintptr_t)2);
}
/* An entry that is a started (or woken) coroutine's descriptor itself. */
static inline bool weft__is_co_entry(const weft_co *entry)
{
    return ((uintptr_t)entry & 3) == 0;
}

/* --- the live count (worker.c) ------------------------------------------
 * A global atomic touched by every spawn and every end would bounce one
 * cache line between all workers. Workers instead reserve live units in
 * batches (credit) and account spawns and ends against their credit,
 * returning the surplus, and all of it before they sleep. The global
 * count is always at least the number of live coroutines, and reaches 0
 * only when none is alive and every worker is idle. */
void weft__live_inc(weft__worker *w); /* w NULL: a plain thread */
void weft__live_dec(weft__worker *w);
void weft__live_return(weft__worker *w); /* gives all credit back */
/* A plain thread's hold on the runtime while it queues work and notifies
 * workers: counted as live, so weft_stop cannot free the workers meanwhile. */
void weft__live_hold(void);
void weft__live_unhold(void);

/* --- coroutines (co.c) -------------------------------------------------- */
void weft__co_free(weft__worker *w, weft_co *co);
void weft__co_finished(weft__worker *w, weft_co *co);
void weft__co_cache_drain(weft__worker *w);
void weft__co_pool_drain(void); /* weft_stop: the shared batches */
void weft__co_entry(void *value, void *arg);
/* The descriptor for a ticket's first run, on the worker that runs it;
 * the ticket is freed. NULL when out of memory. */
weft_co *weft__co_from_ticket(weft__worker *w, weft__ticket *t);

/* --- scheduling (worker.c) ---------------------------------------------- */
/* Makes a parked coroutine runnable. On a worker: it runs next there
 * (handoff) when `next` is true, else at the back of the worker's wake
 * queue, which is served before spawned coroutines (within a bound);
 * on a plain thread: through the injection queue. Wakes an idle worker
 * when the work can be stolen. */
void weft__ready(weft_co *co, bool next);
/* Queues a new coroutine: on worker w's queue (w: the caller's), or
 * injected when w is NULL (a plain thread). */
int weft__submit(weft__worker *w, weft_co *co);
/* Queues a ticket on worker w's queue (w: the caller's). */
void weft__submit_ticket(weft__worker *w, weft__ticket *t);
/* Wakes a sleeping worker if there is one and nobody is spinning. */
void weft__notify(void);

/* Runs what the coroutine that just switched away left to do (worker.c);
 * every landing after a switch calls it first. */
void weft__settle(weft__worker *w);
/* Ends the calling coroutine (its function returned). */
__attribute__((noreturn)) void weft__exit(weft__worker *w, weft_co *co);

/* Parks the calling coroutine: switches away (to the next coroutine or
 * the scheduler), and the side that lands calls after(arg) once this
 * coroutine's stack is no longer in use. If after returns false the coroutine
 * resumes at once; otherwise it stays parked until weft__ready. Returns the
 * worker the coroutine resumed on. */
weft__worker *weft__park(bool (*after)(void *arg), void *arg);

/* --- waiting (park.c) --------------------------------------------------- */
/* Prepares a waiter for the calling coroutine or thread. */
void weft__waiter_init(weft__waiter *w, int64_t deadline);
/* CAS WAITING -> CLAIMED; true if the caller won the waiter. */
bool weft__waiter_claim(weft__waiter *w);
/* After a successful claim and setting w->result: wakes the waiter. For a
 * coroutine, `next` asks to run it next on the waker's worker. */
void weft__waiter_wake(weft__waiter *w, bool next);
/* Waits until claimed or until the deadline. The caller has published w
 * (so it can be claimed) under `lock`, which it holds; the lock is
 * released once the caller can no longer miss a wake-up (for a coroutine:
 * after it has switched out). Returns w->result, ETIMEDOUT if the deadline
 * claimed it. On return the lock is not held, and if the result is
 * ETIMEDOUT the caller must unpublish w (under the lock). */
int weft__waiter_wait(weft__waiter *w, weft__lock *lock);
/* true when deadline is WEFT_FOREVER or later than now. */
bool weft__deadline_pending(int64_t deadline);

/* --- timers (timer.c) --------------------------------------------------- */
/* Adds w to worker wk's heap (owner only). 0 or ENOMEM. */
int weft__timer_add(weft__worker *wk, weft__waiter *w);
/* Removes w from whichever heap holds it, if any (any thread). */
void weft__timer_cancel(weft__waiter *w);
/* Fires the due timers of wk (its owner, or a thief when wk is busy),
 * readying their coroutines on the calling worker. Returns the earliest remaining
 * deadline, INT64_MAX if none. */
int64_t weft__timer_run(weft__worker *wk, int64_t now);
void weft__timer_destroy(weft__worker *wk);

/* --- topology (topology.c) --------------------------------------------- */
/* For weft_start: starts hwloc's discovery (on its own thread where the
 * core count can be had without it) and returns the default worker
 * count, the cores this process may run on. */
unsigned weft__topology_begin(void);
/* True once the discovery is done (or failed: then nothing is bound). */
bool weft__topology_ready(void);
/* The default worker count (before ready, the quick count). */
unsigned weft__topology_cores(void);
/* Fills victims[0..n-2] with the other workers, nearest first, and
 * level[] with their distance class (equal classes may be shuffled).
 * Before the topology is ready: every other worker, one class; returns
 * false then. */
bool weft__topology_victims(unsigned self, unsigned n, unsigned *victims, unsigned *level);
/* Binds the calling thread to the core of worker `index` (once ready). */
void weft__topology_pin(unsigned index);
/* Before ready: binds the calling thread to the lowest allowed CPU of
 * the quick count's core `index` (cores ordered by that CPU). */
void weft__topology_pin_quick(unsigned index);
/* The CPUs' worth of time the process's cgroup quota allows, rounded up
 * (the smallest along its cgroup path, v1 or v2), read once per process;
 * 0: no quota, or none readable. _at walks one hierarchy mounted at
 * `mount` from `path` up to the mount; weft__cpu_max_cpus reads one
 * "QUOTA PERIOD" line ("max 100000" and v1's "-1 100000" are 0). */
unsigned weft__cgroup_cpus(void);
unsigned weft__cgroup_cpus_at(const char *mount, const char *path, bool v2);
unsigned weft__cpu_max_cpus(const char *line);

static inline void weft__count(_Atomic uint64_t *c)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

#if defined(WEFT_TESTING)
/* park.c: a test's hook between arming a wait's timer and releasing the
 * wait's lock (NULL: none). */
extern void (*weft__test_park_armed)(void);
#endif

#endif
