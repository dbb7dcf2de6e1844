/* Workers: the scheduling loop, stealing, idling, and the runtime's life.
 *
 * Each worker is an OS thread running `worker_main` on its own stack (its
 * "scheduler fiber"). It picks a coroutine, switches into it, and when the
 * coroutine switches back it looks at why (yield, park, done) and acts on
 * the scheduler's stack. Picking order, each round:
 *  1. every 61st round, the injection queue first (Go's number: spawns from
 *     plain threads cannot starve behind a busy local queue);
 *  2. the handoff slot `runnext` (a coroutine woken by this worker runs
 *     next, for locality), at most 16 times in a row, then the queues get
 *     their turn: a ping-pong pair cannot starve the others;
 *  3. the oldest woken coroutine (the wake queue), at most 32 in a row;
 *  4. the oldest spawned or yielding coroutine (the deque, FIFO);
 *  5. due timers; the injection queue;
 *  6. stealing: half of a victim's wake queue, else of its deque (one CAS
 *     an item, up to 32; one from a deque shorter than 256: see
 *     steal_queue), nearest victims first (topology.c);
 *  7. sleeping on a futex until woken or until the earliest timer.
 *
 * Two queues, because a coroutine that was woken (its timer fired, its
 * channel got a value) has been waiting already, while a freshly spawned
 * one has not: with one FIFO, 1,000 timers firing behind 50,000 spawned
 * coroutines waited for all of them (the `timers` workload's lateness
 * went from milliseconds to hundreds). Spawn order and the yield rule are
 * about the deque alone, so API.md's ordering still holds; the bound of 32
 * keeps a stream of wake-ups from starving spawned coroutines.
 *
 * Idling without lost wake-ups or a thundering herd (the scheme of Go's
 * proc.go, "Worker thread parking/unparking"): a worker out of work makes
 * one uncounted steal round, then becomes "spinning" (at most half the
 * workers at once) and tries to steal for a while; then it publishes
 * itself as sleeping, issues a seq_cst fence, and re-checks every queue
 * before it sleeps. Whoever queues work that others could take issues the
 * mirror fence and wakes one sleeper, only when nobody is spinning (the
 * spinner would find the work) and marking the woken worker spinning at
 * once, so a burst of spawns wakes workers one at a time. A spinner that
 * finds work wakes the next one if it was the last spinner, so the wave
 * continues while work remains. Either the sleeper sees the new work, or
 * the waker sees the sleeper: the two fences make it impossible for both
 * to miss. */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "../alloc.h"
#include "../ctx/stack.h"
#include "sched.h"

#define SPIN_ROUNDS 64
#define RUNNEXT_MAX 16
#define STEAL_MAX 32
#define STEAL_SHORT (8 * STEAL_MAX)
#define WAKE_MAX 32
#define INJECT_EVERY 61 /* rounds between the injection queue's turns */
#define TRIM_IDLE_NS (20 * 1000000LL)
#define WORKER_STACK_BYTES (256 * 1024)

weft__runtime weft__rt;

static WEFT_TLS weft__worker *tls_worker;
extern WEFT_TLS int weft__tls_on_worker; /* ctx.c */
static _Atomic int shutdown_flag;
static _Atomic uint64_t wakeups_outside;
static int pin_mode;

weft__worker *weft__worker_self(void)
{
    return tls_worker;
}

/* --- injection queue ----------------------------------------------------- */

