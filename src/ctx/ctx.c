/* Fibers (the switch plus its bookkeeping) and the public weft_ctx_* API.
 *
 * weft__fiber_switch is the one path every switch in weft takes: it records
 * the thread's current fiber (the overflow handler reads it), checks a
 * canary-guarded stack on the way out (stack.c), announces the switch to
 * AddressSanitizer and ThreadSanitizer, and calls the assembly. The
 * sanitizer calls compile away in ordinary builds, so a switch costs the
 * assembly plus a store and a branch.
 *
 * weft_ctx_* is greenlet's model on top: symmetric switches that carry a
 * value both ways, and a parent that receives the return value of a context
 * whose function ends. A context belongs to the thread that runs it; the
 * thread's own stack is a context too (weft_ctx_current() before any
 * switch). Parents are reference-counted by their children, so a parent
 * freed before its child finishes stays readable: a finishing context skips
 * finished and freed ancestors and returns to the nearest live one (the
 * thread's own context at the end of the chain). */

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "../alloc.h"
#include "ctx.h"
#include "stack.h"
#include "weft/ctx.h"

#if defined(WEFT_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(WEFT_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

/* The running fiber of this thread. Read by the SIGSEGV handler (hence
 * initial-exec TLS); written only by this thread. */
WEFT_TLS weft__fiber *weft__tls_fiber;
/* Set by the scheduler on worker threads: user code there is a coroutine,
 * where weft_ctx_* is not allowed. */
WEFT_TLS int weft__tls_on_worker;

static WEFT_TLS weft__fiber thread_fiber;

static void thread_fiber_init(void)
{
    weft__fiber *f = &thread_fiber;
    f->kind = WEFT__FIBER_THREAD;
#if defined(WEFT_ASAN)
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstack(&attr, &f->lo, &f->size);
        pthread_attr_destroy(&attr);
    }
#endif
#if defined(WEFT_TSAN)
    f->tsan_fiber = __tsan_get_current_fiber();
#endif
    weft__tls_fiber = f;
}

weft__fiber *weft__fiber_thread(void)
{
    if (WEFT_UNLIKELY(weft__tls_fiber == NULL))
        thread_fiber_init();
    return &thread_fiber;
}

weft__fiber *weft__fiber_current(void)
{
    if (WEFT_UNLIKELY(weft__tls_fiber == NULL))
        thread_fiber_init();
    return weft__tls_fiber;
}

/* Builds the first frame (see the table in asm/switch_*.S, or the record
 * in switch_ucontext.c). */
static void *first_frame(void *top, weft__fiber_entry entry, void *arg)
{
    uintptr_t t = (uintptr_t)top & ~(uintptr_t)15;
#if defined(WEFT_CTX_UCONTEXT)
    /* switch_ucontext.c's record, which its weft__ctx_jump turns into a
     * ucontext on the first switch in (the layout is its struct frame). */
    struct {
        weft__fiber_entry entry;
        void *arg, *value, *uc;
    } *f = (void *)(t - sizeof *f);
    f->entry = entry;
    f->arg = arg;
    f->value = NULL;
    f->uc = NULL;
    return f;
#elif defined(__x86_64__)
    uint64_t *sp = (uint64_t *)(t - 80);
    memset(sp, 0, 80);
    ((uint32_t *)sp)[0] = 0x1F80;       /* MXCSR: defaults, all masked */
    ((uint16_t *)sp)[2] = 0x037F;       /* x87 CW: defaults */
    sp[4] = (uint64_t)(uintptr_t)entry; /* r12 */
    sp[5] = (uint64_t)(uintptr_t)arg;   /* rbx */
    sp[6] = 0;                          /* rbp: ends frame-pointer chains */
    sp[7] = (uint64_t)(uintptr_t)weft__ctx_trampoline;
    return sp;
#elif defined(__aarch64__)
    /* 176 bytes: d8-d15, x19-x28, x29, x30, FPCR, padding. After the
     * switch pops it, sp == t, 16-aligned as AAPCS64 requires. */
    uint64_t *sp = (uint64_t *)(t - 176);
    memset(sp, 0, 176);                                 /* d8-d15, x21-x28: zero */
    sp[8] = (uint64_t)(uintptr_t)entry;                 /* x19 */
    sp[9] = (uint64_t)(uintptr_t)arg;                   /* x20 */
    sp[18] = 0;                                         /* x29: ends frame-pointer chains */
    sp[19] = (uint64_t)(uintptr_t)weft__ctx_trampoline; /* x30 */
    sp[20] = 0;                                         /* FPCR: round to nearest, no traps */
    return sp;
#else
#error "weft: no context switch for this architecture"
#endif
}

