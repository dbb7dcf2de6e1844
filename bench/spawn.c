/* spawn: the cost of a short-lived coroutine (BENCH.md `spawn`).
 *
 * One root coroutine spawns 1,000,000 detached coroutines (--size N); each
 * adds 1 to an atomic counter and counts a waitgroup down; the root waits on
 * the waitgroup. The clock runs from the first spawn until the wait returns.
 * Checksum: counter == N. Metrics: ns_per_coroutine (elapsed / N), peak_rss
 * (VmHWM of the whole process, bytes), startup. */
#include <stdatomic.h>
#include <stdio.h>

#include "bench.h"

static atomic_llong counter;
static weft_wg all_done = WEFT_WG_INIT;

static void *add_one(void *arg)
{
    (void)arg;
    /* Relaxed: a tally; the waitgroup orders it before the root's read. */
    atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed);
    BENCH_CHECK("spawn", weft_wg_done(&all_done));
    return NULL;
}

static void *spawn_root(void *arg)
{
    int64_t n = *(int64_t *)arg;
    int64_t t0 = bench_now_ns();
    BENCH_CHECK("spawn", weft_wg_add(&all_done, (int)n));
    for (int64_t i = 0; i < n; i++)
        BENCH_CHECK("spawn", weft_spawn(NULL, NULL, add_one, NULL));
    BENCH_CHECK("spawn", weft_wg_wait(&all_done, WEFT_FOREVER));
    *(int64_t *)arg = bench_now_ns() - t0;
    return NULL;
}

int bench_spawn(const struct bench_opts *o)
{
    int64_t n = o->size ? o->size : 1000000, inout = n;
    unsigned workers;

    if (n > 1000000000)
        bench_fail("spawn", "--size %lld is too large for a waitgroup", (long long)n);
    int64_t startup_ns = bench_start("spawn", o->workers, &workers);
    bench_run("spawn", spawn_root, &inout);
    bench_stop("spawn");

    long long got = atomic_load(&counter);
    if (got != n)
        bench_fail("spawn", "counter %lld, want %lld", got, (long long)n);
    char note[64];
    snprintf(note, sizeof note, "%lld coroutines", (long long)n);
    bench_line("spawn", workers, "ns_per_coroutine", (double)inout / (double)n, "ns", note);
    bench_line("spawn", workers, "peak_rss", bench_peak_rss_bytes("spawn"), "bytes",
               "VmHWM, whole process");
    bench_line("spawn", workers, "startup", (double)startup_ns / 1e3, "us", "weft_start");
    return 0;
}
