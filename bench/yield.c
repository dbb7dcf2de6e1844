/* yield: the cost of weft_yield on one worker (BENCH.md `yield`).
 *
 * One worker runs K coroutines, each calling weft_yield in a loop, 10,000,000
 * yields in total (--size N), N/K each. K = 2 (a pure switch between two
 * coroutines) and K = 1000 (the run queue and the stacks no longer fit in
 * L1), both unless --k K picks one. The clock runs from the first spawn to
 * the last join, in one root coroutine. Checksum: the per-coroutine counts
 * sum to the total. Metrics: ns_per_yield_k<K>, and startup. --workers is
 * ignored: the workload is defined on one worker. */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

struct yield_run {
    int64_t k, each;
    int64_t *counts;
    int64_t elapsed_ns;
};

struct yielder {
    int64_t each;
    int64_t *count;
};

static void *yielder_main(void *arg)
{
    struct yielder *y = arg;
    int64_t n = 0;
    for (int64_t i = 0; i < y->each; i++) {
        weft_yield();
        n++;
    }
    *y->count = n;
    return NULL;
}

static void *yield_root(void *arg)
{
    struct yield_run *run = arg;
    weft_co **cos = malloc((size_t)run->k * sizeof *cos);
    struct yielder *ys = malloc((size_t)run->k * sizeof *ys);
    if (!cos || !ys)
        bench_fail("yield", "out of memory");

    int64_t t0 = bench_now_ns();
    for (int64_t i = 0; i < run->k; i++) {
        ys[i].each = run->each;
        ys[i].count = &run->counts[i];
        BENCH_CHECK("yield", weft_spawn(&cos[i], NULL, yielder_main, &ys[i]));
    }
    for (int64_t i = 0; i < run->k; i++)
        BENCH_CHECK("yield", weft_join(cos[i], NULL));
    run->elapsed_ns = bench_now_ns() - t0;

    free(ys);
    free(cos);
    return NULL;
}

int bench_yield(const struct bench_opts *o)
{
    int64_t total = o->size ? o->size : 10000000;
    int64_t ks[2] = { 2, 1000 };
    size_t nk = 2;
    double ns_per_yield[2];
    int64_t yields[2];
    unsigned workers;

    if (o->k) {
        ks[0] = o->k;
        nk = 1;
    }
    int64_t startup_ns = bench_start("yield", 1, &workers);
    for (size_t r = 0; r < nk; r++) {
        struct yield_run run = { ks[r], total / ks[r], NULL, 0 };
        if (run.each == 0)
            bench_fail("yield", "--size %lld is smaller than K=%lld", (long long)total,
                       (long long)ks[r]);
        run.counts = calloc((size_t)run.k, sizeof *run.counts);
        if (!run.counts)
            bench_fail("yield", "out of memory");
        bench_run("yield", yield_root, &run);
        int64_t sum = 0;
        for (int64_t i = 0; i < run.k; i++)
            sum += run.counts[i];
        free(run.counts);
        if (sum != run.each * run.k)
            bench_fail("yield", "K=%lld: counted %lld yields, want %lld", (long long)run.k,
                       (long long)sum, (long long)(run.each * run.k));
        yields[r] = sum;
        ns_per_yield[r] = (double)run.elapsed_ns / (double)sum;
    }
    bench_stop("yield");

    for (size_t r = 0; r < nk; r++) {
        char metric[64], note[64];
        snprintf(metric, sizeof metric, "ns_per_yield_k%lld", (long long)ks[r]);
        snprintf(note, sizeof note, "K=%lld coroutines, %lld yields", (long long)ks[r],
                 (long long)yields[r]);
        bench_line("yield", workers, metric, ns_per_yield[r], "ns", note);
    }
    bench_line("yield", workers, "startup", (double)startup_ns / 1e3, "us", "weft_start");
    return 0;
}
