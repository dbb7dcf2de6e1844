/* weft__deque: each worker's run queue. See deque.c for the design. */
#ifndef WEFT_SCHED_DEQUE_H
#define WEFT_SCHED_DEQUE_H

#include <stdbool.h>
#include <stdint.h>

#include <errno.h>

#include "../atomic.h"

#if defined(WEFT_TESTING)
#define WEFT__DEQUE_INITIAL 4 /* tests: grow early and often */
/* Tests: set, a deque's growth fails as when memory is out. */
extern _Atomic int weft__test_deque_cannot_grow;
#else
#define WEFT__DEQUE_INITIAL 256
#endif

typedef struct weft__deque_array {
    int64_t mask;                      /* capacity - 1 (capacity: a power of 2) */
    struct weft__deque_array *retired; /* older, smaller arrays (see grow) */
    _Atomic(void *) slots[];
} weft__deque_array;

typedef struct weft__deque {
    /* Taken by CAS: by thieves, by the owner's FIFO take, and by the
     * owner's retract when one item is left. Never decreases. */
    _Atomic int64_t top;
    char pad0[WEFT_CACHELINE - sizeof(int64_t)];
    /* Written by the owner only. Items live in [top, bottom). */
    _Atomic int64_t bottom;
    _Atomic(weft__deque_array *) array; /* replaced by the owner only */
    /* The owner's last reading of top (owner only). top only grows, so it
     * understates the free room: push re-reads top only when this says
     * the array may be full, and a spawning owner stops pulling the line
     * that thieves write on every steal. */
    int64_t top_seen;
    char pad1[WEFT_CACHELINE - 2 * sizeof(int64_t) - sizeof(void *)];
} weft__deque;

/* 0 or ENOMEM. */
int weft__deque_init(weft__deque *d);
/* Frees the arrays. No concurrent access. */
void weft__deque_destroy(weft__deque *d);

/* Owner: appends at the bottom (the newest end); grows when full.
 * 0 or ENOMEM (the item was not added). */
static inline int weft__deque_push(weft__deque *d, void *item);
/* Owner: takes the oldest item (FIFO), or NULL when empty. */
static inline void *weft__deque_take(weft__deque *d);
/* Owner, when no thread can steal (a runtime of one worker): the same as
 * weft__deque_take without the CAS. */
static inline void *weft__deque_take_solo(weft__deque *d);
/* Owner: the item the next FIFO take would return, or NULL (with thieves
 * about, only a hint: one may take it a moment later). */
static inline void *weft__deque_peek_oldest(weft__deque *d);
/* weft__deque_take_solo that also gives, in *after, the item the next
 * take will return (NULL if none). */
static inline void *weft__deque_take_solo_next(weft__deque *d, void **after);
/* Owner: removes `item` if it is the newest one; 1 if removed, 0 if not
 * (not the newest, or taken by a thief meanwhile). */
int weft__deque_retract(weft__deque *d, void *item);
/* Owner: the newest item without taking it, or NULL when empty (a thief
 * may take it a moment later: confirm with weft__deque_retract). */
void *weft__deque_peek_newest(weft__deque *d);
/* Any thread: takes the oldest item, or NULL when empty or when it lost a
 * race with another taker (callers treat both as "try elsewhere"). */
void *weft__deque_steal(weft__deque *d);
/* Any thread: a snapshot of the item count (may be stale at once). */
static inline int64_t weft__deque_size(weft__deque *d);

/* --- The owner's hot paths, inline: they run on every spawn, yield and
 * wake-up. The orderings are explained in deque.c's design comment. --- */

/* Doubles the array (deque.c); NULL when out of memory. */
weft__deque_array *weft__deque_grow(weft__deque *d, weft__deque_array *a, int64_t top,
                                    int64_t bottom);

static inline int weft__deque_push(weft__deque *d, void *item)
{
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
    weft__deque_array *a = atomic_load_explicit(&d->array, memory_order_relaxed);
    if (WEFT_UNLIKELY(b - d->top_seen > a->mask)) {
        /* Acquire: pairs with thieves' CAS on top, so the slot they vacated
         * is not overwritten before they read it. (Between re-reads, a
         * thief holding a stale top may read a slot we overwrite; its CAS
         * on that stale top then fails and it drops what it read.) */
        int64_t t = atomic_load_explicit(&d->top, memory_order_acquire);
        d->top_seen = t;
        if (b - t > a->mask) {
            a = weft__deque_grow(d, a, t, b);
            if (!a)
                return ENOMEM;
        }
    }
    atomic_store_explicit(&a->slots[b & a->mask], item, memory_order_relaxed);
    /* Release: the slot write is visible before the new bottom; pairs with
     * the acquire load of bottom in steal (Lê et al. use a release fence
     * and a relaxed store: the same on x86 and AArch64, and TSan-visible). */
    atomic_store_explicit(&d->bottom, b + 1, memory_order_release);
    return 0;
}

static inline void *weft__deque_take(weft__deque *d)
{
    /* The owner takes the oldest item exactly as a thief does, but retries
     * a lost race: only another taker can win it, and the owner's queue is
     * the first place to look. */
    for (;;) {
        int64_t t = atomic_load_explicit(&d->top, memory_order_acquire);
        int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
        if (t >= b)
            return NULL;
        /* Relaxed: the owner wrote the array and the slots itself. */
        weft__deque_array *a = atomic_load_explicit(&d->array, memory_order_relaxed);
        void *item = atomic_load_explicit(&a->slots[t & a->mask], memory_order_relaxed);
        /* Seq_cst CAS, as in steal: the race for slot t. */
        if (atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1, memory_order_seq_cst,
                                                    memory_order_relaxed))
            return item;
    }
}

/* The owner's view of the oldest item: its index and the item; false
 * when the deque is empty. Shared by the solo take and the peek. */
static inline bool weft__deque_oldest(weft__deque *d, int64_t *t, void **item)
{
    *t = atomic_load_explicit(&d->top, memory_order_relaxed);
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
    if (*t >= b)
        return false;
    weft__deque_array *a = atomic_load_explicit(&d->array, memory_order_relaxed);
    *item = atomic_load_explicit(&a->slots[*t & a->mask], memory_order_relaxed);
    return true;
}

static inline void *weft__deque_take_solo(weft__deque *d)
{
    int64_t t;
    void *item;
    if (!weft__deque_oldest(d, &t, &item))
        return NULL;
    /* Relaxed: no thief exists; the store is only for the owner itself
     * and for weft__deque_size's snapshot readers. */
    atomic_store_explicit(&d->top, t + 1, memory_order_relaxed);
    return item;
}

static inline void *weft__deque_peek_oldest(weft__deque *d)
{
    int64_t t;
    void *item;
    return weft__deque_oldest(d, &t, &item) ? item : NULL;
}

static inline void *weft__deque_take_solo_next(weft__deque *d, void **after)
{
    void *item = weft__deque_take_solo(d);
    *after = item ? weft__deque_peek_oldest(d) : NULL;
    return item;
}

static inline int64_t weft__deque_size(weft__deque *d)
{
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed);
    int64_t t = atomic_load_explicit(&d->top, memory_order_relaxed);
    return b > t ? b - t : 0;
}

#endif
