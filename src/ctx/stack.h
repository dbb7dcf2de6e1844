/* Stacks for fibers: guarded, lazily committed, pooled. Design in stack.c
 * and docs/stacks.md. */
#ifndef WEFT_CTX_STACK_H
#define WEFT_CTX_STACK_H

#include <stddef.h>
#include <stdint.h>

#include "../atomic.h"

/* How a stack's overflow is caught. */
enum weft__guard_mode {
    WEFT__GUARD_INSTALL = 1, /* MADV_GUARD_INSTALL (Linux 6.13+): no extra mapping */
    WEFT__GUARD_MPROTECT,    /* a PROT_NONE mapping below: 2 mappings a stack */
    WEFT__GUARD_CANARY,      /* mapping budget spent: canary checked at switches */
};

typedef struct weft__stack {
    weft__lifo_node link;     /* global pool; must stay first */
    struct weft__stack *next; /* per-thread cache */
    void *map;                /* whole mapping, guard included (NULL: none) */
    size_t map_bytes;
    void *lo; /* usable [lo, lo + size) */
    size_t size;
    unsigned mode; /* enum weft__guard_mode */
} weft__stack;

#define WEFT__STACK_CANARY UINT64_C(0x7765667463616e61) /* "weftcana" */

/* The default usable size (256 KiB, or WEFT_STACK_SIZE, or set by
 * weft_start's config). Read on every spawn and join: the fast path is an
 * inline load, the slow path sets things up once. */
extern _Atomic size_t weft__stack_default_bytes;
size_t weft__stack_default_size_slow(void);
static inline size_t weft__stack_default_size(void)
{
    /* Relaxed: configuration written before the runtime's threads start. */
    size_t bytes = atomic_load_explicit(&weft__stack_default_bytes, memory_order_relaxed);
    return WEFT_LIKELY(bytes) ? bytes : weft__stack_default_size_slow();
}
void weft__stack_set_default(size_t bytes);
/* Rounds a requested size up to whole pages; 0 means the default. */
size_t weft__stack_round(size_t bytes);

/* The largest stack size weft accepts (1 TiB); larger requests are ENOMEM. */
#define WEFT__STACK_MAX_BYTES ((size_t)1 << 40)

/* A stack of at least `bytes` usable (0: the default). 0, or ENOMEM. */
int weft__stack_get(size_t bytes, weft__stack **out);
/* Back to the calling thread's cache or the shared pool (a stack of
 * another size than the default is unmapped). */
void weft__stack_put(weft__stack *s);
/* Unmaps pooled stacks beyond the pool's target size (1024), at most
 * `most` of them; returns how many. For idle moments: idle workers and
 * weft_stop call it. */
unsigned weft__stack_trim(unsigned most);
/* How many stack regions (mmap calls) this process has made: each thread
 * reserves address space for several batches of default stacks at once. */
extern _Atomic unsigned long weft__stack_regions;

/* Aborts with the overflow report when a canary stack's canary is gone. */
void weft__stack_check(const weft__stack *s, const char *kind, const char *name);

/* Installs the SIGSEGV/SIGBUS handlers (once per process) and an alternate
 * signal stack for the calling thread (once per thread, unless it has one). */
void weft__overflow_init(void);

/* This thread's alternate signal stack (NULL until weft__overflow_init
 * has given it one): set means the handlers are installed too. */
extern WEFT_TLS void *weft__altstack_mine;

/* weft__overflow_init for paths run often (weft_gen_next): one
 * thread-local test once the thread is ready. */
static inline void weft__overflow_ready(void)
{
    if (WEFT_UNLIKELY(!weft__altstack_mine))
        weft__overflow_init();
}

/* The guard mode new stacks get; tests force one with weft__stack_force_mode. */
unsigned weft__stack_mode(void);
void weft__stack_force_mode(unsigned mode);

#endif
