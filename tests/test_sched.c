/* The scheduler: runtime life, spawn/join/detach/yield, ordering on one
 * worker, stealing, plain threads, sleeping, statistics, bad input. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_SET */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <hwloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compiler.h"    /* WEFT_ASAN, WEFT_TSAN: gcc and clang alike */
#include "sched/sched.h" /* the idle counts, queue entries */
#include "weft.h"

#define MS 1000000LL

extern char **environ;

/* Sanitizer builds run the same tests at a smaller volume (a TSan fiber
 * switch costs microseconds). */
#if defined(WEFT_TSAN)
#define VOLUME 500
#elif defined(WEFT_ASAN)
#define VOLUME 20
#else
#define VOLUME 1
#endif

static char out[64];
static _Atomic int out_len;

static void say(char c)
{
    int i = atomic_fetch_add(&out_len, 1);
    out[i] = c;
    out[i + 1] = 0;
}

static void reset_out(void)
{
    memset(out, 0, sizeof out);
    atomic_store(&out_len, 0);
}

static const weft_config one_worker = { .workers = 1 };
static const weft_config two_workers = { .workers = 2 };

/* --- the motivating examples -------------------------------------------------- */

struct sleeper {
    char before, after;
    int64_t ms;
};

static void *sleeper(void *arg)
{
    struct sleeper *s = arg;
    say(s->before);
    weft_sleep(s->ms * MS);
    say(s->after);
    return NULL;
}

static void *three_sleepers(void *arg)
{
    (void)arg;
    static struct sleeper s[3] = { { '1', '2', 300 }, { '3', '4', 200 }, { '5', '6', 200 } };
    weft_co *co[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_spawn(&co[i], NULL, sleeper, &s[i]), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(weft_join(co[i], NULL), 0);
    return NULL;
}

static void test_sched_sleepers_overlap_and_wake_in_deadline_order(void **state)
{
    (void)state;
    reset_out();
    int64_t start = weft_now();
    assert_int_equal(weft_main(&one_worker, three_sleepers, NULL, NULL), 0);
    int64_t took = weft_now() - start;
    assert_string_equal(out, "135462");
    assert_true(took >= 300 * MS);
    assert_true(took < 650 * MS); /* 300 ms, not 700 (sanitizers are slow) */
}

static void *counter_task(void *arg)
{
    char first = *(char *)arg;
    for (int i = 0; i < 5; i++) {
        say((char)(first + i));
        weft_yield();
    }
    return NULL;
}

static void *two_counters(void *arg)
{
    (void)arg;
    static char a = 'a', f = 'f';
    weft_co *c1, *c2;
    weft_spawn(&c1, NULL, counter_task, &a);
    weft_spawn(&c2, NULL, counter_task, &f);
    weft_join(c1, NULL);
    weft_join(c2, NULL);
    return NULL;
}

/* f1 prints 1..5 (a..e), f2 6..10 (f..j), each yielding after a print. */
static void test_sched_yield_interleaves_strictly_on_one_worker(void **state)
{
    (void)state;
    reset_out();
    assert_int_equal(weft_main(&one_worker, two_counters, NULL, NULL), 0);
    assert_string_equal(out, "afbgchdiej");
}

/* --- volume ----------------------------------------------------------------- */

static void *ret_arg(void *arg)
{
    return arg;
}

static void *million(void *arg)
{
    (void)arg;
    enum { N = 1000000 / VOLUME };
    weft_co **co = malloc(N * sizeof *co);
    assert_non_null(co);
    for (uintptr_t i = 0; i < N; i++)
        assert_int_equal(weft_spawn(&co[i], NULL, ret_arg, (void *)i), 0);
    uint64_t sum = 0;
    for (uintptr_t i = 0; i < N; i++) {
        void *r;
        assert_int_equal(weft_join(co[i], &r), 0);
        sum += (uintptr_t)r;
    }
    free(co);
    return (void *)(uintptr_t)(sum == (uint64_t)N * (N - 1) / 2);
}

static void test_sched_million_spawn_join_sums_right(void **state)
{
    (void)state;
    void *ok = NULL;
    assert_int_equal(weft_main(&two_workers, million, NULL, &ok), 0);
    assert_true(ok == (void *)1);
}

static void *fib(void *arg)
{
    intptr_t n = (intptr_t)arg;
    if (n < 2)
        return arg;
    weft_co *c;
    assert_int_equal(weft_spawn(&c, NULL, fib, (void *)(n - 1)), 0);
    intptr_t b = (intptr_t)fib((void *)(n - 2));
    void *a;
    assert_int_equal(weft_join(c, &a), 0);
    return (void *)((intptr_t)a + b);
}

static void test_sched_fork_join_fib_is_right(void **state)
{
    (void)state;
    void *r;
    assert_int_equal(weft_main(&two_workers, fib, (void *)22, &r), 0);
    assert_int_equal((intptr_t)r, 17711);
}

static _Atomic int seen_worker[2];
static _Atomic int spinners_left;

static void *cpu_bound(void *arg)
{
    (void)arg;
    atomic_store(&seen_worker[weft_worker()], 1);
    atomic_fetch_sub(&spinners_left, 1);
    /* Burn CPU without yielding until both workers have a coroutine, so
     * the second one must be stolen by the other worker. */
    int64_t until = weft_now() + 2000 * MS;
    while (atomic_load(&spinners_left) > 0 && weft_now() < until)
        ;
    return NULL;
}

static void *two_cpu_bound(void *arg)
{
    (void)arg;
    weft_co *c[2];
    for (int i = 0; i < 2; i++)
        weft_spawn(&c[i], NULL, cpu_bound, NULL);
    for (int i = 0; i < 2; i++)
        weft_join(c[i], NULL);
    return NULL;
}

static void test_sched_cpu_bound_coroutines_run_on_every_worker(void **state)
{
    (void)state;
    atomic_store(&seen_worker[0], 0);
    atomic_store(&seen_worker[1], 0);
    atomic_store(&spinners_left, 2);
    assert_int_equal(weft_main(&two_workers, two_cpu_bound, NULL, NULL), 0);
    assert_true(atomic_load(&seen_worker[0]) && atomic_load(&seen_worker[1]));
}

/* --- plain threads ---------------------------------------------------------------- */

static void *plain_thread(void *arg)
{
    (void)arg;
    uintptr_t sum = 0;
    for (uintptr_t i = 1; i <= 1000; i++) {
        weft_co *co;
        if (weft_spawn(&co, NULL, ret_arg, (void *)i) != 0)
            return NULL;
        void *r;
        if (weft_join(co, &r) != 0)
            return NULL;
        sum += (uintptr_t)r;
    }
    return (void *)sum;
}

static void test_sched_plain_thread_spawns_and_joins(void **state)
{
    (void)state;
    assert_int_equal(weft_start(&two_workers), 0);
    pthread_t t;
    pthread_create(&t, NULL, plain_thread, NULL);
    void *sum;
    pthread_join(t, &sum);
    assert_int_equal((uintptr_t)sum, 500500);
    assert_int_equal(weft_stop(), 0);
}

static _Atomic int detached_done;

static void *detached(void *arg)
{
    (void)arg;
    weft_sleep(1 * MS);
    atomic_fetch_add(&detached_done, 1);
    return NULL;
}

static void test_sched_stop_waits_for_detached_coroutines(void **state)
{
    (void)state;
    atomic_store(&detached_done, 0);
    assert_int_equal(weft_start(&two_workers), 0);
    for (int i = 0; i < 10000 / VOLUME; i++)
        assert_int_equal(weft_spawn(NULL, NULL, detached, NULL), 0);
    assert_int_equal(weft_stop(), 0);
    assert_int_equal(atomic_load(&detached_done), 10000 / VOLUME);
}

/* A detached coroutine spawned on a worker without attributes waits in
 * the queue as a 16-byte ticket, not a descriptor; it gets its descriptor
 * when it starts, still in spawn order with the other spawns. */
static bool ticket_detached[4];

static void *note_start(void *arg)
{
    uintptr_t i = (uintptr_t)arg;
    say((char)('a' + i));
    /* A detached coroutine's descriptor: its handle word says so (c,
     * which has a handle, is not asked: that would detach it). */
    ticket_detached[i] = i != 2 && weft_detach(weft_self()) == EINVAL;
    return NULL;
}

static void *spawns_tickets_and_a_handle(void *arg)
{
    (void)arg;
    weft__worker *w = weft__worker_self();
    weft_co *joined;
    bool tickets = true;
    for (uintptr_t i = 0; i < 4; i++) {
        if (i == 2) {
            assert_int_equal(weft_spawn(&joined, NULL, note_start, (void *)i), 0);
            continue;
        }
        assert_int_equal(weft_spawn(NULL, NULL, note_start, (void *)i), 0);
        tickets = tickets && weft__is_ticket_entry(weft__deque_peek_newest(&w->deque));
    }
    assert_true(tickets);
    weft_yield(); /* behind all four: they start, and end, in spawn order */
    assert_int_equal(weft_join(joined, NULL), 0);
    return NULL;
}

static void test_sched_detached_spawns_queue_as_tickets_in_spawn_order(void **state)
{
    (void)state;
    reset_out();
    memset(ticket_detached, 0, sizeof ticket_detached);
    assert_int_equal(weft_main(&one_worker, spawns_tickets_and_a_handle, NULL, NULL), 0);
    assert_string_equal(out, "abcd");
    for (int i = 0; i < 4; i++)
        assert_true(ticket_detached[i] == (i != 2)); /* c has a handle */
}

/* Tickets stolen by another worker start there; the runtime's stop waits
 * for every one, and each runs once. */
static _Atomic int stolen_tickets_ran, ran_on[2];

static void *nap_and_count(void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran_on[weft_worker() == 1], 1);
    weft_sleep(1 * MS);
    atomic_fetch_add(&stolen_tickets_ran, 1);
    return NULL;
}

