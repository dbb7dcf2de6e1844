/* fiber: the Boost.Fiber peer of weft-bench, for the workloads where fibers
 * apply: yield, spawn, skynet, pingpong, timers and park. Each is written as
 * weft's bench/<id>.c writes it, with boost::fibers::fiber in place of
 * weft_spawn, Boost's channels in place of weft_chan and
 * boost::this_fiber::{yield, sleep_for}; stacks are Boost's default
 * (fixedsize_stack, 128 KiB).
 *
 * Schedulers: one worker runs on the calling thread with Boost's default
 * round_robin; more run with algo::work_stealing on the main thread plus
 * workers-1 helper threads, which sleep in a fiber condition variable (so
 * their dispatchers run stolen fibers) until the workload is done. Boost's
 * work_stealing can be set up once per process, so pingpong runs its
 * one-worker half on a separate thread with its own round_robin scheduler.
 *
 * Flags, sizes, checksums and result lines are weft-bench's (see
 * bench/main.c and peer.h); impl=boost_fiber. */
#include <boost/fiber/all.hpp>
#include <boost/fiber/algo/work_stealing.hpp>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include "peer.h"

static const char *impl = "boost_fiber";
namespace bf = boost::fibers;

/* Waits for a count of fibers: done() is one atomic decrement, and only the
 * last one takes the lock to wake the waiter. */
class wait_group {
public:
    explicit wait_group(int64_t n) : count_(n) {}
    void done()
    {
        if (count_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::unique_lock<bf::mutex> lock(mutex_);
            zero_ = true;
            cond_.notify_all();
        }
    }
    void wait()
    {
        std::unique_lock<bf::mutex> lock(mutex_);
        cond_.wait(lock, [this] { return zero_; });
    }

private:
    std::atomic<int64_t> count_;
    bf::mutex mutex_;
    bf::condition_variable cond_;
    bool zero_ = false;
};

/* Runs fn on `workers` threads' worth of fiber scheduler, as described at the
 * top. fn runs on the main thread's main fiber and must wait for its own
 * fibers. */
static void run_scheduled(unsigned workers, const std::function<void()> &fn)
{
    if (workers <= 1) {
        fn();
        return;
    }
    static std::mutex done_mutex;
    static bf::condition_variable_any done_cond;
    static bool done = false;
    std::vector<std::thread> helpers;
    for (unsigned i = 1; i < workers; i++)
        helpers.emplace_back([workers] {
            bf::use_scheduling_algorithm<bf::algo::work_stealing>(workers);
            std::unique_lock<std::mutex> lock(done_mutex);
            done_cond.wait(lock, [] { return done; });
        });
    bf::use_scheduling_algorithm<bf::algo::work_stealing>(workers);
    fn();
    {
        std::unique_lock<std::mutex> lock(done_mutex);
        done = true;
    }
    done_cond.notify_all();
    for (auto &t : helpers)
        t.join();
}

/* yield: one worker, K fibers each yielding in a loop, 10,000,000 yields in
 * total (--size), K = 2 and 1000 (--k). Checksum: the counts sum to the total. */
static void bench_yield(const peer_opts *o)
{
    int64_t total = o->size ? o->size : 10000000;
    std::vector<int64_t> ks = {2, 1000};
    if (o->k)
        ks = {o->k};
    for (int64_t k : ks) {
        int64_t each = total / k;
        std::vector<int64_t> counts((size_t)k);
        std::vector<bf::fiber> fibers;
        int64_t t0 = peer_now_ns();
        for (int64_t i = 0; i < k; i++)
            fibers.emplace_back([each, &counts, i] {
                int64_t n = 0;
                for (int64_t j = 0; j < each; j++) {
                    boost::this_fiber::yield();
                    n++;
                }
                counts[(size_t)i] = n;
            });
        for (auto &f : fibers)
            f.join();
        int64_t t1 = peer_now_ns();
        int64_t sum = 0;
        for (int64_t c : counts)
            sum += c;
        if (sum != each * k)
            peer_fail("yield", impl, "counted %lld yields, want %lld", (long long)sum,
                      (long long)(each * k));
        char metric[64], note[64];
        snprintf(metric, sizeof metric, "ns_per_yield_k%lld", (long long)k);
        snprintf(note, sizeof note, "K=%lld fibers, %lld yields", (long long)k, (long long)sum);
        peer_line("yield", impl, 1, metric, (double)(t1 - t0) / (double)sum, "ns", note);
    }
}

