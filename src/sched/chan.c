/* Channels and select: Go's semantics (runtime/chan.go, runtime/select.go)
 * on weft's one waiting protocol (park.c, docs/waiting.md).
 *
 * A channel is a lock, a ring buffer of `cap` elements (none for a
 * rendezvous channel) and two FIFO wait queues, senders and receivers.
 * The queues are intrusive lists of small nodes that live on the waiting
 * caller's stack: {waiter, element pointer, case index, links}. A waiting
 * sender's node points at the value it sends; a waiting receiver's at the
 * buffer to fill. Whoever completes a waiting node claims its waiter (the
 * CAS of weft__waiter_claim), copies the value straight into or out of the
 * waiter's buffer under the channel lock, unlinks the node, releases the
 * lock and wakes the waiter, asking to run it next on its own worker (a
 * handoff). A node whose claim fails belongs to a waiter that timed out or
 * to a select that completed elsewhere: it is stale. Wakers skip stale
 * nodes and only their owner unlinks them, so a linked node always means
 * a caller still inside a call on the channel (free's EBUSY).
 *
 * Freeing right after the last receive (Go's skynet, a channel owned by
 * its receiver) is safe: every touch of the channel by the side that lets
 * the other go on (a sender that filled a slot or a waiting receiver, a
 * receiver that took a waiting sender's value, a close) comes before its
 * lock release, and after it touches only the woken waiter's stack. A
 * waiter that was claimed by the other side or by a close finds its node
 * unlinked and never locks the channel again; only one whose deadline
 * claimed it re-locks to unlink its node, and that node kept the channel
 * from being freed. The one access after a release is the futex wake of
 * a contended weft__lock's unlock (lock.h), on the lock word's address: a
 * private futex wake reads no memory, and at a reused address it can only
 * cause a spurious wake-up, which every futex user in weft tolerates
 * (glibc's mutexes rely on the same).
 *
 * Fast paths: a send or receive without a deadline and outside a select
 * can be claimed only by a holder of the channel lock, so its claim is a
 * plain store instead of a CAS (chan_node.exclusive); common element sizes
 * are copied inline; the ring buffer wraps by comparison, not division.
 *
 * Invariants, under the lock: receivers wait only while the buffer is
 * empty, senders only while it is full (so a waiting receiver means an
 * empty buffer and a value can go straight to it, FIFO preserved); once
 * closed, nobody waits.
 *
 * select locks every channel it names in address order (duplicates once),
 * picks uniformly at random among the ready cases (reservoir sampling over
 * the cases, so each ready case has probability 1/k), and completes it. If
 * none is ready it enqueues one node per case, all pointing at one
 * waiter: the first claim wins and records the case in waiter.sel, so one
 * select can never complete twice. It cannot hand all those channel locks
 * to weft__waiter_wait, which releases one lock after the coroutine has
 * switched out. So it parks with a private "gate" lock held instead, and a
 * waker that claimed a select's node takes and drops the gate before it
 * wakes the waiter: the gate is free only once the select has switched
 * out, so nobody can resume a coroutine that is still on its stack.
 * The claimer also unlinks every node of that select on its own channel
 * (two cases may name one channel). After the wake-up the select re-locks
 * its other channels, never the completed case's, and unlinks its nodes
 * there; after a timeout it re-locks all of them.
 *
 * Rejected: one lock for all channels (serialises unrelated pipelines);
 * lock-free queues (Go kept the lock too; the sections are a few dozen
 * instructions and a copy); allocating nodes on the heap (a wait would
 * allocate; stack nodes die with the wait, which always unlinks them). */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../alloc.h"
#include "sched.h"

typedef struct chan_queue {
    struct chan_node *head, *tail;
} chan_queue;

struct chan_select;

/* One waiting operation. Lives on the waiter's stack. Linked and unlinked
 * only under the lock of the channel whose queue holds it; written by the
 * waiter before it is linked, and by its claimer (under that lock) after. */
