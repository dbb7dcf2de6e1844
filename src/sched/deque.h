/* weft__deque: each worker's run queue. See deque.c for the design. */
#ifndef WEFT_SCHED_DEQUE_H
#define WEFT_SCHED_DEQUE_H

#include <stdint.h>

#include "../atomic.h"

#if defined(WEFT_TESTING)
#define WEFT__DEQUE_INITIAL 4 /* tests: grow early and often */
#else
#define WEFT__DEQUE_INITIAL 256
#endif

typedef struct weft__deque_array {
    int64_t mask;                       /* capacity - 1 (capacity: a power of 2) */
    struct weft__deque_array *retired;  /* older, smaller arrays (see grow) */
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
    char pad1[WEFT_CACHELINE - sizeof(int64_t) - sizeof(void *)];
} weft__deque;

/* 0 or ENOMEM. */
int weft__deque_init(weft__deque *d);
/* Frees the arrays. No concurrent access. */
void weft__deque_destroy(weft__deque *d);

/* Owner: appends at the bottom (the newest end); grows when full.
 * 0 or ENOMEM (the item was not added). */
int weft__deque_push(weft__deque *d, void *item);
/* Owner: takes the oldest item (FIFO), or NULL when empty. */
void *weft__deque_take(weft__deque *d);
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
int64_t weft__deque_size(weft__deque *d);

#endif
