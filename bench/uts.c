/* uts: an unbalanced tree, one coroutine per node (BENCH.md `uts`).
 *
 * The tree, exactly as BENCH.md defines it: uts_sm() is splitmix64; a node is
 * its seed; the root's seed is 42 and it has 2000 children (--size N: N
 * children); child j of seed s has seed uts_sm(s * 8 + j); a non-root node has
 * 8 children when (s >> 11) * 2^-53 < 0.124, else none. 456513 nodes at full
 * size, up to 343 levels deep: most of the work sits in a few deep, narrow
 * subtrees, so it only spreads over the workers through stealing.
 *
 * Every node is a coroutine that spawns one coroutine per child, joins
 * them all (newest first) and returns the size of its subtree; the root
 * node is the root coroutine. The same process times a serial DFS of the
 * same tree (median of 3, before the runtime starts). Checksum: the count
 * equals the serial DFS count (and 456513 at full size). Metrics: ms,
 * nodes_per_s, speedup_vs_serial (T_serial / T_parallel), startup. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "workload.h"

/* A non-root node: arg is its seed, the result its subtree's size. */
static void *node_co(void *arg)
{
    uint64_t seed = (uint64_t)(uintptr_t)arg, n = 1;
    int c = uts_children(seed);
    weft_co *kids[8];

    for (int j = 0; j < c; j++)
        BENCH_CHECK("uts", weft_spawn(&kids[j], NULL, node_co,
                                      (void *)(uintptr_t)uts_sm(seed * 8 + (uint64_t)j)));
    /* Newest first: each join takes its child back from the bottom of the
     * queue, where thieves do not look (see weft_join). */
    for (int j = c - 1; j >= 0; j--) {
        void *count;
        BENCH_CHECK("uts", weft_join(kids[j], &count));
        n += (uint64_t)(uintptr_t)count;
    }
    return (void *)(uintptr_t)n;
}

struct uts_run {
    int64_t root_children;
    uint64_t nodes;
    int64_t elapsed_ns;
};

/* The root node, run as the root coroutine. */
static void *uts_root(void *arg)
{
    struct uts_run *run = arg;
    weft_co **kids = malloc((size_t)run->root_children * sizeof *kids);
    uint64_t n = 1;
    if (!kids)
        bench_fail("uts", "out of memory");

    int64_t t0 = bench_now_ns();
    for (int64_t j = 0; j < run->root_children; j++)
        BENCH_CHECK("uts", weft_spawn(&kids[j], NULL, node_co,
                                      (void *)(uintptr_t)uts_sm(UTS_ROOT_SEED * 8 + (uint64_t)j)));
    for (int64_t j = run->root_children - 1; j >= 0; j--) { /* as in node_co */
        void *count;
        BENCH_CHECK("uts", weft_join(kids[j], &count));
        n += (uint64_t)(uintptr_t)count;
    }
    run->elapsed_ns = bench_now_ns() - t0;
    run->nodes = n;
    free(kids);
    return NULL;
}

int bench_uts(const struct bench_opts *o)
{
    struct uts_run run = { o->size ? o->size : UTS_ROOT_CHILDREN, 0, 0 };
    uint64_t serial = 0;
    double serial_ns[3];
    unsigned workers;

    for (int r = 0; r < 3; r++) {
        int64_t t0 = bench_now_ns();
        serial = uts_serial(run.root_children);
        serial_ns[r] = (double)(bench_now_ns() - t0);
    }
    double t_serial = bench_median(serial_ns, 3);
    if (run.root_children == UTS_ROOT_CHILDREN && serial != UTS_NODES)
        bench_fail("uts", "serial DFS counts %llu nodes, BENCH.md says %u",
                   (unsigned long long)serial, UTS_NODES);

    int64_t startup_ns = bench_start("uts", o->workers, &workers);
    bench_run("uts", uts_root, &run);
    bench_stop("uts");

    if (run.nodes != serial)
        bench_fail("uts", "counted %llu nodes, serial DFS counts %llu",
                   (unsigned long long)run.nodes, (unsigned long long)serial);
    double t_par = (double)run.elapsed_ns;
    char note[128];
    snprintf(note, sizeof note, "nodes=%llu serial_ms=%.3f", (unsigned long long)run.nodes,
             t_serial / 1e6);
    bench_line("uts", workers, "ms", t_par / 1e6, "ms", note);
    bench_line("uts", workers, "nodes_per_s", (double)run.nodes / (t_par / 1e9), "nodes/s", NULL);
    bench_line("uts", workers, "speedup_vs_serial", t_serial / t_par, "x", NULL);
    bench_line("uts", workers, "startup", (double)startup_ns / 1e3, "us", "weft_start");
    return 0;
}