static void *spawns_tickets_and_leaves(void *arg)
{
    (void)arg;
    for (int i = 0; i < 10000 / VOLUME; i++)
        assert_int_equal(weft_spawn(NULL, NULL, nap_and_count, NULL), 0);
    return NULL;
}

static void test_sched_tickets_run_on_every_worker_and_stop_waits(void **state)
{
    (void)state;
    atomic_store(&stolen_tickets_ran, 0);
    atomic_store(&ran_on[0], 0);
    atomic_store(&ran_on[1], 0);
    assert_int_equal(weft_start(&two_workers), 0);
    assert_int_equal(weft_spawn(NULL, NULL, spawns_tickets_and_leaves, NULL), 0);
    assert_int_equal(weft_stop(), 0);
    assert_int_equal(atomic_load(&stolen_tickets_ran), 10000 / VOLUME);
    /* The spawner's worker started some, the other stole some (at the
     * sanitizers' small volume the other may stay asleep). */
    if (VOLUME == 1)
        assert_true(atomic_load(&ran_on[0]) > 0 && atomic_load(&ran_on[1]) > 0);
}

/* When a deque cannot grow (no memory), what would have gone into it goes
 * to the injection queue: tickets and spawn entries too, each still run
 * exactly once, joinable ones still joined with their result. */
static _Atomic int injected_ran;
/* deque.c, built with WEFT_TESTING: set, a deque's growth fails. */
extern _Atomic int weft__test_deque_cannot_grow;

static void *count_and_return(void *arg)
{
    atomic_fetch_add(&injected_ran, 1);
    return arg;
}

