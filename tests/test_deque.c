/* The run queue (src/sched/deque.c), built with WEFT_TESTING so it starts
 * at 4 slots and grows under the tests. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "sched/deque.h"

static void test_deque_take_is_fifo_across_growth(void **state)
{
    (void)state;
    weft__deque d;
    assert_int_equal(weft__deque_init(&d), 0);
    for (uintptr_t i = 1; i <= 1000; i++)
        assert_int_equal(weft__deque_push(&d, (void *)i), 0);
    assert_int_equal(weft__deque_size(&d), 1000);
    for (uintptr_t i = 1; i <= 1000; i++)
        assert_int_equal((uintptr_t)weft__deque_take(&d), i);
    assert_null(weft__deque_take(&d));
    weft__deque_destroy(&d);
}

/* The solo take that also names the next item: FIFO like take, across
 * growth and wrap-around, and `after` is always what the next take
 * returns (NULL when the taken item was the last). */
static void test_deque_take_solo_next_names_the_next_take(void **state)
{
    (void)state;
    weft__deque d;
    assert_int_equal(weft__deque_init(&d), 0);
    void *after = (void *)1;
    assert_null(weft__deque_take_solo_next(&d, &after));
    assert_null(after);
    uintptr_t pushed = 0, taken = 0;
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 7; i++) /* more than taken: the queue grows */
            assert_int_equal(weft__deque_push(&d, (void *)++pushed), 0);
        for (int i = 0; i < 5; i++) {
            uintptr_t item = (uintptr_t)weft__deque_take_solo_next(&d, &after);
            assert_int_equal(item, ++taken);
            assert_int_equal((uintptr_t)after, taken < pushed ? taken + 1 : 0);
        }
    }
    while (taken < pushed) {
        uintptr_t item = (uintptr_t)weft__deque_take_solo_next(&d, &after);
        assert_int_equal(item, ++taken);
        assert_int_equal((uintptr_t)after, taken < pushed ? taken + 1 : 0);
    }
    assert_null(weft__deque_take_solo_next(&d, &after));
    assert_null(after);
    weft__deque_destroy(&d);
}

static void test_deque_steal_takes_oldest(void **state)
{
    (void)state;
    weft__deque d;
    assert_int_equal(weft__deque_init(&d), 0);
    for (uintptr_t i = 1; i <= 3; i++)
        weft__deque_push(&d, (void *)i);
    assert_int_equal((uintptr_t)weft__deque_steal(&d), 1);
    assert_int_equal((uintptr_t)weft__deque_take(&d), 2);
    weft__deque_destroy(&d);
}

static void test_deque_retract_takes_back_only_the_newest(void **state)
{
    (void)state;
    weft__deque d;
    assert_int_equal(weft__deque_init(&d), 0);
    weft__deque_push(&d, (void *)1);
    weft__deque_push(&d, (void *)2);
    assert_int_equal(weft__deque_retract(&d, (void *)1), 0); /* not the newest */
    assert_int_equal(weft__deque_retract(&d, (void *)2), 1);
    assert_int_equal(weft__deque_retract(&d, (void *)2), 0); /* gone */
    assert_int_equal(weft__deque_retract(&d, (void *)1), 1); /* last item */
    assert_int_equal(weft__deque_size(&d), 0);
    assert_null(weft__deque_steal(&d));
    weft__deque_destroy(&d);
}

/* Owner pushes, takes and retracts against two thieves: every item is
 * taken exactly once. Bounded in time as well as in count. */
#define ITEMS 2000000
static weft__deque shared;
static _Atomic int owner_done;
static unsigned char *seen;
static _Atomic long taken_total;

static void mark(uintptr_t v)
{
    /* Each slot is written by exactly one taker; a duplicate shows as 2. */
    seen[v]++;
    atomic_fetch_add_explicit(&taken_total, 1, memory_order_relaxed);
}

static void *thief(void *arg)
{
    (void)arg;
    for (;;) {
        void *v = weft__deque_steal(&shared);
        if (v)
            mark((uintptr_t)v);
        else if (atomic_load(&owner_done) && weft__deque_size(&shared) == 0)
            return NULL;
    }
}

static void test_deque_stress_each_item_taken_exactly_once(void **state)
{
    (void)state;
    seen = calloc(ITEMS + 1, 1);
    assert_non_null(seen);
    assert_int_equal(weft__deque_init(&shared), 0);
    atomic_store(&owner_done, 0);
    atomic_store(&taken_total, 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, thief, NULL);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    uintptr_t pushed = 0;
    unsigned rng = 12345;
    while (pushed < ITEMS) {
        uintptr_t v = ++pushed;
        assert_int_equal(weft__deque_push(&shared, (void *)v), 0);
        rng = rng * 1103515245 + 12345;
        unsigned r = (rng >> 16) % 8;
        if (r == 0) {
            if (weft__deque_retract(&shared, (void *)v))
                mark(v);
        } else if (r == 1) {
            void *x = weft__deque_take(&shared);
            if (x)
                mark((uintptr_t)x);
        }
        if ((pushed & 0xffff) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - start.tv_sec > 20)
                break; /* slow machine or sanitizer: check what was pushed */
        }
    }
    void *x;
    while ((x = weft__deque_take(&shared)) != NULL)
        mark((uintptr_t)x);
    atomic_store(&owner_done, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(atomic_load(&taken_total), (long)pushed);
    for (uintptr_t i = 1; i <= pushed; i++)
        if (seen[i] != 1)
            fail_msg("item %lu taken %d times", (unsigned long)i, seen[i]);
    weft__deque_destroy(&shared);
    free(seen);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deque_take_is_fifo_across_growth),
        cmocka_unit_test(test_deque_take_solo_next_names_the_next_take),
        cmocka_unit_test(test_deque_steal_takes_oldest),
        cmocka_unit_test(test_deque_retract_takes_back_only_the_newest),
        cmocka_unit_test(test_deque_stress_each_item_taken_exactly_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
