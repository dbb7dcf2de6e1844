/* Channels and select: rendezvous, buffering, close, MPMC stress, select
 * fairness and timeouts, plain threads, bad input, and a randomised
 * comparison against a sequential model. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
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

/* --- rendezvous and buffering -------------------------------------------------- */

struct pair {
    weft_chan *ch;
    int n;
    _Atomic int asked; /* receives started by the receiver */
};

static void *send_numbers(void *arg)
{
    struct pair *p = arg;
    for (int i = 0; i < p->n; i++) {
        assert_int_equal(weft_chan_send(p->ch, &i, WEFT_FOREVER), 0);
        /* A rendezvous send completes only once a receiver took the value,
         * so the receiver must have started receive number i. */
        assert_true(atomic_load(&p->asked) >= i + 1);
    }
    return NULL;
}

static void *rendezvous_main(void *arg)
{
    (void)arg;
    weft_chan *ch;
    assert_int_equal(weft_chan_make(&ch, sizeof(int), 0), 0);
    int v = 7;
    /* Nobody receives: a rendezvous send cannot complete. */
    assert_int_equal(weft_chan_send(ch, &v, 0), ETIMEDOUT);
    assert_int_equal(weft_chan_recv(ch, &v, 0), ETIMEDOUT);

    struct pair p = { .ch = ch, .n = 200 };
    weft_co *co;
    assert_int_equal(weft_spawn(&co, NULL, send_numbers, &p), 0);
    for (int i = 0; i < p.n; i++) {
        int got = -1;
        if (i % 3 == 0)
            weft_yield(); /* sometimes the sender waits first */
        atomic_store(&p.asked, i + 1);
        assert_int_equal(weft_chan_recv(ch, &got, WEFT_FOREVER), 0);
        assert_int_equal(got, i);
    }
    assert_int_equal(weft_join(co, NULL), 0);
    assert_int_equal(weft_chan_free_checked(ch), 0);
    return NULL;
}

static void test_chan_rendezvous_delivers_in_order_and_waits_for_receiver(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&one_worker, rendezvous_main, NULL, NULL), 0);
    assert_int_equal(weft_main(&two_workers, rendezvous_main, NULL, NULL), 0);
}

static void test_chan_capacity_is_respected(void **state)
{
    (void)state;
    weft_chan *ch;
    assert_int_equal(weft_chan_make(&ch, sizeof(long), 3), 0);
    for (long i = 0; i < 3; i++)
        assert_int_equal(weft_chan_send(ch, &i, 0), 0);
    long v = 99;
    assert_int_equal(weft_chan_send(ch, &v, 0), ETIMEDOUT);
    int64_t t0 = weft_now();
    assert_int_equal(weft_chan_send(ch, &v, in_ms(20)), ETIMEDOUT);
    assert_true(weft_now() - t0 >= 20 * MS);
    for (long i = 0; i < 3; i++) {
        assert_int_equal(weft_chan_recv(ch, &v, 0), 0);
        assert_int_equal(v, i);
    }
    assert_int_equal(weft_chan_recv(ch, &v, 0), ETIMEDOUT);
    /* The ring wraps. */
    for (long round = 0; round < 10; round++) {
        for (long i = 0; i < 2; i++) {
            long x = round * 10 + i;
            assert_int_equal(weft_chan_send(ch, &x, 0), 0);
        }
        for (long i = 0; i < 2; i++) {
            assert_int_equal(weft_chan_recv(ch, &v, 0), 0);
            assert_int_equal(v, round * 10 + i);
        }
    }
    assert_int_equal(weft_chan_free_checked(ch), 0);
}

/* --- close ----------------------------------------------------------------------- */

struct blocked {
    weft_chan *ch;
    int op;
    _Atomic int *started;
};

static void *blocked_op(void *arg)
{
    struct blocked *b = arg;
    int v = 1;
    atomic_fetch_add(b->started, 1);
    int rc = b->op == WEFT_SEND ? weft_chan_send(b->ch, &v, WEFT_FOREVER)
                                : weft_chan_recv(b->ch, &v, WEFT_FOREVER);
    return (void *)(intptr_t)rc;
}

static void *close_main(void *arg)
{
    (void)arg;
    weft_chan *to_send, *to_recv;
    assert_int_equal(weft_chan_make(&to_send, sizeof(int), 1), 0);
    assert_int_equal(weft_chan_make(&to_recv, sizeof(int), 0), 0);
    int v = 5;
    assert_int_equal(weft_chan_send(to_send, &v, 0), 0); /* now full */
    _Atomic int started = 0;
    struct blocked b[6];
    weft_co *co[6];
    for (int i = 0; i < 6; i++) {
        b[i] =
            (struct blocked){ i < 3 ? to_send : to_recv, i < 3 ? WEFT_SEND : WEFT_RECV, &started };
        assert_int_equal(weft_spawn(&co[i], NULL, blocked_op, &b[i]), 0);
    }
    /* A plain thread waits too. */
    pthread_t thread;
    struct blocked tb = { to_recv, WEFT_RECV, &started };
    assert_int_equal(pthread_create(&thread, NULL, blocked_op, &tb), 0);
    while (atomic_load(&started) < 7)
        weft_sleep(MS);
    weft_sleep(30 * MS); /* let them all park */
    assert_int_equal(weft_chan_free_checked(to_recv), EBUSY);
    assert_int_equal(weft_chan_close(to_send), 0);
    assert_int_equal(weft_chan_close(to_recv), 0);
    for (int i = 0; i < 6; i++) {
        void *rc;
        assert_int_equal(weft_join(co[i], &rc), 0);
        assert_int_equal((int)(intptr_t)rc, EPIPE);
    }
    void *rc;
    assert_int_equal(pthread_join(thread, &rc), 0);
    assert_int_equal((int)(intptr_t)rc, EPIPE);
    /* The buffered value survives the close. */
    assert_int_equal(weft_chan_recv(to_send, &v, 0), 0);
    assert_int_equal(v, 5);
    assert_int_equal(weft_chan_recv(to_send, &v, WEFT_FOREVER), EPIPE);
    assert_int_equal(weft_chan_free_checked(to_send), 0);
    assert_int_equal(weft_chan_free_checked(to_recv), 0);
    return NULL;
}

