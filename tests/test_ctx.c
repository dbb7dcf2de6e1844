/* The context switch and weft_ctx_*: values both ways, return to parent,
 * finished contexts, callee-saved state (integer, floating-point, rounding
 * modes), deep recursion, overflow reports (guard page and canary), bad
 * input.
 *
 * Register checks go through probe_switch, a few lines of assembly below:
 * C cannot put a chosen value in a chosen callee-saved register and keep it
 * there across a call. Assertions run on the test's own stack only: values
 * seen inside contexts are recorded and checked after switching back
 * (cmocka's failure path longjmps, which must not cross stacks). Overflows
 * run in forked children whose stderr comes back through a pipe. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "compiler.h" /* WEFT_ASAN, WEFT_TSAN: gcc and clang alike */
#include "overflow_child.h"

#include <errno.h>
#include <fenv.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctx/ctx.h"
#include "ctx/stack.h"
#include "weft/ctx.h"

#define KIB ((size_t)1024)

/* --- greenlet's example and values ------------------------------------ */

static char order[64];
static size_t order_len;
static weft_ctx *ctx1, *ctx2, *main_ctx;

static void note(char c)
{
    order[order_len++] = c;
    order[order_len] = 0;
}

static void *func2(void *v)
{
    (void)v;
    note('3');
    weft_ctx_switch(ctx1, NULL);
    note('4');
    return NULL;
}

static void *func1(void *v)
{
    (void)v;
    note('1');
    weft_ctx_switch(ctx2, NULL);
    note('2');
    return NULL;
}

/* greenlet's example: prints 1 3 2, then resuming func2 prints 4. */
static void test_ctx_greenlet_pingpong_orders_1_3_2_4(void **state)
{
    (void)state;
    order_len = 0;
    assert_int_equal(weft_ctx_make(&ctx1, 0, func1), 0);
    assert_int_equal(weft_ctx_make(&ctx2, 0, func2), 0);
    weft_ctx_switch(ctx1, NULL);
    assert_string_equal(order, "132");
    weft_ctx_switch(ctx2, NULL); /* resume func2: prints 4, returns to main */
    assert_string_equal(order, "1324");
    weft_ctx_free(ctx1);
    weft_ctx_free(ctx2);
}

/* Doubles every value it gets and switches it to main_ctx; a negative value
 * makes it return x - 1 to its parent instead. */
static void *echo(void *v)
{
    intptr_t x = (intptr_t)v;
    while (x >= 0)
        x = (intptr_t)weft_ctx_switch(main_ctx, (void *)(x * 2));
    return (void *)(x - 1);
}

static void test_ctx_switch_passes_values_both_ways(void **state)
{
    (void)state;
    main_ctx = weft_ctx_current();
    weft_ctx *c;
    assert_int_equal(weft_ctx_make(&c, 0, echo), 0);
    assert_int_equal((intptr_t)weft_ctx_switch(c, (void *)21), 42);
    assert_int_equal((intptr_t)weft_ctx_switch(c, (void *)5), 10);
    assert_int_equal((intptr_t)weft_ctx_switch(c, (void *)-7), -8);
    weft_ctx_free(c);
}

static int count_runs;

static void *count_and_return(void *v)
{
    count_runs++;
    return v;
}

static void test_ctx_switch_to_finished_context_returns_null(void **state)
{
    (void)state;
    weft_ctx *c;
    count_runs = 0;
    assert_int_equal(weft_ctx_make(&c, 0, count_and_return), 0);
    assert_int_equal((intptr_t)weft_ctx_switch(c, (void *)7), 7);
    assert_int_equal(count_runs, 1);
    /* Finished: NULL at once, and fn does not run again. */
    assert_null(weft_ctx_switch(c, (void *)8));
    assert_null(weft_ctx_switch(c, (void *)9));
    assert_int_equal(count_runs, 1);
    assert_ptr_equal(weft_ctx_current(), main_ctx);
    weft_ctx_free(c);
}

static void test_ctx_switch_to_running_context_returns_value(void **state)
{
    (void)state;
    assert_int_equal((intptr_t)weft_ctx_switch(weft_ctx_current(), (void *)42), 42);
}

/* --- nesting: a context made inside a context returns to it -------------- */

static weft_ctx *nest_inner_parent;

static void *nest_inner(void *v)
{
    note('i');
    return (void *)((intptr_t)v + 1); /* to outer, its parent */
}

static void *nest_outer(void *v)
{
    weft_ctx *inner;
    note('o');
    if (weft_ctx_make(&inner, 0, nest_inner) != 0)
        return NULL;
    nest_inner_parent = weft_ctx_current();
    intptr_t r = (intptr_t)weft_ctx_switch(inner, (void *)((intptr_t)v * 10));
    note(weft_ctx_current() == nest_inner_parent ? 'O' : '?');
    weft_ctx_free(inner);
    return (void *)(r + 100); /* to main, its parent */
}

