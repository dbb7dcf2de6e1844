/* Synchronisation objects: mutex, condition variable, semaphore and
 * waitgroup, in coroutines, on plain threads and mixed; bad input. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "weft.h"

#define MS 1000000LL

static const weft_config one_worker = { .workers = 1 };
static const weft_config two_workers = { .workers = 2 };

static int64_t in_ms(int64_t ms)
{
    return weft_now() + ms * MS;
}

/* --- mutex ---------------------------------------------------------------------- */

#define COUNTERS 8
#define INCREMENTS 100000

static weft_mutex counter_mutex = WEFT_MUTEX_INIT;
static long counter; /* guarded by counter_mutex; a plain long, so TSan checks it */

static void *count_up(void *arg)
{
    (void)arg;
    for (int i = 0; i < INCREMENTS; i++) {
        assert_int_equal(weft_mutex_lock(&counter_mutex), 0);
        long c = counter;
        if (i % 1000 == 0)
            weft_yield(); /* hold it across a switch now and then */
        counter = c + 1;
        assert_int_equal(weft_mutex_unlock(&counter_mutex), 0);
    }
    return NULL;
}

static void *counter_main(void *arg)
{
    (void)arg;
    weft_co *co[COUNTERS];
    for (int i = 0; i < COUNTERS; i++)
        assert_int_equal(weft_spawn(&co[i], NULL, count_up, NULL), 0);
    for (int i = 0; i < COUNTERS; i++)
        assert_int_equal(weft_join(co[i], NULL), 0);
    return NULL;
}

static void test_mutex_protects_counter_under_eight_coroutines(void **state)
{
    (void)state;
    counter = 0;
    assert_int_equal(weft_main(&two_workers, counter_main, NULL, NULL), 0);
    assert_int_equal(counter, (long)COUNTERS * INCREMENTS);
}

static void *count_up_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < INCREMENTS / 4; i++) {
        assert_int_equal(weft_mutex_lock(&counter_mutex), 0);
        counter++;
        assert_int_equal(weft_mutex_unlock(&counter_mutex), 0);
    }
    return NULL;
}

static void test_mutex_works_between_plain_threads_and_coroutines(void **state)
{
    (void)state;
    counter = 0;
    /* Plain threads only, no runtime. */
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, count_up_thread, NULL), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(counter, (long)INCREMENTS);
    /* Mixed: two threads and eight coroutines. */
    counter = 0;
    assert_int_equal(weft_start(&two_workers), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, count_up_thread, NULL), 0);
    weft_co *co[COUNTERS];
    for (int i = 0; i < COUNTERS; i++)
        assert_int_equal(weft_spawn(&co[i], NULL, count_up, NULL), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < COUNTERS; i++)
        assert_int_equal(weft_join(co[i], NULL), 0);
    assert_int_equal(weft_stop(), 0);
    assert_int_equal(counter, (long)COUNTERS * INCREMENTS + INCREMENTS / 2);
}

static char order[16];
static int order_len;

struct locker {
    weft_mutex *m;
    char name;
};

static void *lock_and_record(void *arg)
{
    struct locker *l = arg;
    assert_int_equal(weft_mutex_lock(l->m), 0);
    order[order_len++] = l->name;
    assert_int_equal(weft_mutex_unlock(l->m), 0);
    return NULL;
}

static void *fifo_main(void *arg)
{
    (void)arg;
    weft_mutex m;
    assert_int_equal(weft_mutex_init(&m), 0);
    assert_int_equal(weft_mutex_lock(&m), 0);
    struct locker l[4] = { { &m, 'a' }, { &m, 'b' }, { &m, 'c' }, { &m, 'd' } };
    weft_co *co[4];
    for (int i = 0; i < 4; i++) {
        assert_int_equal(weft_spawn(&co[i], NULL, lock_and_record, &l[i]), 0);
        weft_yield(); /* it runs and queues on m, in spawn order */
    }
    order_len = 0;
    memset(order, 0, sizeof order);
    /* The main coroutine unlocks and tries to barge straight back in: the
     * hand-off gave m to 'a', so it must queue behind all four. */
    assert_int_equal(weft_mutex_unlock(&m), 0);
    assert_int_equal(weft_mutex_trylock(&m), EBUSY);
    assert_int_equal(weft_mutex_lock(&m), 0);
    order[order_len++] = 'M';
    assert_int_equal(weft_mutex_unlock(&m), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(weft_join(co[i], NULL), 0);
    assert_string_equal(order, "abcdM");
    return NULL;
}

static void test_mutex_hands_off_in_fifo_order(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&one_worker, fifo_main, NULL, NULL), 0);
}

