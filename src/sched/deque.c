/* The run queue of one worker: a Chase-Lev deque, used FIFO.
 *
 * Algorithm: Chase and Lev, "Dynamic circular work-stealing deque" (SPAA
 * 2005), with the C11 orderings of Lê, Pop, Cohen and Zappa Nardelli,
 * "Correct and efficient work-stealing for weak memory models" (PPoPP
 * 2013). The owner pushes at the bottom; thieves take from the top with a
 * CAS. Unlike a fork-join runtime, the owner also takes from the top (by
 * the same CAS), because API.md promises FIFO on one worker: spawned
 * coroutines start in spawn order, and a yield goes behind everything that
 * was runnable. The classic owner pop at the bottom survives as
 * weft__deque_retract: a join of a child that is still the newest item
 * takes it back and runs it inline (fork-join's fast path: fib's joins).
 *
 * Rejected: Go's and Tokio's bounded ring with steal-half. Their owner pops
 * from the head too, but a ring whose head is claimed in batches cannot
 * safely give back its newest item, so the inline join would be lost; and
 * the bounded ring needs an overflow path to a global queue, which breaks
 * spawn order on one worker. Thieves here take one item per CAS; the
 * scheduler loops to take up to half (see worker.c), which costs one CAS an
 * item instead of one a batch, and measured the same on fib, uts and spawn.
 *
 * Growth: when full, the owner copies [top, bottom) into an array twice as
 * large and publishes it. A thief may still read the old array: its slots
 * for [top, bottom) hold the same items, and the thief's CAS on top decides
 * ownership, so reading either copy is correct. Old arrays are kept on a
 * list until the deque is destroyed (their total is below the newest's
 * size), so no thief ever reads freed memory. */
#include <errno.h>

#include "../alloc.h"
#include "deque.h"

static weft__deque_array *array_new(int64_t capacity)
{
    weft__deque_array *a = weft__alloc(sizeof *a + (size_t)capacity * sizeof(a->slots[0]));
    if (!a)
        return NULL;
    a->mask = capacity - 1;
    a->retired = NULL;
    return a;
}

static size_t array_bytes(const weft__deque_array *a)
{
    return sizeof *a + (size_t)(a->mask + 1) * sizeof(a->slots[0]);
}

#if defined(WEFT_TESTING)
_Atomic int weft__test_deque_cannot_grow;
#endif

int weft__deque_init(weft__deque *d)
{
    weft__deque_array *a = array_new(WEFT__DEQUE_INITIAL);
    if (!a)
        return ENOMEM;
    atomic_init(&d->top, 0);
    atomic_init(&d->bottom, 0);
    atomic_init(&d->array, a);
    d->top_seen = 0;
    return 0;
}

void weft__deque_destroy(weft__deque *d)
{
    weft__deque_array *a = atomic_load_explicit(&d->array, memory_order_relaxed);
    while (a) {
        weft__deque_array *older = a->retired;
        weft__free(a, array_bytes(a));
        a = older;
    }
    atomic_store_explicit(&d->array, NULL, memory_order_relaxed);
}

weft__deque_array *weft__deque_grow(weft__deque *d, weft__deque_array *a, int64_t top,
                                    int64_t bottom)
{
#if defined(WEFT_TESTING)
    if (atomic_load_explicit(&weft__test_deque_cannot_grow, memory_order_relaxed))
        return NULL;
#endif
    weft__deque_array *bigger = array_new((a->mask + 1) * 2);
    if (!bigger)
        return NULL;
    for (int64_t i = top; i < bottom; i++)
        atomic_store_explicit(&bigger->slots[i & bigger->mask],
                              atomic_load_explicit(&a->slots[i & a->mask], memory_order_relaxed),
                              memory_order_relaxed);
    bigger->retired = a;
    /* Release: the copied slots are visible to a thief that loads the new
     * array (acquire in weft__deque_steal). */
    atomic_store_explicit(&d->array, bigger, memory_order_release);
    return bigger;
}

void *weft__deque_steal(weft__deque *d)
{
    int64_t t = atomic_load_explicit(&d->top, memory_order_acquire);
    /* Orders the top load before the bottom load against the owner's
     * retract (store bottom; fence; load top), the Dekker pattern
     * acquire/release cannot express: a seq_cst fence, or on x86-64 only a
     * compiler barrier (see weft_fence_load_load in atomic.h). */
    weft_fence_load_load();
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_acquire);
    if (t >= b)
        return NULL;
    /* Acquire: the array's slots as the owner published them. */
    weft__deque_array *a = atomic_load_explicit(&d->array, memory_order_acquire);
    void *item = atomic_load_explicit(&a->slots[t & a->mask], memory_order_relaxed);
    /* Seq_cst CAS: takes slot t; fails if another taker or the owner's
     * retract got it first. */
    if (!atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return NULL;
    return item;
}

int weft__deque_retract(weft__deque *d, void *item)
{
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed) - 1;
    weft__deque_array *a = atomic_load_explicit(&d->array, memory_order_relaxed);
    int64_t t = atomic_load_explicit(&d->top, memory_order_relaxed);
    if (b < t || atomic_load_explicit(&a->slots[b & a->mask], memory_order_relaxed) != item)
        return 0;
    atomic_store_explicit(&d->bottom, b, memory_order_relaxed);
    /* Seq_cst fence: publishes the lowered bottom before reading top; the
     * partner is the fence in weft__deque_steal. Either a thief sees the
     * new bottom and backs off, or we see its advanced top. */
    weft_fence_seq_cst();
    t = atomic_load_explicit(&d->top, memory_order_relaxed);
    if (t < b)
        return 1; /* more than one item left: slot b is ours */
    int won = 0;
    if (t == b) {
        /* The last item: race the thieves for it on top. */
        won = atomic_compare_exchange_strong_explicit(&d->top, &t, t + 1, memory_order_seq_cst,
                                                      memory_order_relaxed);
    }
    atomic_store_explicit(&d->bottom, b + 1, memory_order_relaxed);
    return won;
}

void *weft__deque_peek_newest(weft__deque *d)
{
    int64_t b = atomic_load_explicit(&d->bottom, memory_order_relaxed) - 1;
    int64_t t = atomic_load_explicit(&d->top, memory_order_relaxed);
    if (b < t)
        return NULL;
    weft__deque_array *a = atomic_load_explicit(&d->array, memory_order_relaxed);
    return atomic_load_explicit(&a->slots[b & a->mask], memory_order_relaxed);
}