static void test_ctx_nested_contexts_return_to_their_parent(void **state)
{
    (void)state;
    weft_ctx *outer;
    order_len = 0;
    order[0] = 0;
    assert_int_equal(weft_ctx_make(&outer, 0, nest_outer), 0);
    assert_int_equal((intptr_t)weft_ctx_switch(outer, (void *)5), 5 * 10 + 1 + 100);
    assert_string_equal(order, "oiO");
    assert_ptr_equal(weft_ctx_current(), main_ctx);
    weft_ctx_free(outer);
}

/* --- callee-saved registers ------------------------------------------- */

/* void probe_switch(weft_ctx *to, uint64_t seed, uint64_t *out);
 * Saves the caller's callee-saved registers, loads seed + 1, seed + 2, ...
 * into every one of them, calls weft_ctx_switch(to, NULL), stores what
 * those registers hold when it returns into out[], restores the caller's
 * registers and returns. */
#if defined(__x86_64__)
/* rbx, rbp, r12-r15; System V has no callee-saved vector registers. */
#define PROBE_INT 6
#define PROBE_FLOAT 0
__asm__("    .text\n"
        "    .p2align 4\n"
        "    .type probe_switch, @function\n"
        "probe_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    pushq %rdx\n" /* out; rsp is 16-aligned now */
        "    leaq 1(%rsi), %rbx\n"
        "    leaq 2(%rsi), %rbp\n"
        "    leaq 3(%rsi), %r12\n"
        "    leaq 4(%rsi), %r13\n"
        "    leaq 5(%rsi), %r14\n"
        "    leaq 6(%rsi), %r15\n"
        "    xorl %esi, %esi\n" /* value NULL; rdi is still `to` */
        "    call weft_ctx_switch@PLT\n"
        "    popq %rdx\n"
        "    movq %rbx, 0(%rdx)\n"
        "    movq %rbp, 8(%rdx)\n"
        "    movq %r12, 16(%rdx)\n"
        "    movq %r13, 24(%rdx)\n"
        "    movq %r14, 32(%rdx)\n"
        "    movq %r15, 40(%rdx)\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        "    .size probe_switch, .-probe_switch\n");
#elif defined(__aarch64__)
/* x19-x28, x29; then d8-d15. */
#define PROBE_INT 11
#define PROBE_FLOAT 8
__asm__("    .text\n"
        "    .p2align 4\n"
        "    .type probe_switch, %function\n"
        "probe_switch:\n"
        "    stp x29, x30, [sp, #-176]!\n"
        "    stp x19, x20, [sp, #16]\n"
        "    stp x21, x22, [sp, #32]\n"
        "    stp x23, x24, [sp, #48]\n"
        "    stp x25, x26, [sp, #64]\n"
        "    stp x27, x28, [sp, #80]\n"
        "    stp d8, d9, [sp, #96]\n"
        "    stp d10, d11, [sp, #112]\n"
        "    stp d12, d13, [sp, #128]\n"
        "    stp d14, d15, [sp, #144]\n"
        "    str x2, [sp, #160]\n" /* out */
        "    add x19, x1, #1\n"
        "    add x20, x1, #2\n"
        "    add x21, x1, #3\n"
        "    add x22, x1, #4\n"
        "    add x23, x1, #5\n"
        "    add x24, x1, #6\n"
        "    add x25, x1, #7\n"
        "    add x26, x1, #8\n"
        "    add x27, x1, #9\n"
        "    add x28, x1, #10\n"
        "    add x29, x1, #11\n"
        "    add x9, x1, #12\n"
        "    fmov d8, x9\n"
        "    add x9, x1, #13\n"
        "    fmov d9, x9\n"
        "    add x9, x1, #14\n"
        "    fmov d10, x9\n"
        "    add x9, x1, #15\n"
        "    fmov d11, x9\n"
        "    add x9, x1, #16\n"
        "    fmov d12, x9\n"
        "    add x9, x1, #17\n"
        "    fmov d13, x9\n"
        "    add x9, x1, #18\n"
        "    fmov d14, x9\n"
        "    add x9, x1, #19\n"
        "    fmov d15, x9\n"
        "    mov x1, #0\n" /* value NULL; x0 is still `to` */
        "    bl weft_ctx_switch\n"
        "    ldr x2, [sp, #160]\n"
        "    stp x19, x20, [x2, #0]\n"
        "    stp x21, x22, [x2, #16]\n"
        "    stp x23, x24, [x2, #32]\n"
        "    stp x25, x26, [x2, #48]\n"
        "    stp x27, x28, [x2, #64]\n"
        "    str x29, [x2, #80]\n"
        "    str d8, [x2, #88]\n"
        "    str d9, [x2, #96]\n"
        "    str d10, [x2, #104]\n"
        "    str d11, [x2, #112]\n"
        "    str d12, [x2, #120]\n"
        "    str d13, [x2, #128]\n"
        "    str d14, [x2, #136]\n"
        "    str d15, [x2, #144]\n"
        "    ldp x19, x20, [sp, #16]\n"
        "    ldp x21, x22, [sp, #32]\n"
        "    ldp x23, x24, [sp, #48]\n"
        "    ldp x25, x26, [sp, #64]\n"
        "    ldp x27, x28, [sp, #80]\n"
        "    ldp d8, d9, [sp, #96]\n"
        "    ldp d10, d11, [sp, #112]\n"
        "    ldp d12, d13, [sp, #128]\n"
        "    ldp d14, d15, [sp, #144]\n"
        "    ldp x29, x30, [sp], #176\n"
        "    ret\n"
        "    .size probe_switch, .-probe_switch\n");
#else
#error "test_ctx: no register probe for this architecture"
#endif

#define PROBE_REGS (PROBE_INT + PROBE_FLOAT)
void probe_switch(weft_ctx *to, uint64_t seed, uint64_t *out);

#define SEED_MAIN UINT64_C(0x1111000011110000)
#define SEED_CTX UINT64_C(0x2222000022220000)
#define SEED_RESUME UINT64_C(0x3333000033330000)

static uint64_t seen_main[PROBE_REGS + 1];   /* main, after the context switched back */
static uint64_t seen_ctx[PROBE_REGS + 1];    /* the context, after main resumed it */
static uint64_t seen_resume[PROBE_REGS + 1]; /* main, after the context finished */

static void *probe_ctx(void *v)
{
    (void)v;
    /* Different patterns in every register, then back to main. */
    probe_switch(main_ctx, SEED_CTX, seen_ctx);
    return NULL; /* finishing returns to main: the exit path restores too */
}

/* main (SEED_MAIN) -> fresh context (SEED_CTX) -> main -> context (main
 * now holds SEED_RESUME) -> context finishes -> main. Each side checks that
 * its own patterns survived the other side's. */
static void run_register_probe(void)
{
    weft_ctx *c;
    main_ctx = weft_ctx_current();
    memset(seen_main, 0, sizeof seen_main);
    memset(seen_ctx, 0, sizeof seen_ctx);
    memset(seen_resume, 0, sizeof seen_resume);
    assert_int_equal(weft_ctx_make(&c, 0, probe_ctx), 0);
    probe_switch(c, SEED_MAIN, seen_main);
    probe_switch(c, SEED_RESUME, seen_resume);
    weft_ctx_free(c);
}

static void check_probe(unsigned from, unsigned to)
{
    for (unsigned i = from; i < to; i++) {
        assert_int_equal(seen_main[i], SEED_MAIN + i + 1);
        assert_int_equal(seen_ctx[i], SEED_CTX + i + 1);
        assert_int_equal(seen_resume[i], SEED_RESUME + i + 1);
    }
}

static void test_ctx_switch_preserves_callee_saved_integer_registers(void **state)
{
    (void)state;
    run_register_probe();
    check_probe(0, PROBE_INT);
}

static void test_ctx_switch_preserves_callee_saved_float_registers(void **state)
{
    (void)state;
#if PROBE_FLOAT == 0
    skip(); /* x86-64 System V: every vector register is caller-saved */
#else
    run_register_probe();
    check_probe(PROBE_INT, PROBE_REGS);
#endif
}

/* --- rounding modes: MXCSR and the x87 control word, FPCR -------------- */

/* The floating-point control state as the hardware holds it. */
struct fp_state {
    int round;        /* fegetround() (x87 control word on x86-64) */
    unsigned raw;     /* x86-64: MXCSR rounding bits; AArch64: FPCR.RMode */
    unsigned raw_x87; /* x86-64: x87 control word rounding bits */
    double third;     /* 1/3 computed in this state */
};

static volatile double fp_one = 1.0, fp_three = 3.0;

static void fp_read(struct fp_state *s)
{
    s->round = fegetround();
#if defined(__x86_64__)
    unsigned mxcsr;
    unsigned short cw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    s->raw = mxcsr & 0x6000;  /* RC: 0 nearest, 0x4000 up */
    s->raw_x87 = cw & 0x0c00; /* RC: 0 nearest, 0x0800 up */
#elif defined(__aarch64__)
    uint64_t fpcr;
    __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
    s->raw = (unsigned)(fpcr >> 22) & 3; /* RMode: 0 nearest, 1 up */
    s->raw_x87 = 0;
#endif
    s->third = fp_one / fp_three; /* SSE on x86-64: follows MXCSR */
}

static void expect_upward(const struct fp_state *s, const struct fp_state *nearest)
{
    assert_int_equal(s->round, FE_UPWARD);
#if defined(__x86_64__)
    assert_int_equal(s->raw, 0x4000);
    assert_int_equal(s->raw_x87, 0x0800);
#elif defined(__aarch64__)
    assert_int_equal(s->raw, 1);
#endif
    assert_true(s->third > nearest->third); /* rounded up by one ulp */
}

static void expect_nearest(const struct fp_state *s, const struct fp_state *nearest)
{
    assert_int_equal(s->round, FE_TONEAREST);
    assert_int_equal(s->raw, 0);
    assert_int_equal(s->raw_x87, 0);
    assert_true(s->third == nearest->third);
}

static struct fp_state fp_a0, fp_a1, fp_b0, fp_b1, fp_main, fp_ref;
static weft_ctx *fp_a, *fp_b;

static void *fp_ctx_a(void *v)
{
    (void)v;
    fesetround(FE_UPWARD);
    fp_read(&fp_a0);
    weft_ctx_switch(fp_b, NULL); /* to a context that rounds to nearest */
    fp_read(&fp_a1);             /* still upward? */
    return NULL;                 /* to main, still rounding upward here */
}

static void *fp_ctx_b(void *v)
{
    (void)v;
    fp_read(&fp_b0);
    weft_ctx_switch(main_ctx, NULL);
    fp_read(&fp_b1); /* resumed by fp_ctx_a, which rounds up */
    weft_ctx_switch(fp_a, NULL);
    return NULL;
}

static void test_ctx_switch_keeps_rounding_mode_per_context(void **state)
{
    (void)state;
    main_ctx = weft_ctx_current();
    assert_int_equal(fegetround(), FE_TONEAREST);
    fp_read(&fp_ref);
    assert_int_equal(weft_ctx_make(&fp_a, 0, fp_ctx_a), 0);
    assert_int_equal(weft_ctx_make(&fp_b, 0, fp_ctx_b), 0);
    weft_ctx_switch(fp_b, NULL); /* b starts, records, back here */
    weft_ctx_switch(fp_a, NULL); /* a: up; -> b (resumed) -> a -> returns */
    fp_read(&fp_main);
    fesetround(FE_TONEAREST);    /* whatever happened, before asserting */
    weft_ctx_switch(fp_b, NULL); /* let b finish */
    weft_ctx_free(fp_a);
    weft_ctx_free(fp_b);

    expect_upward(&fp_a0, &fp_ref);
    expect_upward(&fp_a1, &fp_ref); /* survived two switches */
    expect_nearest(&fp_b0, &fp_ref);
    expect_nearest(&fp_b1, &fp_ref);   /* did not leak from a into b */
    expect_nearest(&fp_main, &fp_ref); /* nor from a into main */
}

static struct fp_state fp_fresh;

static void *fp_record(void *v)
{
    (void)v;
    fp_read(&fp_fresh);
    return NULL;
}

/* A context starts with the default environment, whoever made it. */
static void test_ctx_new_context_starts_rounding_to_nearest(void **state)
{
    (void)state;
    weft_ctx *c;
    fp_read(&fp_ref);
    assert_int_equal(weft_ctx_make(&c, 0, fp_record), 0);
    fesetround(FE_UPWARD);
    weft_ctx_switch(c, NULL);
    fp_read(&fp_main);
    fesetround(FE_TONEAREST);
    weft_ctx_free(c);
    expect_nearest(&fp_fresh, &fp_ref);
    expect_upward(&fp_main, &fp_ref);
}

/* --- deep recursion on a default stack ---------------------------------- */

#define DEEP_BYTES (200 * KIB)

static char *deep_top;
static size_t deep_reached;
static int deep_corrupt;

/* Recurses in 1 KiB frames until DEEP_BYTES of stack are in use; each
 * frame fills its buffer and checks it is intact after its callee returns. */
static __attribute__((noinline)) unsigned deep(unsigned depth)
{
    volatile unsigned char buf[1024];
    char *frame = __builtin_frame_address(0);
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(depth + i);
    unsigned levels = 1;
    size_t used = (size_t)(deep_top - frame);
    if (used < DEEP_BYTES)
        levels += deep(depth + 1);
    else
        deep_reached = used;
    for (size_t i = 0; i < sizeof buf; i++)
        if (buf[i] != (unsigned char)(depth + i))
            deep_corrupt = 1;
    return levels;
}

static void *deep_ctx(void *v)
{
    (void)v;
    deep_top = __builtin_frame_address(0);
    return (void *)(uintptr_t)deep(0);
}

static void test_ctx_default_stack_holds_200_kib_of_frames(void **state)
{
    (void)state;
    weft_ctx *c;
    deep_reached = 0;
    deep_corrupt = 0;
    assert_int_equal(weft_ctx_make(&c, 0, deep_ctx), 0);
    uintptr_t levels = (uintptr_t)weft_ctx_switch(c, NULL);
    weft_ctx_free(c);
    assert_true(deep_reached >= DEEP_BYTES);
    assert_true(levels >= DEEP_BYTES / (2 * KIB)); /* 1 KiB frames, 2 under ASan */
    assert_int_equal(deep_corrupt, 0);
}

/* --- overflow reports, in forked children --------------------------------- */

static void *overflow_ctx(void *v)
{
    overflow_down(0);
    return v;
}

static void child_overflows_context(void)
{
    weft_ctx *c;
    if (weft_ctx_make(&c, 0, overflow_ctx) == 0)
        weft_ctx_switch(c, NULL);
}

static void test_ctx_overflow_reports_context_and_dies_by_sigsegv(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_overflows_context, err, sizeof err);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    assert_non_null(
        strstr(err, "weft: stack overflow in context (unnamed) (stack 262144 bytes)\n"));
}