static void test_chan_close_wakes_blocked_senders_and_receivers(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&two_workers, close_main, NULL, NULL), 0);
}

static void test_chan_recv_drains_buffer_after_close(void **state)
{
    (void)state;
    weft_chan *ch;
    assert_int_equal(weft_chan_make(&ch, sizeof(int), 4), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_chan_send(ch, &i, 0), 0);
    assert_int_equal(weft_chan_close(ch), 0);
    assert_int_equal(weft_chan_close(ch), EPIPE);
    int v = 42;
    assert_int_equal(weft_chan_send(ch, &v, WEFT_FOREVER), EPIPE);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(weft_chan_recv(ch, &v, WEFT_FOREVER), 0);
        assert_int_equal(v, i);
    }
    assert_int_equal(weft_chan_recv(ch, &v, WEFT_FOREVER), EPIPE);
    assert_int_equal(weft_chan_recv(ch, &v, 0), EPIPE);
    weft_chan_free(ch);
}

/* --- MPMC stress --------------------------------------------------------------- */

#define PRODUCERS 4
#define CONSUMERS 4
#define ITEMS 100000

struct mpmc {
    weft_chan *ch;
    weft_wg producers;
    unsigned char *seen;
    _Atomic uint64_t count, sum;
    _Atomic int next_producer;
    _Atomic int duplicates;
};

static void *mpmc_producer(void *arg)
{
    struct mpmc *m = arg;
    uint64_t id = (uint64_t)atomic_fetch_add(&m->next_producer, 1);
    for (uint64_t i = 0; i < ITEMS; i++) {
        uint64_t item = id * ITEMS + i;
        assert_int_equal(weft_chan_send(m->ch, &item, WEFT_FOREVER), 0);
    }
    weft_wg_done(&m->producers);
    return NULL;
}

static void *mpmc_consumer(void *arg)
{
    struct mpmc *m = arg;
    uint64_t item, count = 0, sum = 0;
    int rc;
    while ((rc = weft_chan_recv(m->ch, &item, WEFT_FOREVER)) == 0) {
        assert_true(item < PRODUCERS * ITEMS);
        /* Each item is delivered once, so each slot has one writer. */
        if (atomic_exchange((_Atomic unsigned char *)&m->seen[item], 1))
            atomic_fetch_add(&m->duplicates, 1);
        count++;
        sum += item;
    }
    assert_int_equal(rc, EPIPE);
    atomic_fetch_add(&m->count, count);
    atomic_fetch_add(&m->sum, sum);
    return NULL;
}

static void *mpmc_main(void *arg)
{
    struct mpmc *m = arg;
    weft_co *consumers[CONSUMERS];
    for (int i = 0; i < CONSUMERS; i++)
        assert_int_equal(weft_spawn(&consumers[i], NULL, mpmc_consumer, m), 0);
    assert_int_equal(weft_wg_add(&m->producers, PRODUCERS), 0);
    for (int i = 0; i < PRODUCERS; i++)
        assert_int_equal(weft_spawn(NULL, NULL, mpmc_producer, m), 0);
    assert_int_equal(weft_wg_wait(&m->producers, WEFT_FOREVER), 0);
    assert_int_equal(weft_chan_close(m->ch), 0);
    for (int i = 0; i < CONSUMERS; i++)
        assert_int_equal(weft_join(consumers[i], NULL), 0);
    return NULL;
}

static void run_mpmc(size_t capacity)
{
    static _Atomic unsigned char seen[PRODUCERS * ITEMS];
    memset((void *)seen, 0, sizeof seen);
    struct mpmc m = { .seen = (unsigned char *)seen };
    weft_wg_init(&m.producers);
    assert_int_equal(weft_chan_make(&m.ch, sizeof(uint64_t), capacity), 0);
    assert_int_equal(weft_main(&two_workers, mpmc_main, &m, NULL), 0);
    uint64_t n = (uint64_t)PRODUCERS * ITEMS;
    assert_int_equal(atomic_load(&m.duplicates), 0);
    assert_int_equal(atomic_load(&m.count), n);
    assert_int_equal(atomic_load(&m.sum), n * (n - 1) / 2);
    for (uint64_t i = 0; i < n; i++)
        if (!seen[i])
            fail_msg("item %llu never received", (unsigned long long)i);
    weft_chan_free(m.ch);
}

static void test_chan_mpmc_stress_delivers_every_item_once_buffered(void **state)
{
    (void)state;
    run_mpmc(64);
}

static void test_chan_mpmc_stress_delivers_every_item_once_rendezvous(void **state)
{
    (void)state;
    run_mpmc(0);
}

/* --- select ------------------------------------------------------------------------ */