typedef struct chan_node {
    weft__waiter *w;         /* shared by every case of one select */
    void *elem;              /* send: the value; recv: where it goes (may be NULL) */
    struct chan_select *sel; /* select: its shared state; NULL for send/recv */
    chan_queue *queue;       /* the queue it is linked in; NULL once unlinked */
    struct chan_node *prev, *next;
    struct chan_node *wake_next; /* close: claimed nodes to wake after unlock */
    size_t index;                /* the select case; 0 for send/recv */
    /* Only holders of this channel's lock can claim w: a send or receive
     * without a deadline (no timer) and without a select (no other
     * channel). Its claim is a plain store under the lock (see claim). */
    bool exclusive;
} chan_node;

/* A waiting select's state, on its stack: the gate it parked with (see the
 * top of the file) and its nodes, so that whoever claims it can unlink all
 * of its nodes on the claimer's channel. */
typedef struct chan_select {
    weft__lock gate;
    chan_node *nodes;
    size_t n;
} chan_select;

struct weft_chan {
    weft__lock lock;
    bool closed;
    size_t elem_size;
    size_t cap;  /* buffer slots; 0: rendezvous */
    size_t head; /* the oldest buffered value, < cap */
    size_t len;  /* buffered values */
    chan_queue sendq, recvq;
    unsigned char buf[]; /* cap * elem_size bytes */
};

/* --- wait queues (caller holds the channel lock) -------------------------- */

static void queue_push(chan_queue *q, chan_node *n)
{
    n->queue = q;
    n->next = NULL;
    n->prev = q->tail;
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
}

static void queue_unlink(chan_node *n)
{
    chan_queue *q = n->queue;
    if (!q)
        return;
    if (n->prev)
        n->prev->next = n->next;
    else
        q->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        q->tail = n->prev;
    n->queue = NULL;
}

/* Unlinks a node the caller just claimed, and for a select every other
 * node of it on this channel (two cases may name one channel): the select
 * then never needs this channel again, which may be freed as soon as the
 * claimer is done. Nobody else unlinks a select's nodes while it is
 * claimed and not yet woken, so their queue fields are stable; the select
 * wrote them under channel locks it released before any claim. */
static void unlink_claimed(weft_chan *ch, chan_node *n)
{
    chan_select *s = n->sel;
    if (!s) {
        queue_unlink(n);
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        chan_queue *q = s->nodes[i].queue;
        if (q == &ch->sendq || q == &ch->recvq)
            queue_unlink(&s->nodes[i]);
    }
}

/* queue_take past an head that is not exclusive: CAS claims, stale nodes
 * skipped. */
static WEFT_NOINLINE chan_node *queue_take_slow(weft_chan *ch, chan_queue *q)
{
    for (chan_node *n = q->head; n; n = n->next) {
        if (n->exclusive) {
            /* Relaxed: see queue_take. */
            atomic_store_explicit(&n->w->state, WEFT__WAIT_CLAIMED, memory_order_relaxed);
            queue_unlink(n);
            return n;
        }
        if (weft__waiter_claim(n->w)) {
            unlink_claimed(ch, n);
            return n;
        }
    }
    return NULL;
}

/* The oldest node whose waiter this call claims, unlinked; NULL if none.
 * Stale nodes (a waiter the deadline claimed, or a select claimed on
 * another channel) are skipped, never unlinked: only their owner unlinks
 * them, so a linked node means its owner is still inside a call on this
 * channel (weft_chan_free_checked's EBUSY), and the channel cannot be
 * freed under the owner's feet. */
