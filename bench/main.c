/* weft-bench: weft's side of the canonical workloads of BENCH.md.
 *
 *   weft-bench <id> [--workers N] [--size N] [--k K]
 *
 * Dispatches to bench/<id>.c and holds the helpers every workload shares
 * (bench.h): the clock, the result line, runtime start-up timing, memory
 * readings. What --size means, per workload (0 or absent: the default):
 *   ctx       switches                    (10,000,000)
 *   yield     yields in total             (10,000,000); --k K: coroutines (2 and 1000)
 *   spawn     coroutines                  (1,000,000)
 *   skynet    leaves, down to a power of 10 (1,000,000)
 *   fib       n                           (30)
 *   uts       children of the root        (2000)
 *   pingpong  round trips                 (1,000,000)
 *   timers    sleeping coroutines         (100,000)
 *   park      parked coroutines           (100,000)
 *   startup   runs; the first is reported  (1)
 * Memory is read from /proc/self/status (VmRSS, and VmHWM for the peak).
 * With WEFT_BENCH_STATS set, each runtime's weft_stats totals go to
 * stderr as one "# stats" line just before it stops (steals, parks and
 * handoffs show how a workload spread over the workers).
 * Exit status: 0 with result lines printed, 1 when a checksum or a call
 * fails, 2 on bad arguments. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

static const struct {
    const char *id;
    int (*run)(const struct bench_opts *o);
    const char *what;
} benches[] = {
    { "ctx", bench_ctx, "raw weft_ctx_switch between two contexts" },
    { "yield", bench_yield, "1 worker, K coroutines yielding (K=2 and 1000)" },
    { "spawn", bench_spawn, "spawn coroutines that add 1 to a counter, wait for all" },
    { "skynet", bench_skynet, "skynet with channels, 6 levels of 10" },
    { "fib", bench_fib, "naive fork-join fib(n), no cutoff" },
    { "uts", bench_uts, "unbalanced tree search, one coroutine per node" },
    { "pingpong", bench_pingpong, "two coroutines bouncing a value over two channels" },
    { "timers", bench_timers, "coroutine i sleeps (i % 100) ms once" },
    { "park", bench_park, "RSS per coroutine parked on a channel" },
    { "startup", bench_startup, "start, run one empty coroutine, stop" },
};

static void usage(void)
{
    fprintf(stderr, "usage: weft-bench <id> [--workers N] [--size N] [--k K]\n\nids:\n");
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        fprintf(stderr, "  %-9s %s\n", benches[i].id, benches[i].what);
    fprintf(stderr, "\n--workers defaults to one per physical core; --size scales the "
                    "workload down (see bench/main.c).\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct bench_opts o = { 0, 0, 0 };
    int (*run)(const struct bench_opts *) = NULL;

    if (argc < 2)
        usage();
    for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
        if (strcmp(argv[1], benches[i].id) == 0)
            run = benches[i].run;
    if (!run)
        usage();
    for (int i = 2; i < argc; i += 2) {
        char *end = NULL;
        long long v;
        if (i + 1 >= argc)
            usage();
        errno = 0;
        v = strtoll(argv[i + 1], &end, 10);
        if (*argv[i + 1] == '\0' || *end != '\0' || errno || v <= 0)
            usage();
        if (strcmp(argv[i], "--workers") == 0 && v <= 4096)
            o.workers = (unsigned)v;
        else if (strcmp(argv[i], "--size") == 0)
            o.size = v;
        else if (strcmp(argv[i], "--k") == 0)
            o.k = v;
        else
            usage();
    }
    return run(&o);
}

int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void bench_line(const char *id, unsigned workers, const char *metric, double value,
                const char *unit, const char *note)
{
    /* Whole bytes; 3 decimals, or 6 below 1 so small ratios keep digits. */
    double magnitude = value < 0 ? -value : value;
    int digits = strcmp(unit, "bytes") == 0 ? 0 : magnitude >= 1 || value == 0 ? 3 : 6;
    printf("bench=%s impl=weft workers=%u metric=%s value=%.*f unit=%s%s%s\n", id, workers, metric,
           digits, value, unit, note ? "  " : "", note ? note : "");
}

void bench_fail(const char *id, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "weft-bench %s: FAILED: ", id);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    /* Possibly on a worker thread: leave at once, without atexit handlers
     * that could wait for the runtime. */
    fflush(NULL);
    _Exit(1);
}

int64_t bench_start(const char *id, unsigned workers, unsigned *actual)
{
    weft_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.workers = workers;
    int64_t t0 = bench_now_ns();
    BENCH_CHECK(id, weft_start(&cfg));
    int64_t t1 = bench_now_ns();
    *actual = weft_workers();
    return t1 - t0;
}

void bench_stop(const char *id)
{
    weft_stats st;
    if (getenv("WEFT_BENCH_STATS") && weft_stats_get(&st) == 0)
        fprintf(stderr,
                "# stats %s: spawned=%llu finished=%llu switches=%llu steals=%llu "
                "steal_attempts=%llu parks=%llu wakeups=%llu handoffs=%llu\n",
                id, (unsigned long long)st.spawned, (unsigned long long)st.finished,
                (unsigned long long)st.switches, (unsigned long long)st.steals,
                (unsigned long long)st.steal_attempts, (unsigned long long)st.parks,
                (unsigned long long)st.wakeups, (unsigned long long)st.handoffs);
    BENCH_CHECK(id, weft_stop());
}

void *bench_run(const char *id, void *(*fn)(void *), void *arg)
{
    weft_co *co;
    void *result = NULL;
    BENCH_CHECK(id, weft_spawn(&co, NULL, fn, arg));
    BENCH_CHECK(id, weft_join(co, &result));
    return result;
}

/* A "Field:   N kB" line of /proc/self/status, in bytes. */
static double status_bytes(const char *id, const char *field)
{
    char line[256];
    size_t len = strlen(field);
    double kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        bench_fail(id, "cannot open /proc/self/status");
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0) {
            kib = strtod(line + len, NULL);
            break;
        }
    fclose(f);
    if (kib < 0)
        bench_fail(id, "no %s in /proc/self/status", field);
    return kib * 1024.0;
}

double bench_peak_rss_bytes(const char *id)
{
    return status_bytes(id, "VmHWM:");
}

double bench_vm_rss_bytes(const char *id)
{
    return status_bytes(id, "VmRSS:");
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}
