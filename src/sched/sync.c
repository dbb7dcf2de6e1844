/* Synchronisation objects: mutex, condition variable, waitgroup and
 * semaphore, for coroutines and plain threads alike, on the waiting
 * protocol of park.c (docs/waiting.md).
 *
 * Each object is a weft__lock word plus a FIFO queue of waiting nodes that
 * live on the waiters' stacks ({waiter, owner token, links}). A waiter
 * publishes its node under the object's lock and parks with
 * weft__waiter_wait, which releases the lock only once the coroutine has
 * switched out. Whoever releases what a waiter wants claims the oldest
 * waiter (skipping stale nodes of waiters whose deadline won the claim),
 * hands it over directly, unlinks it, drops the lock and wakes it:
 * - mutex: unlock with waiters passes ownership to the oldest waiter (the
 *   mutex never becomes free in between, so a newcomer cannot barge and no
 *   waiter starves: strict FIFO, as Go's starvation mode does always);
 * - semaphore: post with waiters hands the unit to the oldest waiter;
 * - waitgroup: the count reaching zero wakes every waiter;
 * - condition variable: signal wakes the oldest, broadcast all; the woken
 *   waiter then queues for the mutex like anyone else.
 * Rejected: a lock-free mutex fast path with a contended bit (Go's
 * sync.Mutex). It allows barging, and the FIFO guarantee is the point;
 * the object lock is a single uncontended CAS in the common case anyway.
 *
 * The public structs (weft.h) are complete, with private fields, so they
 * can be static and zero-initialised: the lock word is an `unsigned` there
 * (no _Atomic in a header C++ includes) and is only ever accessed here, as
 * an atomic, through lock_of(). The queue heads are void pointers to
 * sync_node. */
#include <errno.h>
#include <limits.h>
#include <stdalign.h>
#include <stdbool.h>
#include <stddef.h>

#include "sched.h"

_Static_assert(sizeof(unsigned) == sizeof(weft__lock), "lock word size");
_Static_assert(alignof(unsigned) >= alignof(weft__lock), "lock word alignment");
_Static_assert(sizeof(unsigned) == sizeof(_Atomic uint32_t), "atomic lock word size");

/* The private lock word of a public object, as the weft__lock it is. */
static weft__lock *lock_of(unsigned *word)
{
    return (weft__lock *)(void *)word;
}

/* A waiting caller. Lives on its stack; written under the object's lock. */
typedef struct sync_node {
    weft__waiter *w;
    void *token; /* mutex: the waiter's owner identity */
    struct sync_node *prev, *next;
    bool linked;
    struct sync_node *wake_next; /* broadcast: claimed nodes to wake */
} sync_node;

/* An object's queue: its two void * fields. */
typedef struct sync_queue {
    void **head, **tail;
} sync_queue;

static void queue_push(sync_queue q, sync_node *n)
{
    sync_node *tail = *q.tail;
    n->next = NULL;
    n->prev = tail;
    n->linked = true;
    if (tail)
        tail->next = n;
    else
        *q.head = n;
    *q.tail = n;
}

static void queue_unlink(sync_queue q, sync_node *n)
{
    if (!n->linked)
        return;
    if (n->prev)
        n->prev->next = n->next;
    else
        *q.head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        *q.tail = n->prev;
    n->linked = false;
    n->prev = n->next = NULL;
}

/* The oldest waiter this call claims, unlinked; NULL if none. Stale nodes
 * (their deadline won) are unlinked on the way. */
static sync_node *queue_take(sync_queue q)
{
    sync_node *n;
    while ((n = *q.head)) {
        queue_unlink(q, n);
        if (weft__waiter_claim(n->w))
            return n;
    }
    return NULL;
}

/* Claims every waiter, oldest first, into a wake_next chain. */
static sync_node *queue_take_all(sync_queue q, int result)
{
    sync_node *first = NULL, **last = &first, *n;
    while ((n = queue_take(q))) {
        n->w->result = result;
        n->wake_next = NULL;
        *last = n;
        last = &n->wake_next;
    }
    return first;
}

