/* fj_tbb: the fork-join workloads `fib` and `uts` on oneTBB's task_group,
 * written exactly as weft's bench/fib.c and bench/uts.c:
 *
 * fib:  naive fib(n) (default n=30, --size N): one task_group per call, run()
 *       fib(n-1), fib(n-2) inline, wait(); no cutoff. Checksum: equals the
 *       serial fib of the same process (832040 for n=30). Metrics: ms, and
 *       overhead_per_spawn = (workers * T_parallel - T_serial) / spawns, the
 *       CPU time the workers spent beyond the serial work, per spawn.
 * uts:  the tree of BENCH.md (root children 2000, --size N); one task per
 *       node, one run() per child, wait(). Checksum: the node count equals
 *       the serial DFS count (456513 at full size). Metrics: ms, nodes_per_s,
 *       speedup_vs_serial.
 *
 * Work runs in a task_arena of `workers` threads (the caller included),
 * capped by global_control; an untimed run of `workers` empty tasks brings
 * the threads up first (runtime start-up is excluded, as it is for weft).
 * Serial baselines are the median of 3 runs in the same process. */
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>
#include <vector>
#include "peer.h"

static const char *impl = "tbb";

static int64_t fib_par(int64_t n)
{
    if (n < 2)
        return n;
    int64_t a = 0;
    tbb::task_group g;
    g.run([&a, n] { a = fib_par(n - 1); });
    int64_t b = fib_par(n - 2);
    g.wait();
    return a + b;
}

static uint64_t uts_node(uint64_t seed)
{
    int c = uts_children(seed);
    if (c == 0)
        return 1;
    uint64_t counts[8], n = 1;
    tbb::task_group g;
    for (int j = 0; j < c; j++)
        g.run([&counts, seed, j] { counts[j] = uts_node(uts_sm(seed * 8 + (uint64_t)j)); });
    g.wait();
    for (int j = 0; j < c; j++)
        n += counts[j];
    return n;
}

static uint64_t uts_root(int64_t root_children)
{
    std::vector<uint64_t> counts((size_t)root_children);
    tbb::task_group g;
    for (int64_t j = 0; j < root_children; j++)
        g.run([&counts, j] {
            counts[(size_t)j] = uts_node(uts_sm(UTS_ROOT_SEED * 8 + (uint64_t)j));
        });
    g.wait();
    uint64_t n = 1;
    for (uint64_t c : counts)
        n += c;
    return n;
}

static void run_fib(const peer_opts *o, unsigned workers, tbb::task_arena &arena)
{
    volatile int64_t n_in = o->size ? o->size : 30;
    int64_t n = n_in, serial = 0, parallel = 0;
    double t_serial = peer_fib_serial(n, &serial);

    int64_t t0 = peer_now_ns();
    arena.execute([&] { parallel = fib_par(n); });
    double t_par = (double)(peer_now_ns() - t0);

    peer_fib_report(impl, workers, n, parallel, serial, t_par, t_serial);
}

static void run_uts(const peer_opts *o, unsigned workers, tbb::task_arena &arena)
{
    int64_t root_children = o->size ? o->size : UTS_ROOT_CHILDREN;
    uint64_t serial = 0, parallel = 0;
    double t_serial = peer_uts_serial(root_children, &serial);

    int64_t t0 = peer_now_ns();
    arena.execute([&] { parallel = uts_root(root_children); });
    double t_par = (double)(peer_now_ns() - t0);

    peer_uts_report(impl, workers, root_children, parallel, serial, t_par, t_serial);
}

int main(int argc, char **argv)
{
    peer_opts o;
    peer_parse(argc, argv, "fib uts", &o);
    unsigned workers = o.workers ? o.workers : peer_default_workers();
    tbb::global_control cap(tbb::global_control::max_allowed_parallelism, workers);
    tbb::task_arena arena((int)workers);
    arena.initialize();
    arena.execute([workers] { /* start-up: bring the worker threads up */
                              tbb::task_group g;
                              for (unsigned i = 0; i < workers; i++)
                                  g.run([] {});
                              g.wait();
    });
    if (strcmp(o.id, "fib") == 0)
        run_fib(&o, workers, arena);
    else if (strcmp(o.id, "uts") == 0)
        run_uts(&o, workers, arena);
    else
        peer_usage(argv[0], "fib uts");
    return 0;
}
