/* Coroutines: spawn, join, detach, and the end of a coroutine's life.
 *
 * A spawned coroutine is only a descriptor (no stack) until a worker first
 * runs it (worker.c gives it a pooled stack then), so a million spawned and
 * not yet started coroutines cost a million descriptors; a detached one
 * spawned on a worker without attributes is only a 16-byte ticket until
 * then (sched.h, weft__co_from_ticket). Descriptors are recycled through a
 * per-worker free list (256) in front of jemalloc.
 *
 * The handle. `join` is one atomic word: NULL while attached, a waiter
 * once a joiner waits, DETACHED, or DONE once the coroutine has finished
 * and nobody waited yet. The finishing worker exchanges DONE in; what it
 * gets back says who frees the descriptor (a detached coroutine frees
 * itself; a waiting joiner is woken and frees it). A joiner publishes its
 * waiter by CAS NULL -> waiter only after it has switched out (park's
 * callback), so the finisher never readies a coroutine still on its stack.
 *
 * Inline join (fork-join's fast path, allowed by API.md): joining a child
 * that has not started and is still the newest item of the joiner's own
 * deque takes it back (weft__deque_retract) and calls its function right
 * there, on the joiner's stack: no stack, no switch, no queue traffic.
 * A child that has not started but is not the newest (joins in spawn
 * order) is claimed with a CAS on its qstate instead and run inline the
 * same way; its queue entry becomes a tombstone that the worker taking it
 * skips, and the descriptor is freed by whichever of the two comes last. That
 * makes fib's spawn-compute-join nearly a function call when nothing was
 * stolen. It is done only when the joiner's stack has at least half the
 * child's stack size left, so a child never gets much less stack than it
 * asked for; otherwise the join waits as usual. */
#include <errno.h>
#include <string.h>

#include "../alloc.h"
#include "../ctx/stack.h"
#include "sched.h"

#if defined(__x86_64__)
#include <cpuid.h>

bool weft__prefetchw;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_read(void)
{
    unsigned a, b, c, d;
    weft__prefetchw = __get_cpuid(0x80000001u, &a, &b, &c, &d) && (c & bit_PRFCHW);
}

void weft__cpu_probe(void)
{
    /* Once per process: the CPU does not change, and under a hypervisor
     * CPUID is a trap to it. */
    pthread_once(&cpu_once, cpu_read);
}
#endif

#define FREE_MAX 256
#define SPAWN_BACKLOG 4096

/* Descriptors move between workers in batches: a coroutine is often
 * spawned on one worker and ends on another, so one worker's free list
 * overflows while the spawner's runs dry and falls back on jemalloc for
 * every spawn. A full list hands a batch of BATCH to a shared stack of
 * batches (one lock per BATCH descriptors); an empty one takes a batch. */
#define BATCH 128
#define SHARED_BATCHES_MAX 64

static weft__lock batches_lock = WEFT__LOCK_INIT;
static weft_co *batches;             /* batch heads, linked through ->arg */
static _Atomic unsigned batches_len; /* relaxed reads outside the lock: a hint */

static weft_co *co_alloc(weft__worker *w)
{
    if (w) {
        if (WEFT_UNLIKELY(!w->free_cos) &&
            atomic_load_explicit(&batches_len, memory_order_relaxed)) {
            weft__lock_acquire(&batches_lock);
            weft_co *batch = batches;
            if (batch) {
                batches = batch->arg;
                batches_len--;
            }
            weft__lock_release(&batches_lock);
            if (batch) {
                w->free_cos = batch;
                w->free_count = BATCH;
            }
        }
        if (w->free_cos) {
            weft_co *co = w->free_cos;
            w->free_cos = co->next;
            w->free_count--;
            /* The next descriptor was most likely freed on another
             * worker (batches travel from the workers that run coroutines
             * to those that spawn them): fetch its line for writing now,
             * so the next spawn does not wait for it. */
            if (w->free_cos)
                WEFT_PREFETCH_WRITE(w->free_cos);
            return co;
        }
    }
    return weft__alloc(sizeof(weft_co));
}

/* Gives BATCH descriptors of w's free list to the shared stack, or
 * frees them when it is full. */
