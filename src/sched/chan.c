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
 * to a select that completed elsewhere: it is stale, and anyone holding the
 * lock may unlink it; its owner unlinks it too (unlinking is idempotent).
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
 * After the wake-up the select re-locks its channels and unlinks its
 * other nodes.
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

/* One waiting operation. Lives on the waiter's stack; every field is
 * written under the lock of the channel whose queue holds it. */
typedef struct chan_node {
    weft__waiter *w;          /* shared by every case of one select */
    void *elem;               /* send: the value; recv: where it goes (may be NULL) */
    size_t index;             /* the select case; 0 for send/recv */
    weft__lock *gate;         /* select: the lock it parked with; NULL when it
                                 parked with the channel's own lock */
    chan_queue *queue;        /* the queue it is linked in; NULL once unlinked */
    struct chan_node *prev, *next;
    struct chan_node *wake_next; /* close: claimed nodes to wake after unlock */
} chan_node;

struct weft_chan {
    weft__lock lock;
    bool closed;
    size_t elem_size;
    size_t cap;               /* buffer slots; 0: rendezvous */
    size_t head;              /* the oldest buffered value */
    size_t len;               /* buffered values */
    chan_queue sendq, recvq;
    unsigned char buf[];      /* cap * elem_size bytes */
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
    n->prev = n->next = NULL;
}

/* The oldest node whose waiter this call claims, unlinked; NULL if none.
 * Stale nodes met on the way are unlinked. */
static chan_node *queue_take(chan_queue *q)
{
    chan_node *n;
    while ((n = q->head)) {
        queue_unlink(n);
        if (weft__waiter_claim(n->w))
            return n;
    }
    return NULL;
}

/* Whether a claimable node may be waiting. Drops stale heads. A timer may
 * still claim the head after this returns true, so callers retry when the
 * queue_take that follows finds nothing. */
static bool queue_ready(chan_queue *q)
{
    chan_node *n;
    /* Relaxed: a hint; the claim in queue_take decides. */
    while ((n = q->head) && atomic_load_explicit(&n->w->state, memory_order_relaxed) !=
                                WEFT__WAIT_WAITING)
        queue_unlink(n);
    return n != NULL;
}

static void complete(chan_node *n, int result)
{
    n->w->result = result;
    n->w->sel = n->index;
}

/* After the channel lock is released: wakes a waiter claimed under it. */
static void wake_node(chan_node *n, bool next)
{
    weft__waiter *w = n->w;
    weft__lock *gate = n->gate;
    if (gate) {
        /* The select releases its gate only once switched out (or, on a
         * plain thread, before sleeping on its futex). */
        weft__lock_acquire(gate);
        weft__lock_release(gate);
    }
    weft__waiter_wake(w, next);
}

/* --- operations (caller holds the lock) ----------------------------------- */

static unsigned char *slot(weft_chan *ch, size_t i)
{
    return ch->buf + ((ch->head + i) % ch->cap) * ch->elem_size;
}

/* 0 sent, EPIPE closed, EAGAIN would wait. *woken: a waiter to wake. */
static int try_send(weft_chan *ch, const void *elem, chan_node **woken)
{
    if (ch->closed)
        return EPIPE;
    chan_node *n = queue_take(&ch->recvq);
    if (n) {
        if (n->elem)
            memcpy(n->elem, elem, ch->elem_size);
        complete(n, 0);
        *woken = n;
        return 0;
    }
    if (ch->len < ch->cap) {
        memcpy(slot(ch, ch->len), elem, ch->elem_size);
        ch->len++;
        return 0;
    }
    return EAGAIN;
}