static void named_entry(void *value, void *arg)
{
    (void)value;
    (void)arg;
    weft__fiber_started();
    overflow_down(0);
}

/* A fiber with a name, as a coroutine has: the report quotes it. */
static void child_overflows_named_fiber(void)
{
    weft__stack *s;
    static weft__fiber f;
    if (weft__stack_get(0, &s) != 0)
        return;
    weft__overflow_init();
    weft__fiber_init(&f, s, WEFT__FIBER_COROUTINE, "worker-3", named_entry, NULL);
    weft__fiber_switch(weft__fiber_current(), &f, NULL);
}

static void test_ctx_overflow_report_names_the_coroutine(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_overflows_named_fiber, err, sizeof err);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    assert_non_null(
        strstr(err, "weft: stack overflow in coroutine 'worker-3' (stack 262144 bytes)\n"));
}

/* Whether this kernel populates pages through process_madvise on our own
 * pidfd (Linux 6.13 and later take any advice for the calling process). */
static bool populate_by_process_madvise(void)
{
#if defined(SYS_process_madvise) && defined(SYS_pidfd_open)
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *p = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return false;
    int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    struct iovec iov = { p, page };
    bool ok = fd >= 0 && syscall(SYS_process_madvise, fd, &iov, (size_t)1, 23 /* POPULATE_WRITE */,
                                 0u) == (long)page;
    if (fd >= 0)
        close(fd);
    munmap(p, page);
    return ok;
#else
    return false;
#endif
}