void weft__fiber_init(weft__fiber *f, weft__stack *s, unsigned kind, const char *name,
                      weft__fiber_entry entry, void *arg)
{
    f->stack = s;
    f->lo = s->lo;
    f->size = s->size;
    f->kind = (unsigned char)kind;
    f->in_ctx = 0;
    f->canary = s->mode == WEFT__GUARD_CANARY;
    f->name = name;
    f->sp = first_frame((char *)s->lo + s->size, entry, arg);
#if defined(WEFT_ASAN)
    f->asan_fake_stack = NULL;
#endif
#if defined(WEFT_TSAN)
    f->tsan_fiber = __tsan_create_fiber(0);
#endif
}

/* Out of line: a canary check is rare (only stacks past the mapping
 * budget have one), and keeping it out of the switch keeps the switch free
 * of calls, so it saves no registers of its own. */
static WEFT_NOINLINE void check_canary(const weft__fiber *from)
{
    static const char *const kinds[] = { "thread", "coroutine", "generator", "context" };
    weft__stack_check(from->stack, kinds[from->kind & 3], from->name);
}

/* Reads the old stack as deep as the rest of the switch will write (the
 * call's return address and the assembly's saved registers, with room to
 * spare), before the running fiber changes: if that reaches the guard, the
 * fault is taken while the old fiber is still the current one, so the
 * overflow handler names the right stack. Afterwards nothing between the
 * store of weft__tls_fiber and the new stack can fault. Costs one load of
 * a line next to the stack pointer. */
static inline __attribute__((always_inline)) void probe_switch_room(void)
{
#if !defined(WEFT_CTX_UCONTEXT) && defined(__x86_64__)
    __asm__ volatile("cmpb $0, -80(%%rsp)" ::: "memory", "cc"); /* 8 + 64 bytes, and 8 */
#elif !defined(WEFT_CTX_UCONTEXT) && defined(__aarch64__)
    unsigned tmp;
    __asm__ volatile("ldurb %w0, [sp, #-192]" : "=r"(tmp)::"memory"); /* 176 bytes, and 16 */
    (void)tmp;
#endif
}

/* Everything a switch does after the canary check: the current-fiber
 * record, the sanitizer announcements and the assembly. In an ordinary
 * build it is a TLS store and a tail jump into weft__ctx_jump. */
static inline __attribute__((always_inline)) void *jump(weft__fiber *from, weft__fiber *to,
                                                        void *value)
{
#if defined(WEFT_TSAN)
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
#if defined(WEFT_ASAN)
    __sanitizer_start_switch_fiber(&from->asan_fake_stack, to->lo, to->size);
#endif
    probe_switch_room();
    weft__tls_fiber = to;
    void *r = weft__ctx_jump(&from->sp, to->sp, value);
#if defined(WEFT_ASAN)
    __sanitizer_finish_switch_fiber(from->asan_fake_stack, NULL, NULL);
#endif
    return r;
}

static WEFT_NOINLINE void *jump_after_canary(weft__fiber *from, weft__fiber *to, void *value)
{
    check_canary(from);
    return jump(from, to, value);
}

/* weft__fiber_switch's body, also inlined into weft_ctx_switch. */
static inline __attribute__((always_inline)) void *fiber_switch(weft__fiber *from, weft__fiber *to,
                                                                void *value)
{
    if (WEFT_UNLIKELY(from->canary))
        return jump_after_canary(from, to, value);
    return jump(from, to, value);
}