static void test_select_chooses_fairly_between_ready_channels(void **state)
{
    (void)state;
    weft_chan *a, *b;
    assert_int_equal(weft_chan_make(&a, sizeof(int), 1), 0);
    assert_int_equal(weft_chan_make(&b, sizeof(int), 1), 0);
    int one = 1, two = 2, got;
    assert_int_equal(weft_chan_send(a, &one, 0), 0);
    assert_int_equal(weft_chan_send(b, &two, 0), 0);
    int chosen[2] = { 0, 0 };
    for (int i = 0; i < 10000; i++) {
        weft_case cases[2] = { { a, WEFT_RECV, &got, -1 }, { b, WEFT_RECV, &got, -1 } };
        size_t done = 99;
        assert_int_equal(weft_select(cases, 2, 0, &done), 0);
        assert_true(done < 2);
        assert_int_equal(cases[done].err, 0);
        assert_int_equal(got, done == 0 ? 1 : 2);
        chosen[done]++;
        assert_int_equal(weft_chan_send(done == 0 ? a : b, done == 0 ? &one : &two, 0), 0);
    }
    assert_in_range(chosen[0], 3000, 7000);
    assert_in_range(chosen[1], 3000, 7000);
    /* Sends too: both have room after a drain. */
    assert_int_equal(weft_chan_recv(a, &got, 0), 0);
    assert_int_equal(weft_chan_recv(b, &got, 0), 0);
    chosen[0] = chosen[1] = 0;
    for (int i = 0; i < 10000; i++) {
        weft_case cases[2] = { { a, WEFT_SEND, &one, -1 }, { b, WEFT_SEND, &two, -1 } };
        size_t done = 99;
        assert_int_equal(weft_select(cases, 2, 0, &done), 0);
        chosen[done]++;
        assert_int_equal(weft_chan_recv(done == 0 ? a : b, &got, 0), 0);
        assert_int_equal(got, done == 0 ? 1 : 2);
    }
    assert_in_range(chosen[0], 3000, 7000);
    assert_in_range(chosen[1], 3000, 7000);
    weft_chan_free(a);
    weft_chan_free(b);
}

static void test_select_times_out_at_deadline(void **state)
{
    (void)state;
    weft_chan *a, *b;
    assert_int_equal(weft_chan_make(&a, sizeof(int), 0), 0);
    assert_int_equal(weft_chan_make(&b, sizeof(int), 2), 0);
    int x = 3, y;
    weft_case cases[2] = { { a, WEFT_RECV, &y, -1 }, { b, WEFT_RECV, &y, -1 } };
    size_t done = 77;
    assert_int_equal(weft_select(cases, 2, 0, &done), ETIMEDOUT);
    int64_t t0 = weft_now();
    assert_int_equal(weft_select(cases, 2, in_ms(30), &done), ETIMEDOUT);
    int64_t waited = weft_now() - t0;
    assert_true(waited >= 30 * MS);
    assert_true(waited < 2000 * MS);
    assert_int_equal(done, 77);
    assert_int_equal(cases[0].err, -1);
    assert_int_equal(cases[1].err, -1);
    /* n == 0 waits for the deadline. */
    t0 = weft_now();
    assert_int_equal(weft_select(NULL, 0, in_ms(20), &done), ETIMEDOUT);
    assert_true(weft_now() - t0 >= 20 * MS);
    assert_int_equal(done, 77);
    /* The waiting select left nothing queued: the channels work as before. */
    assert_int_equal(weft_chan_send(b, &x, 0), 0);
    assert_int_equal(weft_select(cases, 2, 0, &done), 0);
    assert_int_equal(done, 1);
    assert_int_equal(y, 3);
    assert_int_equal(weft_chan_free_checked(a), 0);
    assert_int_equal(weft_chan_free_checked(b), 0);
}

static void test_select_with_null_channel_never_picks_it(void **state)
{
    (void)state;
    weft_chan *a;
    assert_int_equal(weft_chan_make(&a, sizeof(int), 1), 0);
    int v = 9, got = 0;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(weft_chan_send(a, &v, 0), 0);
        weft_case cases[3] = { { NULL, WEFT_RECV, &got, -1 },
                               { a, WEFT_RECV, NULL, -1 },
                               { NULL, WEFT_SEND, NULL, -1 } };
        size_t done = 5;
        assert_int_equal(weft_select(cases, 3, 0, &done), 0);
        assert_int_equal(done, 1); /* and the value was dropped */
    }
    assert_int_equal(weft_chan_recv(a, &got, 0), ETIMEDOUT);
    weft_case only_null[2] = { { NULL, WEFT_RECV, &got, -1 }, { NULL, WEFT_SEND, NULL, -1 } };
    size_t done = 5;
    assert_int_equal(weft_select(only_null, 2, in_ms(10), &done), ETIMEDOUT);
    assert_int_equal(done, 5);
    /* A closed channel is ready, with EPIPE. */
    assert_int_equal(weft_chan_close(a), 0);
    weft_case closed[2] = { { NULL, WEFT_RECV, &got, -1 }, { a, WEFT_SEND, &v, -1 } };
    assert_int_equal(weft_select(closed, 2, WEFT_FOREVER, &done), 0);
    assert_int_equal(done, 1);
    assert_int_equal(closed[1].err, EPIPE);
    weft_chan_free(a);
}

struct select_wake {
    weft_chan *a, *b;
};

static void *send_to_b_later(void *arg)
{
    struct select_wake *s = arg;
    weft_sleep(10 * MS);
    int v = 44;
    assert_int_equal(weft_chan_send(s->b, &v, WEFT_FOREVER), 0);
    return NULL;
}

static void *recv_from_a_later(void *arg)
{
    struct select_wake *s = arg;
    weft_sleep(10 * MS);
    int v = 0;
    assert_int_equal(weft_chan_recv(s->a, &v, WEFT_FOREVER), 0);
    return (void *)(intptr_t)v;
}

static void *close_a_later(void *arg)
{
    struct select_wake *s = arg;
    weft_sleep(10 * MS);
    assert_int_equal(weft_chan_close(s->a), 0);
    return NULL;
}