static void give_batch(weft__worker *w)
{
    weft_co *head = w->free_cos, *tail = head;
    for (unsigned i = 1; i < BATCH; i++)
        tail = tail->next;
    w->free_cos = tail->next;
    w->free_count -= BATCH;
    tail->next = NULL;
    weft__lock_acquire(&batches_lock);
    if (batches_len < SHARED_BATCHES_MAX) {
        head->arg = batches;
        batches = head;
        batches_len++;
        head = NULL;
    }
    weft__lock_release(&batches_lock);
    while (head) {
        weft_co *next = head->next;
        weft__free(head, sizeof *head);
        head = next;
    }
}

void weft__co_free(weft__worker *w, weft_co *co)
{
    if (co->fiber.name) {
        weft__free((char *)co->fiber.name, strlen(co->fiber.name) + 1);
        co->fiber.name = NULL;
    }
    /* A stale handle then reads DEAD (EINVAL) until the descriptor is reused. */
    atomic_store_explicit(&co->join, WEFT__JOIN_DEAD, memory_order_relaxed);
    if (!w) {
        weft__free(co, sizeof *co);
        return;
    }
    if (w->free_count >= FREE_MAX)
        give_batch(w);
    co->next = w->free_cos;
    w->free_cos = co;
    w->free_count++;
}

void weft__co_cache_drain(weft__worker *w)
{
    while (w->free_cos) {
        weft_co *co = w->free_cos;
        w->free_cos = co->next;
        weft__free(co, sizeof *co);
    }
    w->free_count = 0;
}

void weft__co_pool_drain(void)
{
    weft__lock_acquire(&batches_lock);
    weft_co *batch = batches;
    batches = NULL;
    batches_len = 0;
    weft__lock_release(&batches_lock);
    while (batch) {
        weft_co *next_batch = batch->arg;
        while (batch) {
            weft_co *next = batch->next;
            weft__free(batch, sizeof *batch);
            batch = next;
        }
        batch = next_batch;
    }
}

void weft__co_entry(void *value, void *arg)
{
    weft__fiber_started();
    weft__settle(value); /* the switch into a new coroutine passes its worker */
    weft_co *co = arg;
    co->result = co->fn(co->arg);
    weft__exit(weft__worker_self(), co);
}

/* After the coroutine's last switch, on the stack it switched to. */
void weft__co_finished(weft__worker *w, weft_co *co)
{
    weft__fiber_destroy(&co->fiber);
    weft__stack_put(co->fiber.stack);
    co->fiber.stack = NULL;
    weft__count(&w->stats.finished);
    /* Detached stays detached (nobody writes join again): skip the RMW. */
    weft__waiter *old = atomic_load_explicit(&co->join, memory_order_relaxed);
    if (old != WEFT__JOIN_DETACHED)
        /* Acq_rel: releases the result to the joiner; acquires a waiter's
         * initialisation before we wake it. */
        old = atomic_exchange_explicit(&co->join, WEFT__JOIN_DONE, memory_order_acq_rel);
    if (old == WEFT__JOIN_DETACHED) {
        weft__co_free(w, co);
    } else if (old != NULL) {
        if (weft__waiter_claim(old))
            weft__waiter_wake(old, true);
    }
    weft__live_dec(w);
}

static int spawn(weft__worker *w, weft_co **out, const weft_attr *attr, void *(*fn)(void *),
                 void *arg);

/* Backpressure: a coroutine spawning in a loop faster than the workers
 * start its children would pile up an unbounded backlog (the spawn
 * workload reached 500,000 descriptors). A coroutine that has itself
 * spawned more than the bound since it last switched, onto a backlog
 * above the bound, yields, so its worker starts the backlog too. Only
 * the bulk spawner: yielding every coroutine that spawns into a long
 * queue (skynet's nodes spawn 10 each) left parents suspended mid-spawn
 * while their children parked waiting for them. */
static void backpressure(weft__worker *w)
{
    if (w->current && ++w->spawn_burst > SPAWN_BACKLOG &&
        weft__deque_size(&w->deque) > SPAWN_BACKLOG) {
        w->spawn_burst = 0;
        weft_yield();
    }
}