static void *try_unlock(void *arg)
{
    return (void *)(intptr_t)weft_mutex_unlock(arg);
}

static void *unlock_rules_main(void *arg)
{
    (void)arg;
    weft_mutex m = WEFT_MUTEX_INIT;
    assert_int_equal(weft_mutex_unlock(&m), EPERM); /* nobody holds it */
    assert_int_equal(weft_mutex_trylock(&m), 0);
    assert_int_equal(weft_mutex_trylock(&m), EBUSY);
    assert_int_equal(weft_mutex_lock(&m), EDEADLK);
    weft_co *co;
    void *rc;
    assert_int_equal(weft_spawn(&co, NULL, try_unlock, &m), 0);
    assert_int_equal(weft_join(co, &rc), 0);
    assert_int_equal((int)(intptr_t)rc, EPERM); /* another coroutine */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, try_unlock, &m), 0);
    assert_int_equal(pthread_join(t, &rc), 0);
    assert_int_equal((int)(intptr_t)rc, EPERM); /* a plain thread */
    /* The owner moves with the coroutine: still held by us after a sleep
     * that may resume us on another worker. */
    weft_sleep(MS);
    assert_int_equal(weft_mutex_unlock(&m), 0);
    assert_int_equal(weft_mutex_unlock(&m), EPERM);
    return NULL;
}

static void test_mutex_unlock_by_non_owner_is_eperm(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&two_workers, unlock_rules_main, NULL, NULL), 0);
    /* On a plain thread too. */
    weft_mutex m = WEFT_MUTEX_INIT;
    assert_int_equal(weft_mutex_lock(&m), 0);
    pthread_t t;
    void *rc;
    assert_int_equal(pthread_create(&t, NULL, try_unlock, &m), 0);
    assert_int_equal(pthread_join(t, &rc), 0);
    assert_int_equal((int)(intptr_t)rc, EPERM);
    assert_int_equal(weft_mutex_unlock(&m), 0);
}

/* --- condition variable ------------------------------------------------------------ */

struct held_check {
    weft_mutex *m;
};

static void *trylock_result(void *arg)
{
    struct held_check *h = arg;
    int rc = weft_mutex_trylock(h->m);
    if (rc == 0)
        weft_mutex_unlock(h->m);
    return (void *)(intptr_t)rc;
}

static void cond_timeout_check(void)
{
    weft_mutex m = WEFT_MUTEX_INIT;
    weft_cond c = WEFT_COND_INIT;
    assert_int_equal(weft_mutex_lock(&m), 0);
    int64_t t0 = weft_now();
    assert_int_equal(weft_cond_wait(&c, &m, in_ms(30)), ETIMEDOUT);
    int64_t waited = weft_now() - t0;
    assert_true(waited >= 30 * MS);
    assert_true(waited < 2000 * MS);
    /* Held again: another thread cannot take it, we can release it. */
    struct held_check h = { &m };
    pthread_t t;
    void *rc;
    assert_int_equal(pthread_create(&t, NULL, trylock_result, &h), 0);
    assert_int_equal(pthread_join(t, &rc), 0);
    assert_int_equal((int)(intptr_t)rc, EBUSY);
    /* A passed deadline times out at once, mutex held throughout. */
    assert_int_equal(weft_cond_wait(&c, &m, 0), ETIMEDOUT);
    assert_int_equal(weft_mutex_unlock(&m), 0);
    /* Waiting without holding the mutex is EPERM. */
    assert_int_equal(weft_cond_wait(&c, &m, in_ms(10)), EPERM);
}

static void *cond_timeout_main(void *arg)
{
    (void)arg;
    cond_timeout_check();
    return NULL;
}