void *weft__fiber_switch(weft__fiber *from, weft__fiber *to, void *value)
{
    return fiber_switch(from, to, value);
}

void weft__fiber_exit(weft__fiber *from, weft__fiber *to, void *value)
{
    if (WEFT_UNLIKELY(from->canary))
        check_canary(from);
#if defined(WEFT_TSAN)
    __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
#if defined(WEFT_ASAN)
    /* NULL: this fiber's fake stack dies with it. */
    __sanitizer_start_switch_fiber(NULL, to->lo, to->size);
#endif
    probe_switch_room();
    weft__tls_fiber = to;
    weft__ctx_jump(&from->sp, to->sp, value);
    __builtin_unreachable();
}

void weft__fiber_started(void)
{
#if defined(WEFT_ASAN)
    __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
}

void weft__fiber_destroy(weft__fiber *f)
{
#if defined(WEFT_TSAN)
    if (f->tsan_fiber) {
        __tsan_destroy_fiber(f->tsan_fiber);
        f->tsan_fiber = NULL;
    }
#else
    (void)f;
#endif
}

/* --- weft_ctx: greenlet-style contexts for plain threads ---------------- */

struct weft_ctx {
    /* First: what weft_ctx_switch reads (fiber.sp, fiber.canary, dead) sits
     * at fixed offsets from the handle, one load each. For the thread's own
     * context, fiber is a copy of the thread fiber (as a worker keeps one),
     * so the switch needs no "which fiber" pointer to chase. */
    weft__fiber fiber;
    unsigned char dead; /* finished or freed: switching to it does nothing */
    unsigned char finished, freed, is_thread;
    unsigned refs; /* the user's handle + one per child not yet done */
    struct weft_ctx *parent;
    void *(*fn)(void *);
};

/* The running context is the one whose fiber is the thread's running
 * fiber (weft__tls_fiber): no second thread-local to keep in step, so a
 * switch stores one. Inside a generator the running fiber is the
 * generator's, and there is no running context. */
static inline struct weft_ctx *running_ctx(void)
{
    weft__fiber *f = weft__tls_fiber;
    return f && f->in_ctx ? (struct weft_ctx *)(void *)f : NULL;
}
static WEFT_TLS struct weft_ctx *ctx_thread;
static pthread_key_t ctx_key;
static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;

static void ctx_unref(struct weft_ctx *c);

static void ctx_thread_exit(void *p)
{
    struct weft_ctx *c = p;
    /* The thread's stack is current: point the overflow handler back at
     * the thread fiber before the copy in c goes. */
    if (weft__tls_fiber == &c->fiber)
        weft__tls_fiber = &thread_fiber;
    ctx_thread = NULL;
    /* The thread's own reference: contexts it made and never freed keep
     * the struct (their parent) until they are freed. */
    ctx_unref(c);
}

static void ctx_setup(void)
{
    pthread_key_create(&ctx_key, ctx_thread_exit);
}

static struct weft_ctx *thread_ctx(void)
{
    if (WEFT_UNLIKELY(!ctx_thread)) {
        pthread_once(&ctx_once, ctx_setup);
        struct weft_ctx *c = weft__calloc(sizeof *c);
        if (!c)
            return NULL;
        c->is_thread = 1;
        c->refs = 1;
        c->fiber = *weft__fiber_thread();
        c->fiber.in_ctx = 1;
        ctx_thread = c;
        /* On the thread's own stack, the copy stands for it from now on. */
        if (weft__tls_fiber == &thread_fiber)
            weft__tls_fiber = &c->fiber;
        pthread_setspecific(ctx_key, c);
    }
    return ctx_thread;
}

weft_ctx *weft_ctx_current(void)
{
    if (weft__tls_on_worker)
        return NULL;
    struct weft_ctx *cur = running_ctx();
    if (cur)
        return cur;
    weft__fiber *f = weft__fiber_current();
    return f == &thread_fiber ? thread_ctx() : NULL; /* NULL: in a generator */
}