static void *select_wake_main(void *arg)
{
    (void)arg;
    struct select_wake s;
    assert_int_equal(weft_chan_make(&s.a, sizeof(int), 0), 0);
    assert_int_equal(weft_chan_make(&s.b, sizeof(int), 0), 0);
    int out = 11, in = 0;
    weft_co *co;
    size_t done;

    /* A waiting select completes by a later send. */
    assert_int_equal(weft_spawn(&co, NULL, send_to_b_later, &s), 0);
    weft_case c1[2] = { { s.a, WEFT_RECV, &in, -1 }, { s.b, WEFT_RECV, &in, -1 } };
    assert_int_equal(weft_select(c1, 2, WEFT_FOREVER, &done), 0);
    assert_int_equal(done, 1);
    assert_int_equal(c1[1].err, 0);
    assert_int_equal(in, 44);
    assert_int_equal(weft_join(co, NULL), 0);

    /* A waiting select's send case is taken by a later receive. */
    assert_int_equal(weft_spawn(&co, NULL, recv_from_a_later, &s), 0);
    weft_case c2[2] = { { s.a, WEFT_SEND, &out, -1 }, { s.b, WEFT_RECV, &in, -1 } };
    assert_int_equal(weft_select(c2, 2, in_ms(5000), &done), 0);
    assert_int_equal(done, 0);
    void *got;
    assert_int_equal(weft_join(co, &got), 0);
    assert_int_equal((int)(intptr_t)got, 11);

    /* A close completes a waiting select with EPIPE. */
    assert_int_equal(weft_spawn(&co, NULL, close_a_later, &s), 0);
    weft_case c3[2] = { { s.b, WEFT_RECV, &in, -1 }, { s.a, WEFT_RECV, &in, -1 } };
    assert_int_equal(weft_select(c3, 2, WEFT_FOREVER, &done), 0);
    assert_int_equal(done, 1);
    assert_int_equal(c3[1].err, EPIPE);
    assert_int_equal(weft_join(co, NULL), 0);

    /* Nothing left queued. */
    assert_int_equal(weft_chan_free_checked(s.a), 0);
    assert_int_equal(weft_chan_free_checked(s.b), 0);
    return NULL;
}

static void test_select_waits_and_completes_by_send_recv_or_close(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&one_worker, select_wake_main, NULL, NULL), 0);
    assert_int_equal(weft_main(&two_workers, select_wake_main, NULL, NULL), 0);
}

/* Several selects on the same channels, fed by senders on other workers:
 * no value is lost or received twice, and each select completes one case. */
#define SEL_ITEMS 20000

struct select_race {
    weft_chan *ch[2];
    _Atomic uint64_t count, sum;
    _Atomic int next;
    weft_wg senders;
};

static void *race_sender(void *arg)
{
    struct select_race *r = arg;
    int id = atomic_fetch_add(&r->next, 1);
    for (uint64_t i = 0; i < SEL_ITEMS; i++) {
        uint64_t v = (uint64_t)id * SEL_ITEMS + i + 1;
        assert_int_equal(weft_chan_send(r->ch[id % 2], &v, WEFT_FOREVER), 0);
    }
    weft_wg_done(&r->senders);
    return NULL;
}

static void *race_selector(void *arg)
{
    struct select_race *r = arg;
    uint64_t count = 0, sum = 0, v[2];
    int open = 3; /* bit i: channel i still open */
    while (open) {
        v[0] = v[1] = 0;
        weft_case cases[2] = { { (open & 1) ? r->ch[0] : NULL, WEFT_RECV, &v[0], -1 },
                               { (open & 2) ? r->ch[1] : NULL, WEFT_RECV, &v[1], -1 } };
        size_t done = 9;
        assert_int_equal(weft_select(cases, 2, WEFT_FOREVER, &done), 0);
        assert_true(done < 2);
        if (cases[done].err == EPIPE) {
            open &= ~(1 << done);
            continue;
        }
        assert_int_equal(cases[done].err, 0);
        assert_true(v[done] != 0);
        assert_int_equal(v[1 - done], 0); /* the other case did not complete */
        count++;
        sum += v[done];
    }
    atomic_fetch_add(&r->count, count);
    atomic_fetch_add(&r->sum, sum);
    return NULL;
}

