/* startup: what a program pays to use weft at all (BENCH.md `startup`).
 *
 * One run: weft_start with the default configuration (or --workers N),
 * spawn one empty coroutine, join it, weft_stop; the clock covers all of
 * it. 11 runs (--size N), each a full start and stop in this process;
 * the median is reported (not the best). Checksum: the coroutine ran and
 * returned its argument every time. Metric: startup (us). No peer: Go's
 * runtime starts before main, so there is nothing comparable to time. */
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"

static void *empty(void *arg)
{
    return arg;
}

int bench_startup(const struct bench_opts *o)
{
    int64_t runs = o->size ? o->size : 11;
    double *us = malloc((size_t)runs * sizeof *us);
    unsigned workers = 0;
    weft_config cfg = { 0 };

    if (!us)
        bench_fail("startup", "out of memory");
    cfg.workers = o->workers;
    for (int64_t r = 0; r < runs; r++) {
        weft_co *co;
        void *result = NULL;
        int64_t t0 = bench_now_ns();
        BENCH_CHECK("startup", weft_start(&cfg));
        BENCH_CHECK("startup", weft_spawn(&co, NULL, empty, &cfg));
        BENCH_CHECK("startup", weft_join(co, &result));
        workers = weft_workers();
        BENCH_CHECK("startup", weft_stop());
        us[r] = (double)(bench_now_ns() - t0) / 1e3;
        if (result != &cfg)
            bench_fail("startup", "run %lld: the coroutine returned %p, want %p", (long long)r,
                       result, (void *)&cfg);
    }
    double median = bench_median(us, (size_t)runs);
    free(us);
    char note[96];
    snprintf(note, sizeof note, "median of %lld start+spawn+join+stop", (long long)runs);
    bench_line("startup", workers, "startup", median, "us", note);
    return 0;
}