/* Stacks are handed out with their top page committed (stack.c commits
 * those of a new batch with one call), so a first run does not fault it
 * in. Takes more stacks than the pool and this thread's cache hold, so
 * fresh batches are among them; none is written before the check. */
static void test_ctx_new_stacks_have_their_top_page_committed(void **state)
{
    (void)state;
    if (weft__stack_mode() != WEFT__GUARD_INSTALL || !populate_by_process_madvise())
        skip(); /* batches are not guarded in one call, or no such advice here */
    enum { N = 1200 };
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    weft__stack **v = calloc(N, sizeof *v);
    assert_non_null(v);
    unsigned missing = 0;
    for (unsigned i = 0; i < N; i++) {
        assert_int_equal(weft__stack_get(0, &v[i]), 0);
        unsigned char in = 0;
        char *top = (char *)v[i]->lo + v[i]->size - page;
        assert_int_equal(mincore(top, page, &in), 0);
        missing += !(in & 1);
    }
    for (unsigned i = 0; i < N; i++)
        weft__stack_put(v[i]);
    free(v);
    (void)weft__stack_trim(N); /* the pool back to its usual size */
    assert_int_equal(missing, 0);
}

/* A thread's batches of new stacks come from address space it reserved
 * for several at once (doubling: 1, 2, 4, 8, 16 batches), not one mmap
 * each; at the thread's exit what it did not use is unmapped. */