static inline chan_node *queue_take(weft_chan *ch, chan_queue *q)
{
    chan_node *n = q->head;
    if (!n)
        return NULL;
    if (WEFT_LIKELY(n->exclusive)) {
        /* Relaxed: nobody but a holder of this lock can claim an exclusive
         * waiter (no timer, no other channel), and one that did also
         * unlinked it, so a linked exclusive node is WAITING. The lock
         * orders the waiter's writes before ours; a plain thread reads the
         * result after the release store of WOKEN in weft__waiter_wake.
         * This saves the locked CAS of weft__waiter_claim. */
        atomic_store_explicit(&n->w->state, WEFT__WAIT_CLAIMED, memory_order_relaxed);
        /* The head leaves. Its own fields stay: its owner never unlinks
         * it again (only a deadline, which it has not, makes it do so). */
        chan_node *next = n->next;
        q->head = next;
        if (next)
            next->prev = NULL;
        else
            q->tail = NULL;
        return n;
    }
    return queue_take_slow(ch, q);
}

/* Whether a claimable node may be waiting. A timer may still claim it
 * after this returns true, so callers retry when the queue_take that
 * follows finds nothing. */
static bool queue_ready(chan_queue *q)
{
    for (chan_node *n = q->head; n; n = n->next) {
        /* Relaxed: a hint; the claim in queue_take decides. */
        if (atomic_load_explicit(&n->w->state, memory_order_relaxed) == WEFT__WAIT_WAITING)
            return true;
    }
    return false;
}

static inline void complete(chan_node *n, int result)
{
    n->w->result = result;
    if (n->sel)
        n->w->sel = n->index;
}

/* After the channel lock is released: wakes a waiter claimed under it.
 * Touches only the waiter's stack (node, gate, waiter), never the
 * channel: the woken side may free it as soon as it runs. */
static void wake_node(chan_node *n, bool next)
{
    weft__waiter *w = n->w;
    chan_select *s = n->sel;
    if (s) {
        /* The select releases its gate only once switched out (or, on a
         * plain thread, before sleeping on its futex). */
        weft__lock_acquire(&s->gate);
        weft__lock_release(&s->gate);
    }
    weft__waiter_wake(w, next);
}

/* --- operations (caller holds the lock) ----------------------------------- */

/* memcpy of a size the compiler cannot see is a call into libc; the
 * common element sizes become one or two moves. */
static inline void copy_elem(void *dst, const void *src, size_t size)
{
    switch (size) {
    case 8:
        memcpy(dst, src, 8);
        break;
    case 4:
        memcpy(dst, src, 4);
        break;
    case 16:
        memcpy(dst, src, 16);
        break;
    default:
        memcpy(dst, src, size);
    }
}

/* Slot i after the oldest (i < cap): a compare instead of a division. */
static inline unsigned char *slot(weft_chan *ch, size_t i)
{
    size_t k = ch->head + i;
    if (k >= ch->cap)
        k -= ch->cap;
    return ch->buf + k * ch->elem_size;
}

/* 0 sent, EPIPE closed, EAGAIN would wait. *woken: a waiter to wake. */
static inline __attribute__((always_inline)) int try_send(weft_chan *ch, const void *elem,
                                                          chan_node **woken)
{
    if (WEFT_UNLIKELY(ch->closed))
        return EPIPE;
    chan_node *n = queue_take(ch, &ch->recvq);
    if (n) {
        if (n->elem)
            copy_elem(n->elem, elem, ch->elem_size);
        complete(n, 0);
        *woken = n;
        return 0;
    }
    if (ch->len < ch->cap) {
        copy_elem(slot(ch, ch->len), elem, ch->elem_size);
        ch->len++;
        return 0;
    }
    return EAGAIN;
}

/* 0 received, EPIPE closed and drained, EAGAIN would wait. */
static inline __attribute__((always_inline)) int try_recv(weft_chan *ch, void *elem,
                                                          chan_node **woken)
{
    if (ch->len > 0) {
        if (elem)
            copy_elem(elem, slot(ch, 0), ch->elem_size);
        ch->head = ch->head + 1 == ch->cap ? 0 : ch->head + 1;
        ch->len--;
        /* A slot is free: the oldest waiting sender fills it. */
        chan_node *n = queue_take(ch, &ch->sendq);
        if (n) {
            copy_elem(slot(ch, ch->len), n->elem, ch->elem_size);
            ch->len++;
            complete(n, 0);
            *woken = n;
        }
        return 0;
    }
    chan_node *n = queue_take(ch, &ch->sendq);
    if (n) {
        if (elem)
            copy_elem(elem, n->elem, ch->elem_size);
        complete(n, 0);
        *woken = n;
        return 0;
    }
    return ch->closed ? EPIPE : EAGAIN;
}