static void *spawns_past_a_full_deque(void *arg)
{
    (void)arg;
    enum { N = 24 }; /* the test build's deques start with 4 slots */
    weft_co *handles[N];
    atomic_store(&weft__test_deque_cannot_grow, 1);
    for (uintptr_t i = 0; i < N; i++) {
        handles[i] = NULL;
        if (i % 2)
            assert_int_equal(weft_spawn(&handles[i], NULL, count_and_return, (void *)i), 0);
        else
            assert_int_equal(weft_spawn(NULL, NULL, count_and_return, NULL), 0);
    }
    atomic_store(&weft__test_deque_cannot_grow, 0);
    for (uintptr_t i = 1; i < N; i += 2) {
        void *r = NULL;
        assert_int_equal(weft_join(handles[i], &r), 0);
        assert_ptr_equal(r, (void *)i);
    }
    while (atomic_load(&injected_ran) < N)
        weft_yield();
    return NULL;
}

static void test_sched_spawns_past_a_deque_that_cannot_grow_run_once(void **state)
{
    (void)state;
    atomic_store(&injected_ran, 0);
    assert_int_equal(weft_main(&one_worker, spawns_past_a_full_deque, NULL, NULL), 0);
    assert_int_equal(atomic_load(&injected_ran), 24);
}

static void test_sched_runtime_restarts_after_stop(void **state)
{
    (void)state;
    for (int round = 0; round < 3; round++) {
        void *r;
        assert_int_equal(weft_main(&two_workers, fib, (void *)10, &r), 0);
        assert_int_equal((intptr_t)r, 55);
    }
}

/* --- time --------------------------------------------------------------------------- */

static void *sleep_check(void *arg)
{
    (void)arg;
    for (int i = 0; i < 20; i++) {
        int64_t deadline = weft_now() + 2 * MS;
        assert_int_equal(weft_sleep_until(deadline), 0);
        assert_true(weft_now() >= deadline); /* never early */
    }
    return NULL;
}

static void test_sched_sleep_never_wakes_early_on_idle_workers(void **state)
{
    (void)state;
    assert_int_equal(weft_main(&two_workers, sleep_check, NULL, NULL), 0);
    /* And on a plain thread. */
    int64_t deadline = weft_now() + 2 * MS;
    assert_int_equal(weft_sleep_until(deadline), 0);
    assert_true(weft_now() >= deadline);
    assert_int_equal(weft_sleep_until(WEFT_FOREVER), EINVAL);
}

/* Many deadlines on both workers, most cancelled by an early wake-up,
 * the rest firing: every wait returns exactly one result, never a
 * timeout before its deadline, and no wake-up is lost or doubled. */
#define DEADLINE_WAITERS 2000
static weft_sem deadline_sem = WEFT_SEM_INIT(0);
struct deadline_wait {
    int64_t deadline, returned;
    int rc;
};

static void *deadline_waiter(void *arg)
{
    struct deadline_wait *d = arg;
    d->rc = weft_sem_wait(&deadline_sem, d->deadline);
    d->returned = weft_now();
    return NULL;
}

static void *deadline_root(void *arg)
{
    struct deadline_wait *d = arg;
    weft_co **co = malloc(DEADLINE_WAITERS * sizeof *co);
    assert_non_null(co);
    int64_t now = weft_now();
    for (int i = 0; i < DEADLINE_WAITERS; i++) {
        d[i].deadline = now + ((i * 7919) % 40 + 1) * MS / 2;
        assert_int_equal(weft_spawn(&co[i], NULL, deadline_waiter, &d[i]), 0);
    }
    int posts = 0;
    while (posts < DEADLINE_WAITERS / 2) {
        assert_int_equal(weft_sem_post(&deadline_sem), 0);
        posts++;
        if (posts % 50 == 0)
            weft_sleep(MS / 2);
    }
    for (int i = 0; i < DEADLINE_WAITERS; i++)
        assert_int_equal(weft_join(co[i], NULL), 0);
    free(co);
    int leftover = 0;
    while (weft_sem_wait(&deadline_sem, 0) == 0)
        leftover++;
    int woken = 0;
    for (int i = 0; i < DEADLINE_WAITERS; i++) {
        if (d[i].rc == 0)
            woken++;
        else if (d[i].rc != ETIMEDOUT || d[i].returned < d[i].deadline)
            fail_msg("waiter %d: rc %d, returned %lld ns before its deadline", i, d[i].rc,
                     (long long)(d[i].deadline - d[i].returned));
    }
    assert_int_equal(woken + leftover, posts);
    return NULL;
}

static void test_sched_deadlines_cancelled_and_fired_resolve_once(void **state)
{
    (void)state;
    struct deadline_wait *d = calloc(DEADLINE_WAITERS, sizeof *d);
    assert_non_null(d);
    assert_int_equal(weft_main(&two_workers, deadline_root, d, NULL), 0);
    free(d);
}

/* --- generators inside coroutines ----------------------------------------------------- */

static void counting_gen(weft_gen *g, void *arg)
{
    (void)arg;
    for (uintptr_t i = 1; i <= 3; i++) {
        weft_sleep(1 * MS); /* parks the coroutine inside the generator */
        weft_gen_yield(g, (void *)i);
    }
}

static void *gen_user(void *arg)
{
    (void)arg;
    weft_gen *g;
    assert_int_equal(weft_gen_make(&g, NULL, counting_gen, NULL), 0);
    uintptr_t sum = 0;
    void *v;
    while (weft_gen_next(g, &v) == 0)
        sum += (uintptr_t)v;
    weft_gen_free(g);
    return (void *)sum;
}

