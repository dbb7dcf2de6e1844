/* Time: weft_now, weft_sleep, and each worker's timer heap.
 *
 * Every wait with a deadline puts its waiter in the heap of the worker it
 * parks on: a 4-ary min-heap of (deadline, cell) entries; a cell, in a
 * dense per-worker array, holds the waiter and its entry's position, and
 * the waiter knows its cell, so it can be removed in O(log n) without the
 * heap's moves ever touching a waiter on its cold stack page. The owner
 * adds and fires; a waiter woken by someone else removes itself from
 * whatever heap holds it, from any worker, and an idle worker fires the
 * due timers of a busy one (worker.c's steal_from): hence a lock per heap,
 * almost never contended. Idle workers
 * sleep until their heap's earliest deadline, so timers fire on time even
 * when every worker is idle.
 *
 * Rejected: a hashed timing wheel (Tokio's). Its O(1) insert wins with
 * millions of timers that are mostly cancelled (network timeouts); here
 * the `timers` workload inserts 100,000 and fires them all, the heap's
 * log n is a handful of cache-resident comparisons, and it fires at the
 * exact nanosecond rather than a wheel slot's granularity (lateness is one
 * of the measured metrics). Lazy deletion (leave cancelled entries until
 * they expire) was rejected because the entry points into a stack frame
 * that is gone by then. */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "../alloc.h"
#include "sched.h"

int64_t weft_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A 4-ary heap: half the levels of a binary one, and the four children
 * of a node share a cache line (16-byte entries). */
#define ARITY 4

#define NO_CELL UINT32_MAX

static void set_at(weft__worker *wk, size_t i, struct weft__timer_entry e)
{
    wk->timers[i] = e;
    wk->cells[e.cell].index = (uint32_t)i;
}

static void sift_up(weft__worker *wk, size_t i)
{
    struct weft__timer_entry e = wk->timers[i];
    while (i > 0) {
        size_t parent = (i - 1) / ARITY;
        if (wk->timers[parent].deadline <= e.deadline)
            break;
        set_at(wk, i, wk->timers[parent]);
        i = parent;
    }
    set_at(wk, i, e);
}

static void sift_down(weft__worker *wk, size_t i)
{
    struct weft__timer_entry e = wk->timers[i];
    size_t n = wk->timers_len;
    for (;;) {
        size_t first = ARITY * i + 1, best = first;
        if (first >= n)
            break;
        size_t end = first + ARITY < n ? first + ARITY : n;
        for (size_t c = first + 1; c < end; c++)
            if (wk->timers[c].deadline < wk->timers[best].deadline)
                best = c;
        if (wk->timers[best].deadline >= e.deadline)
            break;
        set_at(wk, i, wk->timers[best]);
        i = best;
    }
    set_at(wk, i, e);
}

static void publish_next(weft__worker *wk)
{
    /* Relaxed: a hint for the owner's loop and for thieves; the heap itself
     * is read under the lock. */
    atomic_store_explicit(&wk->timer_next, wk->timers_len ? wk->timers[0].deadline : INT64_MAX,
                          memory_order_relaxed);
}

/* Removes the entry at position i and frees its cell; returns its waiter. */
static weft__waiter *remove_at(weft__worker *wk, size_t i)
{
    uint32_t cell = wk->timers[i].cell;
    weft__waiter *w = wk->cells[cell].waiter;
    wk->cells[cell].waiter = NULL;
    wk->cells[cell].next_free = wk->cells_free;
    wk->cells_free = cell;
    size_t last = --wk->timers_len;
    if (i != last) {
        struct weft__timer_entry moved = wk->timers[last];
        set_at(wk, i, moved);
        if (i > 0 && wk->timers[(i - 1) / ARITY].deadline > moved.deadline)
            sift_up(wk, i);
        else
            sift_down(wk, i);
    }
    return w;
}

/* Doubles an array of n items of `size` bytes; false when out of memory. */
static bool grow(void **array, size_t n, size_t size)
{
    size_t cap = n ? n * 2 : 64;
    void *bigger = weft__alloc(cap * size);
    if (!bigger)
        return false;
    if (n)
        memcpy(bigger, *array, n * size);
    weft__free(*array, n * size);
    *array = bigger;
    return true;
}

