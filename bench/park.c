/* park: the memory a parked coroutine costs (BENCH.md `park`).
 *
 * 100,000 channels of capacity 0 are made first (--size N). Then VmRSS is
 * read (/proc/self/status), the root coroutine spawns N coroutines, and
 * coroutine i counts a waitgroup down right before it blocks receiving on
 * channel i. Once the waitgroup reaches zero the root sleeps 50 ms, so that
 * the last ones have really parked, and reads VmRSS again. rss_per_parked =
 * (VmRSS parked - VmRSS before) / N: stacks, coroutine records, queues,
 * whatever the runtime touches per parked coroutine (the channels are not
 * counted). Then the root sends i + 1 on channel i and joins every
 * coroutine. Checksum: all released, the values received sum to
 * N(N+1)/2. Metrics: rss_per_parked (bytes), startup. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

static weft_chan **chans;
static atomic_llong received_sum;
static weft_wg all_parking = WEFT_WG_INIT;

static void *parker(void *arg)
{
    weft_chan *ch = arg;
    int64_t v;
    BENCH_CHECK("park", weft_wg_done(&all_parking));
    BENCH_CHECK("park", weft_chan_recv(ch, &v, WEFT_FOREVER));
    /* Relaxed: a tally; the joins order it before the root's read. */
    atomic_fetch_add_explicit(&received_sum, v, memory_order_relaxed);
    return NULL;
}

struct park_run {
    int64_t n;
    double rss_before, rss_parked;
};

static void *park_root(void *arg)
{
    struct park_run *run = arg;
    weft_co **cos = malloc((size_t)run->n * sizeof *cos);
    if (!cos)
        bench_fail("park", "out of memory");

    BENCH_CHECK("park", weft_wg_add(&all_parking, (int)run->n));
    run->rss_before = bench_vm_rss_bytes("park");
    for (int64_t i = 0; i < run->n; i++)
        BENCH_CHECK("park", weft_spawn(&cos[i], NULL, parker, chans[i]));
    BENCH_CHECK("park", weft_wg_wait(&all_parking, WEFT_FOREVER));
    BENCH_CHECK("park", weft_sleep(50 * 1000000));
    run->rss_parked = bench_vm_rss_bytes("park");

    for (int64_t i = 0; i < run->n; i++) {
        int64_t v = i + 1;
        BENCH_CHECK("park", weft_chan_send(chans[i], &v, WEFT_FOREVER));
    }
    for (int64_t i = 0; i < run->n; i++)
        BENCH_CHECK("park", weft_join(cos[i], NULL));
    free(cos);
    return NULL;
}

int bench_park(const struct bench_opts *o)
{
    struct park_run run = { o->size ? o->size : 100000, 0, 0 };
    unsigned workers;

    if (run.n > 1000000000)
        bench_fail("park", "--size %lld is too large for a waitgroup", (long long)run.n);
    chans = malloc((size_t)run.n * sizeof *chans);
    if (!chans)
        bench_fail("park", "out of memory");
    for (int64_t i = 0; i < run.n; i++)
        BENCH_CHECK("park", weft_chan_make(&chans[i], sizeof(int64_t), 0));

    int64_t startup_ns = bench_start("park", o->workers, &workers);
    bench_run("park", park_root, &run);
    bench_stop("park");

    for (int64_t i = 0; i < run.n; i++)
        weft_chan_free(chans[i]);
    free(chans);
    long long want = (long long)(run.n * (run.n + 1) / 2);
    if (atomic_load(&received_sum) != want)
        bench_fail("park", "received sum %lld, want %lld", (long long)atomic_load(&received_sum),
                   want);
    char note[96];
    snprintf(note, sizeof note, "%lld parked, VmRSS %.0f -> %.0f", (long long)run.n, run.rss_before,
             run.rss_parked);
    bench_line("park", workers, "rss_per_parked", (run.rss_parked - run.rss_before) / (double)run.n,
               "bytes", note);
    bench_line("park", workers, "startup", (double)startup_ns / 1e3, "us", "weft_start");
    return 0;
}