static void inject_push(weft_co *co)
{
    co->next = NULL;
    weft__lock_acquire(&weft__rt.inject_lock);
    if (weft__rt.inject_tail)
        weft__rt.inject_tail->next = co;
    else
        weft__rt.inject_head = co;
    weft__rt.inject_tail = co;
    /* Relaxed: a hint read without the lock; the idle protocol's fences
     * order it against sleepers. */
    atomic_store_explicit(&weft__rt.inject_len,
                          atomic_load_explicit(&weft__rt.inject_len, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    weft__lock_release(&weft__rt.inject_lock);
}

static weft_co *resolve_entry(weft__worker *w, weft_co *entry);

/* A deque entry that found no room (no memory to grow the deque) goes to
 * the injection queue instead. That queue links descriptors through
 * ->next and cannot hold tagged entries, so the entry is resolved first,
 * as a worker taking it would: a ticket becomes its descriptor, a spawn
 * entry is taken (its joiner can no longer claim it; a tombstone is
 * dropped). The injected coroutine is untagged, like a plain thread's. */
static WEFT_NOINLINE void inject_entry(weft__worker *w, weft_co *entry)
{
    weft_co *co = resolve_entry(w, entry);
    if (co)
        inject_push(co);
}

static inline __attribute__((always_inline)) void local_push(weft__worker *w, weft_co *entry)
{
    if (WEFT_UNLIKELY(weft__deque_push(&w->deque, entry) != 0))
        inject_entry(w, entry);
}

static void wake_push(weft__worker *w, weft_co *co)
{
    if (WEFT_UNLIKELY(weft__deque_push(&w->wakeq, co) != 0))
        inject_push(co);
}

/* Takes a fair share of the injection queue: one to run, the rest queued. */
static weft_co *inject_take(weft__worker *w)
{
    if (atomic_load_explicit(&weft__rt.inject_len, memory_order_relaxed) == 0)
        return NULL;
    weft__lock_acquire(&weft__rt.inject_lock);
    long len = atomic_load_explicit(&weft__rt.inject_len, memory_order_relaxed);
    long take = len / (long)weft__rt.nworkers + 1;
    if (take > len)
        take = len;
    if (take > STEAL_MAX)
        take = STEAL_MAX;
    weft_co *first = NULL, *rest = NULL, *rest_tail = NULL;
    for (long i = 0; i < take; i++) {
        weft_co *co = weft__rt.inject_head;
        weft__rt.inject_head = co->next;
        co->next = NULL;
        if (!first)
            first = co;
        else {
            if (rest_tail)
                rest_tail->next = co;
            else
                rest = co;
            rest_tail = co;
        }
    }
    if (!weft__rt.inject_head)
        weft__rt.inject_tail = NULL;
    atomic_store_explicit(&weft__rt.inject_len, len - take, memory_order_relaxed);
    weft__lock_release(&weft__rt.inject_lock);
    while (rest) {
        weft_co *n = rest->next;
        local_push(w, rest);
        rest = n;
    }
    return first;
}

/* --- idling ---------------------------------------------------------------- */

static bool work_visible(void)
{
    if (atomic_load_explicit(&weft__rt.inject_len, memory_order_relaxed) > 0)
        return true;
    for (unsigned i = 0; i < weft__rt.nworkers; i++)
        if (weft__deque_size(&weft__rt.workers[i]->deque) > 0 ||
            weft__deque_size(&weft__rt.workers[i]->wakeq) > 0)
            return true;
    return false;
}

static void wake_worker(weft__worker *w)
{
    /* Release: pairs with the sleeper's acquire load of wake_word. */
    atomic_store_explicit(&w->wake_word, 1, memory_order_release);
    weft__futex_wake(&w->wake_word, 1);
}

void weft__notify(void)
{
    /* Seq_cst fence: the work just queued is ordered before the reads of
     * the sleeping/spinning counts; pairs with the fence in sleep_worker
     * (Dekker: either it sees our work or we see it sleeping). */
    weft_fence_seq_cst();
    if (atomic_load_explicit(&weft__rt.spinning, memory_order_relaxed) != 0 ||
        atomic_load_explicit(&weft__rt.sleeping, memory_order_relaxed) == 0)
        return;
    /* Become the one who wakes: spinning 0 -> 1 on the woken's behalf. */
    unsigned zero = 0;
    if (!atomic_compare_exchange_strong_explicit(&weft__rt.spinning, &zero, 1, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return;
    weft__lock_acquire(&weft__rt.idle_lock);
    if (weft__rt.idle_len == 0) {
        weft__lock_release(&weft__rt.idle_lock);
        atomic_fetch_sub_explicit(&weft__rt.spinning, 1, memory_order_seq_cst);
        return;
    }
    weft__worker *w = weft__rt.workers[weft__rt.idle[--weft__rt.idle_len]];
    atomic_fetch_sub_explicit(&weft__rt.sleeping, 1, memory_order_seq_cst);
    weft__lock_release(&weft__rt.idle_lock);
    wake_worker(w);
}

/* Removes w from the idle stack; false if a waker already took it out. */
static bool idle_remove(weft__worker *w)
{
    bool found = false;
    weft__lock_acquire(&weft__rt.idle_lock);
    for (unsigned i = 0; i < weft__rt.idle_len; i++) {
        if (weft__rt.idle[i] == w->index) {
            weft__rt.idle[i] = weft__rt.idle[--weft__rt.idle_len];
            found = true;
            break;
        }
    }
    if (found)
        atomic_fetch_sub_explicit(&weft__rt.sleeping, 1, memory_order_seq_cst);
    weft__lock_release(&weft__rt.idle_lock);
    return found;
}

static void stop_spinning(weft__worker *w, bool found_work)
{
    if (!w->spinning)
        return;
    w->spinning = false;
    unsigned before = atomic_fetch_sub_explicit(&weft__rt.spinning, 1, memory_order_seq_cst);
    /* The last spinner found work: there may be more, so wake the next. */
    if (found_work && before == 1)
        weft__notify();
}

static void sleep_worker(weft__worker *w)
{
    stop_spinning(w, false);
    weft__live_return(w); /* so weft_stop can see 0 while we sleep */
    atomic_store_explicit(&w->wake_word, 0, memory_order_relaxed);
    weft__lock_acquire(&weft__rt.idle_lock);
    weft__rt.idle[weft__rt.idle_len++] = w->index;
    atomic_fetch_add_explicit(&weft__rt.sleeping, 1, memory_order_seq_cst);
    weft__lock_release(&weft__rt.idle_lock);
    /* Seq_cst fence: our "sleeping" before the re-check of the queues;
     * pairs with the fence in weft__notify. */
    weft_fence_seq_cst();
    if (!work_visible() && !atomic_load(&shutdown_flag)) {
        int64_t next = atomic_load_explicit(&w->timer_next, memory_order_relaxed);
        /* Surplus pooled stacks go back to the system only after the
         * worker has been idle a while (TRIM_IDLE_NS): trimming at every
         * brief idle moment unmapped stacks a busy phase needed again a
         * millisecond later (skynet spent a tenth of its time so). */
        int64_t trim_at = weft_now() + TRIM_IDLE_NS;
        /* Acquire: pairs with wake_worker's release. */
        while (atomic_load_explicit(&w->wake_word, memory_order_acquire) == 0) {
            int64_t deadline = next < trim_at ? next : trim_at;
            if (deadline == INT64_MAX)
                deadline = WEFT_FOREVER;
            if (weft__futex_wait(&w->wake_word, 0, deadline) != ETIMEDOUT)
                continue;
            if (next != INT64_MAX && weft_now() >= next)
                break; /* a timer is due */
            if (weft__stack_trim(256) == 0)
                trim_at = INT64_MAX; /* nothing left to trim: sleep on */
        }
    }
    /* Whoever took us off the idle stack counted us as spinning
     * (weft__notify), and its wake is on the way; if we are still on it,
     * nobody did: a timer is due, or weft_stop woke us (it leaves sleepers
     * on the stack, uncounted). The wake word alone cannot tell these
     * apart, since weft_stop sets it too. */
    if (!idle_remove(w)) {
        while (atomic_load_explicit(&w->wake_word, memory_order_acquire) == 0)
            weft_cpu_relax();
        w->spinning = true;
    }
}

/* --- picking work ------------------------------------------------------------ */

static uint64_t next_random(weft__worker *w)
{
    uint64_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return w->rng = x;
}

/* Steals from one of the victim's queues into the same queue of ours;
 * returns one to run.
 *
 * How much: half, up to STEAL_MAX, as Go and Tokio take, except from a
 * deque (coroutines not yet started) shorter than STEAL_SHORT, where one.
 * The oldest items of a short deque are the roots of the largest
 * unstarted subtrees of a spawn tree; one keeps a thief busy for long,
 * and taking several only splits the tree into more parts that each
 * worker then walks in spawn order, breadth-first, every started node
 * that waits for its children holding a stack page. In skynet a thief
 * that took 5 of the first 10 children left two such walks, each parking
 * its half of the 111,111 inner nodes before any leaf ran: a median of
 * 547 ms over 24 runs, against 263-331 ms taking one (and 96-260 MB peak
 * RSS instead of 420-620 MB). A long deque is plenty of work either way,
 * and batches keep a stream of small spawns cheap: taking one at any
 * length made `spawn` 30% slower, this rule 2-6%; fib and uts did not
 * move. The wake queue holds started coroutines, with no subtrees to
 * split: half of it, always. */
static weft_co *steal_queue(weft__worker *w, weft__deque *from, weft__deque *to, bool spawns)
{
    int64_t n = weft__deque_size(from);
    if (n <= 0)
        return NULL;
    int64_t want = spawns && n < STEAL_SHORT ? 1 : (n + 1) / 2;
    if (want > STEAL_MAX)
        want = STEAL_MAX;
    weft_co *first = weft__deque_steal(from);
    if (!first)
        return NULL;
    weft__count(&w->stats.steals);
    for (int64_t i = 1; i < want; i++) {
        weft_co *co = weft__deque_steal(from);
        if (!co)
            break;
        weft__count(&w->stats.steals);
        if (WEFT_UNLIKELY(weft__deque_push(to, co) != 0))
            inject_entry(w, co);
    }
    return first;
}

static weft_co *steal_from(weft__worker *w, weft__worker *victim, int64_t now)
{
    weft__count(&w->stats.steal_attempts);
    /* A busy victim cannot fire its own timers until its coroutine
     * yields: fire its due ones here, so they wake on time (into our wake
     * queue; as Go's stealWork does). */
    if (atomic_load_explicit(&victim->timer_next, memory_order_relaxed) <= now)
        weft__timer_run(victim, now);
    weft_co *co = steal_queue(w, &victim->wakeq, &w->wakeq, false);
    if (!co)
        co = steal_queue(w, &victim->deque, &w->deque, true);
    if (!co)
        co = weft__deque_take(&w->wakeq); /* the timers we just fired */
    return co;
}

static weft_co *steal_round(weft__worker *w)
{
    unsigned n = weft__rt.nworkers - 1;
    int64_t now = weft_now();
    unsigned i = 0;
    while (i < n) {
        /* Victims of one distance class [i, j), visited from a random
         * starting point. */
        unsigned j = i + 1;
        while (j < n && w->victim_level[j] == w->victim_level[i])
            j++;
        unsigned span = j - i, start = (unsigned)(next_random(w) % span);
        for (unsigned k = 0; k < span; k++) {
            weft__worker *victim = weft__rt.workers[w->victims[i + (start + k) % span]];
            weft_co *co = steal_from(w, victim, now);
            if (co)
                return co;
        }
        i = j;
    }
    return NULL;
}

/* The owner's FIFO take: without its CAS when one worker is all there is
 * (nobody steals; plain threads never touch a deque). */
static inline weft_co *take(weft__deque *d)
{
    return weft__rt.nworkers == 1 ? weft__deque_take_solo(d) : weft__deque_take(d);
}

/* Sorts w's victims by the topology and binds w's thread to its core,
 * once hwloc's discovery is done (topology.c: it may still run when the
 * workers start). Until then a worker that is to be bound is bound by
 * the quick count: left to the kernel, two new workers of a two-CPU
 * machine started on the same CPU while the discovery thread held the
 * other, and shared it for up to 20 ms (a fib(30) then took 33 ms
 * instead of 20), since a worker busy with inline joins may not look
 * for the topology again for that long. Only w reads its victim arrays. */
static void place(weft__worker *w)
{
    w->placed = weft__topology_victims(w->index, weft__rt.nworkers, w->victims, w->victim_level);
    /* AUTO binds only a runtime with one worker per core it may use. With
     * fewer, binding worker i to core i put every weft process of the
     * machine on its first cores (two single-worker processes shared core
     * 0 while the others idled): the kernel places them better. */
    if (pin_mode == WEFT_PIN_ON ||
        (pin_mode == WEFT_PIN_AUTO && weft__rt.nworkers == weft__topology_cores())) {
        if (w->placed)
            weft__topology_pin(w->index);
        else
            weft__topology_pin_quick(w->index);
    }
}

static inline void place_when_ready(weft__worker *w)
{
    if (WEFT_UNLIKELY(!w->placed) && weft__topology_ready())
        place(w);
}

/* local_next's whole rule (see the top of this file); the inline part
 * below takes the common case. */
static WEFT_NOINLINE weft_co *local_next_slow(weft__worker *w)
{
    if (w->inject_in == 0) {
        w->inject_in = INJECT_EVERY;
        place_when_ready(w);
        weft_co *co = inject_take(w);
        if (co)
            return co;
    }
    weft_co *co;
    if (w->runnext && w->runnext_streak < RUNNEXT_MAX) {
        co = w->runnext;
        w->runnext = NULL;
        w->runnext_streak++;
        weft__count(&w->stats.handoffs);
        return co;
    }
    w->runnext_streak = 0;
    if (w->wake_streak < WAKE_MAX && (co = take(&w->wakeq)) != NULL) {
        w->wake_streak++;
        return co;
    }
    w->wake_streak = 0;
    if ((co = take(&w->deque)) != NULL || (co = take(&w->wakeq)) != NULL)
        return co;
    if ((co = w->runnext) != NULL) {
        w->runnext = NULL;
        weft__count(&w->stats.handoffs);
    }
    return co;
}

/* Takes the deque's oldest coroutine. On a runtime of one worker it also
 * starts loading the saved frame of the one after it, which runs next
 * unless something is woken meanwhile: with many coroutines taking turns
 * (the `yield` workload's K=1000) each switch otherwise waits for the
 * resumed stack's frame to come from L2 or memory. Only there: with
 * thieves about, the entry after ours may be stolen, run and ended while
 * we read its fields, and its descriptor reused for something else. */
static inline __attribute__((always_inline)) weft_co *take_deque(weft__worker *w)
{
    if (weft__rt.nworkers != 1)
        return weft__deque_take(&w->deque);
    void *after;
    weft_co *co = weft__deque_take_solo_next(&w->deque, &after);
    weft_co *next = after;
    if (next && weft__is_co_entry(next) && next->resume) {
        const char *sp = next->resume->sp; /* its saved frame (ctx.c) */
        __builtin_prefetch(sp);
        __builtin_prefetch(sp + 64);
    }
    return co;
}

/* The next coroutine of w's own queues, or NULL. Inline for the case of
 * every yield and most switches: no injection turn, no handoff, no woken
 * coroutine; then it is the deque's oldest (the slow path would reach the
 * same answer after resetting both streaks). The wake queue is w's own:
 * only w adds to it, so seen empty it stays empty here. */
static inline __attribute__((always_inline)) weft_co *local_next(weft__worker *w)
{
    w->tick++;
    if (WEFT_LIKELY(--w->inject_in != 0 && !w->runnext && weft__deque_size(&w->wakeq) == 0)) {
        w->runnext_streak = 0;
        w->wake_streak = 0;
        return take_deque(w);
    }
    return local_next_slow(w);
}

static void run_timers(weft__worker *w, bool force)
{
    int64_t next = atomic_load_explicit(&w->timer_next, memory_order_relaxed);
    if (next == INT64_MAX || (!force && (w->tick & 7) != 0))
        return;
    int64_t now = weft_now();
    if (next <= now)
        weft__timer_run(w, now);
}

static weft_co *find_work(weft__worker *w)
{
    for (;;) {
        run_timers(w, false);
        weft_co *co = local_next(w);
        if (!co) {
            run_timers(w, true);
            if ((co = local_next(w)) == NULL)
                co = inject_take(w);
        }
        if (co) {
            /* A worker woken as a spinner may find work before it steals:
             * it must stop counting as spinning, or weft__notify would
             * keep trusting a spinner that is busy running coroutines. */
            stop_spinning(w, true);
            return co;
        }
        place_when_ready(w);
        if (weft__rt.nworkers > 1) {
            if (!w->spinning) {
                /* One round before counting as spinning: a worker that
                 * runs out of work and steals at once (a thief draining a
                 * spawner one coroutine at a time) would otherwise write
                 * the shared spinning count twice per coroutine, and every
                 * spawner's weft__notify reads that line. Not counted, it
                 * cannot make notify skip a wake-up it owes a sleeper. */
                if ((co = steal_round(w)) != NULL || (co = inject_take(w)) != NULL)
                    return co;
                unsigned spinning = atomic_load_explicit(&weft__rt.spinning, memory_order_relaxed);
                if (2 * spinning < weft__rt.nworkers) {
                    w->spinning = true;
                    atomic_fetch_add_explicit(&weft__rt.spinning, 1, memory_order_seq_cst);
                }
            }
            if (w->spinning) {
                for (int round = 0; round < SPIN_ROUNDS; round++) {
                    if ((co = steal_round(w)) != NULL || (co = inject_take(w)) != NULL) {
                        stop_spinning(w, true);
                        return co;
                    }
                    if (atomic_load_explicit(&w->timer_next, memory_order_relaxed) <= weft_now())
                        break;
                    weft_cpu_relax();
                }
            }
        }
        if (atomic_load(&shutdown_flag) && !work_visible() && !w->runnext) {
            stop_spinning(w, false);
            return NULL;
        }
        if (atomic_load_explicit(&w->timer_next, memory_order_relaxed) <= weft_now())
            continue;
        sleep_worker(w);
    }
}

/* --- running ------------------------------------------------------------------ */

/* The descriptor a queue entry stands for, taken by this worker: a
 * ticket's new descriptor, a spawn entry's coroutine (NULL when its joiner
 * claimed it: a tombstone, consumed here), or the entry itself. */
static weft_co *resolve_entry(weft__worker *w, weft_co *entry)
{
    if (weft__is_ticket_entry(entry)) {
        weft_co *co = weft__co_from_ticket(w, weft__entry_ticket(entry));
        if (WEFT_UNLIKELY(!co)) {
            fprintf(stderr, "weft: out of memory for a coroutine descriptor\n");
            abort();
        }
        return co;
    }
    if (!weft__is_spawn_entry(entry))
        return entry;
    /* A spawn's queue entry: the coroutine is ours to start unless its
     * joiner claimed it (co.c); then the entry is a tombstone. */
    weft_co *co = weft__entry_co(entry);
    unsigned q = atomic_load_explicit(&co->qstate, memory_order_relaxed);
    if (q != WEFT__Q_TAKEN) /* TAKEN from the start: detached */
        q = atomic_fetch_or_explicit(&co->qstate, WEFT__Q_TAKEN, memory_order_acq_rel);
    if (WEFT_UNLIKELY(q & WEFT__Q_CLAIMED)) {
        if (atomic_fetch_or_explicit(&co->qstate, WEFT__Q_CONSUMED, memory_order_acq_rel) &
            WEFT__Q_JOINER_DONE)
            weft__co_free(w, co);
        return NULL;
    }
    return co;
}

/* prepare's rare cases: a ticket or a spawn entry (claimed by its joiner:
 * NULL), and a first run, which gets its stack here. */
static WEFT_NOINLINE weft_co *prepare_slow(weft__worker *w, weft_co *entry)
{
    weft_co *co = resolve_entry(w, entry);
    if (!co)
        return NULL;
    if (!co->resume) {
        weft__stack *s;
        if (WEFT_UNLIKELY(weft__stack_get(co->stack_size, &s) != 0)) {
            fprintf(stderr, "weft: out of memory for a coroutine stack\n");
            abort();
        }
        weft__fiber_init(&co->fiber, s, WEFT__FIBER_COROUTINE, co->fiber.name, weft__co_entry, co);
        co->resume = &co->fiber;
    }
    return co;
}

/* Makes a queue entry ready to switch into: resolves a ticket or a spawn
 * entry (NULL for a tombstone) and gives a first run its stack. A started
 * coroutine (a yield's, a wake-up's) needs neither. */
static inline __attribute__((always_inline)) weft_co *prepare(weft__worker *w, weft_co *entry)
{
    if (WEFT_LIKELY(weft__is_co_entry(entry) && entry->resume))
        return entry;
    return prepare_slow(w, entry);
}

/* Whatever switches into a coroutine or into the scheduler leaves in
 * w->prev the coroutine it switched away from; the side that lands runs
 * this first. It acts for the coroutine that left, now that its stack is
 * no longer in use: a yielded coroutine goes to the back of the deque, a
 * parked one's callback runs (Go's unlockf), a finished one is ended.
 * Doing it after the switch is what makes the direct switch safe: nobody
 * can take a coroutine from a queue while it still runs on its stack. */
static void woken_to_deque(weft__worker *w)
{
    weft_co *co;
    while ((co = take(&w->wakeq)) != NULL)
        local_push(w, co);
    if ((co = w->runnext) != NULL) {
        w->runnext = NULL;
        local_push(w, co);
    }
}

/* The whole rule; settle() below takes the common case inline and calls
 * this for the rest (so does a new coroutine's first run, co.c). */
WEFT_NOINLINE void weft__settle(weft__worker *w)
{
    weft_co *prev = w->prev;
    if (!prev)
        return;
    w->prev = NULL;
    switch (prev->why) {
    case WEFT__WHY_YIELD:
        /* Behind every runnable coroutine, woken ones included: they move
         * to the deque first (they were allowed to run next, not obliged
         * to), or the wake queue's starvation bound could let the yielder
         * run again before them. */
        if (WEFT_UNLIKELY(w->runnext || weft__deque_size(&w->wakeq) > 0))
            woken_to_deque(w);
        local_push(w, prev);
        if (weft__rt.nworkers > 1)
            weft__notify();
        break;
    case WEFT__WHY_PARK:
        if (prev->after(prev->after_arg))
            weft__count(&w->stats.parks);
        else
            weft__ready(prev, true); /* completed meanwhile: runs next */
        break;
    default:
        weft__co_finished(w, prev);
        break;
    }
}

/* Inline on the switch path for its common case: nothing to settle (the
 * scheduler switched us in), or a yield with no woken coroutine waiting,
 * which goes straight to the back of the deque. */
static inline __attribute__((always_inline)) void settle(weft__worker *w)
{
    weft_co *prev = w->prev;
    if (!prev)
        return;
    if (WEFT_LIKELY(prev->why == WEFT__WHY_YIELD && !w->runnext &&
                    weft__deque_size(&w->wakeq) == 0)) {
        w->prev = NULL;
        local_push(w, prev);
        if (weft__rt.nworkers > 1)
            weft__notify();
        return;
    }
    weft__settle(w);
}

/* Switches away from coroutine `co` (running on fiber `from`), which has
 * set co->why: straight into the next runnable coroutine of this worker
 * when there is one (one switch instead of two through the scheduler), else
 * to the scheduler. Returns the worker the coroutine resumes on; it has
 * settled by then. */
static weft__worker *switch_out(weft__worker *w, weft_co *co, weft__fiber *from)
{
    w->prev = co;
    run_timers(w, false);
    weft_co *next = NULL, *entry;
    while ((entry = local_next(w)) != NULL && (next = prepare(w, entry)) == NULL)
        ;
    if (next) {
        w->current = next;
        w->spawn_burst = 0;
        weft__count(&w->stats.switches);
        if (co->why == WEFT__WHY_DONE)
            weft__fiber_exit(from, next->resume, w);
        w = weft__fiber_switch(from, next->resume, w);
    } else {
        w->current = NULL;
        if (co->why == WEFT__WHY_DONE)
            weft__fiber_exit(from, &w->fiber, w);
        w = weft__fiber_switch(from, &w->fiber, w);
    }
    settle(w);
    return w;
}

static void run(weft__worker *w, weft_co *entry)
{
    weft_co *co = prepare(w, entry);
    if (!co)
        return;
    w->current = co;
    w->spawn_burst = 0;
    weft__count(&w->stats.switches);
    weft__fiber_switch(&w->fiber, co->resume, w);
    settle(w);
}

static void *worker_main(void *arg)
{
    weft__worker *w = arg;
    tls_worker = w;
    weft__tls_on_worker = 1;
    /* Timer slack (50 us by default) would add to every timer's lateness. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    place(w);
    weft__overflow_init();
    w->fiber = *weft__fiber_thread();
    weft_co *co;
    while ((co = find_work(w)) != NULL)
        run(w, co);
    weft__live_return(w);
    weft__co_cache_drain(w);
    tls_worker = NULL;
    weft__tls_on_worker = 0;
    return NULL;
}

/* --- scheduling entry points ---------------------------------------------------- */

void weft__ready(weft_co *co, bool next)
{
    weft__worker *w = weft__worker_self();
    if (!w) {
        /* co is live until it ends, but it may end (and weft_stop may
         * free the workers) before notify is done with them: hold the
         * runtime across both. */
        weft__live_hold();
        atomic_fetch_add_explicit(&wakeups_outside, 1, memory_order_relaxed);
        inject_push(co);
        weft__notify();
        weft__live_unhold();
        return;
    }
    weft__count(&w->stats.wakeups);
    if (next) {
        weft_co *old = w->runnext;
        w->runnext = co;
        if (!old)
            return;
        co = old; /* the previous occupant goes to the back of the queue */
    }
    wake_push(w, co);
    if (weft__rt.nworkers > 1)
        weft__notify();
}

/* A new coroutine's queue entry (a spawn entry or a ticket) onto the
 * calling worker's deque, where an idle worker may steal it. */
static void push_spawned(weft__worker *w, weft_co *entry)
{
    weft__count(&w->stats.spawned);
    local_push(w, entry);
    if (weft__rt.nworkers > 1)
        weft__notify();
}

int weft__submit(weft__worker *w, weft_co *co)
{
    if (!w) {
        atomic_fetch_add_explicit(&weft__rt.spawned_outside, 1, memory_order_relaxed);
        /* Injected spawns travel untagged and cannot be claimed. */
        atomic_store_explicit(&co->qstate, WEFT__Q_TAKEN, memory_order_relaxed);
        inject_push(co);
        weft__notify();
        return 0;
    }
    push_spawned(w, weft__spawn_entry(co));
    return 0;
}

void weft__submit_ticket(weft__worker *w, weft__ticket *t)
{
    push_spawned(w, weft__ticket_entry(t));
}

/* weft__park and weft_yield read the thread-locals directly: nothing
 * reads them after the switch in these functions, where the compiler
 * could reuse another thread's TLS address. */
weft__worker *weft__park(bool (*after)(void *arg), void *arg)
{
    weft__worker *w = tls_worker;
    weft_co *co = w->current;
    co->after = after;
    co->after_arg = arg;
    co->why = WEFT__WHY_PARK;
    weft__fiber *cur = weft__tls_fiber;
    co->resume = cur;
    return switch_out(w, co, cur);
}

void weft__exit(weft__worker *w, weft_co *co)
{
    co->why = WEFT__WHY_DONE;
    switch_out(w, co, &co->fiber);
    __builtin_unreachable();
}

void weft_yield(void)
{
    weft__worker *w = tls_worker;
    if (!w || !w->current) {
        sched_yield();
        return;
    }
    weft_co *co = w->current;
    co->why = WEFT__WHY_YIELD;
    weft__fiber *cur = weft__tls_fiber;
    co->resume = cur;
    switch_out(w, co, cur);
}

weft_co *weft_self(void)
{
    weft__worker *w = weft__worker_self();
    return w ? w->current : NULL;
}

int weft_worker(void)
{
    weft__worker *w = weft__worker_self();
    return w ? (int)w->index : -1;
}

unsigned weft_workers(void)
{
    /* Not while starting (3): the count is not final, and the start may
     * still fail. */
    int state = atomic_load(&weft__rt.state);
    return state == 1 || state == 2 ? weft__rt.nworkers : 0;
}

/* --- the runtime's life ---------------------------------------------------------- */

static unsigned env_workers(void)
{
    const char *s = getenv("WEFT_WORKERS");
    if (!s || !*s)
        return 0;
    long v = strtol(s, NULL, 10);
    return v > 0 && v < 65536 ? (unsigned)v : 0;
}

static void free_workers(unsigned n)
{
    for (unsigned i = 0; weft__rt.workers && i < n; i++) {
        weft__worker *w = weft__rt.workers[i];
        if (!w)
            continue;
        weft__deque_destroy(&w->deque);
        weft__deque_destroy(&w->wakeq);
        weft__timer_destroy(w);
        free(w->victims);
        free(w->victim_level);
        weft__free_aligned(w, sizeof *w, WEFT_CACHELINE);
    }
    free(weft__rt.workers);
    free(weft__rt.idle);
    weft__rt.workers = NULL;
    weft__rt.idle = NULL;
}

int weft_start(const weft_config *cfg)
{
    if (weft__worker_self())
        return EALREADY; /* a coroutine runs: so does the runtime */
    weft_config defaults = { 0 };
    if (!cfg)
        cfg = &defaults;
    if (cfg->pin < WEFT_PIN_AUTO || cfg->pin > WEFT_PIN_OFF)
        return EINVAL;
    int stopped = 0;
    if (!atomic_compare_exchange_strong(&weft__rt.state, &stopped, 3 /* starting */))
        return EALREADY;
    unsigned cores = weft__topology_begin();
    unsigned n = env_workers();
    if (!n && !(n = cfg->workers)) {
        unsigned quota = weft__cgroup_cpus();
        n = quota && quota < cores ? quota : cores;
    }
    pin_mode = cfg->pin;
    weft__cpu_probe();
    weft__stack_set_default(cfg->stack_size);
    weft__overflow_init();

    int err = ENOMEM;
    weft__rt.nworkers = n;
    weft__rt.workers = calloc(n, sizeof *weft__rt.workers);
    weft__rt.idle = calloc(n, sizeof *weft__rt.idle);
    weft__rt.idle_len = 0;
    atomic_store(&weft__rt.sleeping, 0);
    atomic_store(&weft__rt.spinning, 0);
    /* live is not reset: it is 0 after a stop, except for a plain
     * thread's hold (weft__live_hold) in flight, which it must keep. */
    atomic_store(&weft__rt.quiescent, 0);
    atomic_store(&weft__rt.spawned_outside, 0);
    atomic_store(&wakeups_outside, 0);
    atomic_store(&shutdown_flag, 0);
    if (!weft__rt.workers || !weft__rt.idle)
        goto fail;
    for (unsigned i = 0; i < n; i++) {
        weft__worker *w = weft__alloc_aligned(sizeof *w, WEFT_CACHELINE);
        if (!w)
            goto fail;
        memset(w, 0, sizeof *w);
        weft__rt.workers[i] = w;
        w->index = i;
        w->rng = 0x9E3779B97F4A7C15ull * (i + 1);
        w->inject_in = INJECT_EVERY;
        atomic_init(&w->timer_next, INT64_MAX);
        w->cells_free = UINT32_MAX; /* no timer cells yet (timer.c) */
        w->victims = calloc(n, sizeof *w->victims);
        w->victim_level = calloc(n, sizeof *w->victim_level);
        if (!w->victims || !w->victim_level || weft__deque_init(&w->deque) != 0 ||
            weft__deque_init(&w->wakeq) != 0)
            goto fail;
    }
    /* A worker's own stack holds only the scheduler loop (coroutines run
     * on theirs, signal handlers on an alternate stack): 256 KiB, not
     * glibc's 8 MiB, so that glibc's cache of freed thread stacks (40 MiB)
     * keeps all of them across a stop, and weft_stop does not unmap them
     * one by one with a TLB shootdown each. */
    pthread_attr_t attr;
    pthread_attr_t *attrp = NULL;
    if (pthread_attr_init(&attr) == 0) {
        attrp = &attr;
        (void)pthread_attr_setstacksize(&attr, WORKER_STACK_BYTES);
    }
    /* The state stays "starting" until every worker thread exists: until
     * then nobody can spawn, stop, or read the statistics, so a failed
     * pthread_create can take everything down again unseen. */
    for (unsigned i = 0; i < n; i++) {
        int rc =
            pthread_create(&weft__rt.workers[i]->thread, attrp, worker_main, weft__rt.workers[i]);
        if (rc != 0) {
            /* Stop the workers already started; nothing was spawned. */
            atomic_store(&shutdown_flag, 1);
            for (unsigned j = 0; j < i; j++)
                wake_worker(weft__rt.workers[j]);
            for (unsigned j = 0; j < i; j++)
                pthread_join(weft__rt.workers[j]->thread, NULL);
            err = rc;
            if (attrp)
                pthread_attr_destroy(attrp);
            goto fail;
        }
    }
    if (attrp)
        pthread_attr_destroy(attrp);
    atomic_store(&weft__rt.state, 1);
    return 0;
fail:
    free_workers(n);
    atomic_store(&weft__rt.state, 0);
    return err;
}

#define CREDIT_BATCH 64

static void live_sub(long n)
{
    /* Seq_cst: against weft_stop's store of state then load of live. */
    if (atomic_fetch_sub_explicit(&weft__rt.live, n, memory_order_seq_cst) == n &&
        atomic_load_explicit(&weft__rt.state, memory_order_seq_cst) == 2) {
        atomic_store(&weft__rt.quiescent, 1);
        weft__futex_wake(&weft__rt.quiescent, 1);
    }
}

void weft__live_inc(weft__worker *w)
{
    if (!w) {
        /* Relaxed: only the count matters; live_sub orders the end. */
        atomic_fetch_add_explicit(&weft__rt.live, 1, memory_order_relaxed);
        return;
    }
    if (w->live_credit == 0) {
        atomic_fetch_add_explicit(&weft__rt.live, CREDIT_BATCH, memory_order_relaxed);
        w->live_credit = CREDIT_BATCH;
    }
    w->live_credit--;
}

void weft__live_hold(void)
{
    /* Seq_cst: against weft_stop's store of its state then load of live
     * (the caller reads the state after this). */
    atomic_fetch_add_explicit(&weft__rt.live, 1, memory_order_seq_cst);
}

void weft__live_unhold(void)
{
    live_sub(1);
}

void weft__live_dec(weft__worker *w)
{
    if (++w->live_credit > 2 * CREDIT_BATCH) {
        live_sub(w->live_credit - CREDIT_BATCH);
        w->live_credit = CREDIT_BATCH;
    }
}

void weft__live_return(weft__worker *w)
{
    if (w->live_credit) {
        long n = w->live_credit;
        w->live_credit = 0;
        live_sub(n);
    }
}

/* Held by weft_stop while it frees the workers and by weft_stats_get while
 * it reads them: stats may be read while the runtime is stopping. */
static pthread_mutex_t workers_lifetime = PTHREAD_MUTEX_INITIALIZER;

int weft_stop(void)
{
    if (weft__worker_self())
        return EDEADLK;
    int running = 1;
    if (!atomic_compare_exchange_strong(&weft__rt.state, &running, 2))
        return EPERM;
    while (atomic_load_explicit(&weft__rt.live, memory_order_seq_cst) != 0)
        weft__futex_wait(&weft__rt.quiescent, 0, WEFT_FOREVER);
    atomic_store(&shutdown_flag, 1);
    for (unsigned i = 0; i < weft__rt.nworkers; i++)
        wake_worker(weft__rt.workers[i]);
    for (unsigned i = 0; i < weft__rt.nworkers; i++)
        pthread_join(weft__rt.workers[i]->thread, NULL);
    pthread_mutex_lock(&workers_lifetime);
    free_workers(weft__rt.nworkers);
    weft__co_pool_drain();
    weft__stack_trim(UINT32_MAX);
    weft__rt.inject_head = weft__rt.inject_tail = NULL;
    atomic_store(&weft__rt.inject_len, 0);
    atomic_store(&weft__rt.state, 0);
    pthread_mutex_unlock(&workers_lifetime);
    return 0;
}

int weft_main(const weft_config *cfg, void *(*fn)(void *), void *arg, void **result)
{
    if (!fn)
        return EINVAL;
    int err = weft_start(cfg);
    if (err)
        return err;
    weft_co *root;
    void *value = NULL;
    err = weft_spawn(&root, NULL, fn, arg);
    if (!err)
        err = weft_join(root, &value);
    int stop_err = weft_stop();
    if (!err)
        err = stop_err;
    if (!err && result)
        *result = value;
    return err;
}

int weft_stats_get(weft_stats *out)
{
    if (!out)
        return EINVAL;
    pthread_mutex_lock(&workers_lifetime);
    int state = atomic_load(&weft__rt.state);
    if (state != 1 && state != 2) {
        pthread_mutex_unlock(&workers_lifetime);
        return EPERM;
    }
    memset(out, 0, sizeof *out);
    out->spawned = atomic_load_explicit(&weft__rt.spawned_outside, memory_order_relaxed);
    out->wakeups = atomic_load_explicit(&wakeups_outside, memory_order_relaxed);
    for (unsigned i = 0; i < weft__rt.nworkers; i++) {
        weft__counters *c = &weft__rt.workers[i]->stats;
        out->spawned += atomic_load_explicit(&c->spawned, memory_order_relaxed);
        out->finished += atomic_load_explicit(&c->finished, memory_order_relaxed);
        out->switches += atomic_load_explicit(&c->switches, memory_order_relaxed);
        out->steals += atomic_load_explicit(&c->steals, memory_order_relaxed);
        out->steal_attempts += atomic_load_explicit(&c->steal_attempts, memory_order_relaxed);
        out->parks += atomic_load_explicit(&c->parks, memory_order_relaxed);
        out->wakeups += atomic_load_explicit(&c->wakeups, memory_order_relaxed);
        out->handoffs += atomic_load_explicit(&c->handoffs, memory_order_relaxed);
    }
    pthread_mutex_unlock(&workers_lifetime);
    return 0;
}