enum { MAX_HELD = 4096, BATCH_STACKS = 32 };

struct reserve_probe {
    unsigned long regions;
    char *after_last; /* just past the last batch the thread mapped */
};

static void *take_many_stacks(void *arg)
{
    struct reserve_probe *p = arg;
    weft__stack **v = calloc(MAX_HELD, sizeof *v);
    if (!v)
        return NULL;
    unsigned long start = atomic_load(&weft__stack_regions), seen = start;
    unsigned n = 0, left = 0;
    /* Empty the shared pool (earlier tests' stacks) until the first new
     * batch, then take 15 batches more: 16 batches of new stacks. */
    while (n < MAX_HELD && (seen == start || left > 0)) {
        if (weft__stack_get(0, &v[n]) != 0)
            return NULL;
        weft__stack *s = v[n++];
        unsigned long now = atomic_load(&weft__stack_regions);
        if (now != seen) {
            /* A new reserve; its first batch begins with this stack. */
            if (seen == start)
                left = 16 * BATCH_STACKS;
            seen = now;
            p->after_last = (char *)s->map + BATCH_STACKS * s->map_bytes;
        }
        if (left)
            left--;
    }
    p->regions = seen - start;
    for (unsigned i = 0; i < n; i++)
        weft__stack_put(v[i]);
    free(v);
    return n < MAX_HELD ? p : NULL;
}

static void test_ctx_stack_batches_share_a_reserve_given_back_at_thread_exit(void **state)
{
    (void)state;
    FILE *f = fopen("/proc/sys/vm/overcommit_memory", "r");
    int overcommit = f ? fgetc(f) : EOF;
    if (f)
        fclose(f);
    if (overcommit == '2')
        skip(); /* strict overcommit: one batch a reserve (stack.c) */
    struct reserve_probe p = { 0, NULL };
    pthread_t t;
    void *done = NULL;
    assert_int_equal(pthread_create(&t, NULL, take_many_stacks, &p), 0);
    assert_int_equal(pthread_join(t, &done), 0);
    assert_non_null(done);
    /* 16 batches: reserves of 1, 2, 4 and 8 batches, then one of 16 for
     * the last (one mmap a batch would be 16). No other thread maps
     * stacks meanwhile in this test program. */
    assert_int_equal(p.regions, 5);
    /* The last reserve's 15 unused batches were unmapped at exit. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    errno = 0;
    assert_int_equal(msync(p.after_last, page, MS_ASYNC), -1);
    assert_int_equal(errno, ENOMEM);
    (void)weft__stack_trim(MAX_HELD);
}

/* When the address space will not hold a bigger reserve (a low
 * RLIMIT_AS, or huge stacks), a thread still gets its stacks a batch at a
 * time. Not under the sanitizers: their shadow memory needs far more
 * address space than any limit this test could set. */
#if !defined(WEFT_ASAN) && !defined(WEFT_TSAN)
static long vm_size_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib * 1024;
}