int weft_spawn(weft_co **out, const weft_attr *attr, void *(*fn)(void *), void *arg)
{
    if (!fn)
        return EINVAL;
    weft__worker *w = weft__worker_self();
    if (w) /* coroutines may spawn while the runtime stops: it waits for them */
        return spawn(w, out, attr, fn, arg);
    /* A plain thread only while it runs, and it holds the runtime while it
     * spawns: weft_stop could otherwise see no live coroutine between this
     * check and the coroutine's count, and free the workers the spawn is
     * about to queue on and notify. */
    weft__live_hold();
    int err = atomic_load_explicit(&weft__rt.state, memory_order_seq_cst) == 1
                  ? spawn(NULL, out, attr, fn, arg)
                  : EPERM;
    weft__live_unhold();
    return err;
}

/* Only what a fresh coroutine reads: the fiber is set up at its first
 * run (worker.c), the rest when it parks or ends. */
static void init_fresh(weft_co *co, void *(*fn)(void *), void *arg, size_t stack_size,
                       bool detached)
{
    co->fiber.stack = NULL;
    co->resume = NULL;
    co->result = NULL;
    co->fiber.name = NULL;
    /* Relaxed: published with the queue entry (release in the push); a
     * ticket's descriptor is never queued before it runs. A detached
     * coroutine has no joiner to claim it: already TAKEN, so its first run
     * skips the RMW. */
    atomic_store_explicit(&co->qstate, detached ? WEFT__Q_TAKEN : 0, memory_order_relaxed);
    co->fn = fn;
    co->arg = arg;
    co->stack_size = stack_size;
    atomic_init(&co->join, detached ? WEFT__JOIN_DETACHED : NULL);
}

static int spawn(weft__worker *w, weft_co **out, const weft_attr *attr, void *(*fn)(void *),
                 void *arg)
{
    /* The stack is mapped at the first run, where a failure could only
     * abort: refuse a size that can never be mapped here. */
    if (attr && attr->stack_size > WEFT__STACK_MAX_BYTES)
        return ENOMEM;
    if (w && !out && !attr) {
        weft__ticket *t = weft__alloc(sizeof *t);
        if (!t)
            return ENOMEM;
        t->fn = fn;
        t->arg = arg;
        weft__live_inc(w);
        weft__submit_ticket(w, t);
        backpressure(w);
        return 0;
    }
    weft_co *co = co_alloc(w);
    if (!co)
        return ENOMEM;
    init_fresh(co, fn, arg, attr ? attr->stack_size : 0, !out);
    if (attr && attr->name) {
        size_t len = strlen(attr->name) + 1;
        char *name = weft__alloc(len);
        if (!name) {
            weft__co_free(w, co);
            return ENOMEM;
        }
        memcpy(name, attr->name, len);
        co->fiber.name = name;
    }
    if (out)
        *out = co;
    weft__live_inc(w);
    int err = weft__submit(w, co);
    if (w)
        backpressure(w);
    return err;
}

weft_co *weft__co_from_ticket(weft__worker *w, weft__ticket *t)
{
    weft_co *co = co_alloc(w);
    if (!co)
        return NULL;
    init_fresh(co, t->fn, t->arg, 0, true);
    weft__free(t, sizeof *t);
    return co;
}

static bool can_inline(weft_co *child)
{
    weft__fiber *f = weft__fiber_current();
    if (!f->stack)
        return false;
    char here;
    size_t left = (size_t)(&here - (char *)f->lo);
    size_t need =
        child->stack_size ? weft__stack_round(child->stack_size) : weft__stack_default_size();
    return left >= need / 2;
}

/* Runs a retracted child to completion on the joiner's stack. */
static void run_inline(weft__worker *w, weft_co *self, weft_co *child)
{
    w->current = child;
    child->result = child->fn(child->arg);
    /* The child may have parked and moved us to another worker. */
    w = weft__worker_self();
    w->current = self;
    weft__count(&w->stats.finished);
    weft__live_dec(w);
}

/* Pops the tombstones (spawn entries of children claimed by their
 * joiners) off the newest end of w's deque: joins in spawn order leave
 * them there, and left alone they would pile up until the worker's loop
 * reached them, each holding its descriptor. */
