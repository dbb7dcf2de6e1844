/* peer.h: what every C and C++ peer of weft-bench shares, so that each peer
 * reads the same flags and prints the same result lines as weft-bench.
 *
 * Flags: `<program> <id> [--workers N] [--size N] [--k K]`, with the meaning
 * each workload gives them in bench/main.c. Result lines, exactly as
 * BENCH.md asks:
 *   bench=<id> impl=<name> workers=<n> metric=<name> value=<number> unit=<unit>
 * Times are CLOCK_MONOTONIC; memory is read from /proc/self/status. Header
 * only (static functions), so each peer is one translation unit. */
#ifndef WEFT_BENCH_PEER_H
#define WEFT_BENCH_PEER_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>

struct peer_opts {
    const char *id;
    unsigned workers; /* --workers; 0: the peer's default (CPUs allowed) */
    int64_t size;     /* --size; 0: the workload's default */
    int64_t k;        /* --k; 0: the workload's default */
};

static inline int64_t peer_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* CPUs this process may run on (its affinity mask). */
static inline unsigned peer_default_workers(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    return 1;
}

static inline void peer_usage(const char *prog, const char *ids)
{
    fprintf(stderr,
            "usage: %s <id> [--workers N] [--size N] [--k K]\n"
            "ids: %s\n",
            prog, ids);
    exit(2);
}

/* Parses argv into *o; exits 2 on anything it does not understand. */
static inline void peer_parse(int argc, char **argv, const char *ids, struct peer_opts *o)
{
    memset(o, 0, sizeof *o);
    if (argc < 2 || argv[1][0] == '-')
        peer_usage(argv[0], ids);
    o->id = argv[1];
    for (int i = 2; i < argc; i += 2) {
        char *end = NULL;
        long long v;
        if (i + 1 >= argc)
            peer_usage(argv[0], ids);
        v = strtoll(argv[i + 1], &end, 10);
        if (*argv[i + 1] == '\0' || *end != '\0' || v <= 0)
            peer_usage(argv[0], ids);
        if (strcmp(argv[i], "--workers") == 0)
            o->workers = (unsigned)v;
        else if (strcmp(argv[i], "--size") == 0)
            o->size = v;
        else if (strcmp(argv[i], "--k") == 0)
            o->k = v;
        else
            peer_usage(argv[0], ids);
    }
}

/* One result line; `note` (may be NULL) is the human-friendly tail. */
static inline void peer_line(const char *id, const char *impl, unsigned workers, const char *metric,
                             double value, const char *unit, const char *note)
{
    /* Whole bytes; 3 decimals, or 6 below 1 so small ratios keep digits. */
    double magnitude = value < 0 ? -value : value;
    int digits = strcmp(unit, "bytes") == 0 ? 0 : magnitude >= 1 || value == 0 ? 3 : 6;
    printf("bench=%s impl=%s workers=%u metric=%s value=%.*f unit=%s%s%s\n", id, impl, workers,
           metric, digits, value, unit, note ? "  " : "", note ? note : "");
}

static inline void peer_fail(const char *id, const char *impl, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s %s: FAILED: ", impl, id);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* A "Field:   N kB" line of /proc/self/status, in bytes (-1 if missing). */
static inline double peer_status_bytes(const char *field)
{
    char line[256];
    size_t len = strlen(field);
    double kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0) {
            kib = strtod(line + len, NULL);
            break;
        }
    fclose(f);
    return kib < 0 ? -1 : kib * 1024.0;
}

/* Peak resident set so far (VmHWM), in bytes. Not getrusage's ru_maxrss,
 * which Linux carries across execve from the harness that forked us. */
static inline double peer_peak_rss_bytes(void)
{
    return peer_status_bytes("VmHWM:");
}

/* Current resident set (VmRSS), in bytes. */
static inline double peer_vm_rss_bytes(void)
{
    return peer_status_bytes("VmRSS:");
}

static inline int peer_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v). */
static inline double peer_median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, peer_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The fib and uts workloads themselves: one definition for every
 * implementation. */
#include "../workload.h"

/* The fork-join peers' shared halves of fib and uts: the serial reference
 * (the median of 3 timed runs, in ns; its answer in *answer) and the check
 * and result lines of a parallel run that took t_par ns. */
static inline double peer_fib_serial(int64_t n, int64_t *answer)
{
    double ns[3];
    for (int r = 0; r < 3; r++) {
        int64_t t0 = peer_now_ns();
        *answer = fib_serial(n);
        ns[r] = (double)(peer_now_ns() - t0);
    }
    return peer_median(ns, 3);
}

static inline void peer_fib_report(const char *impl, unsigned workers, int64_t n, int64_t parallel,
                                   int64_t serial, double t_par, double t_serial)
{
    if (parallel != serial || (n == 30 && parallel != 832040))
        peer_fail("fib", impl, "fib(%lld) = %lld, want %lld", (long long)n, (long long)parallel,
                  (long long)serial);
    int64_t spawns = fib_spawns(n);
    char note[128];
    snprintf(note, sizeof note, "fib(%lld)=%lld spawns=%lld serial_ms=%.3f", (long long)n,
             (long long)parallel, (long long)spawns, t_serial / 1e6);
    peer_line("fib", impl, workers, "ms", t_par / 1e6, "ms", note);
    peer_line("fib", impl, workers, "overhead_per_spawn",
              spawns ? (workers * t_par - t_serial) / (double)spawns : 0, "ns",
              "(workers*T_parallel - T_serial) / spawns");
}

static inline double peer_uts_serial(int64_t root_children, uint64_t *answer)
{
    double ns[3];
    for (int r = 0; r < 3; r++) {
        int64_t t0 = peer_now_ns();
        *answer = uts_serial(root_children);
        ns[r] = (double)(peer_now_ns() - t0);
    }
    return peer_median(ns, 3);
}

static inline void peer_uts_report(const char *impl, unsigned workers, int64_t root_children,
                                   uint64_t parallel, uint64_t serial, double t_par,
                                   double t_serial)
{
    if (parallel != serial || (root_children == UTS_ROOT_CHILDREN && parallel != UTS_NODES))
        peer_fail("uts", impl, "counted %llu nodes, serial DFS counts %llu",
                  (unsigned long long)parallel, (unsigned long long)serial);
    char note[128];
    snprintf(note, sizeof note, "nodes=%llu serial_ms=%.3f", (unsigned long long)parallel,
             t_serial / 1e6);
    peer_line("uts", impl, workers, "ms", t_par / 1e6, "ms", note);
    peer_line("uts", impl, workers, "nodes_per_s", (double)parallel / (t_par / 1e9), "nodes/s",
              NULL);
    peer_line("uts", impl, workers, "speedup_vs_serial", t_serial / t_par, "x", NULL);
}

#endif
