/* The slow paths of weft__lock and the futex calls. See lock.h. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"

int weft__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns)
{
    struct timespec ts, *tsp = NULL;
    if (deadline_ns >= 0) {
        ts.tv_sec = deadline_ns / 1000000000;
        ts.tv_nsec = deadline_ns % 1000000000;
        tsp = &ts;
    }
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a
     * spurious wake-up does not stretch the wait. */
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected,
                      tsp, NULL, FUTEX_BITSET_MATCH_ANY);
    if (rc == -1 && errno == ETIMEDOUT)
        return ETIMEDOUT;
    return 0;
}

void weft__futex_wake(_Atomic uint32_t *word, int count)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, count, NULL, NULL, 0);
}

void weft__lock_slow(_Atomic uint32_t *word)
{
    for (int spin = 0; spin < 64; spin++) {
        uint32_t expected = 0;
        if (atomic_load_explicit(word, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(word, &expected, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        weft_cpu_relax();
    }
    /* Mark contended (2) and sleep until we take it as 2: the unlocker then
     * knows a sleeper may remain. Acquire pairs with the unlock's release. */
    while (atomic_exchange_explicit(word, 2, memory_order_acquire) != 0)
        weft__futex_wait(word, 2, -1);
}

void weft__unlock_slow(_Atomic uint32_t *word)
{
    weft__futex_wake(word, 1);
}
