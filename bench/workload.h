/* The canonical fork-join workloads of BENCH.md, defined once for weft's
 * side (bench/fib.c, bench/uts.c) and the C and C++ peers (peers/peer.h),
 * so every implementation builds the same tree and counts the same spawns.
 * (The Go peer has its own copy, in Go.)
 *
 * The uts tree: splitmix64; the root's seed is 42 and it has
 * `root_children` children (2000 by default); child j of seed s has seed
 * sm(s * 8 + j); a non-root node has 8 children when
 * (s >> 11) * 2^-53 < 0.124, else none. 456513 nodes at 2000 children. */
#ifndef WEFT_BENCH_WORKLOAD_H
#define WEFT_BENCH_WORKLOAD_H

#include <stdint.h>

#define UTS_ROOT_SEED 42u
#define UTS_ROOT_CHILDREN 2000
#define UTS_NODES 456513u /* the count at 2000 root children */

static inline uint64_t uts_sm(uint64_t x)
{
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Children of a non-root node. */
static inline int uts_children(uint64_t seed)
{
    return (double)(seed >> 11) * 0x1p-53 < 0.124 ? 8 : 0;
}

/* The size of a non-root node's subtree, by serial DFS. */
static inline uint64_t uts_serial_node(uint64_t seed)
{
    uint64_t n = 1;
    int c = uts_children(seed);
    for (int j = 0; j < c; j++)
        n += uts_serial_node(uts_sm(seed * 8 + (uint64_t)j));
    return n;
}

/* The whole tree's node count, root included, by serial DFS. */
static inline uint64_t uts_serial(int64_t root_children)
{
    uint64_t n = 1;
    for (int64_t j = 0; j < root_children; j++)
        n += uts_serial_node(uts_sm(UTS_ROOT_SEED * 8 + (uint64_t)j));
    return n;
}

/* Serial fib, and the spawns the fork-join version makes:
 * spawns(n) = 1 + spawns(n-1) + spawns(n-2) for n >= 2, else 0. */
static inline int64_t fib_serial(int64_t n)
{
    return n < 2 ? n : fib_serial(n - 1) + fib_serial(n - 2);
}

static inline int64_t fib_spawns(int64_t n)
{
    int64_t a = 0, b = 0; /* spawns(i - 2), spawns(i - 1) */
    for (int64_t i = 2; i <= n; i++) {
        int64_t c = 1 + b + a;
        a = b;
        b = c;
    }
    return n < 2 ? 0 : b;
}

#endif