static void test_sched_generator_may_park_inside_a_coroutine(void **state)
{
    (void)state;
    void *sum;
    assert_int_equal(weft_main(&two_workers, gen_user, NULL, &sum), 0);
    assert_int_equal((uintptr_t)sum, 6);
}

/* --- statistics and identity ------------------------------------------------------------ */

static void *identity(void *arg)
{
    (void)arg;
    assert_non_null(weft_self());
    assert_true(weft_worker() >= 0 && weft_worker() < (int)weft_workers());
    weft_stats st;
    assert_int_equal(weft_stats_get(&st), 0);
    assert_true(st.spawned >= 1);
    return NULL;
}

static void test_sched_self_worker_and_stats_report_the_runtime(void **state)
{
    (void)state;
    assert_null(weft_self());
    assert_int_equal(weft_worker(), -1);
    assert_int_equal(weft_workers(), 0);
    assert_int_equal(weft_start(&two_workers), 0);
    assert_int_equal(weft_workers(), 2);
    weft_co *co;
    assert_int_equal(weft_spawn(&co, NULL, identity, NULL), 0);
    assert_int_equal(weft_join(co, NULL), 0);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(weft_spawn(&co, NULL, ret_arg, NULL), 0);
        assert_int_equal(weft_join(co, NULL), 0);
    }
    weft_stats st;
    assert_int_equal(weft_stats_get(&st), 0);
    assert_int_equal(st.spawned, 101);
    assert_int_equal(st.finished, 101);
    assert_true(st.switches >= 101);
    assert_int_equal(weft_stop(), 0);
    assert_int_equal(weft_stats_get(&st), EPERM);
}

/* --- idling ----------------------------------------------------------------------------------- */

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec +
           u.ru_stime.tv_usec / 1e6;
}

static void test_sched_idle_runtime_sleeps_in_the_kernel(void **state)
{
    (void)state;
    assert_int_equal(weft_start(&two_workers), 0);
    usleep(100 * 1000); /* past the spinning phase */
    double before = cpu_seconds();
    usleep(500 * 1000);
    double used = cpu_seconds() - before;
    assert_int_equal(weft_stop(), 0);
    /* Under 1% of one core over half a second, for both workers together. */
    assert_true(used < 0.005);
}

/* --- bad input ------------------------------------------------------------------------------- */

static void *inside(void *arg)
{
    (void)arg;
    assert_int_equal(weft_join(weft_self(), NULL), EDEADLK);
    assert_int_equal(weft_stop(), EDEADLK);
    assert_int_equal(weft_start(NULL), EALREADY); /* it runs: we are in it */
    assert_int_equal(weft_main(NULL, ret_arg, NULL, NULL), EALREADY);
    weft_ctx *c;
    assert_int_equal(weft_ctx_make(&c, 0, ret_arg), EPERM);
    weft_co *co;
    assert_int_equal(weft_spawn(&co, NULL, ret_arg, NULL), 0);
    assert_int_equal(weft_detach(co), 0);
    assert_int_equal(weft_join(co, NULL), EINVAL); /* detached */
    assert_int_equal(weft_spawn(&co, NULL, ret_arg, NULL), 0);
    assert_int_equal(weft_join(co, NULL), 0);
    return NULL;
}

/* weft_stats_get may be called while another thread stops the runtime:
 * it must not read the workers as they are freed (ASan build). */
static _Atomic int stats_reader_stop;

static void *read_stats_in_a_loop(void *arg)
{
    (void)arg;
    weft_stats st;
    while (!atomic_load(&stats_reader_stop))
        (void)weft_stats_get(&st);
    return NULL;
}

static void test_sched_stats_may_be_read_while_the_runtime_stops(void **state)
{
    (void)state;
    pthread_t reader;
    atomic_store(&stats_reader_stop, 0);
    assert_int_equal(pthread_create(&reader, NULL, read_stats_in_a_loop, NULL), 0);
    int64_t end = weft_now() + 200 * MS;
    while (weft_now() < end) {
        assert_int_equal(weft_start(&two_workers), 0);
        assert_int_equal(weft_stop(), 0);
    }
    atomic_store(&stats_reader_stop, 1);
    pthread_join(reader, NULL);
}

/* A sleep whose deadline lies past the end of int64_t time never ends: it
 * used to wrap to a past deadline and return at once. */
static _Atomic int long_sleep_returned;

static void *sleep_for_ever(void *arg)
{
    (void)arg;
    weft_sleep(INT64_MAX);
    atomic_store(&long_sleep_returned, 1);
    return NULL;
}

static void test_sched_longest_sleep_does_not_return_at_once(void **state)
{
    (void)state;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, sleep_for_ever, NULL), 0);
    pthread_detach(t); /* it sleeps until the process ends */
    weft_sleep(30 * MS);
    assert_int_equal(atomic_load(&long_sleep_returned), 0);
}

#if !defined(WEFT_ASAN) && !defined(WEFT_TSAN)
/* weft_start with too little memory for its worker array returns ENOMEM
 * (it used to crash freeing the array it never got). In a child with a
 * small address-space limit; not under the sanitizers, which need far
 * more address space than any such limit. */
