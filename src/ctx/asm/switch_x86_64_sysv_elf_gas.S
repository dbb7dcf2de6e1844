/* The context switch for x86-64, System V ABI, ELF, GNU as.
 *
 * void *weft__ctx_jump(void **save_sp, void *to_sp, void *value);
 *   Saves the callee-saved state of the caller on its own stack, stores the
 *   stack pointer in *save_sp, loads to_sp and restores the state saved
 *   there. Returns value, in the context that was resumed.
 *
 * Saved frame, from the saved stack pointer upwards (64 bytes):
 *
 *   offset  size  contents
 *   ------  ----  ---------------------------------------------------
 *      0      4   MXCSR (SSE control/status: rounding, exception masks)
 *      4      2   x87 FPU control word
 *      6      2   padding
 *      8      8   r15
 *     16      8   r14
 *     24      8   r13
 *     32      8   r12
 *     40      8   rbx
 *     48      8   rbp
 *     56      8   return address
 *
 * That is all the ABI makes callee-saved: rbx, rbp, r12-r15, the MXCSR
 * control bits and the x87 control word (xmm registers are all
 * caller-saved on System V). A fresh context's frame is built by
 * first_frame() in ctx.c with weft__ctx_trampoline as the return
 * address, entry function in r12, its argument in rbx and rbp zero.
 *
 * Returning. The switch pops the resumed context's return address and
 * jumps to it (as Boost.Context's jump_fcontext does) instead of `ret`:
 * the return-stack predictor predicts our own caller, which is never where
 * a switch goes, so every `ret` here was a mispredicted branch (ctx
 * benchmark on an AMD EPYC, Zen 3: 22 -> 12 ns per switch). The
 * indirect-branch predictor learns the real targets. Under IBT (__CET__)
 * an indirect jump must land on endbr64, which a call's return site does
 * not have, so that build keeps `ret`.
 *
 * Restoring the control words. fldcw is dear and the x87 control word
 * almost never differs between two fibers, so it is loaded only when the
 * resumed fiber's differs from ours: ours is read back from the word
 * fnstcw just stored, which store forwarding delivers at once (ctx on
 * Zen 3: 8.0 -> 7.4 ns per switch). MXCSR is restored unconditionally:
 * reading back what stmxcsr stored waits for the store to commit, which
 * was measured to cost more than the ldmxcsr it would skip, early or late
 * in the switch. (stmxcsr itself is the dearest instruction here, about
 * 3 ns, and cannot go: the control bits must be saved.)
 */

#if defined(__x86_64__) && !defined(_WIN32)

#if defined(__CET__) && (__CET__ & 1)
#define WEFT_ENDBR endbr64
#define WEFT_IBT 1
#else
#define WEFT_ENDBR
#define WEFT_IBT 0
#endif

    .text
    .globl  weft__ctx_jump
    .hidden weft__ctx_jump
    .type   weft__ctx_jump, @function
    .align  16
weft__ctx_jump:
    .cfi_startproc
    WEFT_ENDBR
    pushq   %rbp                    /* callee-saved integer registers */
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset rbp, 0
    pushq   %rbx
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset rbx, 0
    pushq   %r12
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r12, 0
    pushq   %r13
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r13, 0
    pushq   %r14
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r14, 0
    pushq   %r15
    .cfi_adjust_cfa_offset 8
    .cfi_rel_offset r15, 0
    subq    $8, %rsp                /* room for the FPU control words */
    .cfi_adjust_cfa_offset 8
    stmxcsr (%rsp)                  /* save MXCSR */
    fnstcw  4(%rsp)                 /* save x87 control word */
    movzwl  4(%rsp), %r8d           /* ours, to compare with the resumed one */

    movq    %rsp, (%rdi)            /* *save_sp = our stack pointer */
    movq    %rsi, %rsp              /* switch: the frame at to_sp has the
                                       same layout, so the CFI still holds */

    ldmxcsr (%rsp)                  /* restore MXCSR */
    cmpw    4(%rsp), %r8w           /* the resumed x87 control word */
    jne     2f                      /* differs: load it (out of line) */
    .cfi_remember_state
1:
    addq    $8, %rsp
    .cfi_adjust_cfa_offset -8
    popq    %r15
    .cfi_adjust_cfa_offset -8
    .cfi_restore r15
    popq    %r14
    .cfi_adjust_cfa_offset -8
    .cfi_restore r14
    popq    %r13
    .cfi_adjust_cfa_offset -8
    .cfi_restore r13
    popq    %r12
    .cfi_adjust_cfa_offset -8
    .cfi_restore r12
    popq    %rbx
    .cfi_adjust_cfa_offset -8
    .cfi_restore rbx
    popq    %rbp
    .cfi_adjust_cfa_offset -8
    .cfi_restore rbp
    movq    %rdx, %rax              /* the value travels to the resumed side */
#if WEFT_IBT
    ret                             /* to the resumed context's caller */
#else
    popq    %rcx                    /* the resumed context's return address */
    .cfi_adjust_cfa_offset -8
    .cfi_register rip, rcx
    jmpq    *%rcx                   /* to it (see "Returning" above) */
#endif
2:
    .cfi_restore_state
    fldcw   4(%rsp)                 /* restore x87 control word */
    jmp     1b
    .cfi_endproc
    .size   weft__ctx_jump, .-weft__ctx_jump

/* First frame of every context: weft__ctx_jump "returns" here with the
 * value in rax. Calls entry(value, arg); entry never returns. The CFI marks
 * the return address undefined so debuggers and perf stop unwinding here,
 * at the coroutine's first frame, instead of walking off the stack. */
    .globl  weft__ctx_trampoline
    .hidden weft__ctx_trampoline
    .type   weft__ctx_trampoline, @function
    .align  16
weft__ctx_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    WEFT_ENDBR
    movq    %rax, %rdi              /* 1st argument: the switched-in value */
    movq    %rbx, %rsi              /* 2nd argument: entry's arg */
    callq   *%r12                   /* entry(value, arg); rsp is 16-aligned */
    ud2                             /* entry must not return */
    .cfi_endproc
    .size   weft__ctx_trampoline, .-weft__ctx_trampoline

#if defined(__CET__) && (__CET__ & 1)
/* GNU property note: this object is IBT-compatible (endbr64 above). It is
 * not shadow-stack compatible: a switch returns to another stack's
 * return address. */
    .section .note.gnu.property, "a"
    .align  8
    .long   4                       /* name size */
    .long   16                      /* descriptor size */
    .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
    .asciz  "GNU"
    .long   0xc0000002              /* GNU_PROPERTY_X86_FEATURE_1_AND */
    .long   4
    .long   1                       /* IBT */
    .long   0
#endif

#endif

    .section .note.GNU-stack, "", @progbits
