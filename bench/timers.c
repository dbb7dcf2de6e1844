/* timers: many sleeping coroutines (BENCH.md `timers`).
 *
 * The root coroutine spawns 100,000 detached coroutines (--size N);
 * coroutine i reads the clock, calls weft_sleep((i % 100) ms) once, and
 * records its lateness: wake time - (clock before the sleep + duration).
 * The root waits for all on a waitgroup. Ideal wall time is ~99 ms plus the
 * time to spawn them. Checksum: all woke, and none early (a negative
 * lateness fails the run). Metrics: wall_ms (first spawn to the last wake),
 * mean_lateness and p99_lateness (us), startup. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

#define MS_NS 1000000

static int64_t *lateness_ns;
static atomic_llong woke;
static weft_wg all_woke = WEFT_WG_INIT;

static void *sleeper(void *arg)
{
    int64_t i = (int64_t)(intptr_t)arg;
    int64_t duration_ns = (i % 100) * MS_NS;
    int64_t deadline_ns = weft_now() + duration_ns;
    BENCH_CHECK("timers", weft_sleep(duration_ns));
    lateness_ns[i] = weft_now() - deadline_ns;
    /* Relaxed: a tally; the waitgroup orders it before the root's read. */
    atomic_fetch_add_explicit(&woke, 1, memory_order_relaxed);
    BENCH_CHECK("timers", weft_wg_done(&all_woke));
    return NULL;
}

static void *timers_root(void *arg)
{
    int64_t n = *(int64_t *)arg;
    int64_t t0 = bench_now_ns();
    BENCH_CHECK("timers", weft_wg_add(&all_woke, (int)n));
    for (int64_t i = 0; i < n; i++)
        BENCH_CHECK("timers", weft_spawn(NULL, NULL, sleeper, (void *)(intptr_t)i));
    BENCH_CHECK("timers", weft_wg_wait(&all_woke, WEFT_FOREVER));
    *(int64_t *)arg = bench_now_ns() - t0;
    return NULL;
}

static int compare_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int bench_timers(const struct bench_opts *o)
{
    int64_t n = o->size ? o->size : 100000, wall_ns = n;
    unsigned workers;

    if (n > 1000000000)
        bench_fail("timers", "--size %lld is too large for a waitgroup", (long long)n);
    lateness_ns = malloc((size_t)n * sizeof *lateness_ns);
    if (!lateness_ns)
        bench_fail("timers", "out of memory");
    int64_t startup_ns = bench_start("timers", o->workers, &workers);
    bench_run("timers", timers_root, &wall_ns);
    bench_stop("timers");

    if (atomic_load(&woke) != n)
        bench_fail("timers", "%lld of %lld woke", (long long)atomic_load(&woke), (long long)n);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        if (lateness_ns[i] < 0)
            bench_fail("timers", "coroutine %lld woke %lld ns early", (long long)i,
                       (long long)-lateness_ns[i]);
        sum += (double)lateness_ns[i];
    }
    qsort(lateness_ns, (size_t)n, sizeof *lateness_ns, compare_i64);
    double p99 = (double)lateness_ns[(99 * n + 99) / 100 - 1];
    free(lateness_ns);

    char note[64];
    snprintf(note, sizeof note, "%lld sleepers", (long long)n);
    bench_line("timers", workers, "wall_ms", (double)wall_ns / 1e6, "ms", note);
    bench_line("timers", workers, "mean_lateness", sum / (double)n / 1e3, "us", NULL);
    bench_line("timers", workers, "p99_lateness", p99 / 1e3, "us", NULL);
    bench_line("timers", workers, "startup", (double)startup_ns / 1e3, "us", "weft_start");
    return 0;
}