static bool send_ready(weft_chan *ch)
{
    return ch->closed || ch->len < ch->cap || queue_ready(&ch->recvq);
}

static bool recv_ready(weft_chan *ch)
{
    return ch->len > 0 || ch->closed || queue_ready(&ch->sendq);
}

static inline bool deadline_pending(int64_t deadline)
{
    return deadline == WEFT_FOREVER || weft__deadline_pending(deadline);
}

/* Parks the caller on queue q of ch, whose lock it holds; returns with the
 * lock released and the result. Only a wait the deadline ended leaves the
 * node linked, so only then does the caller touch ch again: a claimer
 * (the other side, or a close) unlinked it, and the other side may have
 * freed ch since. */
static inline __attribute__((always_inline)) int chan_wait(weft_chan *ch, chan_queue *q, void *elem,
                                                           int64_t deadline)
{
    weft__waiter w;
    weft__waiter_init(&w, deadline);
    chan_node n;
    n.w = &w;
    n.elem = elem;
    n.sel = NULL;
    n.index = 0;
    n.exclusive = deadline == WEFT_FOREVER;
    queue_push(q, &n);
    int rc = weft__waiter_wait(&w, &ch->lock);
    if (WEFT_UNLIKELY(rc == ETIMEDOUT)) {
        weft__lock_acquire(&ch->lock);
        queue_unlink(&n);
        weft__lock_release(&ch->lock);
    }
    return rc;
}

/* --- public calls ------------------------------------------------------------ */

static bool chan_bytes(size_t elem_size, size_t cap, size_t *bytes)
{
    if (cap && elem_size > (SIZE_MAX - sizeof(weft_chan)) / cap)
        return false;
    *bytes = sizeof(weft_chan) + elem_size * cap;
    return true;
}

int weft_chan_make(weft_chan **out, size_t elem_size, size_t capacity)
{
    size_t bytes;
    if (!out || elem_size == 0)
        return EINVAL;
    if (!chan_bytes(elem_size, capacity, &bytes))
        return ENOMEM;
    weft_chan *ch = weft__alloc(bytes);
    if (!ch)
        return ENOMEM;
    ch->lock = (weft__lock)WEFT__LOCK_INIT;
    ch->closed = false;
    ch->elem_size = elem_size;
    ch->cap = capacity;
    ch->head = ch->len = 0;
    ch->sendq = (chan_queue){ NULL, NULL };
    ch->recvq = (chan_queue){ NULL, NULL };
    *out = ch;
    return 0;
}

/* Send and receive, one body: `send` is a constant at both call sites, so
 * each inlines to its own straight path. The order of the steps is the
 * safety guarantee of weft_chan_free (weft.h): everything that touches the
 * channel happens before the lock release that lets the other side go on,
 * and what follows the release touches only the woken waiter's stack. */
static inline __attribute__((always_inline)) int chan_op(weft_chan *ch, void *elem,
                                                         int64_t deadline, bool send)
{
    if (WEFT_UNLIKELY(!ch || !elem))
        return EINVAL;
    chan_node *woken = NULL;
    weft__lock_acquire(&ch->lock);
    int rc = send ? try_send(ch, elem, &woken) : try_recv(ch, elem, &woken);
    if (WEFT_LIKELY(rc != EAGAIN)) {
        weft__lock_release(&ch->lock);
        if (woken)
            wake_node(woken, true);
        return rc;
    }
    if (!deadline_pending(deadline)) {
        weft__lock_release(&ch->lock);
        return ETIMEDOUT;
    }
    return chan_wait(ch, send ? &ch->sendq : &ch->recvq, elem, deadline);
}