static void test_cond_wait_times_out_at_deadline_holding_mutex(void **state)
{
    (void)state;
    cond_timeout_check(); /* plain thread, no runtime */
    assert_int_equal(weft_main(&two_workers, cond_timeout_main, NULL, NULL), 0);
}

struct gate {
    weft_mutex m;
    weft_cond c;
    int open;    /* guarded by m */
    int waiting; /* guarded by m */
    _Atomic int passed;
};

static void *wait_for_gate(void *arg)
{
    struct gate *g = arg;
    assert_int_equal(weft_mutex_lock(&g->m), 0);
    g->waiting++;
    while (!g->open)
        assert_int_equal(weft_cond_wait(&g->c, &g->m, WEFT_FOREVER), 0);
    assert_int_equal(weft_mutex_unlock(&g->m), 0);
    atomic_fetch_add(&g->passed, 1);
    return NULL;
}

static void *cond_main(void *arg)
{
    (void)arg;
    struct gate g = { WEFT_MUTEX_INIT, WEFT_COND_INIT, 0, 0, 0 };
    weft_co *co[6];
    for (int i = 0; i < 6; i++)
        assert_int_equal(weft_spawn(&co[i], NULL, wait_for_gate, &g), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wait_for_gate, &g), 0);
    for (;;) {
        assert_int_equal(weft_mutex_lock(&g.m), 0);
        int n = g.waiting;
        assert_int_equal(weft_mutex_unlock(&g.m), 0);
        if (n == 7)
            break;
        weft_sleep(MS);
    }
    /* A signal without the predicate changing wakes one, who waits again. */
    assert_int_equal(weft_cond_signal(&g.c), 0);
    weft_sleep(10 * MS);
    assert_int_equal(atomic_load(&g.passed), 0);
    assert_int_equal(weft_mutex_lock(&g.m), 0);
    g.open = 1;
    assert_int_equal(weft_cond_broadcast(&g.c), 0);
    assert_int_equal(weft_mutex_unlock(&g.m), 0);
    for (int i = 0; i < 6; i++)
        assert_int_equal(weft_join(co[i], NULL), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(atomic_load(&g.passed), 7);
    return NULL;
}

static void test_cond_broadcast_wakes_every_waiter(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&two_workers, cond_main, NULL, NULL), 0);
}

/* --- semaphore ------------------------------------------------------------------- */

struct limited {
    weft_sem sem;
    _Atomic int inside, most;
};

static void *use_limited(void *arg)
{
    struct limited *l = arg;
    for (int round = 0; round < 5; round++) {
        assert_int_equal(weft_sem_wait(&l->sem, WEFT_FOREVER), 0);
        int now = atomic_fetch_add(&l->inside, 1) + 1;
        int most = atomic_load(&l->most);
        while (now > most && !atomic_compare_exchange_weak(&l->most, &most, now))
            ;
        weft_sleep(MS);
        atomic_fetch_sub(&l->inside, 1);
        assert_int_equal(weft_sem_post(&l->sem), 0);
    }
    return NULL;
}

static void *sem_main(void *arg)
{
    struct limited *l = arg;
    weft_co *co[20];
    for (int i = 0; i < 20; i++)
        assert_int_equal(weft_spawn(&co[i], NULL, use_limited, l), 0);
    for (int i = 0; i < 20; i++)
        assert_int_equal(weft_join(co[i], NULL), 0);
    return NULL;
}

