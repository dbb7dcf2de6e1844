/* weft__lock: a small futex lock for the runtime's own short critical
 * sections (channel and sync-object state, the injection queue, the idle
 * list, timer heaps). It spins briefly, then sleeps in the kernel, and it
 * never parks a coroutine: the sections it guards are a few dozen
 * instructions, far cheaper than a park. Drepper's three-state mutex
 * ("Futexes Are Tricky", 2011): 0 free, 1 locked, 2 locked with sleepers. */
#ifndef WEFT_SCHED_LOCK_H
#define WEFT_SCHED_LOCK_H

#include <stdint.h>

#include "../atomic.h"

typedef struct weft__lock {
    _Atomic uint32_t word;
} weft__lock;

#define WEFT__LOCK_INIT                                                                            \
    {                                                                                              \
        0                                                                                          \
    }

void weft__lock_slow(_Atomic uint32_t *word);
void weft__unlock_slow(_Atomic uint32_t *word);

static inline void weft__lock_word(_Atomic uint32_t *word)
{
    uint32_t expected = 0;
    /* Acquire: the section's reads see what the last holder wrote; pairs
     * with the release in weft__unlock_word. */
    if (WEFT_LIKELY(atomic_compare_exchange_strong_explicit(
            word, &expected, 1, memory_order_acquire, memory_order_relaxed)))
        return;
    weft__lock_slow(word);
}

static inline void weft__unlock_word(_Atomic uint32_t *word)
{
    /* Release: publishes the section's writes to the next holder. */
    if (WEFT_UNLIKELY(atomic_exchange_explicit(word, 0, memory_order_release) == 2))
        weft__unlock_slow(word);
}

static inline void weft__lock_acquire(weft__lock *l)
{
    weft__lock_word(&l->word);
}
static inline void weft__lock_release(weft__lock *l)
{
    weft__unlock_word(&l->word);
}

/* Futex helpers (Linux). wait: sleeps while *word == expected, until
 * deadline_ns on CLOCK_MONOTONIC (WEFT_FOREVER: -1). Returns 0, or
 * ETIMEDOUT. Spurious returns are possible: callers re-check. */
int weft__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns);
void weft__futex_wake(_Atomic uint32_t *word, int count);

#endif
