/* skynet: a million coroutines talking over channels (BENCH.md `skynet`).
 *
 * The Go original (github.com/atemerev/skynet), coroutine for goroutine:
 * each parent makes an unbuffered channel, spawns 10 detached children
 * (child i covers the leaves num + i * size/10 ...), receives 10 values
 * and sends their sum on its own parent's channel; a leaf sends its number.
 * 6 levels, 1,000,000 leaves (--size N, rounded down to a power of 10). The
 * parent frees its channel after the 10th receive, as any user would (the
 * senders are then done with it). The clock runs from spawning the top
 * node until its sum arrives. Checksum: leaves*(leaves-1)/2 = 499999500000.
 * Metrics: ms, peak_rss (VmHWM of the whole process, bytes), startup. */
#include <stdio.h>

#include "bench.h"

struct skynet_node {
    weft_chan *out;
    int64_t num, size;
};

static void *skynet(void *arg)
{
    struct skynet_node *self = arg;
    int64_t sum = 0;

    if (self->size == 1) {
        BENCH_CHECK("skynet", weft_chan_send(self->out, &self->num, WEFT_FOREVER));
        return NULL;
    }
    /* The children read their node before sending, and this frame lives
     * until all 10 have sent, so the nodes can live on this stack. */
    struct skynet_node children[10];
    weft_chan *rc;
    BENCH_CHECK("skynet", weft_chan_make(&rc, sizeof(int64_t), 0));
    for (int i = 0; i < 10; i++) {
        children[i].out = rc;
        children[i].num = self->num + i * (self->size / 10);
        children[i].size = self->size / 10;
        BENCH_CHECK("skynet", weft_spawn(NULL, NULL, skynet, &children[i]));
    }
    for (int i = 0; i < 10; i++) {
        int64_t v;
        BENCH_CHECK("skynet", weft_chan_recv(rc, &v, WEFT_FOREVER));
        sum += v;
    }
    weft_chan_free(rc);
    BENCH_CHECK("skynet", weft_chan_send(self->out, &sum, WEFT_FOREVER));
    return NULL;
}

struct skynet_run {
    int64_t leaves, sum, elapsed_ns;
};

static void *skynet_root(void *arg)
{
    struct skynet_run *run = arg;
    struct skynet_node top = { NULL, 0, run->leaves };
    BENCH_CHECK("skynet", weft_chan_make(&top.out, sizeof(int64_t), 0));
    int64_t t0 = bench_now_ns();
    BENCH_CHECK("skynet", weft_spawn(NULL, NULL, skynet, &top));
    BENCH_CHECK("skynet", weft_chan_recv(top.out, &run->sum, WEFT_FOREVER));
    run->elapsed_ns = bench_now_ns() - t0;
    weft_chan_free(top.out);
    return NULL;
}

int bench_skynet(const struct bench_opts *o)
{
    int64_t limit = o->size ? o->size : 1000000;
    struct skynet_run run = { 1, 0, 0 };
    unsigned workers;

    while (run.leaves * 10 <= limit)
        run.leaves *= 10;
    int64_t startup_ns = bench_start("skynet", o->workers, &workers);
    bench_run("skynet", skynet_root, &run);
    bench_stop("skynet");

    int64_t want = run.leaves * (run.leaves - 1) / 2;
    if (run.sum != want)
        bench_fail("skynet", "sum %lld, want %lld", (long long)run.sum, (long long)want);
    char note[96];
    snprintf(note, sizeof note, "%lld leaves, sum=%lld", (long long)run.leaves, (long long)run.sum);
    bench_line("skynet", workers, "ms", (double)run.elapsed_ns / 1e6, "ms", note);
    bench_line("skynet", workers, "peak_rss", bench_peak_rss_bytes("skynet"), "bytes",
               "VmHWM, whole process");
    bench_line("skynet", workers, "startup", (double)startup_ns / 1e3, "us", "weft_start");
    return 0;
}