static void test_sem_caps_concurrency_at_its_count(void **state)
{
    (void)state;
    struct limited l = { .sem = WEFT_SEM_INIT(3) };
    assert_int_equal(weft_main(&two_workers, sem_main, &l, NULL), 0);
    assert_int_equal(atomic_load(&l.most), 3);
    assert_int_equal(atomic_load(&l.inside), 0);
    /* All three units are back. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_sem_wait(&l.sem, 0), 0);
    assert_int_equal(weft_sem_wait(&l.sem, 0), ETIMEDOUT);
}

static void test_sem_wait_times_out_and_post_overflows(void **state)
{
    (void)state;
    weft_sem s;
    assert_int_equal(weft_sem_init(&s, 0), 0);
    int64_t t0 = weft_now();
    assert_int_equal(weft_sem_wait(&s, in_ms(20)), ETIMEDOUT);
    assert_true(weft_now() - t0 >= 20 * MS);
    assert_int_equal(weft_sem_post(&s), 0);
    assert_int_equal(weft_sem_wait(&s, 0), 0);
    weft_sem full = WEFT_SEM_INIT(UINT_MAX);
    assert_int_equal(weft_sem_post(&full), EOVERFLOW);
    assert_int_equal(weft_sem_wait(&full, 0), 0);
    assert_int_equal(weft_sem_post(&full), 0);
}

static void *sem_pong(void *arg)
{
    weft_sem *s = arg;
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(weft_sem_wait(&s[0], WEFT_FOREVER), 0);
        assert_int_equal(weft_sem_post(&s[1]), 0);
    }
    return NULL;
}

static void test_sem_ping_pong_between_plain_threads(void **state)
{
    (void)state;
    weft_sem s[2] = { WEFT_SEM_INIT(0), WEFT_SEM_INIT(0) };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, sem_pong, s), 0);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(weft_sem_post(&s[0]), 0);
        assert_int_equal(weft_sem_wait(&s[1], in_ms(10000)), 0);
    }
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(weft_sem_wait(&s[0], 0), ETIMEDOUT);
    assert_int_equal(weft_sem_wait(&s[1], 0), ETIMEDOUT);
}

/* --- waitgroup ------------------------------------------------------------------- */

struct group {
    weft_wg wg;
    _Atomic int finished;
};

static void *finish_later(void *arg)
{
    struct group *g = arg;
    weft_sleep(5 * MS);
    atomic_fetch_add(&g->finished, 1);
    assert_int_equal(weft_wg_done(&g->wg), 0);
    return NULL;
}

static void *wg_wait_thread(void *arg)
{
    struct group *g = arg;
    assert_int_equal(weft_wg_wait(&g->wg, WEFT_FOREVER), 0);
    return (void *)(intptr_t)atomic_load(&g->finished);
}

static void *wg_main(void *arg)
{
    (void)arg;
    struct group g = { WEFT_WG_INIT, 0 };
    assert_int_equal(weft_wg_wait(&g.wg, 0), 0); /* zero: at once */
    assert_int_equal(weft_wg_add(&g.wg, 10), 0);
    assert_int_equal(weft_wg_wait(&g.wg, 0), ETIMEDOUT);
    for (int i = 0; i < 10; i++)
        assert_int_equal(weft_spawn(NULL, NULL, finish_later, &g), 0);
    /* A plain thread waits on it too. */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, wg_wait_thread, &g), 0);
    assert_int_equal(weft_wg_wait(&g.wg, in_ms(10000)), 0);
    assert_int_equal(atomic_load(&g.finished), 10);
    void *seen;
    assert_int_equal(pthread_join(t, &seen), 0);
    assert_int_equal((int)(intptr_t)seen, 10);
    assert_int_equal(weft_wg_add(&g.wg, -1), EINVAL);
    assert_int_equal(weft_wg_wait(&g.wg, 0), 0);
    return NULL;
}

static void test_wg_wait_returns_when_count_reaches_zero(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&two_workers, wg_main, NULL, NULL), 0);
}

/* --- bad input --------------------------------------------------------------------- */

/* A waitgroup freed as soon as its wait returns, as Go's WaitGroup
 * allows: the done() that reached 0 must be finished with it by then.
 * Each round mallocs a waitgroup, a helper thread calls done() on it and
 * the main thread waits (blocking, then polling with a zero deadline) and
 * frees it at once. The ASan build catches a late touch. Bounded in time. */
static _Atomic(weft_wg *) wg_slot;
static _Atomic int wg_helper_stop;

static void *wg_done_helper(void *arg)
{
    (void)arg;
    while (!atomic_load(&wg_helper_stop)) {
        weft_wg *g = atomic_exchange(&wg_slot, NULL);
        if (g)
            weft_wg_done(g);
    }
    return NULL;
}