static void *select_race_main(void *arg)
{
    struct select_race *r = arg;
    weft_co *sel[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_spawn(&sel[i], NULL, race_selector, r), 0);
    assert_int_equal(weft_wg_add(&r->senders, 4), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(weft_spawn(NULL, NULL, race_sender, r), 0);
    assert_int_equal(weft_wg_wait(&r->senders, WEFT_FOREVER), 0);
    assert_int_equal(weft_chan_close(r->ch[0]), 0);
    assert_int_equal(weft_chan_close(r->ch[1]), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_join(sel[i], NULL), 0);
    return NULL;
}

static void test_select_never_loses_or_duplicates_under_concurrency(void **state)
{
    (void)state;
    size_t caps[2] = { 0, 8 };
    for (int k = 0; k < 2; k++) {
        struct select_race r = { .next = 0 };
        weft_wg_init(&r.senders);
        assert_int_equal(weft_chan_make(&r.ch[0], sizeof(uint64_t), caps[k]), 0);
        assert_int_equal(weft_chan_make(&r.ch[1], sizeof(uint64_t), caps[k]), 0);
        assert_int_equal(weft_main(&two_workers, select_race_main, &r, NULL), 0);
        uint64_t n = 4 * SEL_ITEMS;
        assert_int_equal(atomic_load(&r.count), n);
        assert_int_equal(atomic_load(&r.sum), n * (n + 1) / 2);
        weft_chan_free(r.ch[0]);
        weft_chan_free(r.ch[1]);
    }
}

/* --- plain threads --------------------------------------------------------------- */

#define PIPE_ITEMS 20000

struct pipeline {
    weft_chan *in, *mid, *out;
};

static void *pipe_feeder(void *arg)
{
    struct pipeline *p = arg;
    for (long i = 1; i <= PIPE_ITEMS; i++)
        assert_int_equal(weft_chan_send(p->in, &i, WEFT_FOREVER), 0);
    assert_int_equal(weft_chan_close(p->in), 0);
    return NULL;
}

static void *pipe_drainer(void *arg)
{
    struct pipeline *p = arg;
    long v, count = 0, sum = 0, last = 0;
    while (weft_chan_recv(p->out, &v, WEFT_FOREVER) == 0) {
        assert_true(v > last); /* one stage per hop keeps the order */
        last = v;
        count++;
        sum += v;
    }
    assert_int_equal(count, PIPE_ITEMS);
    assert_int_equal(sum, 3L * PIPE_ITEMS * (PIPE_ITEMS + 1) / 2 + PIPE_ITEMS);
    return NULL;
}

struct stage {
    weft_chan *from, *to;
    long mul, add;
};

static void *pipe_stage(void *arg)
{
    struct stage *s = arg;
    long v;
    while (weft_chan_recv(s->from, &v, WEFT_FOREVER) == 0) {
        v = v * s->mul + s->add;
        assert_int_equal(weft_chan_send(s->to, &v, WEFT_FOREVER), 0);
    }
    assert_int_equal(weft_chan_close(s->to), 0);
    return NULL;
}

static void test_chan_plain_threads_feed_and_drain_coroutine_pipeline(void **state)
{
    (void)state;
    struct pipeline p;
    assert_int_equal(weft_chan_make(&p.in, sizeof(long), 0), 0);
    assert_int_equal(weft_chan_make(&p.mid, sizeof(long), 4), 0);
    assert_int_equal(weft_chan_make(&p.out, sizeof(long), 0), 0);
    assert_int_equal(weft_start(&two_workers), 0);
    struct stage s1 = { p.in, p.mid, 3, 0 }, s2 = { p.mid, p.out, 1, 1 };
    weft_co *c1, *c2;
    assert_int_equal(weft_spawn(&c1, NULL, pipe_stage, &s1), 0);
    assert_int_equal(weft_spawn(&c2, NULL, pipe_stage, &s2), 0);
    pthread_t feeder, drainer;
    assert_int_equal(pthread_create(&feeder, NULL, pipe_feeder, &p), 0);
    assert_int_equal(pthread_create(&drainer, NULL, pipe_drainer, &p), 0);
    assert_int_equal(pthread_join(feeder, NULL), 0);
    assert_int_equal(pthread_join(drainer, NULL), 0);
    assert_int_equal(weft_join(c1, NULL), 0);
    assert_int_equal(weft_join(c2, NULL), 0);
    assert_int_equal(weft_stop(), 0);
    weft_chan_free(p.in);
    weft_chan_free(p.mid);
    weft_chan_free(p.out);
}

struct ping {
    weft_chan *to, *from;
    int rounds;
};

static void *ponger(void *arg)
{
    struct ping *p = arg;
    int v;
    for (int i = 0; i < p->rounds; i++) {
        assert_int_equal(weft_chan_recv(p->to, &v, WEFT_FOREVER), 0);
        v++;
        assert_int_equal(weft_chan_send(p->from, &v, WEFT_FOREVER), 0);
    }
    return NULL;
}

static void test_chan_works_between_plain_threads_without_runtime(void **state)
{
    (void)state;
    assert_int_equal(weft_workers(), 0);
    struct ping p = { NULL, NULL, 2000 };
    assert_int_equal(weft_chan_make(&p.to, sizeof(int), 0), 0);
    assert_int_equal(weft_chan_make(&p.from, sizeof(int), 0), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, ponger, &p), 0);
    int v = 0;
    for (int i = 0; i < p.rounds; i++) {
        assert_int_equal(weft_chan_send(p.to, &v, WEFT_FOREVER), 0);
        assert_int_equal(weft_chan_recv(p.from, &v, WEFT_FOREVER), 0);
    }
    assert_int_equal(v, p.rounds);
    assert_int_equal(pthread_join(t, NULL), 0);
    /* A plain thread's select waits and is woken across threads too. */
    struct select_wake s = { p.to, p.from };
    assert_int_equal(pthread_create(&t, NULL, send_to_b_later, &s), 0);
    weft_case cases[2] = { { p.to, WEFT_RECV, &v, -1 }, { p.from, WEFT_RECV, &v, -1 } };
    size_t done;
    assert_int_equal(weft_select(cases, 2, in_ms(10000), &done), 0);
    assert_int_equal(done, 1);
    assert_int_equal(v, 44);
    assert_int_equal(pthread_join(t, NULL), 0);
    weft_chan_free(p.to);
    weft_chan_free(p.from);
}

/* --- freeing a channel right after its last value ----------------------------- */

/* Go's skynet pattern: a channel owned by its receiver, freed as soon as
 * the receiver has every value, while the senders (on the other worker)
 * may still be returning from weft_chan_send, weft_select or
 * weft_chan_close. Under ASan, channels come from malloc (chan.c), so a
 * sender that touched the channel after its value was taken is a
 * use-after-free report; a node left linked makes the free EBUSY. */
#define FREE_OWNERS 4
#define FREE_ROUNDS 1500
#define FREE_SENDERS 6
#define FREE_CLOSER_VALUES 3

enum { BY_SEND, BY_SEND_DEADLINE, BY_SELECT, BY_CLOSER, BY_WAYS };

struct free_sender {
    weft_chan *ch;
    int value, how;
};