static void wake_chain(sync_node *n)
{
    while (n) {
        sync_node *next = n->wake_next; /* read first: n dies with its wait */
        weft__waiter_wake(n->w, false);
        n = next;
    }
}

/* Publishes n in q (lock held), waits, and unpublishes after a timeout.
 * Returns the waiter's result. */
static int queue_wait(sync_queue q, weft__lock *lock, int64_t deadline, void *token)
{
    weft__waiter w;
    weft__waiter_init(&w, deadline);
    sync_node n = { .w = &w, .token = token };
    queue_push(q, &n);
    int rc = weft__waiter_wait(&w, lock);
    if (rc == ETIMEDOUT) {
        weft__lock_acquire(lock);
        queue_unlink(q, &n);
        weft__lock_release(lock);
    }
    return rc;
}

/* The caller's identity as a mutex owner: its coroutine, or on a plain
 * thread the address of a thread-local (never NULL either way). */
static __thread char thread_token;

static void *owner_token(void)
{
    weft_co *co = weft_self();
    return co ? (void *)co : (void *)&thread_token;
}

/* --- mutex ------------------------------------------------------------------- */

static sync_queue mutex_queue(weft_mutex *m)
{
    return (sync_queue){ &m->weft_head_, &m->weft_tail_ };
}

int weft_mutex_init(weft_mutex *m)
{
    if (!m)
        return EINVAL;
    *m = (weft_mutex)WEFT_MUTEX_INIT;
    return 0;
}

int weft_mutex_lock(weft_mutex *m)
{
    if (!m)
        return EINVAL;
    void *self = owner_token();
    weft__lock *lock = lock_of(&m->weft_lock_);
    weft__lock_acquire(lock);
    if (!m->weft_state_) {
        m->weft_state_ = 1;
        m->weft_owner_ = self;
        weft__lock_release(lock);
        return 0;
    }
    if (m->weft_owner_ == self) {
        weft__lock_release(lock);
        return EDEADLK;
    }
    /* Woken only by an unlock that made us the owner. */
    return queue_wait(mutex_queue(m), lock, WEFT_FOREVER, self);
}

int weft_mutex_trylock(weft_mutex *m)
{
    if (!m)
        return EINVAL;
    weft__lock *lock = lock_of(&m->weft_lock_);
    weft__lock_acquire(lock);
    int rc = EBUSY;
    if (!m->weft_state_) {
        m->weft_state_ = 1;
        m->weft_owner_ = owner_token();
        rc = 0;
    }
    weft__lock_release(lock);
    return rc;
}

/* Releases m (held by self, lock held); returns a claimed waiter to wake. */
static sync_node *mutex_release(weft_mutex *m)
{
    sync_node *n = queue_take(mutex_queue(m));
    if (n) {
        m->weft_owner_ = n->token; /* direct hand-off: stays locked */
        n->w->result = 0;
    } else {
        m->weft_state_ = 0;
        m->weft_owner_ = NULL;
    }
    return n;
}

int weft_mutex_unlock(weft_mutex *m)
{
    if (!m)
        return EINVAL;
    void *self = owner_token();
    weft__lock *lock = lock_of(&m->weft_lock_);
    weft__lock_acquire(lock);
    if (!m->weft_state_ || m->weft_owner_ != self) {
        weft__lock_release(lock);
        return EPERM;
    }
    sync_node *n = mutex_release(m);
    weft__lock_release(lock);
    if (n)
        weft__waiter_wake(n->w, true);
    return 0;
}

/* --- condition variable -------------------------------------------------------- */

static sync_queue cond_queue(weft_cond *c)
{
    return (sync_queue){ &c->weft_head_, &c->weft_tail_ };
}

int weft_cond_init(weft_cond *c)
{
    if (!c)
        return EINVAL;
    *c = (weft_cond)WEFT_COND_INIT;
    return 0;
}