static void test_wg_may_be_freed_as_soon_as_wait_returns(void **state)
{
    (void)state;
    pthread_t helper;
    atomic_store(&wg_helper_stop, 0);
    assert_int_equal(pthread_create(&helper, NULL, wg_done_helper, NULL), 0);
    int64_t end = weft_now() + 300 * 1000000LL;
    for (long round = 0; weft_now() < end; round++) {
        weft_wg *g = malloc(sizeof *g);
        assert_non_null(g);
        assert_int_equal(weft_wg_init(g), 0);
        assert_int_equal(weft_wg_add(g, 1), 0);
        atomic_store(&wg_slot, g);
        if (round % 2) {
            assert_int_equal(weft_wg_wait(g, WEFT_FOREVER), 0);
        } else {
            while (weft_wg_wait(g, 0) == ETIMEDOUT)
                ;
        }
        memset(g, 0xA5, sizeof *g);
        free(g);
    }
    atomic_store(&wg_helper_stop, 1);
    pthread_join(helper, NULL);
}

static void test_sync_bad_input_gets_error_codes(void **state)
{
    (void)state;
    assert_int_equal(weft_mutex_init(NULL), EINVAL);
    assert_int_equal(weft_mutex_lock(NULL), EINVAL);
    assert_int_equal(weft_mutex_trylock(NULL), EINVAL);
    assert_int_equal(weft_mutex_unlock(NULL), EINVAL);
    assert_int_equal(weft_cond_init(NULL), EINVAL);
    weft_mutex m = WEFT_MUTEX_INIT;
    weft_cond c = WEFT_COND_INIT;
    assert_int_equal(weft_cond_wait(NULL, &m, 0), EINVAL);
    assert_int_equal(weft_cond_wait(&c, NULL, 0), EINVAL);
    assert_int_equal(weft_cond_signal(NULL), EINVAL);
    assert_int_equal(weft_cond_broadcast(NULL), EINVAL);
    assert_int_equal(weft_wg_init(NULL), EINVAL);
    assert_int_equal(weft_wg_add(NULL, 1), EINVAL);
    assert_int_equal(weft_wg_done(NULL), EINVAL);
    assert_int_equal(weft_wg_wait(NULL, 0), EINVAL);
    assert_int_equal(weft_sem_init(NULL, 1), EINVAL);
    assert_int_equal(weft_sem_wait(NULL, 0), EINVAL);
    assert_int_equal(weft_sem_post(NULL), EINVAL);
    /* A count that would go negative is refused and left alone. */
    weft_wg g;
    assert_int_equal(weft_wg_init(&g), 0);
    assert_int_equal(weft_wg_done(&g), EINVAL);
    assert_int_equal(weft_wg_add(&g, 2), 0);
    assert_int_equal(weft_wg_add(&g, -3), EINVAL);
    assert_int_equal(weft_wg_add(&g, INT_MAX), EINVAL);
    assert_int_equal(weft_wg_wait(&g, 0), ETIMEDOUT);
    assert_int_equal(weft_wg_add(&g, -2), 0);
    assert_int_equal(weft_wg_wait(&g, 0), 0);
    /* Signals with nobody waiting are no-ops. */
    assert_int_equal(weft_cond_signal(&c), 0);
    assert_int_equal(weft_cond_broadcast(&c), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mutex_protects_counter_under_eight_coroutines),
        cmocka_unit_test(test_mutex_works_between_plain_threads_and_coroutines),
        cmocka_unit_test(test_mutex_hands_off_in_fifo_order),
        cmocka_unit_test(test_mutex_unlock_by_non_owner_is_eperm),
        cmocka_unit_test(test_cond_wait_times_out_at_deadline_holding_mutex),
        cmocka_unit_test(test_cond_broadcast_wakes_every_waiter),
        cmocka_unit_test(test_sem_caps_concurrency_at_its_count),
        cmocka_unit_test(test_sem_wait_times_out_and_post_overflows),
        cmocka_unit_test(test_sem_ping_pong_between_plain_threads),
        cmocka_unit_test(test_wg_wait_returns_when_count_reaches_zero),
        cmocka_unit_test(test_wg_may_be_freed_as_soon_as_wait_returns),
        cmocka_unit_test(test_sync_bad_input_gets_error_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