/* 0 received, EPIPE closed and drained, EAGAIN would wait. */
static int try_recv(weft_chan *ch, void *elem, chan_node **woken)
{
    if (ch->len > 0) {
        if (elem)
            memcpy(elem, slot(ch, 0), ch->elem_size);
        ch->head = (ch->head + 1) % ch->cap;
        ch->len--;
        /* A slot is free: the oldest waiting sender fills it. */
        chan_node *n = queue_take(&ch->sendq);
        if (n) {
            memcpy(slot(ch, ch->len), n->elem, ch->elem_size);
            ch->len++;
            complete(n, 0);
            *woken = n;
        }
        return 0;
    }
    chan_node *n = queue_take(&ch->sendq);
    if (n) {
        if (elem)
            memcpy(elem, n->elem, ch->elem_size);
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

int weft_chan_send(weft_chan *ch, const void *elem, int64_t deadline)
{
    if (!ch || !elem)
        return EINVAL;
    chan_node *woken = NULL;
    weft__lock_acquire(&ch->lock);
    int rc = try_send(ch, elem, &woken);
    if (rc != EAGAIN) {
        weft__lock_release(&ch->lock);
        if (woken)
            wake_node(woken, true);
        return rc;
    }
    if (!weft__deadline_pending(deadline)) {
        weft__lock_release(&ch->lock);
        return ETIMEDOUT;
    }
    weft__waiter w;
    weft__waiter_init(&w, deadline);
    chan_node n = { .w = &w, .elem = (void *)elem };
    queue_push(&ch->sendq, &n);
    rc = weft__waiter_wait(&w, &ch->lock);
    if (rc == ETIMEDOUT) {
        weft__lock_acquire(&ch->lock);
        queue_unlink(&n);
        weft__lock_release(&ch->lock);
    }
    return rc;
}

int weft_chan_recv(weft_chan *ch, void *elem, int64_t deadline)
{
    if (!ch || !elem)
        return EINVAL;
    chan_node *woken = NULL;
    weft__lock_acquire(&ch->lock);
    int rc = try_recv(ch, elem, &woken);
    if (rc != EAGAIN) {
        weft__lock_release(&ch->lock);
        if (woken)
            wake_node(woken, true);
        return rc;
    }
    if (!weft__deadline_pending(deadline)) {
        weft__lock_release(&ch->lock);
        return ETIMEDOUT;
    }
    weft__waiter w;
    weft__waiter_init(&w, deadline);
    chan_node n = { .w = &w, .elem = elem };
    queue_push(&ch->recvq, &n);
    rc = weft__waiter_wait(&w, &ch->lock);
    if (rc == ETIMEDOUT) {
        weft__lock_acquire(&ch->lock);
        queue_unlink(&n);
        weft__lock_release(&ch->lock);
    }
    return rc;
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
    /* Claim every waiter, oldest first; wake them once the lock is free. */
    chan_node *first = NULL, **last = &first, *n;
    chan_queue *queues[2] = { &ch->recvq, &ch->sendq };
    for (int i = 0; i < 2; i++) {
        while ((n = queue_take(queues[i]))) {
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

static void lock_all(weft_chan **order, size_t n)
{
    for (size_t i = 0; i < n; i++)
        weft__lock_acquire(&order[i]->lock);
}

static void unlock_all(weft_chan **order, size_t n)
{
    for (size_t i = n; i > 0; i--)
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
    lock_all(order, nchan);
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
        unlock_all(order, nchan);
        if (woken)
            wake_node(woken, true);
        *done = pick;
        c->err = rc;
        rc = 0;
        goto out;
    }
    if (!weft__deadline_pending(deadline)) {
        unlock_all(order, nchan);
        rc = ETIMEDOUT;
        goto out;
    }

    weft__waiter w;
    weft__waiter_init(&w, deadline);
    weft__lock gate = WEFT__LOCK_INIT;
    weft__lock_acquire(&gate);
    for (size_t i = 0; i < n; i++) {
        nodes[i] = (chan_node){ .w = &w, .elem = cases[i].elem, .index = i, .gate = &gate };
        weft_chan *ch = cases[i].ch;
        if (ch)
            queue_push(cases[i].op == WEFT_SEND ? &ch->sendq : &ch->recvq, &nodes[i]);
    }
    unlock_all(order, nchan);
    rc = weft__waiter_wait(&w, &gate);
    /* Unlink the cases that did not complete (and, after a timeout, all). */
    lock_all(order, nchan);
    for (size_t i = 0; i < n; i++)
        queue_unlink(&nodes[i]);
    unlock_all(order, nchan);
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