static void *send_and_return(void *arg)
{
    /* Copied first: arg lives on the owner's stack, which may be reused
     * once this value has been received. */
    struct free_sender s = *(struct free_sender *)arg;
    int v = s.value;
    if (s.how == BY_SEND) {
        assert_int_equal(weft_chan_send(s.ch, &v, WEFT_FOREVER), 0);
    } else if (s.how == BY_SEND_DEADLINE) {
        assert_int_equal(weft_chan_send(s.ch, &v, in_ms(60000)), 0);
    } else if (s.how == BY_SELECT) {
        /* Two cases on the owner's channel and one on a private channel
         * that never becomes ready: whoever takes one case must leave
         * nothing of this select on the owner's channel. */
        weft_chan *never;
        assert_int_equal(weft_chan_make(&never, sizeof(int), 0), 0);
        int sink;
        weft_case cases[3] = { { s.ch, WEFT_SEND, &v, -1 },
                               { never, WEFT_RECV, &sink, -1 },
                               { s.ch, WEFT_SEND, &v, -1 } };
        size_t done = 9;
        assert_int_equal(weft_select(cases, 3, WEFT_FOREVER, &done), 0);
        assert_true(done == 0 || done == 2);
        assert_int_equal(cases[done].err, 0);
        assert_int_equal(weft_chan_free_checked(never), 0);
    } else {
        /* The only sender: its values, then a close, which lets the owner
         * see EPIPE and free the channel while the close returns. */
        for (int i = 0; i < FREE_CLOSER_VALUES; i++, v++)
            assert_int_equal(weft_chan_send(s.ch, &v, WEFT_FOREVER), 0);
        assert_int_equal(weft_chan_close(s.ch), 0);
    }
    return NULL;
}

/* Receives once, the way round r asks: recv, recv with a deadline, or a
 * select with a second case that is never ready. */
static int free_receive(weft_chan *ch, weft_chan *never, int r, int *v)
{
    switch (r % 3) {
    case 0:
        return weft_chan_recv(ch, v, WEFT_FOREVER);
    case 1:
        return weft_chan_recv(ch, v, in_ms(60000));
    default: {
        int sink;
        weft_case cases[2] = { { never, WEFT_RECV, &sink, -1 }, { ch, WEFT_RECV, v, -1 } };
        size_t done = 9;
        assert_int_equal(weft_select(cases, 2, WEFT_FOREVER, &done), 0);
        assert_int_equal(done, 1);
        return cases[1].err;
    }
    }
}

static void *free_owner(void *arg)
{
    int owner = (int)(intptr_t)arg;
    weft_chan *never;
    assert_int_equal(weft_chan_make(&never, sizeof(int), 0), 0);
    struct free_sender senders[FREE_SENDERS];
    for (int r = 0; r < FREE_ROUNDS; r++) {
        int base = (owner * FREE_ROUNDS + r) * 100, v, sum = 0;
        size_t cap = (size_t)(r / 3 % 3 == 0 ? 0 : r / 3 % 3 == 1 ? 1 : FREE_SENDERS);
        weft_chan *ch;
        assert_int_equal(weft_chan_make(&ch, sizeof(int), cap), 0);
        if (r % 4 == 3) {
            senders[0] = (struct free_sender){ ch, base, BY_CLOSER };
            assert_int_equal(weft_spawn(NULL, NULL, send_and_return, &senders[0]), 0);
            int got = 0, rc;
            while ((rc = free_receive(ch, never, r, &v)) == 0) {
                assert_int_equal(v, base + got);
                got++;
            }
            assert_int_equal(rc, EPIPE);
            assert_int_equal(got, FREE_CLOSER_VALUES);
        } else {
            for (int i = 0; i < FREE_SENDERS; i++) {
                senders[i] = (struct free_sender){ ch, base + i, (r + i) % BY_CLOSER };
                assert_int_equal(weft_spawn(NULL, NULL, send_and_return, &senders[i]), 0);
            }
            for (int i = 0; i < FREE_SENDERS; i++) {
                assert_int_equal(free_receive(ch, never, r, &v), 0);
                sum += v - base;
            }
            assert_int_equal(sum, FREE_SENDERS * (FREE_SENDERS - 1) / 2);
        }
        /* At once: some sender may still be returning from its call. */
        assert_int_equal(weft_chan_free_checked(ch), 0);
    }
    assert_int_equal(weft_chan_free_checked(never), 0);
    return NULL;
}

static void *free_main(void *arg)
{
    (void)arg;
    weft_co *owners[FREE_OWNERS];
    for (int i = 0; i < FREE_OWNERS; i++)
        assert_int_equal(weft_spawn(&owners[i], NULL, free_owner, (void *)(intptr_t)i), 0);
    for (int i = 0; i < FREE_OWNERS; i++)
        assert_int_equal(weft_join(owners[i], NULL), 0);
    return NULL;
}

static void test_chan_may_be_freed_once_last_value_is_received(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&two_workers, free_main, NULL, NULL), 0);
}

/* --- bad input ------------------------------------------------------------------- */

static void test_chan_bad_input_gets_error_codes(void **state)
{
    (void)state;
    weft_chan *ch = NULL;
    int v = 0;
    assert_int_equal(weft_chan_make(NULL, 4, 1), EINVAL);
    assert_int_equal(weft_chan_make(&ch, 0, 1), EINVAL);
    assert_null(ch);
    assert_int_equal(weft_chan_make(&ch, SIZE_MAX / 2, 4), ENOMEM);
    assert_int_equal(weft_chan_send(NULL, &v, 0), EINVAL);
    assert_int_equal(weft_chan_recv(NULL, &v, 0), EINVAL);
    assert_int_equal(weft_chan_close(NULL), EINVAL);
    assert_int_equal(weft_chan_free_checked(NULL), EINVAL);
    weft_chan_free(NULL);
    assert_int_equal(weft_chan_make(&ch, sizeof v, 1), 0);
    assert_int_equal(weft_chan_send(ch, NULL, 0), EINVAL);
    assert_int_equal(weft_chan_recv(ch, NULL, 0), EINVAL);
    size_t done = 3;
    weft_case ok = { ch, WEFT_RECV, &v, -1 };
    weft_case bad_op = { ch, 3, &v, -1 };
    weft_case bad_elem = { ch, WEFT_SEND, NULL, -1 };
    assert_int_equal(weft_select(&ok, 1, 0, NULL), EINVAL);
    assert_int_equal(weft_select(NULL, 1, 0, &done), EINVAL);
    assert_int_equal(weft_select(&bad_op, 1, 0, &done), EINVAL);
    assert_int_equal(weft_select(&bad_elem, 1, 0, &done), EINVAL);
    assert_int_equal(done, 3);
    /* Nothing changed by those: the channel still works. */
    assert_int_equal(weft_chan_send(ch, &v, 0), 0);
    assert_int_equal(weft_chan_close(ch), 0);
    assert_int_equal(weft_chan_close(ch), EPIPE);
    assert_int_equal(weft_chan_free_checked(ch), 0);
}

