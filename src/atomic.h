/* The one place weft's atomics come from.
 *
 * C11 <stdatomic.h> covers everything but one operation: a 16-byte
 * compare-and-swap for the ABA-safe lock-free free lists (a pointer plus a
 * version count). C11 routes _Atomic 16-byte objects through libatomic,
 * which may take a lock, so that one primitive comes from libatomic_ops
 * (its MIT-licensed core; its AO_stack is GPL and not used), which emits
 * cmpxchg16b on x86-64 and ldxp/stxp on AArch64.
 *
 * ThreadSanitizer cannot see inline assembly, so TSan builds (and any build
 * defining WEFT_LIFO_LOCKED) swap the lock-free list for a locked one with
 * the same interface: the swap the style guide asks this header to allow. */
#ifndef WEFT_ATOMIC_H
#define WEFT_ATOMIC_H

#include <stdatomic.h>
#include <stdint.h>
#include <stddef.h>

#include "compiler.h"

#if defined(WEFT_TSAN) && !defined(WEFT_LIFO_LOCKED)
#define WEFT_LIFO_LOCKED 1
#endif

#define weft_load_relaxed(p) atomic_load_explicit((p), memory_order_relaxed)
#define weft_load_acquire(p) atomic_load_explicit((p), memory_order_acquire)
#define weft_store_relaxed(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define weft_store_release(p, v) atomic_store_explicit((p), (v), memory_order_release)

/* A seq_cst fence. ThreadSanitizer does not model fences, so TSan builds
 * use a seq_cst read-modify-write of one shared word instead: every such
 * "fence" then synchronises with the previous one, which is at least as
 * strong, and TSan sees the ordering. */
#if defined(WEFT_TSAN)
__attribute__((weak)) _Atomic unsigned long weft__fence_word;
#define weft_fence_seq_cst()                                                                       \
    ((void)atomic_fetch_add_explicit(&weft__fence_word, 0, memory_order_seq_cst))
#elif defined(__x86_64__)
/* On x86-64 a locked RMW of a thread-private word is a full barrier and
 * cheaper than mfence (the Linux kernel's smp_mb makes the same choice);
 * it sits on the hot path of every spawn and wake-up (weft__notify). */
static WEFT_TLS WEFT_UNUSED _Atomic int weft__fence_private;
#define weft_fence_seq_cst()                                                                       \
    ((void)atomic_fetch_add_explicit(&weft__fence_private, 0, memory_order_seq_cst))
#else
#define weft_fence_seq_cst() atomic_thread_fence(memory_order_seq_cst)
#endif

/* The fence between a thief's load of a deque's top and its load of the
 * bottom (deque.c). The pattern is Dekker's against the owner, who stores
 * bottom, fences, then loads top. On x86-64 (TSO) loads are not reordered
 * with older loads and the owner's full fence orders its side, so the
 * thief needs only the compiler not to reorder: a thief that reads a
 * stale bottom read its top before the owner's store became visible, so
 * the owner's later load of top sees no steal yet and both race for the
 * last slot by CAS. Elsewhere (AArch64, TSan) a seq_cst fence. */
#if defined(__x86_64__) && !defined(WEFT_TSAN)
#define weft_fence_load_load() atomic_signal_fence(memory_order_seq_cst)
#else
#define weft_fence_load_load() weft_fence_seq_cst()
#endif

static inline void weft_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* --- weft__lifo: a multi-producer multi-consumer LIFO free list. -------
 * Nodes begin with a weft__lifo_node and must stay mapped for as long as the
 * process may pop (type-stable memory): a popper can read node->next of a
 * node that another thread has just taken. The version count makes the
 * final CAS fail in that case (the ABA problem). */
typedef struct weft__lifo_node {
    struct weft__lifo_node *next;
} weft__lifo_node;

#ifndef WEFT_LIFO_LOCKED

#if defined(__x86_64__)
#define AO_CMPXCHG16B_AVAILABLE 1
#endif
#include <atomic_ops.h>

typedef struct weft__lifo {
    volatile AO_double_t head; /* AO_val1: top node, AO_val2: version */
} weft__lifo;
#define WEFT__LIFO_INIT                                                                            \
    {                                                                                              \
        AO_DOUBLE_T_INITIALIZER                                                                    \
    }

static inline void weft__lifo_push(weft__lifo *l, weft__lifo_node *n)
{
    for (;;) {
        AO_t top = l->head.AO_val1, ver = l->head.AO_val2;
        n->next = (weft__lifo_node *)top;
        /* Full barrier CAS: releases n->next to the popper that reads it. */
        if (AO_compare_double_and_swap_double_full(&l->head, top, ver, (AO_t)n, ver + 1))
            return;
    }
}

static inline weft__lifo_node *weft__lifo_pop(weft__lifo *l)
{
    for (;;) {
        /* The version first, then the top, each with acquire: the top is
         * then no older than the version, so if n was popped (and maybe
         * pushed back) after the top was read, the version has moved and
         * the CAS fails. Read the other way round, a weakly ordered CPU
         * (AArch64) may see a newer version than the top it pairs with,
         * and the CAS could install a stale next. On x86 these are plain
         * loads, in this order. */
        AO_t ver = __atomic_load_n(&l->head.AO_val2, __ATOMIC_ACQUIRE);
        AO_t top = __atomic_load_n(&l->head.AO_val1, __ATOMIC_ACQUIRE);
        weft__lifo_node *n = (weft__lifo_node *)top;
        if (n == NULL)
            return NULL;
        /* May read a stale next if n was popped meanwhile; the version in
         * the CAS below then differs and the loop retries. */
        AO_t next = (AO_t)__atomic_load_n(&n->next, __ATOMIC_ACQUIRE);
        if (AO_compare_double_and_swap_double_full(&l->head, top, ver, next, ver + 1))
            return n;
    }
}

#else /* WEFT_LIFO_LOCKED */

#include <pthread.h>
typedef struct weft__lifo {
    pthread_mutex_t lock;
    weft__lifo_node *top;
} weft__lifo;
#define WEFT__LIFO_INIT                                                                            \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, NULL                                                            \
    }

static inline void weft__lifo_push(weft__lifo *l, weft__lifo_node *n)
{
    pthread_mutex_lock(&l->lock);
    n->next = l->top;
    l->top = n;
    pthread_mutex_unlock(&l->lock);
}

static inline weft__lifo_node *weft__lifo_pop(weft__lifo *l)
{
    pthread_mutex_lock(&l->lock);
    weft__lifo_node *n = l->top;
    if (n)
        l->top = n->next;
    pthread_mutex_unlock(&l->lock);
    return n;
}

#endif /* WEFT_LIFO_LOCKED */

#endif
