/* ctx: the raw context switch, no scheduler (BENCH.md `ctx`).
 *
 * The thread's own context and one made with weft_ctx_make bounce control
 * back and forth; every weft_ctx_switch call is one switch, counted on the
 * side that makes it. Default 10,000,000 switches (--size N, rounded up to
 * an even number). Checksum: the count equals the number of switches.
 * Metric: ns_per_switch. No runtime is started (contexts are for plain
 * threads), so there is no startup metric. Peers: glibc swapcontext and
 * Boost.Context fcontext (bench/peers/ctx_*). */
#include <stdio.h>

#include "bench.h"

static weft_ctx *main_ctx;
/* volatile, as in the peers: every switch really counts in memory. */
static volatile uint64_t switches_done;

static void *bounce(void *value)
{
    for (;;) {
        switches_done++;
        value = weft_ctx_switch(main_ctx, value);
    }
    return value;
}

int bench_ctx(const struct bench_opts *o)
{
    int64_t switches = o->size ? o->size : 10000000;
    weft_ctx *other;

    switches += switches % 2; /* one round trip is two switches */
    main_ctx = weft_ctx_current();
    if (!main_ctx)
        bench_fail("ctx", "weft_ctx_current returned NULL");
    BENCH_CHECK("ctx", weft_ctx_make(&other, 64 * 1024, bounce));

    int64_t t0 = bench_now_ns();
    for (int64_t i = 0; i < switches / 2; i++) {
        switches_done++;
        weft_ctx_switch(other, NULL);
    }
    int64_t t1 = bench_now_ns();
    weft_ctx_free(other);

    if (switches_done != (uint64_t)switches)
        bench_fail("ctx", "counted %llu switches, want %lld", (unsigned long long)switches_done,
                   (long long)switches);
    char note[64];
    snprintf(note, sizeof note, "%lld switches", (long long)switches);
    bench_line("ctx", 1, "ns_per_switch", (double)(t1 - t0) / (double)switches, "ns", note);
    return 0;
}