int weft_cond_wait(weft_cond *c, weft_mutex *m, int64_t deadline)
{
    if (!c || !m)
        return EINVAL;
    void *self = owner_token();
    weft__lock *mlock = lock_of(&m->weft_lock_);
    weft__lock_acquire(mlock);
    bool held = m->weft_state_ && m->weft_owner_ == self;
    weft__lock_release(mlock);
    if (!held)
        return EPERM;
    if (!weft__deadline_pending(deadline))
        return ETIMEDOUT; /* nothing to wait for: the mutex stays held */

    /* Queue on c before releasing m, both under c's lock, so a signal sent
     * after the caller's last look at the shared state cannot be missed.
     * Lock order: c, then m (nothing takes m then c). */
    weft__lock *clock = lock_of(&c->weft_lock_);
    weft__waiter w;
    weft__waiter_init(&w, deadline);
    sync_node n = { .w = &w };
    weft__lock_acquire(clock);
    queue_push(cond_queue(c), &n);
    weft__lock_acquire(mlock);
    sync_node *heir = mutex_release(m);
    weft__lock_release(mlock);
    if (heir)
        weft__waiter_wake(heir->w, true);
    int rc = weft__waiter_wait(&w, clock);
    if (rc == ETIMEDOUT) {
        weft__lock_acquire(clock);
        queue_unlink(cond_queue(c), &n);
        weft__lock_release(clock);
    }
    weft_mutex_lock(m);
    return rc;
}

int weft_cond_signal(weft_cond *c)
{
    if (!c)
        return EINVAL;
    weft__lock *lock = lock_of(&c->weft_lock_);
    weft__lock_acquire(lock);
    sync_node *n = queue_take(cond_queue(c));
    if (n)
        n->w->result = 0;
    weft__lock_release(lock);
    if (n)
        weft__waiter_wake(n->w, false); /* it will want the mutex the signaller likely holds */
    return 0;
}

int weft_cond_broadcast(weft_cond *c)
{
    if (!c)
        return EINVAL;
    weft__lock *lock = lock_of(&c->weft_lock_);
    weft__lock_acquire(lock);
    sync_node *first = queue_take_all(cond_queue(c), 0);
    weft__lock_release(lock);
    wake_chain(first);
    return 0;
}

/* --- waitgroup ------------------------------------------------------------------- */

static sync_queue wg_queue(weft_wg *g)
{
    return (sync_queue){ &g->weft_head_, &g->weft_tail_ };
}

int weft_wg_init(weft_wg *g)
{
    if (!g)
        return EINVAL;
    *g = (weft_wg)WEFT_WG_INIT;
    return 0;
}

_Static_assert(sizeof(int) == sizeof(_Atomic int), "atomic count size");

/* The count is an atomic outside the lock: add and done are one CAS
 * (Go's WaitGroup is one atomic add), so a million coroutines finishing
 * on different workers do not serialise on the lock. Only the move to 0
 * takes the lock, to wake the waiters, and it takes it *before* the count
 * becomes 0: a waiter that sees 0 may return and free the waitgroup (it
 * may live on its stack), so the adder must be done with it by then. A
 * waiter that sees 0 also checks that the lock is free; if not, the adder
 * that made the 0 still holds it, and the waiter passes through the lock
 * once to wait for that release, the adder's last touch. A waiter re-reads
 * the count under the lock before it queues, so it either sees 0 or is
 * queued before the adder's lock and is woken. */
static _Atomic int *count_of(weft_wg *g)
{
    return (_Atomic int *)(void *)&g->weft_count_;
}

/* The count after adding delta to old, or -1 when out of range. */
static long long wg_next(int old, int delta)
{
    long long next = (long long)old + delta;
    return next < 0 || next > INT_MAX ? -1 : next;
}