/* --- randomised, against a sequential model ----------------------------------------- */

#define MODEL_CHANS 4
#define MODEL_CAP 4

struct model_chan {
    size_t cap;
    bool closed;
    int buf[MODEL_CAP];
    size_t head, len;
};

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static bool model_send_ready(const struct model_chan *m)
{
    return m->closed || m->len < m->cap;
}

static bool model_recv_ready(const struct model_chan *m)
{
    return m->closed || m->len > 0;
}

/* Applies a ready op to the model; returns the expected code and, for a
 * receive, the expected value. */
static int model_apply(struct model_chan *m, int op, int value, int *received)
{
    if (op == WEFT_SEND) {
        if (m->closed)
            return EPIPE;
        m->buf[(m->head + m->len) % m->cap] = value;
        m->len++;
        return 0;
    }
    if (m->len > 0) {
        *received = m->buf[m->head];
        m->head = (m->head + 1) % m->cap;
        m->len--;
        return 0;
    }
    return EPIPE;
}

static void run_model(uint64_t seed, int ops)
{
    uint64_t s = seed * 0x9e3779b97f4a7c15u + 1;
    weft_chan *ch[MODEL_CHANS];
    struct model_chan model[MODEL_CHANS];
    for (int i = 0; i < MODEL_CHANS; i++) {
        model[i] = (struct model_chan){ .cap = rng_next(&s) % (MODEL_CAP + 1) };
        assert_int_equal(weft_chan_make(&ch[i], sizeof(int), model[i].cap), 0);
    }
    int next_value = 1;
    for (int step = 0; step < ops; step++) {
        int kind = (int)(rng_next(&s) % 100);
        int c = (int)(rng_next(&s) % MODEL_CHANS);
        struct model_chan *m = &model[c];
        int got = 0, want = 0;
        if (kind < 35) { /* send */
            int v = next_value++;
            int expect = m->closed ? EPIPE : m->len < m->cap ? 0 : ETIMEDOUT;
            if (expect != ETIMEDOUT)
                model_apply(m, WEFT_SEND, v, NULL);
            int rc = weft_chan_send(ch[c], &v, 0);
            if (rc != expect)
                fail_msg("seed %llu step %d: send on %d gave %d, model %d",
                         (unsigned long long)seed, step, c, rc, expect);
        } else if (kind < 70) { /* recv */
            int expect = model_recv_ready(m) ? model_apply(m, WEFT_RECV, 0, &want) : ETIMEDOUT;
            int rc = weft_chan_recv(ch[c], &got, 0);
            if (rc != expect || (rc == 0 && got != want))
                fail_msg("seed %llu step %d: recv on %d gave %d (%d), model %d (%d)",
                         (unsigned long long)seed, step, c, rc, got, expect, want);
        } else if (kind < 73) { /* close */
            int expect = m->closed ? EPIPE : 0;
            m->closed = true;
            int rc = weft_chan_close(ch[c]);
            if (rc != expect)
                fail_msg("seed %llu step %d: close on %d gave %d, model %d",
                         (unsigned long long)seed, step, c, rc, expect);
        } else { /* select over 0..4 random cases */
            size_t n = rng_next(&s) % 5;
            weft_case cases[4];
            int values[4], slots[4];
            bool any_ready = false;
            for (size_t i = 0; i < n; i++) {
                int k = (int)(rng_next(&s) % (MODEL_CHANS + 1)); /* MODEL_CHANS: NULL */
                int op = rng_next(&s) % 2 ? WEFT_SEND : WEFT_RECV;
                values[i] = op == WEFT_SEND ? next_value++ : 0;
                slots[i] = k;
                cases[i] = (weft_case){ k < MODEL_CHANS ? ch[k] : NULL, op, &values[i], -1 };
                if (k < MODEL_CHANS)
                    any_ready |=
                        op == WEFT_SEND ? model_send_ready(&model[k]) : model_recv_ready(&model[k]);
            }
            size_t done = 99;
            int rc = weft_select(cases, n, 0, &done);
            if (!any_ready) {
                if (rc != ETIMEDOUT || done != 99)
                    fail_msg("seed %llu step %d: select gave %d (case %zu), model: none ready",
                             (unsigned long long)seed, step, rc, done);
                continue;
            }
            if (rc != 0 || done >= n || slots[done] == MODEL_CHANS)
                fail_msg("seed %llu step %d: select gave %d (case %zu), model: ready",
                         (unsigned long long)seed, step, rc, done);
            struct model_chan *mk = &model[slots[done]];
            int op = cases[done].op;
            if (!(op == WEFT_SEND ? model_send_ready(mk) : model_recv_ready(mk)))
                fail_msg("seed %llu step %d: select completed case %zu, which was not ready",
                         (unsigned long long)seed, step, done);
            int expect = model_apply(mk, op, values[done], &want);
            if (cases[done].err != expect ||
                (op == WEFT_RECV && expect == 0 && values[done] != want))
                fail_msg("seed %llu step %d: select case %zu err %d value %d, model %d (%d)",
                         (unsigned long long)seed, step, done, cases[done].err, values[done],
                         expect, want);
        }
    }
    /* Drain and compare what is left. */
    for (int i = 0; i < MODEL_CHANS; i++) {
        int got, want;
        while (model[i].len > 0) {
            model_apply(&model[i], WEFT_RECV, 0, &want);
            assert_int_equal(weft_chan_recv(ch[i], &got, 0), 0);
            assert_int_equal(got, want);
        }
        assert_int_equal(weft_chan_recv(ch[i], &got, 0), model[i].closed ? EPIPE : ETIMEDOUT);
        assert_int_equal(weft_chan_free_checked(ch[i]), 0);
    }
}