int weft_chan_send(weft_chan *ch, const void *elem, int64_t deadline)
{
    return chan_op(ch, (void *)elem, deadline, true); /* only read: try_send takes it const */
}

int weft_chan_recv(weft_chan *ch, void *elem, int64_t deadline)
{
    return chan_op(ch, elem, deadline, false);
}

int weft_chan_close(weft_chan *ch)
{
    if (!ch)
        return EINVAL;
    weft__lock_acquire(&ch->lock);
    if (ch->closed) {
        weft__lock_release(&ch->lock);
        return EPIPE;
    }
    ch->closed = true;
    /* Claim every waiter, oldest first; wake them once the lock is free
     * (they do not touch ch again, see chan_wait and weft_select). */
    chan_node *first = NULL, **last = &first, *n;
    chan_queue *queues[2] = { &ch->recvq, &ch->sendq };
    for (int i = 0; i < 2; i++) {
        while ((n = queue_take(ch, queues[i]))) {
            complete(n, EPIPE);
            n->wake_next = NULL;
            *last = n;
            last = &n->wake_next;
        }
    }
    weft__lock_release(&ch->lock);
    while ((n = first)) {
        first = n->wake_next; /* read before the wake: n dies with its wait */
        wake_node(n, false);
    }
    return 0;
}

int weft_chan_free_checked(weft_chan *ch)
{
    if (!ch)
        return EINVAL;
    weft__lock_acquire(&ch->lock);
    /* A linked node, stale or not, belongs to a caller still inside a
     * call on ch (see queue_take). */
    bool busy = ch->sendq.head || ch->recvq.head;
    weft__lock_release(&ch->lock);
    if (busy)
        return EBUSY;
    size_t bytes = 0;
    WEFT_ASSERT(chan_bytes(ch->elem_size, ch->cap, &bytes)); /* checked at make */
    weft__free(ch, bytes);
    return 0;
}

void weft_chan_free(weft_chan *ch)
{
    (void)weft_chan_free_checked(ch);
}

/* --- select ------------------------------------------------------------------ */

/* Per-thread xorshift64* for the fair pick. Read only before the select
 * can switch, so a coroutine never caches another worker's state. */
static __thread uint64_t select_rng;

static uint64_t select_random(void)
{
    uint64_t x = select_rng;
    if (!x)
        x = (uint64_t)weft_now() ^ (uint64_t)(uintptr_t)&select_rng ^ 0x9e3779b97f4a7c15u;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    select_rng = x;
    return x * 0x2545f4914f6cdd1du;
}

static int by_address(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (weft_chan *const *)a, y = (uintptr_t) * (weft_chan *const *)b;
    return (x > y) - (x < y);
}

/* Locks the channels in order[] (address order), but `skip`. */
static void lock_all(weft_chan **order, size_t n, const weft_chan *skip)
{
    for (size_t i = 0; i < n; i++)
        if (order[i] != skip)
            weft__lock_acquire(&order[i]->lock);
}

static void unlock_all(weft_chan **order, size_t n, const weft_chan *skip)
{
    for (size_t i = n; i > 0; i--)
        if (order[i - 1] != skip)
            weft__lock_release(&order[i - 1]->lock);
}

#define SELECT_INLINE 8