static void drop_tombstones(weft__worker *w)
{
    weft_co *entry;
    while ((entry = weft__deque_peek_newest(&w->deque)) != NULL && weft__is_spawn_entry(entry)) {
        weft_co *co = weft__entry_co(entry);
        if (!(atomic_load_explicit(&co->qstate, memory_order_acquire) & WEFT__Q_CLAIMED))
            return;
        if (!weft__deque_retract(&w->deque, entry))
            return; /* a thief took it: the tombstone is the thief's now */
        if (atomic_fetch_or_explicit(&co->qstate, WEFT__Q_CONSUMED, memory_order_acq_rel) &
            WEFT__Q_JOINER_DONE)
            weft__co_free(w, co);
    }
}

struct join_args {
    weft_co *co;
    weft__waiter *waiter;
};

static bool after_join(void *arg)
{
    struct join_args *j = arg;
    weft__waiter *expected = NULL;
    /* Acq_rel: publishes the waiter; on failure (DONE) acquires the result. */
    return atomic_compare_exchange_strong_explicit(&j->co->join, &expected, j->waiter,
                                                   memory_order_acq_rel, memory_order_acquire);
}

int weft_join(weft_co *co, void **result)
{
    if (!co)
        return EINVAL;
    int state = atomic_load_explicit(&weft__rt.state, memory_order_acquire);
    if (state != 1 && state != 2)
        return EPERM;
    weft__worker *w = weft__worker_self();
    weft_co *self = w ? w->current : NULL;
    if (co == self)
        return EDEADLK;
    weft__waiter *j = atomic_load_explicit(&co->join, memory_order_acquire);
    if (j != NULL && j != WEFT__JOIN_DONE)
        return EINVAL; /* detached, already joined, or another joiner */
    bool inlined = false, claimed = false;
    if (j == NULL && self)
        drop_tombstones(w);
    if (j == NULL && self && can_inline(co)) {
        if (weft__deque_retract(&w->deque, weft__spawn_entry(co))) {
            /* Its spawn entry, taken back: ours alone, never started. */
            run_inline(w, self, co);
            w = weft__worker_self();
            inlined = true;
        } else {
            /* Not the newest (joins in spawn order) or in
             * another worker's queue: claim it if it has not started. */
            unsigned expected = 0;
            if (atomic_compare_exchange_strong_explicit(&co->qstate, &expected, WEFT__Q_CLAIMED,
                                                        memory_order_acq_rel,
                                                        memory_order_relaxed)) {
                run_inline(w, self, co);
                w = weft__worker_self();
                inlined = claimed = true;
            }
        }
    }
    if (j == NULL && !inlined) {
        weft__waiter waiter;
        weft__waiter_init(&waiter, WEFT_FOREVER);
        if (self) {
            struct join_args args = { co, &waiter };
            w = weft__park(after_join, &args);
        } else {
            weft__waiter *expected = NULL;
            if (atomic_compare_exchange_strong_explicit(&co->join, &expected, &waiter,
                                                        memory_order_acq_rel, memory_order_acquire))
                weft__waiter_wait(&waiter, NULL);
            else if (expected != WEFT__JOIN_DONE)
                return EINVAL; /* raced with a detach or another join */
        }
    }
    /* Acquire: the result written before the coroutine finished (pairs
     * with the acq_rel exchange of DONE in weft__co_finished). */
    (void)atomic_load_explicit(&co->join, memory_order_acquire);
    if (result)
        *result = co->result;
    if (claimed) {
        /* Its queue entry is a tombstone: the second of us and the
         * tombstone's taker frees the descriptor. */
        atomic_store_explicit(&co->join, WEFT__JOIN_DEAD, memory_order_relaxed);
        if (!(atomic_fetch_or_explicit(&co->qstate, WEFT__Q_JOINER_DONE, memory_order_acq_rel) &
              WEFT__Q_CONSUMED))
            return 0;
    }
    weft__co_free(w, co);
    return 0;
}

int weft_detach(weft_co *co)
{
    if (!co)
        return EINVAL;
    int state = atomic_load_explicit(&weft__rt.state, memory_order_acquire);
    if (state != 1 && state != 2)
        return EPERM;
    weft__waiter *expected = NULL;
    if (atomic_compare_exchange_strong_explicit(&co->join, &expected, WEFT__JOIN_DETACHED,
                                                memory_order_acq_rel, memory_order_acquire))
        return 0;
    if (expected == WEFT__JOIN_DONE) {
        weft__co_free(weft__worker_self(), co); /* finished: nobody else will free it */
        return 0;
    }
    return EINVAL;
}
