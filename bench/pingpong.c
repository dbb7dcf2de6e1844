/* pingpong: the round trip of a value through two channels (BENCH.md
 * `pingpong`).
 *
 * The root coroutine (ping) and one spawned coroutine (pong) share two
 * unbuffered channels, one each way: ping sends v, pong receives it and
 * sends v + 1 back, 1,000,000 times (--size N). Run twice, each in a fresh
 * runtime: with 1 worker (both on one thread: the switch and the hand-off)
 * and with all workers (--workers N, default one per core: the cross-thread
 * wake-up, unless the scheduler keeps the pair together). Checksum: the
 * final value == N. Metrics: ns_per_roundtrip and startup, once per worker
 * count (the workers= field tells them apart). */
#include <stdio.h>

#include "bench.h"

struct pingpong_run {
    int64_t n, final, elapsed_ns;
    weft_chan *ping, *pong;
};

static void *pong_main(void *arg)
{
    struct pingpong_run *run = arg;
    for (int64_t i = 0; i < run->n; i++) {
        int64_t v;
        BENCH_CHECK("pingpong", weft_chan_recv(run->ping, &v, WEFT_FOREVER));
        v++;
        BENCH_CHECK("pingpong", weft_chan_send(run->pong, &v, WEFT_FOREVER));
    }
    return NULL;
}

static void *ping_main(void *arg)
{
    struct pingpong_run *run = arg;
    weft_co *pong;
    int64_t v = 0;

    BENCH_CHECK("pingpong", weft_chan_make(&run->ping, sizeof(int64_t), 0));
    BENCH_CHECK("pingpong", weft_chan_make(&run->pong, sizeof(int64_t), 0));
    BENCH_CHECK("pingpong", weft_spawn(&pong, NULL, pong_main, run));
    int64_t t0 = bench_now_ns();
    for (int64_t i = 0; i < run->n; i++) {
        BENCH_CHECK("pingpong", weft_chan_send(run->ping, &v, WEFT_FOREVER));
        BENCH_CHECK("pingpong", weft_chan_recv(run->pong, &v, WEFT_FOREVER));
    }
    run->elapsed_ns = bench_now_ns() - t0;
    BENCH_CHECK("pingpong", weft_join(pong, NULL));
    weft_chan_free(run->ping);
    weft_chan_free(run->pong);
    run->final = v;
    return NULL;
}

int bench_pingpong(const struct bench_opts *o)
{
    int64_t n = o->size ? o->size : 1000000;
    unsigned asked[2] = { 1, o->workers }, got[2];
    int64_t startup_ns[2], elapsed_ns[2];

    for (int r = 0; r < 2; r++) {
        struct pingpong_run run = { n, 0, 0, NULL, NULL };
        startup_ns[r] = bench_start("pingpong", asked[r], &got[r]);
        bench_run("pingpong", ping_main, &run);
        bench_stop("pingpong");
        if (run.final != n)
            bench_fail("pingpong", "%u workers: final value %lld, want %lld", got[r],
                       (long long)run.final, (long long)n);
        elapsed_ns[r] = run.elapsed_ns;
    }
    char note[64];
    snprintf(note, sizeof note, "%lld round trips", (long long)n);
    for (int r = 0; r < 2; r++) {
        if (r > 0 && got[r] == got[0]) /* one core: both runs had 1 worker */
            break;
        bench_line("pingpong", got[r], "ns_per_roundtrip", (double)elapsed_ns[r] / (double)n, "ns",
                   note);
        bench_line("pingpong", got[r], "startup", (double)startup_ns[r] / 1e3, "us", "weft_start");
    }
    return 0;
}
