/* fj_omp: the fork-join workloads `fib` and `uts` on OpenMP tasks (gcc
 * -fopenmp, libgomp), written exactly as weft's bench/fib.c and bench/uts.c:
 *
 * fib:  naive fib(n) (default n=30, --size N): `omp task` for fib(n-1),
 *       fib(n-2) inline, `omp taskwait`; no cutoff. Checksum: equals the
 *       serial fib of the same process (832040 for n=30). Metrics: ms, and
 *       overhead_per_spawn = (workers * T_parallel - T_serial) / spawns, the
 *       CPU time the workers spent beyond the serial work, per spawn.
 * uts:  the tree of BENCH.md (root children 2000, --size N); one task per
 *       node, one `omp task` per child, `omp taskwait`. Checksum: the node
 *       count equals the serial DFS count (456513 at full size). Metrics: ms,
 *       nodes_per_s, speedup_vs_serial.
 *
 * The thread team is created by an untimed empty parallel region first
 * (runtime start-up is excluded, as it is for weft). Serial baselines are the
 * median of 3 runs in the same process. */
#define _GNU_SOURCE
#include <omp.h>
#include "peer.h"

static const char *impl = "openmp";

static int64_t fib_par(int64_t n)
{
    int64_t a, b;
    if (n < 2)
        return n;
#pragma omp task shared(a) firstprivate(n)
    a = fib_par(n - 1);
    b = fib_par(n - 2);
#pragma omp taskwait
    return a + b;
}

static uint64_t uts_node(uint64_t seed)
{
    uint64_t counts[8], n = 1;
    int c = uts_children(seed);
    for (int j = 0; j < c; j++) {
#pragma omp task shared(counts) firstprivate(j, seed)
        counts[j] = uts_node(uts_sm(seed * 8 + (uint64_t)j));
    }
#pragma omp taskwait
    for (int j = 0; j < c; j++)
        n += counts[j];
    return n;
}

static uint64_t uts_root(int64_t root_children)
{
    uint64_t *counts = calloc((size_t)root_children, sizeof *counts), n = 1;
    if (!counts)
        peer_fail("uts", impl, "out of memory");
    for (int64_t j = 0; j < root_children; j++) {
#pragma omp task shared(counts) firstprivate(j)
        counts[j] = uts_node(uts_sm(UTS_ROOT_SEED * 8 + (uint64_t)j));
    }
#pragma omp taskwait
    for (int64_t j = 0; j < root_children; j++)
        n += counts[j];
    free(counts);
    return n;
}

static void run_fib(const struct peer_opts *o, unsigned workers)
{
    volatile int64_t n_in = o->size ? o->size : 30;
    int64_t n = n_in, serial = 0, parallel = 0;
    double t_serial = peer_fib_serial(n, &serial);

    int64_t t0 = peer_now_ns();
#pragma omp parallel
#pragma omp single
    parallel = fib_par(n);
    double t_par = (double)(peer_now_ns() - t0);

    peer_fib_report(impl, workers, n, parallel, serial, t_par, t_serial);
}

static void run_uts(const struct peer_opts *o, unsigned workers)
{
    int64_t root_children = o->size ? o->size : UTS_ROOT_CHILDREN;
    uint64_t serial = 0, parallel = 0;
    double t_serial = peer_uts_serial(root_children, &serial);

    int64_t t0 = peer_now_ns();
#pragma omp parallel
#pragma omp single
    parallel = uts_root(root_children);
    double t_par = (double)(peer_now_ns() - t0);

    peer_uts_report(impl, workers, root_children, parallel, serial, t_par, t_serial);
}

int main(int argc, char **argv)
{
    struct peer_opts o;
    peer_parse(argc, argv, "fib uts", &o);
    unsigned workers = o.workers ? o.workers : peer_default_workers();
    omp_set_dynamic(0);
    omp_set_num_threads((int)workers);
#pragma omp parallel
    { /* start-up: create the team before anything is timed */
    }
    if (strcmp(o.id, "fib") == 0)
        run_fib(&o, workers);
    else if (strcmp(o.id, "uts") == 0)
        run_uts(&o, workers);
    else
        peer_usage(argv[0], "fib uts");
    return 0;
}
