/* fib: fork-join with the smallest possible tasks (BENCH.md `fib`).
 *
 * Naive fib(n), n = 30 (--size N): spawn a coroutine for fib(n-1), compute
 * fib(n-2) inline (recursively, spawning in turn), join; no cutoff, so there
 * are spawns(n) = 1 + spawns(n-1) + spawns(n-2) = fib(n+1) - 1 spawns
 * (1,346,268 for n = 30). The same process times a serial recursive fib
 * (median of 3, before the runtime starts) as the useful work.
 *
 * Checksum: equals the serial result (832040 for n = 30). Metrics:
 *   ms                  the parallel run, from the root's first call to its
 *                       return;
 *   overhead_per_spawn  (workers * T_parallel - T_serial) / spawns, in ns:
 *                       the CPU time the workers spent beyond the serial
 *                       work, per spawn (an upper bound: time a worker sat
 *                       idle counts as overhead). The alternative
 *                       (T_parallel - T_serial) * workers / spawns goes
 *                       negative as soon as there is any speed-up, so it is
 *                       not used. The peers compute the same formula.
 *   startup             weft_start, us. */
#include <stdint.h>
#include <stdio.h>

#include "bench.h"
#include "workload.h"

static int64_t fib_par(int64_t n);

static void *fib_co(void *arg)
{
    return (void *)(intptr_t)fib_par((int64_t)(intptr_t)arg);
}

static int64_t fib_par(int64_t n)
{
    weft_co *co;
    void *a;

    if (n < 2)
        return n;
    BENCH_CHECK("fib", weft_spawn(&co, NULL, fib_co, (void *)(intptr_t)(n - 1)));
    int64_t b = fib_par(n - 2);
    BENCH_CHECK("fib", weft_join(co, &a));
    return (int64_t)(intptr_t)a + b;
}

struct fib_run {
    int64_t n, result, elapsed_ns;
};

static void *fib_root(void *arg)
{
    struct fib_run *run = arg;
    int64_t t0 = bench_now_ns();
    run->result = fib_par(run->n);
    run->elapsed_ns = bench_now_ns() - t0;
    return NULL;
}

int bench_fib(const struct bench_opts *o)
{
    /* volatile: the compiler must not see n, or fold the serial run. */
    volatile int64_t n_in = o->size ? o->size : 30;
    struct fib_run run = { n_in, 0, 0 };
    int64_t serial = 0;
    double serial_ns[3];
    unsigned workers;

    if (run.n > 60)
        bench_fail("fib", "--size %lld is too large", (long long)run.n);
    for (int r = 0; r < 3; r++) {
        int64_t t0 = bench_now_ns();
        serial = fib_serial(n_in);
        serial_ns[r] = (double)(bench_now_ns() - t0);
    }
    double t_serial = bench_median(serial_ns, 3);

    int64_t startup_ns = bench_start("fib", o->workers, &workers);
    bench_run("fib", fib_root, &run);
    bench_stop("fib");

    if (run.result != serial || (run.n == 30 && run.result != 832040))
        bench_fail("fib", "fib(%lld) = %lld, want %lld", (long long)run.n, (long long)run.result,
                   (long long)serial);
    int64_t spawns = fib_spawns(run.n);
    double t_par = (double)run.elapsed_ns;
    char note[128];
    snprintf(note, sizeof note, "fib(%lld)=%lld spawns=%lld serial_ms=%.3f", (long long)run.n,
             (long long)run.result, (long long)spawns, t_serial / 1e6);
    bench_line("fib", workers, "ms", t_par / 1e6, "ms", note);
    bench_line("fib", workers, "overhead_per_spawn",
               spawns ? (workers * t_par - t_serial) / (double)spawns : 0, "ns",
               "(workers*T_parallel - T_serial) / spawns");
    bench_line("fib", workers, "startup", (double)startup_ns / 1e3, "us", "weft_start");
    return 0;
}