/* Drops one reference; frees the struct at zero, which drops the
 * reference it held on its parent. The stack was released by weft_ctx_free. */
static void ctx_unref(struct weft_ctx *c)
{
    while (c && --c->refs == 0) {
        struct weft_ctx *parent = c->parent;
        weft__free(c, sizeof *c);
        c = parent;
    }
}

static void ctx_entry(void *value, void *arg)
{
    weft__fiber_started();
    struct weft_ctx *c = arg;
    void *result = c->fn(value);
    c->finished = c->dead = 1;
    struct weft_ctx *p = c->parent;
    while (p->dead)
        p = p->parent;
    weft__fiber_exit(&c->fiber, &p->fiber, result);
}

int weft_ctx_make(weft_ctx **out, size_t stack_size, void *(*fn)(void *))
{
    if (!out || !fn)
        return EINVAL;
    if (weft__tls_on_worker)
        return EPERM;
    struct weft_ctx *parent = weft_ctx_current();
    if (!parent) /* in a generator, or no memory for the thread's own */
        return weft__fiber_current()->kind == WEFT__FIBER_GENERATOR ? EPERM : ENOMEM;
    struct weft_ctx *c = weft__calloc(sizeof *c);
    if (!c)
        return ENOMEM;
    weft__stack *s;
    int err = weft__stack_get(stack_size, &s);
    if (err) {
        weft__free(c, sizeof *c);
        return err;
    }
    weft__overflow_init();
    weft__fiber_init(&c->fiber, s, WEFT__FIBER_CONTEXT, NULL, ctx_entry, c);
    c->fiber.in_ctx = 1;
    c->fn = fn;
    c->refs = 1;
    c->parent = parent;
    parent->refs++;
    *out = c;
    return 0;
}

/* weft_ctx_switch's rare cases: NULL, dead or running `to`, a worker
 * thread, the thread's first switch. Out of line, so the common path makes
 * no call before the assembly and saves no registers of its own. */
static WEFT_NOINLINE void *ctx_switch_slow(weft_ctx *to, void *value)
{
    if (!to || to->dead || weft__tls_on_worker)
        return NULL;
    struct weft_ctx *cur = weft_ctx_current();
    if (!cur)
        return NULL; /* in a generator, or out of memory */
    if (to == cur)
        return value;
    return fiber_switch(&cur->fiber, &to->fiber, value);
}

void *weft_ctx_switch(weft_ctx *to, void *value)
{
    /* This is the ctx benchmark's whole path besides the assembly: one
     * thread-local load, a few tests, one thread-local store (in
     * fiber_switch) and a tail jump into weft__ctx_jump. Contexts never
     * change threads, so TLS is read directly. Everything else (NULL, a
     * dead or running `to`, the thread's first use, a generator or a
     * worker thread, where the running fiber is no context's) takes the
     * slow path. */
    weft__fiber *f = weft__tls_fiber;
    if (WEFT_UNLIKELY(!to || !f || !f->in_ctx || f == &to->fiber || to->dead))
        return ctx_switch_slow(to, value);
    return fiber_switch(f, &to->fiber, value);
}

void weft_ctx_free(weft_ctx *c)
{
    /* Inside a generator the running context is not known (the
     * generator's caller may be any context of this thread), so nothing
     * is freed there, as weft_ctx_* refuse everything inside generators. */
    weft__fiber *f = weft__tls_fiber;
    if (!c || c->is_thread || c->freed || c == running_ctx() ||
        (f && f->kind == WEFT__FIBER_GENERATOR))
        return;
    c->freed = c->dead = 1;
    /* The stack goes now; the struct stays while children may read it. */
    if (c->fiber.stack) {
        weft__fiber_destroy(&c->fiber);
        weft__stack_put(c->fiber.stack);
        c->fiber.stack = NULL;
    }
    ctx_unref(c);
}
