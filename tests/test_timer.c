/* The timer heap (src/sched/timer.c), driven directly: waiters added,
 * cancelled and fired on a worker structure of its own, checked against
 * the order their deadlines demand. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sched/sched.h"

#define N 5000

static weft__worker *new_worker(void)
{
    weft__worker *wk = calloc(1, sizeof *wk);
    assert_non_null(wk);
    atomic_init(&wk->timer_next, INT64_MAX);
    wk->cells_free = UINT32_MAX;
    return wk;
}

static uint64_t rng = 88172645463325252ull;

static uint64_t next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Plain-thread waiters (co == NULL): firing one stores WOKEN in its state
 * and wakes a futex nobody sleeps on, which the test then reads. */
static void test_timer_fires_in_deadline_order_and_skips_cancelled(void **state)
{
    (void)state;
    weft__worker *wk = new_worker();
    weft__waiter *w = calloc(N, sizeof *w);
    bool *cancelled = calloc(N, sizeof *cancelled);
    assert_non_null(w);
    assert_non_null(cancelled);
    for (int i = 0; i < N; i++) {
        weft__waiter_init(&w[i], 1000 + (int64_t)(next_random() % 100000));
        assert_int_equal(weft__timer_add(wk, &w[i]), 0);
    }
    /* Cancel a third, in random order, as woken waiters do. */
    for (int i = 0; i < N; i++) {
        if (next_random() % 3 == 0) {
            weft__timer_cancel(&w[i]);
            cancelled[i] = true;
        }
    }
    int64_t now = 0, last_fired = 0;
    int fired = 0;
    while (atomic_load(&wk->timer_next) != INT64_MAX) {
        int64_t next = atomic_load(&wk->timer_next);
        assert_true(next >= last_fired); /* the heap's minimum never goes back */
        now = next;
        weft__timer_run(wk, now);
        last_fired = now;
        for (int i = 0; i < N; i++) {
            if (atomic_load(&w[i].state) == WEFT__WAIT_WOKEN && w[i].result == ETIMEDOUT &&
                w[i].sel == 0) {
                assert_false(cancelled[i]);
                assert_true(w[i].deadline <= now); /* never early */
                assert_true(w[i].deadline == now); /* nor late: fired at its own turn */
                w[i].sel = 1;                      /* counted once */
                fired++;
            }
        }
    }
    int expected = 0;
    for (int i = 0; i < N; i++)
        expected += !cancelled[i];
    assert_int_equal(fired, expected);
    for (int i = 0; i < N; i++)
        if (cancelled[i])
            assert_int_equal(atomic_load(&w[i].state), WEFT__WAIT_WAITING);
    weft__timer_destroy(wk);
    free(w);
    free(cancelled);
    free(wk);
}

static void test_timer_cancel_after_firing_does_nothing(void **state)
{
    (void)state;
    weft__worker *wk = new_worker();
    weft__waiter a, b;
    weft__waiter_init(&a, 10);
    weft__waiter_init(&b, 20);
    assert_int_equal(weft__timer_add(wk, &a), 0);
    assert_int_equal(weft__timer_run(wk, 10), INT64_MAX); /* a fires */
    assert_int_equal(a.result, ETIMEDOUT);
    /* b takes the cell a had; a late cancel of a must leave b alone. */
    assert_int_equal(weft__timer_add(wk, &b), 0);
    assert_int_equal(b.timer_cell, a.timer_cell);
    weft__timer_cancel(&a);
    assert_int_equal(atomic_load(&wk->timer_next), 20);
    weft__timer_cancel(&b);
    assert_int_equal(atomic_load(&wk->timer_next), INT64_MAX);
    weft__timer_destroy(wk);
    free(wk);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timer_fires_in_deadline_order_and_skips_cancelled),
        cmocka_unit_test(test_timer_cancel_after_firing_does_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
