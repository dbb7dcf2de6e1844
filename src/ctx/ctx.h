/* Fibers: a stack plus a saved stack pointer, and the switch between them.
 *
 * Everything that runs on its own stack in weft is a fiber: a coroutine, a
 * generator, a weft_ctx context, and each thread's own stack. The switch is
 * the assembly in asm/ (weft__ctx_jump); this layer adds what every switch
 * needs besides the registers: the calling thread's "current fiber" (read by
 * the overflow handler), and the announcements that let AddressSanitizer,
 * ThreadSanitizer and Valgrind follow the stacks. It knows nothing of the
 * scheduler. */
#ifndef WEFT_CTX_CTX_H
#define WEFT_CTX_CTX_H

#include <stddef.h>
#include <stdint.h>

#include "../compiler.h"

struct weft__stack;

/* What a fiber is, for overflow reports ("stack overflow in <kind> '<name>'"). */
enum weft__fiber_kind {
    WEFT__FIBER_THREAD, /* a thread's own stack */
    WEFT__FIBER_COROUTINE,
    WEFT__FIBER_GENERATOR,
    WEFT__FIBER_CONTEXT,
};

typedef struct weft__fiber {
    /* sp and canary are what a switch reads: kept together, first. */
    void *sp;                  /* saved stack pointer while switched out */
    unsigned char canary;      /* its stack is canary-guarded (stack.c) */
    unsigned char kind;        /* enum weft__fiber_kind */
    unsigned char in_ctx;      /* the first member of a struct weft_ctx (ctx.c):
                                  a context's, or a thread's own context's */
    struct weft__stack *stack; /* NULL for a thread's own stack */
    void *lo;                  /* usable stack [lo, lo + size) */
    size_t size;
    const char *name; /* for reports; NULL prints as "(unnamed)" */
#if defined(WEFT_ASAN)
    void *asan_fake_stack; /* ASan's fake-stack handle while switched out */
#endif
#if defined(WEFT_TSAN)
    void *tsan_fiber; /* ThreadSanitizer's fiber for this stack */
#endif
} weft__fiber;

/* The assembly (asm/switch_*.S). */
void *weft__ctx_jump(void **save_sp, void *to_sp, void *value);
void weft__ctx_trampoline(void);

typedef void (*weft__fiber_entry)(void *value, void *arg);

/* Prepares f to start on stack s: the first switch into f calls
 * entry(value, arg) on the new stack. entry must never return: it ends with
 * weft__fiber_exit. */
void weft__fiber_init(weft__fiber *f, struct weft__stack *s, unsigned kind, const char *name,
                      weft__fiber_entry entry, void *arg);

/* Switches from the running fiber `from` to `to`, passing value; returns the
 * value given by whoever switches back to `from`, possibly on another
 * thread. */
void *weft__fiber_switch(weft__fiber *from, weft__fiber *to, void *value);

/* The last switch out of a fiber that never runs again (its stack may be
 * reused as soon as `to` runs). */
__attribute__((noreturn)) void weft__fiber_exit(weft__fiber *from, weft__fiber *to, void *value);

/* The first call on every new fiber, before anything else: completes the
 * sanitizers' view of the switch that started it. */
void weft__fiber_started(void);

/* Releases the sanitizer state of a fiber that will not run again. Call it
 * from another fiber. Does not free the stack. */
void weft__fiber_destroy(weft__fiber *f);

/* The running fiber of the calling thread (NULL before its first use of
 * fibers). Code that reads it directly must do so before any switch in
 * the same function; otherwise use weft__fiber_current(). */
extern WEFT_TLS weft__fiber *weft__tls_fiber;

/* The calling thread's running fiber, and its own (thread-stack) fiber.
 * Not inlined: a coroutine may resume on another thread, and the compiler
 * must not reuse one thread's TLS address after a switch. */
WEFT_NOINLINE weft__fiber *weft__fiber_current(void);
WEFT_NOINLINE weft__fiber *weft__fiber_thread(void);

#endif