static void test_sched_start_without_memory_is_enomem(void **state)
{
    (void)state;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit lim = { 1UL << 30, 1UL << 30 };
        setrlimit(RLIMIT_AS, &lim);
        weft_config huge = { .workers = 1U << 28 };
        _exit(weft_start(&huge) == ENOMEM ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}
#endif

/* A plain thread spawning while another thread starts and stops the
 * runtime: every spawn that returned 0 runs (weft_stop waits for it), and
 * none touches freed workers (ASan build). Bounded in time. */
static _Atomic int spawner_stop;
static _Atomic long spawns_ok, spawned_ran;

static void *count_run(void *arg)
{
    (void)arg;
    atomic_fetch_add(&spawned_ran, 1);
    return NULL;
}

static void *spawn_while_stopping(void *arg)
{
    (void)arg;
    while (!atomic_load(&spawner_stop))
        if (weft_spawn(NULL, NULL, count_run, NULL) == 0)
            atomic_fetch_add(&spawns_ok, 1);
    return NULL;
}

static void test_sched_plain_spawns_racing_stop_all_run(void **state)
{
    (void)state;
    pthread_t spawner;
    atomic_store(&spawner_stop, 0);
    atomic_store(&spawns_ok, 0);
    atomic_store(&spawned_ran, 0);
    assert_int_equal(pthread_create(&spawner, NULL, spawn_while_stopping, NULL), 0);
    /* The spawner can only succeed in the short time between a start and
     * the next stop; on a loaded machine it may miss every such window in
     * 300 ms, so go on (up to 10 s) until at least one spawn got in. */
    int64_t start = weft_now();
    while (weft_now() < start + 300 * MS
           || (atomic_load(&spawns_ok) == 0 && weft_now() < start + 10000 * MS)) {
        assert_int_equal(weft_start(&two_workers), 0);
        assert_int_equal(weft_stop(), 0);
    }
    atomic_store(&spawner_stop, 1);
    pthread_join(spawner, NULL);
    assert_true(atomic_load(&spawns_ok) > 0);
    assert_int_equal(atomic_load(&spawned_ran), atomic_load(&spawns_ok));
}

/* --- a worker thread that cannot be created --------------------------------- */

/* Linked with -Wl,--wrap=pthread_create (tests/CMakeLists.txt): every
 * pthread_create of this binary, weft's included, comes here. When armed,
 * the call that brings the count to 0 waits a little (so other threads
 * can look at the half-started runtime) and fails with EAGAIN. */
int __real_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
static _Atomic int creates_until_failure; /* 0: never fail */

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg);
int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
    int left = atomic_load(&creates_until_failure);
    if (left > 0 && atomic_fetch_sub(&creates_until_failure, 1) == 1) {
        weft_sleep(50 * MS);
        return EAGAIN;
    }
    return __real_pthread_create(t, a, fn, arg);
}

static _Atomic int prober_stop;
static _Atomic long stats_while_failing, spawns_while_failing, workers_while_failing;

static void *probe_half_started_runtime(void *arg)
{
    (void)arg;
    weft_stats st;
    while (!atomic_load(&prober_stop)) {
        if (weft_stats_get(&st) == 0)
            atomic_fetch_add(&stats_while_failing, 1);
        if (weft_spawn(NULL, NULL, ret_arg, NULL) == 0)
            atomic_fetch_add(&spawns_while_failing, 1);
        if (weft_workers() != 0)
            atomic_fetch_add(&workers_while_failing, 1);
    }
    return NULL;
}

/* weft_start whose second worker cannot be created returns the error and
 * undoes everything, and nobody sees a running runtime meanwhile: no
 * statistics read from workers being freed, no spawn queued on them, no
 * worker count. */
static void test_sched_start_that_cannot_create_a_worker_undoes_itself(void **state)
{
    (void)state;
    pthread_t prober;
    atomic_store(&prober_stop, 0);
    atomic_store(&stats_while_failing, 0);
    atomic_store(&spawns_while_failing, 0);
    atomic_store(&workers_while_failing, 0);
    assert_int_equal(pthread_create(&prober, NULL, probe_half_started_runtime, NULL), 0);
    atomic_store(&creates_until_failure, 2); /* the second worker */
    assert_int_equal(weft_start(&two_workers), EAGAIN);
    atomic_store(&creates_until_failure, 0);
    atomic_store(&prober_stop, 1);
    pthread_join(prober, NULL);
    assert_int_equal(atomic_load(&stats_while_failing), 0);
    assert_int_equal(atomic_load(&spawns_while_failing), 0);
    assert_int_equal(atomic_load(&workers_while_failing), 0);
    assert_int_equal(weft_workers(), 0);
    /* And the runtime starts normally afterwards. */
    weft_co *co;
    void *r = NULL;
    assert_int_equal(weft_start(&two_workers), 0);
    assert_int_equal(weft_spawn(&co, NULL, ret_arg, &r), 0);
    assert_int_equal(weft_join(co, &r), 0);
    assert_int_equal(weft_stop(), 0);
}

/* weft_stop wakes sleeping workers without counting them as spinners:
 * they must leave the idle stack and the counts as they found them
 * (a worker used to count itself a spinner, and the count wrapped). */
static void test_sched_stop_leaves_the_idle_counts_at_zero(void **state)
{
    (void)state;
    assert_int_equal(weft_start(&two_workers), 0);
    weft_sleep(30 * MS); /* both workers go to sleep */
    assert_int_equal(weft_stop(), 0);
    assert_int_equal(atomic_load(&weft__rt.spinning), 0);
    assert_int_equal(atomic_load(&weft__rt.sleeping), 0);
}

static void test_sched_bad_input_gets_error_codes(void **state)
{
    (void)state;
    weft_co *co;
    assert_int_equal(weft_spawn(&co, NULL, ret_arg, NULL), EPERM);
    assert_int_equal(weft_join((weft_co *)&co, NULL), EPERM);
    assert_int_equal(weft_detach((weft_co *)&co), EPERM);
    assert_int_equal(weft_stop(), EPERM);
    assert_int_equal(weft_stats_get(NULL), EINVAL);
    assert_int_equal(weft_main(NULL, NULL, NULL, NULL), EINVAL);
    weft_config bad = { .pin = 7 };
    assert_int_equal(weft_start(&bad), EINVAL);

    assert_int_equal(weft_start(&two_workers), 0);
    assert_int_equal(weft_start(&two_workers), EALREADY);
    assert_int_equal(weft_spawn(&co, NULL, NULL, NULL), EINVAL);
    /* A stack no mapping can have: refused at spawn, not at the first run
     * (where the only way out would be abort). */
    weft_attr huge = { .stack_size = SIZE_MAX };
    assert_int_equal(weft_spawn(&co, &huge, ret_arg, NULL), ENOMEM);
    assert_int_equal(weft_join(NULL, NULL), EINVAL);
    assert_int_equal(weft_detach(NULL), EINVAL);
    assert_int_equal(weft_spawn(&co, NULL, inside, NULL), 0);
    assert_int_equal(weft_join(co, NULL), 0);
    assert_int_equal(weft_stop(), 0);
}

