/* startup: what a program pays to use weft at all (BENCH.md `startup`).
 *
 * One run: weft_start with the default configuration (or --workers N),
 * spawn one empty coroutine, join it, weft_stop; the clock covers all of
 * it. By default (BENCH.md's size 1) that is the first start of this
 * process, the one every program pays, hwloc's topology discovery
 * included. --size N makes N runs in this process: the metric stays the
 * first run, and the note gives the median of the later ones (a restart,
 * with the topology already known). Checksum: the coroutine ran and
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
    int64_t runs = o->size > 0 ? o->size : 1;
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
    double first = us[0];
    char note[128];
    if (runs > 1)
        snprintf(note, sizeof note,
                 "first start+spawn+join+stop of the process; median of %lld restarts %.1f us",
                 (long long)(runs - 1), bench_median(us + 1, (size_t)(runs - 1)));
    else
        snprintf(note, sizeof note, "first start+spawn+join+stop of the process");
    free(us);
    bench_line("startup", workers, "startup", first, "us", note);
    return 0;
}
