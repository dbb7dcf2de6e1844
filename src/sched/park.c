/* Waiting: the one protocol under every call that waits (join, sleep,
 * channels, sync objects), for coroutines and plain threads alike.
 *
 * A wait is a weft__waiter on the waiter's own stack, published in some
 * structure (a channel's queue, a coroutine's join word, a timer heap).
 * Whoever completes the wait first claims it with one CAS on its state:
 * the waker, the deadline's timer, or, on a plain thread, the thread
 * itself when its futex wait times out. Exactly one claim succeeds, so a
 * wake-up and a deadline that race are resolved by that CAS: the loser
 * backs off and the waiter sees exactly one result.
 *
 * A coroutine must be switched out before anyone can resume it, so it
 * publishes and arms its timer under the structure's lock, and the lock is
 * released by the scheduler only after the switch (weft__park's `after`
 * callback, Go's gopark unlockf): any waker needs that lock to find the
 * waiter, so it cannot see a waiter whose coroutine is still on its stack.
 * The timer is added in the same callback, so it cannot fire early either.
 *
 * A plain thread sleeps on the waiter's state word with a futex; the
 * claimer stores WOKEN and wakes it. */
#include <errno.h>
#include <time.h>

#include "sched.h"

bool weft__deadline_pending(int64_t deadline)
{
    return deadline == WEFT_FOREVER || (deadline > 0 && deadline > weft_now());
}

void weft__waiter_init(weft__waiter *w, int64_t deadline)
{
    atomic_init(&w->state, WEFT__WAIT_WAITING);
    w->result = 0;
    weft__worker *wk = weft__worker_self();
    w->co = wk ? wk->current : NULL;
    w->deadline = deadline;
    w->timer_owner = NULL;
    w->sel = 0;
}

bool weft__waiter_claim(weft__waiter *w)
{
    uint32_t expected = WEFT__WAIT_WAITING;
    /* Acquire: the claimer reads what the waiter published with it (its
     * buffer); relaxed on failure, nothing is read then. */
    return atomic_compare_exchange_strong_explicit(&w->state, &expected, WEFT__WAIT_CLAIMED,
                                                   memory_order_acq_rel, memory_order_relaxed);
}

void weft__waiter_wake(weft__waiter *w, bool next)
{
    weft_co *co = w->co;
    if (co) {
        /* The coroutine may run (and return from its wait) as soon as it is
         * readied: w is not touched after this call. */
        weft__ready(co, next);
        return;
    }
    /* Release: the result and any data copied for the thread are visible
     * once it sees WOKEN; pairs with the acquire load in the thread's loop. */
    atomic_store_explicit(&w->state, WEFT__WAIT_WOKEN, memory_order_release);
    weft__futex_wake(&w->state, 1);
}

#if defined(WEFT_TESTING)
/* Test builds only: called between arming the timer and releasing the
 * lock, the window in which the timer may already fire elsewhere. */
void (*weft__test_park_armed)(void);
#endif

struct park_args {
    weft__waiter *w;
    weft__lock *lock;
};

/* Runs on the landing side once the coroutine is switched out. Nobody
 * but the timer can claim w before the lock is released. Once the timer is
 * in a heap it can fire at once (a thief fires a busy worker's timers),
 * and the coroutine can then resume elsewhere and return, ending the
 * frame that holds *p and *w: so nothing here reads them after
 * weft__timer_add succeeds (TSan caught the first version doing so). */
static bool after_switch(void *arg)
{
    struct park_args *p = arg;
    weft__waiter *w = p->w;
    weft__lock *lock = p->lock;
    bool timed = w->deadline != WEFT_FOREVER;
    if (timed && weft__timer_add(weft__worker_self(), w) != 0) {
        /* No memory for the timer: time out now rather than never. Not in
         * any heap, so w is still ours to write. */
        if (weft__waiter_claim(w))
            w->result = ETIMEDOUT;
        if (lock)
            weft__lock_release(lock);
        return false;
    }
#if defined(WEFT_TESTING)
    if (timed && weft__test_park_armed)
        weft__test_park_armed(); /* w may be gone: the hook gets nothing */
#endif
    if (lock)
        weft__lock_release(lock);
    return true;
}

static int wait_thread(weft__waiter *w, weft__lock *lock)
{
    if (lock)
        weft__lock_release(lock);
    for (;;) {
        /* Acquire: pairs with the release store of WOKEN in
         * weft__waiter_wake, so the claimer's writes are visible. */
        uint32_t s = atomic_load_explicit(&w->state, memory_order_acquire);
        if (s == WEFT__WAIT_WOKEN)
            return w->result;
        int rc =
            weft__futex_wait(&w->state, s, s == WEFT__WAIT_WAITING ? w->deadline : WEFT_FOREVER);
        if (rc == ETIMEDOUT && weft__waiter_claim(w)) {
            w->result = ETIMEDOUT;
            return ETIMEDOUT;
        }
    }
}

int weft__waiter_wait(weft__waiter *w, weft__lock *lock)
{
    if (!w->co)
        return wait_thread(w, lock);
    struct park_args args = { w, lock };
    weft__park(after_switch, &args);
    /* Woken by someone else: take the timer out of its heap before this
     * frame (and w) goes away. A timer that fired has removed itself. */
    if (w->timer_owner && w->result != ETIMEDOUT)
        weft__timer_cancel(w);
    /* The timer can claim the wait on another worker before the parking
     * worker's after_switch has released `lock` (it arms the timer first),
     * and that release may write into a lock in the caller's frame (a
     * select's gate): pass through the lock, so the release is over before
     * the caller goes on. A waker needs the lock to find us, so a woken
     * wait needs no such pass. */
    if (w->result == ETIMEDOUT && lock) {
        weft__lock_acquire(lock);
        weft__lock_release(lock);
    }
    return w->result;
}