/* spawn: 1,000,000 detached fibers (--size) each add 1 to an atomic counter;
 * a wait group waits for all. Checksum: counter == N. */
static void bench_spawn(const peer_opts *o, unsigned workers)
{
    int64_t n = o->size ? o->size : 1000000;
    std::atomic<int64_t> counter{0};
    int64_t t0 = 0, t1 = 0;
    run_scheduled(workers, [&] {
        wait_group wg(n);
        t0 = peer_now_ns();
        for (int64_t i = 0; i < n; i++)
            bf::fiber([&] {
                counter.fetch_add(1, std::memory_order_relaxed);
                wg.done();
            }).detach();
        wg.wait();
        t1 = peer_now_ns();
    });
    if (counter.load() != n)
        peer_fail("spawn", impl, "counter %lld, want %lld", (long long)counter.load(), (long long)n);
    char note[64];
    snprintf(note, sizeof note, "%lld fibers", (long long)n);
    peer_line("spawn", impl, workers, "ns_per_coroutine", (double)(t1 - t0) / (double)n, "ns", note);
    peer_line("spawn", impl, workers, "peak_rss", peer_peak_rss_bytes(), "bytes", NULL);
}

/* skynet: each parent makes a channel, starts 10 detached children that push
 * their sum on it and pops 10 values; 1,000,000 leaves (--size, rounded down
 * to a power of 10). The channel is a buffered_channel of 16, as in Boost's
 * own skynet benchmark (its unbuffered_channel may not be destroyed while a
 * pusher is still leaving push()). Checksum: leaves*(leaves-1)/2. */
typedef bf::buffered_channel<uint64_t> skynet_chan;

static void skynet(skynet_chan &out, uint64_t num, uint64_t size)
{
    if (size == 1) {
        out.push(num);
        return;
    }
    skynet_chan rc(16);
    for (uint64_t i = 0; i < 10; i++)
        bf::fiber(skynet, std::ref(rc), num + i * (size / 10), size / 10).detach();
    uint64_t sum = 0;
    for (int i = 0; i < 10; i++)
        sum += rc.value_pop();
    out.push(sum);
}

static void bench_skynet(const peer_opts *o, unsigned workers)
{
    uint64_t leaves = 1, limit = (uint64_t)(o->size ? o->size : 1000000);
    while (leaves * 10 <= limit)
        leaves *= 10;
    uint64_t sum = 0;
    int64_t t0 = 0, t1 = 0;
    run_scheduled(workers, [&] {
        skynet_chan c(16);
        t0 = peer_now_ns();
        bf::fiber(skynet, std::ref(c), 0, leaves).detach();
        sum = c.value_pop();
        t1 = peer_now_ns();
    });
    if (sum != leaves * (leaves - 1) / 2)
        peer_fail("skynet", impl, "sum %llu, want %llu", (unsigned long long)sum,
                  (unsigned long long)(leaves * (leaves - 1) / 2));
    char note[96];
    snprintf(note, sizeof note, "%llu leaves, sum=%llu", (unsigned long long)leaves,
             (unsigned long long)sum);
    peer_line("skynet", impl, workers, "ms", (double)(t1 - t0) / 1e6, "ms", note);
    peer_line("skynet", impl, workers, "peak_rss", peer_peak_rss_bytes(), "bytes", NULL);
}

/* pingpong: the running fiber and one other bounce a value over two
 * unbuffered channels, N = 1,000,000 round trips (--size); one worker, then
 * all. Checksum: the final value == N. */
static double pingpong_once(int64_t n)
{
    bf::unbuffered_channel<int64_t> ping, pong;
    bf::fiber other([&] {
        for (int64_t i = 0; i < n; i++)
            pong.push(ping.value_pop() + 1);
    });
    int64_t v = 0, t0 = peer_now_ns();
    for (int64_t i = 0; i < n; i++) {
        ping.push(v);
        v = pong.value_pop();
    }
    int64_t t1 = peer_now_ns();
    other.join();
    if (v != n)
        peer_fail("pingpong", impl, "final value %lld, want %lld", (long long)v, (long long)n);
    return (double)(t1 - t0) / (double)n;
}

static void bench_pingpong(const peer_opts *o, unsigned workers)
{
    int64_t n = o->size ? o->size : 1000000;
    char note[64];
    snprintf(note, sizeof note, "%lld round trips", (long long)n);
    double one = 0;
    std::thread([&] { one = pingpong_once(n); }).join(); /* its own round_robin */
    peer_line("pingpong", impl, 1, "ns_per_roundtrip", one, "ns", note);
    if (workers > 1) {
        double all = 0;
        run_scheduled(workers, [&] { all = pingpong_once(n); });
        peer_line("pingpong", impl, workers, "ns_per_roundtrip", all, "ns", note);
    }
}