/* True when a hwloc plugin (Debian's libhwloc-plugins) is mapped. */
static int hwloc_plugin_loaded(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512];
    int found = 0;
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, "/hwloc/hwloc_") != NULL;
    fclose(f);
    return found;
}

/* The first weft_start of a process keeps hwloc from loading its plugins
 * through HWLOC_PLUGINS_BLACKLIST (topology.c). In a fresh process (this
 * binary run again, see main): no plugin is mapped after the start, the
 * variable is gone again, and a value the program set itself stands.
 * Exit status 0 when all hold. */
static int first_start_child(const char *mode)
{
    const char *name = "HWLOC_PLUGINS_BLACKLIST";
    int user_set = strcmp(mode, "user-set") == 0;
    if (user_set)
        setenv(name, "hwloc_pci", 1);
    else
        unsetenv(name);
    /* weft changes the environment only while it is the only thread
     * (a sanitizer's runtime may have started one of its own). */
    int alone = 0;
    FILE *f = fopen("/proc/self/status", "r");
    char line[128];
    long threads = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %ld", &threads) == 1)
            break;
    if (f)
        fclose(f);
    alone = threads == 1;
    weft_co *co;
    void *r = NULL;
    if (weft_start(&two_workers) != 0 || weft_spawn(&co, NULL, ret_arg, (void *)name) != 0 ||
        weft_join(co, &r) != 0 || r != name || weft_stop() != 0)
        return 2;
    const char *now = getenv(name);
    if (user_set)
        return now && strcmp(now, "hwloc_pci") == 0 ? 0 : 1;
    return now == NULL && (!alone || !hwloc_plugin_loaded()) ? 0 : 1;
}

/* --- the topology ------------------------------------------------------------------ */

/* Linked with -Wl,--wrap=hwloc_topology_load (tests/CMakeLists.txt):
 * weft's discovery waits here while a test holds it. */
int __real_hwloc_topology_load(hwloc_topology_t topology);
static _Atomic int discovery_held;

int __wrap_hwloc_topology_load(hwloc_topology_t topology)
{
    while (atomic_load(&discovery_held))
        usleep(1000);
    return __real_hwloc_topology_load(topology);
}

static int wait_topology_ready(void)
{
    for (int i = 0; i < 5000 && !weft__topology_ready(); i++)
        usleep(1000);
    return weft__topology_ready();
}

/* The first start of a process does not wait for hwloc's discovery
 * (milliseconds of sysfs reads): it counts the cores from the affinity
 * mask and sysfs, and the workers place themselves once the discovery is
 * done. With the discovery held, the runtime starts, runs a coroutine and
 * stops, and a child forked meanwhile discovers on its own; released,
 * hwloc's core count is the one the runtime used. (A start that waited
 * for the discovery would hang: the alarm ends it.) */
static int held_discovery_child(void)
{
    alarm(20);
    atomic_store(&discovery_held, 1);
    weft_co *co;
    void *r = NULL;
    if (weft_start(NULL) != 0)
        return 2;
    if (weft__topology_ready())
        return 3;
    unsigned workers = weft_workers();
    if (weft_spawn(&co, NULL, ret_arg, &r) != 0 || weft_join(co, &r) != 0 || r != &r ||
        weft_stop() != 0)
        return 4;
#if !defined(WEFT_TSAN) /* fork takes every jemalloc arena lock: too many for TSan */
    /* A child forked while the discovery runs has no discovery thread:
     * its own first start must begin one, or it never gets a topology. */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        atomic_store(&discovery_held, 0);
        int ok = weft_start(NULL) == 0 && wait_topology_ready() && weft_stop() == 0;
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0)
        return 7;
#endif
    atomic_store(&discovery_held, 0);
    if (!wait_topology_ready())
        return 5;
    return workers == weft__topology_cores() ? 0 : 6;
}

/* One per worker: records its thread's binding, then spins without
 * yielding until every probe has recorded, so no two share a worker. */
struct binding_probe {
    cpu_set_t seen;
    _Atomic unsigned *recorded;
    unsigned n;
    bool all_met;
};

static void *record_binding(void *arg)
{
    struct binding_probe *p = arg;
    CPU_ZERO(&p->seen);
    sched_getaffinity(0, sizeof p->seen, &p->seen);
    atomic_fetch_add(p->recorded, 1);
    int64_t until = weft_now() + 5000000000LL;
    while (atomic_load(p->recorded) < p->n && weft_now() < until)
        ;
    p->all_met = atomic_load(p->recorded) == p->n;
    return NULL;
}

/* Workers one per core are bound, each to its own CPU, before hwloc's
 * discovery is done. They were left to the kernel until then, which on
 * a two-CPU machine started both on one CPU while the discovery thread
 * ran on the other, and they shared it for up to 20 ms. */