static void test_chan_random_operations_match_sequential_model(void **state)
{
    (void)state;
    uint64_t base = 20240601;
    const char *env = getenv("WEFT_TEST_SEED");
    if (env)
        base = strtoull(env, NULL, 0);
    for (uint64_t k = 0; k < 200; k++)
        run_model(base + k, 2000);
}

/* A select that times out must not return while the worker that parked
 * it still holds its gate (a lock in weft_select's frame): the timer can
 * fire on another worker first, and the late release would write into
 * whatever the coroutine put in that frame's place. The test hook holds
 * the gate for 10 ms after the timer is armed; meanwhile an idle worker
 * fires the timer. The coroutine then fills a frame where weft_select's
 * was and checks it once the hook is done. */
extern void (*weft__test_park_armed)(void);
static _Atomic int gate_hold, gate_held_done;

static void hold_gate(void)
{
    if (!atomic_exchange(&gate_hold, 0))
        return;
    int64_t end = weft_now() + 10 * MS;
    while (weft_now() < end)
        ;
    atomic_store(&gate_held_done, 1);
}

static __attribute__((noinline)) int frame_survives_the_release(void)
{
    volatile unsigned char frame[8192];
    for (size_t i = 0; i < sizeof frame; i++)
        frame[i] = 0xAA;
    while (!atomic_load(&gate_held_done))
        weft_yield();
    for (size_t i = 0; i < sizeof frame; i++)
        if (frame[i] != 0xAA)
            return 0;
    return 1;
}

static void *select_times_out(void *arg)
{
    int *intact = arg;
    for (int round = 0; round < 5; round++) {
        size_t done = 99;
        atomic_store(&gate_held_done, 0);
        atomic_store(&gate_hold, 1);
        assert_int_equal(weft_select(NULL, 0, weft_now() + MS / 5, &done), ETIMEDOUT);
        assert_int_equal(done, 99);
        *intact += frame_survives_the_release();
    }
    return NULL;
}

static void test_select_timeout_waits_for_its_gate(void **state)
{
    (void)state;
    weft_config cfg = { .workers = 3, .pin = WEFT_PIN_OFF };
    int intact = 0;
    weft__test_park_armed = hold_gate;
    assert_int_equal(weft_main(&cfg, select_times_out, &intact, NULL), 0);
    weft__test_park_armed = NULL;
    assert_int_equal(intact, 5);
}

/* API.md: a coroutine that yields runs again only after every coroutine
 * that was runnable before it. Woken coroutines may run first, but the
 * wake queue's starvation bound must not let the yielder overtake them:
 * 40 receivers parked on one channel, woken at once by its close. */
static _Atomic int receivers_woken;

static void *receive_until_closed(void *arg)
{
    weft_chan *ch = arg;
    int v;
    if (weft_chan_recv(ch, &v, WEFT_FOREVER) == EPIPE)
        atomic_fetch_add(&receivers_woken, 1);
    return NULL;
}

static void *close_then_yield(void *arg)
{
    int *seen = arg;
    weft_chan *ch;
    weft_co *rx[40];
    assert_int_equal(weft_chan_make(&ch, sizeof(int), 0), 0);
    for (int i = 0; i < 40; i++)
        assert_int_equal(weft_spawn(&rx[i], NULL, receive_until_closed, ch), 0);
    weft_yield(); /* all 40 run and park */
    assert_int_equal(weft_chan_close(ch), 0);
    weft_yield();
    *seen = atomic_load(&receivers_woken);
    for (int i = 0; i < 40; i++)
        assert_int_equal(weft_join(rx[i], NULL), 0);
    weft_chan_free(ch);
    return NULL;
}

static void test_chan_yield_runs_after_every_woken_receiver(void **state)
{
    (void)state;
    weft_config one = { .workers = 1 };
    int seen = -1;
    atomic_store(&receivers_woken, 0);
    assert_int_equal(weft_main(&one, close_then_yield, &seen, NULL), 0);
    assert_int_equal(seen, 40);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select_timeout_waits_for_its_gate),
        cmocka_unit_test(test_chan_yield_runs_after_every_woken_receiver),
        cmocka_unit_test(test_chan_rendezvous_delivers_in_order_and_waits_for_receiver),
        cmocka_unit_test(test_chan_capacity_is_respected),
        cmocka_unit_test(test_chan_close_wakes_blocked_senders_and_receivers),
        cmocka_unit_test(test_chan_recv_drains_buffer_after_close),
        cmocka_unit_test(test_chan_mpmc_stress_delivers_every_item_once_buffered),
        cmocka_unit_test(test_chan_mpmc_stress_delivers_every_item_once_rendezvous),
        cmocka_unit_test(test_select_chooses_fairly_between_ready_channels),
        cmocka_unit_test(test_select_times_out_at_deadline),
        cmocka_unit_test(test_select_with_null_channel_never_picks_it),
        cmocka_unit_test(test_select_waits_and_completes_by_send_recv_or_close),
        cmocka_unit_test(test_select_never_loses_or_duplicates_under_concurrency),
        cmocka_unit_test(test_chan_may_be_freed_once_last_value_is_received),
        cmocka_unit_test(test_chan_plain_threads_feed_and_drain_coroutine_pipeline),
        cmocka_unit_test(test_chan_works_between_plain_threads_without_runtime),
        cmocka_unit_test(test_chan_bad_input_gets_error_codes),
        cmocka_unit_test(test_chan_random_operations_match_sequential_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