int weft_wg_add(weft_wg *g, int delta)
{
    if (!g)
        return EINVAL;
    _Atomic int *count = count_of(g);
    int old = atomic_load_explicit(count, memory_order_relaxed);
    long long next;
    for (;;) {
        if ((next = wg_next(old, delta)) < 0)
            return EINVAL;
        if (next == 0 && delta != 0)
            break; /* the move to 0: under the lock, below */
        /* Acq_rel: done() releases the coroutine's work to the waiter
         * that sees 0 (acquire in weft_wg_wait). */
        if (atomic_compare_exchange_weak_explicit(count, &old, (int)next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return 0;
    }
    weft__lock *lock = lock_of(&g->weft_lock_);
    weft__lock_acquire(lock);
    /* Other adders still CAS outside the lock: the count may move again. */
    old = atomic_load_explicit(count, memory_order_relaxed);
    for (;;) {
        if ((next = wg_next(old, delta)) < 0) {
            weft__lock_release(lock);
            return EINVAL;
        }
        if (atomic_compare_exchange_weak_explicit(count, &old, (int)next, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    sync_node *first = next == 0 ? queue_take_all(wg_queue(g), 0) : NULL;
    weft__lock_release(lock); /* the last touch of g */
    wake_chain(first);
    return 0;
}

int weft_wg_done(weft_wg *g)
{
    return weft_wg_add(g, -1);
}

int weft_wg_wait(weft_wg *g, int64_t deadline)
{
    if (!g)
        return EINVAL;
    _Atomic int *count = count_of(g);
    weft__lock *lock = lock_of(&g->weft_lock_);
    /* Acquire: pairs with the release of the done() that reached 0, which
     * took the lock before it: so the lock word read next is that
     * acquisition or later, and 0 there means the adder has let go. */
    if (atomic_load_explicit(count, memory_order_acquire) == 0 &&
        atomic_load_explicit(&lock->word, memory_order_acquire) == 0)
        return 0;
    weft__lock_acquire(lock);
    if (atomic_load_explicit(count, memory_order_acquire) == 0) {
        weft__lock_release(lock);
        return 0;
    }
    if (!weft__deadline_pending(deadline)) {
        weft__lock_release(lock);
        return ETIMEDOUT;
    }
    return queue_wait(wg_queue(g), lock, deadline, NULL);
}

/* --- semaphore ------------------------------------------------------------------- */

static sync_queue sem_queue(weft_sem *s)
{
    return (sync_queue){ &s->weft_head_, &s->weft_tail_ };
}

int weft_sem_init(weft_sem *s, unsigned n)
{
    if (!s)
        return EINVAL;
    *s = (weft_sem)WEFT_SEM_INIT(n);
    return 0;
}

int weft_sem_wait(weft_sem *s, int64_t deadline)
{
    if (!s)
        return EINVAL;
    weft__lock *lock = lock_of(&s->weft_lock_);
    weft__lock_acquire(lock);
    /* A unit in the count means nobody claimable waits (post hands units
     * to waiters first), so taking it keeps FIFO order. */
    if (s->weft_count_ > 0) {
        s->weft_count_--;
        weft__lock_release(lock);
        return 0;
    }
    if (!weft__deadline_pending(deadline)) {
        weft__lock_release(lock);
        return ETIMEDOUT;
    }
    return queue_wait(sem_queue(s), lock, deadline, NULL);
}

int weft_sem_post(weft_sem *s)
{
    if (!s)
        return EINVAL;
    weft__lock *lock = lock_of(&s->weft_lock_);
    weft__lock_acquire(lock);
    sync_node *n = queue_take(sem_queue(s));
    if (n) {
        n->w->result = 0; /* the unit goes straight to the oldest waiter */
    } else if (s->weft_count_ == UINT_MAX) {
        weft__lock_release(lock);
        return EOVERFLOW;
    } else {
        s->weft_count_++;
    }
    weft__lock_release(lock);
    if (n)
        weft__waiter_wake(n->w, true);
    return 0;
}