static int bound_before_discovery_child(void)
{
    alarm(20);
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0 || CPU_COUNT(&mask) < 2)
        return 77;
    atomic_store(&discovery_held, 1);
    if (weft_start(NULL) != 0)
        return 2;
    unsigned n = weft_workers();
    if (n < 2 || n != weft__topology_cores() || n > 64) { /* one core, or a CPU quota */
        atomic_store(&discovery_held, 0);
        weft_stop();
        return 77;
    }
    _Atomic unsigned recorded = 0;
    struct binding_probe probes[64];
    weft_co *cos[64];
    void *r;
    for (unsigned i = 0; i < n; i++) {
        probes[i] = (struct binding_probe){ .recorded = &recorded, .n = n };
        if (weft_spawn(&cos[i], NULL, record_binding, &probes[i]) != 0)
            return 3;
    }
    for (unsigned i = 0; i < n; i++)
        if (weft_join(cos[i], &r) != 0)
            return 3;
    bool held = !weft__topology_ready();
    atomic_store(&discovery_held, 0);
    if (weft_stop() != 0 || !held)
        return 4;
    for (unsigned i = 0; i < n; i++) {
        if (!probes[i].all_met)
            return 5; /* two probes on one worker */
        if (CPU_COUNT(&probes[i].seen) != 1)
            return 6; /* not bound */
        cpu_set_t inside;
        CPU_AND(&inside, &probes[i].seen, &mask);
        if (!CPU_EQUAL(&inside, &probes[i].seen))
            return 7; /* bound outside the process's mask */
        for (unsigned j = 0; j < i; j++)
            if (CPU_EQUAL(&probes[i].seen, &probes[j].seen))
                return 8; /* two workers on one CPU */
    }
    return 0;
}

static void *affinity_after_placement(void *arg)
{
    cpu_set_t *set = arg;
    /* A worker places itself every 61 scheduling rounds at the latest. */
    for (int i = 0; i < 200; i++)
        weft_yield();
    CPU_ZERO(set);
    sched_getaffinity(0, sizeof *set, set);
    return NULL;
}

/* A process bound to one CPU (taskset) gets one worker, and that worker
 * is bound inside the process's mask. hwloc ignored the restriction to
 * the process's binding without HWLOC_TOPOLOGY_FLAG_IS_THISSYSTEM: two
 * workers, the first bound to CPU 0, outside the mask. */
static int affinity_child(void)
{
    alarm(20);
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) < 2)
        return 77;
    int last = -1;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set))
            last = c;
    CPU_ZERO(&set);
    CPU_SET(last, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        return 77;
    weft_co *co;
    void *r;
    cpu_set_t seen;
    if (weft_start(NULL) != 0 || !wait_topology_ready())
        return 2;
    unsigned workers = weft_workers();
    if (weft_spawn(&co, NULL, affinity_after_placement, &seen) != 0 || weft_join(co, &r) != 0 ||
        weft_stop() != 0)
        return 3;
    if (workers != 1)
        return 4;
    return CPU_COUNT(&seen) == 1 && CPU_ISSET(last, &seen) ? 0 : 5;
}

/* posix_spawn, not fork: fork runs jemalloc's atfork handlers, which take
 * every arena lock at once, more than ThreadSanitizer's deadlock detector
 * can track. */
static int run_fresh(const char *mode)
{
    char *args[] = { "test_sched", "--child", (char *)mode, NULL };
    pid_t pid;
    fflush(stdout);
    fflush(stderr);
    assert_int_equal(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, args, environ), 0);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void test_sched_first_start_loads_no_hwloc_plugin_and_keeps_the_env(void **state)
{
    (void)state;
    assert_int_equal(run_fresh("unset"), 0);
    assert_int_equal(run_fresh("user-set"), 0);
}

static void test_sched_first_start_does_not_wait_for_the_topology(void **state)
{
    (void)state;
    assert_int_equal(run_fresh("held-discovery"), 0);
}

static void test_sched_workers_are_bound_before_the_topology_is_ready(void **state)
{
    (void)state;
    int rc = run_fresh("bound-early");
    if (rc == 77)
        skip(); /* one CPU or one core, or fewer workers than cores */
    assert_int_equal(rc, 0);
}

/* With fewer workers than cores, WEFT_PIN_AUTO leaves the workers to the
 * kernel: it bound worker 0 to the first core, so every single-worker
 * weft process of a machine ran on that core. WEFT_PIN_ON still binds. */
static int fewer_workers_child(void)
{
    alarm(20);
    cpu_set_t mask, seen;
    if (sched_getaffinity(0, sizeof mask, &mask) != 0 || CPU_COUNT(&mask) < 2)
        return 77;
    weft_co *co;
    void *r;
    weft_config one = { .workers = 1 };
    if (weft_start(&one) != 0 || !wait_topology_ready())
        return 2;
    if (weft__topology_cores() < 2) { /* SMT siblings: one core */
        weft_stop();
        return 77;
    }
    if (weft_spawn(&co, NULL, affinity_after_placement, &seen) != 0 || weft_join(co, &r) != 0 ||
        weft_stop() != 0)
        return 3;
    if (!CPU_EQUAL(&seen, &mask))
        return 4; /* bound, though cores were left over */
    one.pin = WEFT_PIN_ON;
    if (weft_start(&one) != 0 || weft_spawn(&co, NULL, affinity_after_placement, &seen) != 0 ||
        weft_join(co, &r) != 0 || weft_stop() != 0)
        return 5;
    return CPU_COUNT(&seen) == 1 ? 0 : 6;
}

static void test_sched_auto_pinning_leaves_fewer_workers_unbound(void **state)
{
    (void)state;
    int rc = run_fresh("fewer-workers");
    if (rc == 77)
        skip(); /* one core: every worker count is "one per core" */
    assert_int_equal(rc, 0);
}

/* The default worker count follows a cgroup CPU quota, rounded up, the
 * smallest along the cgroup path; v2's cpu.max and v1's cfs files. */
