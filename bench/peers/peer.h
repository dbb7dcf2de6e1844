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

/* The uts tree of BENCH.md: splitmix64, root seed 42 with `root_children`
 * children, child j of seed s has seed sm(s * 8 + j), a non-root node has 8
 * children when (s >> 11) * 2^-53 < 0.124. */
#define PEER_UTS_ROOT_SEED 42u
#define PEER_UTS_ROOT_CHILDREN 2000
#define PEER_UTS_NODES 456513u /* the count at 2000 root children */

static inline uint64_t peer_uts_sm(uint64_t x)
{
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline int peer_uts_children(uint64_t seed)
{
    return (double)(seed >> 11) * 0x1p-53 < 0.124 ? 8 : 0;
}

static inline uint64_t peer_uts_serial_node(uint64_t seed)
{
    uint64_t n = 1;
    int c = peer_uts_children(seed);
    for (int j = 0; j < c; j++)
        n += peer_uts_serial_node(peer_uts_sm(seed * 8 + (uint64_t)j));
    return n;
}

static inline uint64_t peer_uts_serial(int64_t root_children)
{
    uint64_t n = 1;
    for (int64_t j = 0; j < root_children; j++)
        n += peer_uts_serial_node(peer_uts_sm(PEER_UTS_ROOT_SEED * 8 + (uint64_t)j));
    return n;
}

/* Serial fib and the number of spawns the fork-join version makes:
 * spawns(n) = 1 + spawns(n-1) + spawns(n-2) for n >= 2, else 0. */
static inline int64_t peer_fib_serial(int64_t n)
{
    return n < 2 ? n : peer_fib_serial(n - 1) + peer_fib_serial(n - 2);
}

static inline int64_t peer_fib_spawns(int64_t n)
{
    int64_t a = 0, b = 0; /* spawns(i-2), spawns(i-1) */
    for (int64_t i = 2; i <= n; i++) {
        int64_t c = 1 + b + a;
        a = b;
        b = c;
    }
    return n < 2 ? 0 : b;
}

#endif