int weft__timer_add(weft__worker *wk, weft__waiter *w)
{
    weft__lock_acquire(&wk->timer_lock);
    if (wk->timers_len == wk->timers_cap) {
        if (!grow((void **)&wk->timers, wk->timers_cap, sizeof *wk->timers))
            goto nomem;
        wk->timers_cap = wk->timers_cap ? wk->timers_cap * 2 : 64;
    }
    if (wk->cells_free == NO_CELL) {
        uint32_t old = wk->cells_cap;
        if (old >= NO_CELL / 2 || !grow((void **)&wk->cells, old, sizeof *wk->cells))
            goto nomem;
        wk->cells_cap = old ? old * 2 : 64;
        for (uint32_t c = wk->cells_cap; c-- > old;) {
            wk->cells[c].waiter = NULL;
            wk->cells[c].next_free = wk->cells_free;
            wk->cells_free = c;
        }
    }
    uint32_t cell = wk->cells_free;
    wk->cells_free = wk->cells[cell].next_free;
    wk->cells[cell].waiter = w;
    w->timer_owner = wk;
    w->timer_cell = cell;
    size_t i = wk->timers_len++;
    set_at(wk, i, (struct weft__timer_entry){ w->deadline, cell });
    sift_up(wk, i);
    publish_next(wk);
    weft__lock_release(&wk->timer_lock);
    return 0;
nomem:
    weft__lock_release(&wk->timer_lock);
    return ENOMEM;
}

void weft__timer_cancel(weft__waiter *w)
{
    weft__worker *wk = w->timer_owner;
    if (!wk)
        return;
    weft__lock_acquire(&wk->timer_lock);
    /* The cell is still w's unless the timer fired (then the cell may
     * already serve another waiter). */
    if (wk->cells[w->timer_cell].waiter == w) {
        remove_at(wk, wk->cells[w->timer_cell].index);
        publish_next(wk);
    }
    weft__lock_release(&wk->timer_lock);
}

int64_t weft__timer_run(weft__worker *wk, int64_t now)
{
    weft__lock_acquire(&wk->timer_lock);
    while (wk->timers_len && wk->timers[0].deadline <= now) {
        weft__waiter *w = remove_at(wk, 0);
        if (weft__waiter_claim(w)) {
            w->result = ETIMEDOUT;
            /* Last use of w: once readied, its coroutine may return from
             * the wait on another worker (which then skips the cancel,
             * seeing ETIMEDOUT). */
            weft__waiter_wake(w, false);
        }
    }
    publish_next(wk);
    int64_t next = wk->timers_len ? wk->timers[0].deadline : INT64_MAX;
    weft__lock_release(&wk->timer_lock);
    return next;
}

void weft__timer_destroy(weft__worker *wk)
{
    weft__free(wk->timers, wk->timers_cap * sizeof *wk->timers);
    weft__free(wk->cells, wk->cells_cap * sizeof *wk->cells);
    wk->timers = NULL;
    wk->cells = NULL;
    wk->timers_len = wk->timers_cap = 0;
    wk->cells_cap = 0;
    wk->cells_free = NO_CELL;
}

int weft_sleep_until(int64_t deadline)
{
    if (deadline == WEFT_FOREVER)
        return EINVAL;
    if (!weft_self()) {
        struct timespec ts = { deadline / 1000000000, deadline % 1000000000 };
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
        return 0;
    }
    if (deadline <= weft_now())
        return 0;
    weft__waiter w;
    weft__waiter_init(&w, deadline);
    weft__waiter_wait(&w, NULL);
    return 0;
}

int weft_sleep(int64_t ns)
{
    if (ns <= 0)
        return 0;
    int64_t now = weft_now();
    /* Saturate: a sleep past the end of int64_t time never ends. */
    return weft_sleep_until(ns > INT64_MAX - now ? INT64_MAX : now + ns);
}