int weft_select(weft_case *cases, size_t n, int64_t deadline, size_t *done)
{
    if (!done || (n && !cases))
        return EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (cases[i].op != WEFT_SEND && cases[i].op != WEFT_RECV)
            return EINVAL;
        if (cases[i].ch && cases[i].op == WEFT_SEND && !cases[i].elem)
            return EINVAL;
    }

    chan_node nodes_inline[SELECT_INLINE];
    weft_chan *order_inline[SELECT_INLINE];
    chan_node *nodes = nodes_inline;
    weft_chan **order = order_inline;
    if (n > SELECT_INLINE) {
        if (n > SIZE_MAX / sizeof *nodes)
            return ENOMEM;
        nodes = weft__alloc(n * sizeof *nodes);
        order = weft__alloc(n * sizeof *order);
        if (!nodes || !order) {
            weft__free(nodes, nodes ? n * sizeof *nodes : 0);
            weft__free(order, order ? n * sizeof *order : 0);
            return ENOMEM;
        }
    }

    /* The distinct channels, in address order: the global lock order. */
    size_t nchan = 0;
    for (size_t i = 0; i < n; i++)
        if (cases[i].ch)
            order[nchan++] = cases[i].ch;
    qsort(order, nchan, sizeof *order, by_address);
    size_t distinct = 0;
    for (size_t i = 0; i < nchan; i++)
        if (distinct == 0 || order[distinct - 1] != order[i])
            order[distinct++] = order[i];
    nchan = distinct;

    int rc;
    lock_all(order, nchan, NULL);
    for (;;) {
        /* Reservoir sampling: the k-th ready case replaces the pick with
         * probability 1/k, so each ready case is chosen with 1/ready. */
        size_t pick = n, ready = 0;
        for (size_t i = 0; i < n; i++) {
            weft_chan *ch = cases[i].ch;
            if (!ch || !(cases[i].op == WEFT_SEND ? send_ready(ch) : recv_ready(ch)))
                continue;
            if (select_random() % ++ready == 0)
                pick = i;
        }
        if (pick == n)
            break;
        chan_node *woken = NULL;
        weft_case *c = &cases[pick];
        rc = c->op == WEFT_SEND ? try_send(c->ch, c->elem, &woken)
                                : try_recv(c->ch, c->elem, &woken);
        if (rc == EAGAIN)
            continue; /* a timer claimed the waiter we saw: look again */
        unlock_all(order, nchan, NULL);
        if (woken)
            wake_node(woken, true);
        *done = pick;
        c->err = rc;
        rc = 0;
        goto out;
    }
    if (!weft__deadline_pending(deadline)) {
        unlock_all(order, nchan, NULL);
        rc = ETIMEDOUT;
        goto out;
    }

    weft__waiter w;
    weft__waiter_init(&w, deadline);
    chan_select sel = { WEFT__LOCK_INIT, nodes, n };
    weft__lock_acquire(&sel.gate);
    for (size_t i = 0; i < n; i++) {
        nodes[i] = (chan_node){ .w = &w, .elem = cases[i].elem, .sel = &sel, .index = i };
        weft_chan *ch = cases[i].ch;
        if (ch)
            queue_push(cases[i].op == WEFT_SEND ? &ch->sendq : &ch->recvq, &nodes[i]);
    }
    unlock_all(order, nchan, NULL);
    rc = weft__waiter_wait(&w, &sel.gate);
    /* Unlink the nodes that are still linked: after a timeout, all of
     * them; otherwise those on the channels other than the completed
     * case's, whose claimer (the other side, or a close) unlinked every
     * node there (unlink_claimed) and which must not be touched again: it
     * may have been freed already. Nobody else unlinks a select's nodes,
     * so the channels locked here cannot have been freed (EBUSY). */
    weft_chan *done_ch = rc == ETIMEDOUT ? NULL : cases[w.sel].ch;
    if (nchan > 1 || !done_ch) {
        lock_all(order, nchan, done_ch);
        for (size_t i = 0; i < n; i++)
            if (cases[i].ch && cases[i].ch != done_ch)
                queue_unlink(&nodes[i]);
        unlock_all(order, nchan, done_ch);
    }
    if (rc != ETIMEDOUT) {
        *done = w.sel;
        cases[w.sel].err = rc;
        rc = 0;
    }
out:
    if (n > SELECT_INLINE) {
        weft__free(nodes, n * sizeof *nodes);
        weft__free(order, n * sizeof *order);
    }
    return rc;
}