static void put_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_sched_cgroup_quota_bounds_the_default_workers(void **state)
{
    (void)state;
    assert_int_equal(weft__cpu_max_cpus("max 100000\n"), 0);
    assert_int_equal(weft__cpu_max_cpus("-1 100000"), 0);
    assert_int_equal(weft__cpu_max_cpus("200000 100000\n"), 2);
    assert_int_equal(weft__cpu_max_cpus("150000 100000"), 2);
    assert_int_equal(weft__cpu_max_cpus("50000 100000"), 1);
    assert_int_equal(weft__cpu_max_cpus("100000 0"), 0);
    assert_int_equal(weft__cpu_max_cpus("garbage"), 0);

    char root[] = "/tmp/weft-cgroup-XXXXXX", a[64], b[64];
    assert_non_null(mkdtemp(root));
    snprintf(a, sizeof a, "%s/a", root);
    snprintf(b, sizeof b, "%s/a/b", root);
    assert_int_equal(mkdir(a, 0700), 0);
    assert_int_equal(mkdir(b, 0700), 0);
    /* v2: the parent's 3 CPUs bound a child with none, a child's 1 wins. */
    put_file(root, "cpu.max", "max 100000\n");
    put_file(a, "cpu.max", "300000 100000\n");
    put_file(b, "cpu.max", "max 100000\n");
    assert_int_equal(weft__cgroup_cpus_at(root, "/a/b", true), 3);
    put_file(b, "cpu.max", "100000 100000\n");
    assert_int_equal(weft__cgroup_cpus_at(root, "/a/b", true), 1);
    assert_int_equal(weft__cgroup_cpus_at(root, "/", true), 0);
    assert_int_equal(weft__cgroup_cpus_at(root, "/nowhere", true), 0);
    /* v1: quota over period, -1 for none. */
    put_file(a, "cpu.cfs_quota_us", "250000\n");
    put_file(a, "cpu.cfs_period_us", "100000\n");
    put_file(b, "cpu.cfs_quota_us", "-1\n");
    put_file(b, "cpu.cfs_period_us", "100000\n");
    assert_int_equal(weft__cgroup_cpus_at(root, "/a/b", false), 3);
    const char *files[] = { "a/b/cpu.max", "a/b/cpu.cfs_quota_us", "a/b/cpu.cfs_period_us",
                            "a/cpu.max", "a/cpu.cfs_quota_us", "a/cpu.cfs_period_us",
                            "cpu.max" };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char path[128];
        snprintf(path, sizeof path, "%s/%s", root, files[i]);
        unlink(path);
    }
    rmdir(b);
    rmdir(a);
    rmdir(root);
}

static void test_sched_workers_stay_inside_the_process_affinity(void **state)
{
    (void)state;
    int rc = run_fresh("affinity");
    if (rc == 77)
        skip(); /* one CPU: nothing to restrict */
    assert_int_equal(rc, 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--child") == 0) {
        if (strcmp(argv[2], "held-discovery") == 0)
            return held_discovery_child();
        if (strcmp(argv[2], "bound-early") == 0)
            return bound_before_discovery_child();
        if (strcmp(argv[2], "affinity") == 0)
            return affinity_child();
        if (strcmp(argv[2], "fewer-workers") == 0)
            return fewer_workers_child();
        return first_start_child(argv[2]);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sched_sleepers_overlap_and_wake_in_deadline_order),
        cmocka_unit_test(test_sched_yield_interleaves_strictly_on_one_worker),
        cmocka_unit_test(test_sched_million_spawn_join_sums_right),
        cmocka_unit_test(test_sched_fork_join_fib_is_right),
        cmocka_unit_test(test_sched_cpu_bound_coroutines_run_on_every_worker),
        cmocka_unit_test(test_sched_plain_thread_spawns_and_joins),
        cmocka_unit_test(test_sched_stop_waits_for_detached_coroutines),
        cmocka_unit_test(test_sched_detached_spawns_queue_as_tickets_in_spawn_order),
        cmocka_unit_test(test_sched_tickets_run_on_every_worker_and_stop_waits),
        cmocka_unit_test(test_sched_spawns_past_a_deque_that_cannot_grow_run_once),
        cmocka_unit_test(test_sched_runtime_restarts_after_stop),
        cmocka_unit_test(test_sched_sleep_never_wakes_early_on_idle_workers),
        cmocka_unit_test(test_sched_deadlines_cancelled_and_fired_resolve_once),
        cmocka_unit_test(test_sched_generator_may_park_inside_a_coroutine),
        cmocka_unit_test(test_sched_self_worker_and_stats_report_the_runtime),
        cmocka_unit_test(test_sched_idle_runtime_sleeps_in_the_kernel),
        cmocka_unit_test(test_sched_bad_input_gets_error_codes),
        cmocka_unit_test(test_sched_stats_may_be_read_while_the_runtime_stops),
        cmocka_unit_test(test_sched_stop_leaves_the_idle_counts_at_zero),
        cmocka_unit_test(test_sched_start_that_cannot_create_a_worker_undoes_itself),
        cmocka_unit_test(test_sched_plain_spawns_racing_stop_all_run),
        cmocka_unit_test(test_sched_longest_sleep_does_not_return_at_once),
#if !defined(WEFT_ASAN) && !defined(WEFT_TSAN)
        cmocka_unit_test(test_sched_start_without_memory_is_enomem),
#endif
        cmocka_unit_test(test_sched_first_start_loads_no_hwloc_plugin_and_keeps_the_env),
        cmocka_unit_test(test_sched_first_start_does_not_wait_for_the_topology),
        cmocka_unit_test(test_sched_workers_are_bound_before_the_topology_is_ready),
        cmocka_unit_test(test_sched_workers_stay_inside_the_process_affinity),
        cmocka_unit_test(test_sched_auto_pinning_leaves_fewer_workers_unbound),
        cmocka_unit_test(test_sched_cgroup_quota_bounds_the_default_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