static void *stacks_under_a_tight_limit(void *arg)
{
    (void)arg;
    /* Stacks are only held (leaked: the process ends here), so none comes
     * back from the cache. First empty the shared pool that the parent's
     * earlier tests filled, up to this thread's first new batch. */
    weft__stack *s;
    unsigned long start = atomic_load(&weft__stack_regions);
    for (unsigned i = 0; atomic_load(&weft__stack_regions) == start; i++)
        if (i == MAX_HELD || weft__stack_get(0, &s) != 0)
            _exit(2);
    size_t batch = BATCH_STACKS * (64 * 1024 + weft__stack_default_size());
    long now = vm_size_bytes();
    if (now < 0)
        _exit(2);
    /* Room for the reserve of 2 batches that comes next and one more
     * batch, not for the reserve of 4 after it. */
    struct rlimit lim;
    if (getrlimit(RLIMIT_AS, &lim) != 0)
        _exit(2);
    rlim_t want = (rlim_t)now + 3 * batch + batch / 2;
    if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < want)
        _exit(5); /* a lower hard limit: not this test's case */
    lim.rlim_cur = want;
    if (setrlimit(RLIMIT_AS, &lim) != 0)
        _exit(2);
    /* qemu-user accepts the limit and does not apply it. */
    void *probe = mmap(NULL, 4 * batch, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
    if (probe != MAP_FAILED)
        _exit(5);
    /* The rest of the first batch, two from the reserve of 2, then one
     * more, which must come on its own. */
    for (unsigned i = 1; i < 4 * BATCH_STACKS; i++)
        if (weft__stack_get(0, &s) != 0)
            _exit(1);
    _exit(0);
}

static void child_maps_stacks_under_a_tight_limit(void)
{
    pthread_t t; /* a fresh thread: no reserve yet */
    if (pthread_create(&t, NULL, stacks_under_a_tight_limit, NULL) != 0)
        _exit(3);
    pthread_join(t, NULL);
    _exit(4);
}

static void test_ctx_stacks_come_a_batch_at_a_time_when_reserves_do_not_fit(void **state)
{
    (void)state;
    char err[256];
    int status = run_child(child_maps_stacks_under_a_tight_limit, err, sizeof err);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) == 5)
        skip(); /* the address-space limit cannot be set or is not applied */
    assert_int_equal(WEXITSTATUS(status), 0);
}
#endif

/* A thread's alternate signal stack outlives the thread, for the next
 * one (a runtime restart starts a fresh set of workers): the second
 * thread gets the first one's, its contents untouched, and an overflow on
 * it is still reported. Under ASan threads bring the sanitizer's own;
 * under TSan a forked child's new threads trip its jemalloc lock
 * tracking (see test_sched.c), so the test is left out there. */
#if !defined(WEFT_TSAN)
#define ALTSTACK_MARK 0x5eed5eedu

static void *leave_a_mark(void *arg)
{
    (void)arg;
    weft__overflow_init();
    *(volatile unsigned *)weft__altstack_mine = ALTSTACK_MARK;
    return NULL;
}

static void *overflow_on_a_second_thread(void *arg)
{
    (void)arg;
    weft__overflow_init();
#if !defined(WEFT_ASAN)
    if (*(volatile unsigned *)weft__altstack_mine != ALTSTACK_MARK)
        _exit(3); /* a new mapping: the first thread's was not kept */
#endif
    child_overflows_named_fiber();
    return NULL;
}

static void child_overflows_on_a_reused_altstack(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, leave_a_mark, NULL) != 0)
        _exit(4);
    pthread_join(t, NULL);
    if (pthread_create(&t, NULL, overflow_on_a_second_thread, NULL) != 0)
        _exit(4);
    pthread_join(t, NULL);
}

static void test_ctx_next_thread_reuses_the_altstack_and_reports_overflow(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_overflows_on_a_reused_altstack, err, sizeof err);
    assert_false(WIFEXITED(status)); /* 3: not reused; 4: no thread */
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    assert_non_null(
        strstr(err, "weft: stack overflow in coroutine 'worker-3' (stack 262144 bytes)\n"));
}
#endif

/* Writes 80 KiB below its frame: past the end of a 64 KiB stack, into the
 * unprotected region below it (the canary sits at the stack's low end). */
static __attribute__((noinline)) void scribble_80_kib(void)
{
    volatile char big[80 * KIB];
    memset((char *)big, 0x5a, sizeof big);
    __asm__ volatile("" : : "r"(big) : "memory");
}

static void *canary_ctx(void *v)
{
    scribble_80_kib();
    weft_ctx_switch(main_ctx, NULL); /* the check happens here */
    return v;
}

