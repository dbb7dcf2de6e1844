/* bench.h: what weft-bench's workloads share (implemented in main.c).
 *
 * Every workload of BENCH.md is one file, bench/<id>.c, with one entry point
 * `int bench_<id>(const struct bench_opts *)` that runs the workload, checks
 * its checksum, and only then prints its result lines with bench_line():
 *   bench=<id> impl=weft workers=<n> metric=<name> value=<number> unit=<unit>
 * A failed call or a wrong checksum ends the process with status 1 through
 * bench_fail(), before any result line of that workload is printed.
 *
 * Timing: bench_now_ns() (CLOCK_MONOTONIC) around the measured region only.
 * Runtime start-up is timed apart by bench_start() and printed as
 * metric=startup (us) by each workload that starts a runtime. */
#ifndef WEFT_BENCH_H
#define WEFT_BENCH_H

#include <stdint.h>
#include <string.h>

#include <weft.h>

struct bench_opts {
    unsigned workers; /* --workers N; 0: weft's default (one per core, hwloc) */
    int64_t size;     /* --size N; 0: the workload's default size */
    int64_t k;        /* --k K; 0: the workload's default (yield only) */
};

/* The workloads, one per file. Each returns 0 (or does not return). */
int bench_ctx(const struct bench_opts *o);
int bench_yield(const struct bench_opts *o);
int bench_spawn(const struct bench_opts *o);
int bench_skynet(const struct bench_opts *o);
int bench_fib(const struct bench_opts *o);
int bench_uts(const struct bench_opts *o);
int bench_pingpong(const struct bench_opts *o);
int bench_timers(const struct bench_opts *o);
int bench_park(const struct bench_opts *o);
int bench_startup(const struct bench_opts *o);

/* CLOCK_MONOTONIC in nanoseconds. */
int64_t bench_now_ns(void);

/* Prints one result line for workload `id` (impl=weft). `note` (may be
 * NULL) is the human-friendly tail after the machine-readable part. */
void bench_line(const char *id, unsigned workers, const char *metric, double value,
                const char *unit, const char *note);

/* Prints "weft-bench <id>: FAILED: ..." on stderr and exits with status 1. */
void bench_fail(const char *id, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

/* Ends the process through bench_fail() unless `call` returned 0. */
#define BENCH_CHECK(id, call)                                                                      \
    do {                                                                                           \
        int bench_rc_ = (call);                                                                    \
        if (bench_rc_ != 0)                                                                        \
            bench_fail((id), "%s returned %d (%s)", #call, bench_rc_, strerror(bench_rc_));        \
    } while (0)

/* Starts the runtime with `workers` workers (0: weft's default) and returns
 * how long weft_start took, in ns; *actual gets weft_workers(). */
int64_t bench_start(const char *id, unsigned workers, unsigned *actual);

/* Stops the runtime (waits for every coroutine first). */
void bench_stop(const char *id);

/* Runs fn(arg) as a coroutine spawned from the calling plain thread, waits
 * for it, and returns its result. */
void *bench_run(const char *id, void *(*fn)(void *), void *arg);

/* The process's peak resident set so far, VmHWM of /proc/self/status, in
 * bytes. Not getrusage's ru_maxrss: Linux carries that across execve, so a
 * program started by a big harness (python) reports the harness's RSS at
 * fork as its floor. */
double bench_peak_rss_bytes(const char *id);

/* The process's current VmRSS (/proc/self/status), in bytes. */
double bench_vm_rss_bytes(const char *id);

/* Median of v[0..n), n > 0 (sorts v). */
double bench_median(double *v, size_t n);

#endif
