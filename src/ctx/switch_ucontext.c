/* The context switch for targets without assembly: POSIX ucontext.
 *
 * Implements the contract of asm/switch_*.S, weft__ctx_jump and
 * weft__ctx_trampoline, on top of getcontext/makecontext/swapcontext, so
 * every architecture glibc supports can build and run weft. CMake picks this
 * file for processors other than x86-64 and AArch64, or everywhere with
 * -DWEFT_CTX_UCONTEXT=ON (which also defines WEFT_CTX_UCONTEXT for
 * first_frame() in ctx.c).
 *
 * It is slow: glibc's swapcontext saves and restores the signal mask with a
 * system call on every switch, and a ucontext_t is about a kilobyte. Through
 * weft_ctx_switch on the 2-core x86-64 development machine it measured
 * ~450 ns a switch against ~35 ns with the assembly. Use it to port, not to
 * ship.
 *
 * The "stack pointer" a fiber keeps is the address of a frame record:
 *
 *   struct frame { entry; arg; value; uc; }
 *
 *  - A fiber that switched away has its record in weft__ctx_jump's own
 *    stack frame, with uc pointing at the ucontext_t that swapcontext filled
 *    beside it, and entry NULL. Whoever resumes it stores the value in
 *    record->value; the resumed weft__ctx_jump returns it.
 *  - A fresh fiber's record is built by first_frame() in ctx.c at the top of
 *    its stack: {entry, arg, NULL, NULL}. The ucontext is made lazily, on
 *    the first switch in, just below the record (first_frame does not know
 *    where the stack ends, and makecontext only needs its top). The record's
 *    layout is therefore shared with ctx.c: change both together.
 *
 * makecontext passes only int arguments, portably, so the trampoline learns
 * which record it was started for from a thread-local set just before the
 * swap (the new context always starts on the thread that switched to it).
 * It resets the floating-point environment to the default, as the assembly
 * frames do (swapcontext would otherwise start the context with the
 * environment of whoever switched to it first).
 *
 * Rejected: setjmp/longjmp with a hand-made stack (sigaltstack tricks,
 * as in GNU Pth): more code and no more portable in practice. */

#include <fenv.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include "ctx.h"

/* Layout shared with first_frame() in ctx.c. */
struct frame {
    weft__fiber_entry entry; /* fresh frame: the function to run; else NULL */
    void *arg;               /* fresh frame: entry's second argument */
    void *value;             /* written by whoever resumes this frame */
    ucontext_t *uc;          /* NULL until a fresh frame is first entered */
};

/* Room makecontext is told the new stack has below the ucontext. It uses
 * only the top; weft's smallest stack (16 KiB) always has this much. */
#define STACK_HINT_BYTES ((size_t)8 * 1024)

/* The fresh frame being entered, read once by the trampoline. Written and
 * read by the same thread, around one swapcontext. */
static __thread struct frame *arriving;

void weft__ctx_trampoline(void)
{
    struct frame *f = arriving;
    weft__fiber_entry entry = f->entry;
    void *arg = f->arg, *value = f->value;
    arriving = NULL;
    fesetenv(FE_DFL_ENV);
    entry(value, arg);
    abort(); /* entry must not return (it ends with weft__fiber_exit) */
}

/* Makes the ucontext of a fresh frame just below it on its stack. */
static ucontext_t *enter_fresh(struct frame *f)
{
    uintptr_t at = ((uintptr_t)f - sizeof(ucontext_t)) & ~(uintptr_t)15;
    ucontext_t *uc = (ucontext_t *)at;
    memset(uc, 0, sizeof *uc);
    getcontext(uc);
    uc->uc_stack.ss_sp = (char *)at - STACK_HINT_BYTES;
    uc->uc_stack.ss_size = STACK_HINT_BYTES;
    uc->uc_link = NULL;
    makecontext(uc, weft__ctx_trampoline, 0);
    f->uc = uc;
    return uc;
}

void *weft__ctx_jump(void **save_sp, void *to_sp, void *value)
{
    struct frame self = { NULL, NULL, NULL, NULL };
    ucontext_t uc;
    /* swapcontext fills the registers and mask but not uc_stack; zero it
     * so sanitizers that read it see no stack. */
    memset(&uc.uc_stack, 0, sizeof uc.uc_stack);
    self.uc = &uc;
    *save_sp = &self;

    struct frame *to = to_sp;
    to->value = value;
    ucontext_t *target = to->uc;
    if (!target) {
        target = enter_fresh(to);
        arriving = to;
    }
    swapcontext(&uc, target);
    /* Resumed: the resumer stored its value in self.value (the compiler
     * reloads it: self's address escaped through *save_sp). */
    return self.value;
}