static void child_overflows_canary_stack(void)
{
    weft_ctx *c;
    weft__stack_force_mode(WEFT__GUARD_CANARY);
    main_ctx = weft_ctx_current();
    /* Not the default size: a fresh mapping, not one pooled earlier with
     * a guard page. */
    if (weft_ctx_make(&c, 64 * KIB, canary_ctx) == 0)
        weft_ctx_switch(c, NULL);
    static const char survived[] = "survived the switch\n";
    ssize_t unused = write(STDERR_FILENO, survived, sizeof survived - 1);
    (void)unused;
}

static void test_ctx_canary_mode_catches_overflow_at_next_switch(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_overflows_canary_stack, err, sizeof err);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGABRT);
    assert_non_null(strstr(
        err,
        "weft: stack overflow in context (unnamed) (stack 65536 bytes), caught by its canary\n"));
    assert_null(strstr(err, "survived"));
}

/* --- bad input ------------------------------------------------------------ */

static void test_ctx_bad_input_gives_einval_or_null(void **state)
{
    (void)state;
    weft_ctx *untouched = (weft_ctx *)&untouched;
    weft_ctx *c = untouched;
    assert_int_equal(weft_ctx_make(NULL, 0, echo), EINVAL);
    assert_int_equal(weft_ctx_make(&c, 0, NULL), EINVAL);
    assert_ptr_equal(c, untouched);
    /* Sizes no mapping can have: ENOMEM, not a wrapped size. */
    assert_int_equal(weft_ctx_make(&c, SIZE_MAX, echo), ENOMEM);
    assert_int_equal(weft_ctx_make(&c, SIZE_MAX - 4095, echo), ENOMEM);
    assert_int_equal(weft_ctx_make(&c, ((size_t)1 << 40) + 1, echo), ENOMEM);
    assert_ptr_equal(c, untouched);
    assert_null(weft_ctx_switch(NULL, (void *)1));
    weft_ctx_free(NULL);               /* no-op */
    weft_ctx_free(weft_ctx_current()); /* the thread's own: no-op */
    /* Everything still works. */
    main_ctx = weft_ctx_current();
    assert_non_null(main_ctx);
    assert_int_equal(weft_ctx_make(&c, 0, echo), 0);
    assert_int_equal((intptr_t)weft_ctx_switch(c, (void *)4), 8);
    weft_ctx_free(c); /* unfinished: fine */
    assert_ptr_equal(weft_ctx_current(), main_ctx);
}

/* --- signals that are not faults ----------------------------------------- */

static void child_raises_sigsegv(void)
{
    weft_ctx *c;
    if (weft_ctx_make(&c, 0, echo) != 0) /* weft's handler is installed */
        _exit(2);
    raise(SIGSEGV);
    _exit(0); /* not reached: the default action ends the process */
}

/* A SIGSEGV sent with raise or kill is not an overflow: with no handler
 * before weft's, it must end the process as the default action does,
 * not vanish. */
static void test_ctx_sent_sigsegv_still_ends_the_process(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_raises_sigsegv, err, sizeof err);
#if defined(WEFT_ASAN) || defined(WEFT_TSAN)
    /* The sanitizer's handler came before weft's: weft hands the signal
     * to it, and it reports and exits non-zero. */
    assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
#else
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
#endif
    assert_null(strstr(err, "stack overflow"));
}

/* --- fork ------------------------------------------------------------------ */

/* Makes n contexts and frees them; true if all were made. */
static int make_contexts(int n)
{
    weft_ctx **c = malloc((size_t)n * sizeof *c);
    int made = 0;
    while (c && made < n && weft_ctx_make(&c[made], 0, echo) == 0)
        made++;
    for (int i = 0; i < made; i++)
        weft_ctx_free(c[i]);
    free(c);
    return made == n;
}

static void child_reuses_fd_numbers(void)
{
    /* The parent's descriptors are gone; this child's own pipe end now
     * sits on every low number, whichever the parent's pidfd had. */
    int fds[2];
    for (int fd = 3; fd < 64; fd++)
        close(fd);
    if (pipe(fds) != 0)
        _exit(2);
    for (int fd = 3; fd < 64; fd++)
        if (fd != fds[0] && fd != fds[1])
            dup2(fds[0], fd);
    /* More stacks than this process has pooled: new ones are mapped, and
     * their guards installed in batches through the pidfd. */
    if (!make_contexts(4000))
        _exit(3);
    for (int fd = 3; fd < 64; fd++) {
        struct stat st;
        if (fd != fds[1] && (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)))
            _exit(1);
    }
    _exit(0);
}

/* A forked child gets its own pidfd for batched guard pages, and never
 * closes a descriptor number the child's code has reused. */