/* timers: 100,000 fibers (--size); fiber i sleeps (i % 100) ms once.
 * Lateness = wake - (time before the sleep + duration), never negative. */
static void bench_timers(const peer_opts *o, unsigned workers)
{
    int64_t n = o->size ? o->size : 100000;
    std::vector<double> late((size_t)n);
    std::atomic<int64_t> woke{0}, early{0};
    int64_t t0 = 0, t1 = 0;
    run_scheduled(workers, [&] {
        wait_group wg(n);
        t0 = peer_now_ns();
        for (int64_t i = 0; i < n; i++)
            bf::fiber([&, i] {
                int64_t d = (i % 100) * 1000000;
                int64_t start = peer_now_ns();
                boost::this_fiber::sleep_for(std::chrono::nanoseconds(d));
                int64_t l = peer_now_ns() - (start + d);
                if (l < 0)
                    early.fetch_add(1);
                late[(size_t)i] = (double)l;
                woke.fetch_add(1);
                wg.done();
            }).detach();
        wg.wait();
        t1 = peer_now_ns();
    });
    if (woke.load() != n || early.load() != 0)
        peer_fail("timers", impl, "%lld of %lld woke, %lld early", (long long)woke.load(),
                  (long long)n, (long long)early.load());
    double sum = 0;
    for (double l : late)
        sum += l;
    double mean = sum / (double)n;
    std::sort(late.begin(), late.end());
    double p99 = late[(size_t)((99 * n + 99) / 100 - 1)];
    char note[64];
    snprintf(note, sizeof note, "%lld sleepers", (long long)n);
    peer_line("timers", impl, workers, "wall_ms", (double)(t1 - t0) / 1e6, "ms", note);
    peer_line("timers", impl, workers, "mean_lateness", mean / 1e3, "us", NULL);
    peer_line("timers", impl, workers, "p99_lateness", p99 / 1e3, "us", NULL);
}

/* park: 100,000 fibers (--size), each blocked popping its own unbuffered
 * channel (made before the first VmRSS reading). rss_per_parked = (VmRSS
 * with all parked - VmRSS before) / N. Then each is released with a push and
 * all are joined. Checksum: the values received sum to N(N+1)/2. */
static void bench_park(const peer_opts *o, unsigned workers)
{
    int64_t n = o->size ? o->size : 100000;
    std::vector<bf::unbuffered_channel<int64_t>> chans((size_t)n);
    std::atomic<int64_t> got{0};
    double before = 0, during = 0;
    run_scheduled(workers, [&] {
        wait_group parked(n);
        std::vector<bf::fiber> fibers;
        fibers.reserve((size_t)n);
        before = peer_vm_rss_bytes();
        for (int64_t i = 0; i < n; i++)
            fibers.emplace_back([&, i] {
                parked.done();
                got.fetch_add(chans[(size_t)i].value_pop());
            });
        parked.wait();
        boost::this_fiber::sleep_for(std::chrono::milliseconds(50));
        during = peer_vm_rss_bytes();
        for (int64_t i = 0; i < n; i++)
            chans[(size_t)i].push(i + 1);
        for (auto &f : fibers)
            f.join();
    });
    if (got.load() != n * (n + 1) / 2)
        peer_fail("park", impl, "received sum %lld, want %lld", (long long)got.load(),
                  (long long)(n * (n + 1) / 2));
    char note[96];
    snprintf(note, sizeof note, "%lld parked, VmRSS %.0f -> %.0f", (long long)n, before, during);
    peer_line("park", impl, workers, "rss_per_parked", (during - before) / (double)n, "bytes", note);
}

int main(int argc, char **argv)
{
    const char *ids = "yield spawn skynet pingpong timers park";
    peer_opts o;
    peer_parse(argc, argv, ids, &o);
    unsigned workers = o.workers ? o.workers : peer_default_workers();
    std::string id = o.id;
    if (id == "yield")
        bench_yield(&o);
    else if (id == "spawn")
        bench_spawn(&o, workers);
    else if (id == "skynet")
        bench_skynet(&o, workers);
    else if (id == "pingpong")
        bench_pingpong(&o, workers);
    else if (id == "timers")
        bench_timers(&o, workers);
    else if (id == "park")
        bench_park(&o, workers);
    else
        peer_usage(argv[0], ids);
    return 0;
}