static void test_ctx_forked_child_keeps_its_descriptors(void **state)
{
    (void)state;
    assert_true(make_contexts(100)); /* the parent's pidfd is open */
    char err[4096];
    int status = run_child(child_reuses_fd_numbers, err, sizeof err);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* --- a thread that exits with contexts it never freed -------------------- */

static void *make_and_leave(void *arg)
{
    weft_ctx **out = arg;
    if (weft_ctx_make(out, 0, echo) != 0)
        *out = NULL;
    return NULL; /* exits: its own context goes, its child stays */
}

/* The thread's own context is the parent of the ones it made: freeing such
 * a child after the thread exited must not touch a freed parent (ASan). */
static void test_ctx_child_outlives_its_thread(void **state)
{
    (void)state;
    pthread_t t;
    weft_ctx *orphan = NULL;
    assert_int_equal(pthread_create(&t, NULL, make_and_leave, &orphan), 0);
    pthread_join(t, NULL);
    assert_non_null(orphan);
    weft_ctx_free(orphan);
}

/* --- an overflow inside the switch itself ---------------------------------- */

/* x86-64: the stack pointer is placed with inline assembly. Not under
 * TSan: its deadlock detector cannot follow the arena locks jemalloc takes
 * around each fork, and this test forks five times. */
#if defined(__x86_64__) && !defined(WEFT_CTX_UCONTEXT) && !defined(WEFT_TSAN)
#define SWITCH_OVERFLOW_TEST 1
static weft_ctx *squeezed;
static size_t room; /* bytes left above the guard when the switch is called */

/* Calls weft_ctx_switch(main_ctx, NULL) with the stack pointer `room`
 * bytes above the end of this context's stack, so that the switch's own
 * save of the registers runs into the guard. */
static void *switch_with_no_room(void *v)
{
    weft__fiber *f = (weft__fiber *)(void *)squeezed; /* a context's first member */
    char *sp = (char *)f->lo + room;
    __asm__ volatile("movq %%rsp, %%r12\n\t"
                     "movq %[sp], %%rsp\n\t"
                     "movq %[to], %%rdi\n\t"
                     "xorl %%esi, %%esi\n\t"
                     "call weft_ctx_switch\n\t"
                     "movq %%r12, %%rsp"
                     :
                     : [sp] "r"(sp), [to] "r"(main_ctx)
                     : "r12", "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "memory",
                       "cc");
    return v;
}

static void child_overflows_in_the_switch(void)
{
    main_ctx = weft_ctx_current();
    if (weft_ctx_make(&squeezed, 0, switch_with_no_room) == 0)
        weft_ctx_switch(squeezed, NULL);
}

/* The call's return address and the assembly's 64-byte save need 72
 * bytes, and in an unoptimised or sanitizer build the public call uses
 * stack of its own. With 16 to 80 bytes left (the call needs a 16-aligned
 * stack) the switch runs into the guard somewhere between its caller and
 * its register save, and the report must name the stack that overflowed,
 * not the context the switch was going to. */
static void test_ctx_overflow_inside_the_switch_is_reported(void **state)
{
    (void)state;
    for (room = 16; room <= 80; room += 16) {
        char err[4096];
        int status = run_child(child_overflows_in_the_switch, err, sizeof err);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGSEGV);
        assert_non_null(
            strstr(err, "weft: stack overflow in context (unnamed) (stack 262144 bytes)\n"));
    }
}
#endif

int main(void)
{
    weft__overflow_init();
    overflow_child_save();

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_greenlet_pingpong_orders_1_3_2_4),
        cmocka_unit_test(test_ctx_switch_passes_values_both_ways),
        cmocka_unit_test(test_ctx_switch_to_finished_context_returns_null),
        cmocka_unit_test(test_ctx_switch_to_running_context_returns_value),
        cmocka_unit_test(test_ctx_nested_contexts_return_to_their_parent),
        cmocka_unit_test(test_ctx_switch_preserves_callee_saved_integer_registers),
        cmocka_unit_test(test_ctx_switch_preserves_callee_saved_float_registers),
        cmocka_unit_test(test_ctx_switch_keeps_rounding_mode_per_context),
        cmocka_unit_test(test_ctx_new_context_starts_rounding_to_nearest),
        cmocka_unit_test(test_ctx_default_stack_holds_200_kib_of_frames),
        cmocka_unit_test(test_ctx_overflow_reports_context_and_dies_by_sigsegv),
        cmocka_unit_test(test_ctx_overflow_report_names_the_coroutine),
        cmocka_unit_test(test_ctx_new_stacks_have_their_top_page_committed),
#if !defined(WEFT_TSAN)
        cmocka_unit_test(test_ctx_next_thread_reuses_the_altstack_and_reports_overflow),
#endif
        cmocka_unit_test(test_ctx_canary_mode_catches_overflow_at_next_switch),
        cmocka_unit_test(test_ctx_bad_input_gives_einval_or_null),
        cmocka_unit_test(test_ctx_sent_sigsegv_still_ends_the_process),
        cmocka_unit_test(test_ctx_forked_child_keeps_its_descriptors),
        cmocka_unit_test(test_ctx_child_outlives_its_thread),
#if defined(SWITCH_OVERFLOW_TEST)
        cmocka_unit_test(test_ctx_overflow_inside_the_switch_is_reported),
#endif
#if !defined(WEFT_ASAN) && !defined(WEFT_TSAN)
        cmocka_unit_test(test_ctx_stacks_come_a_batch_at_a_time_when_reserves_do_not_fit),
#endif
        /* After every test that forks: its thread's jemalloc arena adds
         * locks that a fork's prefork handlers then hold, and under TSan
         * they pass the 64 its deadlock detector tracks. */
        cmocka_unit_test(test_ctx_stack_batches_share_a_reserve_given_back_at_thread_exit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
