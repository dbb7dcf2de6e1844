/* The context switch for AArch64, AAPCS64 (Linux), ELF, GNU as.
 *
 * void *weft__ctx_jump(void **save_sp, void *to_sp, void *value);
 *   Saves the callee-saved state of the caller on its own stack, stores the
 *   stack pointer in *save_sp, loads to_sp and restores the state saved
 *   there. Returns value, in the context that was resumed.
 *
 * Saved frame, from the saved stack pointer upwards (176 bytes, a multiple
 * of 16 so sp stays 16-aligned, as AArch64 requires of every sp-relative
 * access):
 *
 *   offset  size  contents
 *   ------  ----  ---------------------------------------------------
 *      0     16   d8,  d9    (low 64 bits of v8-v15 are callee-saved)
 *     16     16   d10, d11
 *     32     16   d12, d13
 *     48     16   d14, d15
 *     64     16   x19, x20
 *     80     16   x21, x22
 *     96     16   x23, x24
 *    112     16   x25, x26
 *    128     16   x27, x28
 *    144     16   x29 (frame pointer), x30 (link register: where to return)
 *    160      8   FPCR (rounding mode, flush-to-zero, trap enables)
 *    168      8   padding
 *
 * That is all AAPCS64 makes callee-saved: x19-x29, sp, the return address
 * in x30, the low halves of v8-v15, and FPCR's control fields. FPSR (the
 * sticky exception flags) is not preserved across calls and is not saved.
 * x18 is the platform register; Linux leaves it to the program and C code
 * never keeps anything in it across a call, so it is not saved either.
 *
 * A fresh context's frame is built by first_frame() in ctx.c: zeros, FPCR
 * 0 (round to nearest, no traps, no flush-to-zero: the state a new Linux
 * thread starts with), the entry function in x19, its argument in x20, x29
 * zero (ends frame-pointer chains) and x30 = weft__ctx_trampoline, so the
 * first switch into it "returns" into the trampoline with the value in x0.
 *
 * Writing FPCR can cost a pipeline synchronisation on some cores, so it is
 * written only when the resumed context's value differs from ours: the
 * common case (both at the default) pays one mrs and one compare.
 *
 * Branch protection. Under -mbranch-protection=bti each function starts
 * with a `bti c` landing pad (weft__ctx_jump may be reached through a
 * pointer; the trampoline is entered by ret, which BTI does not check, but
 * the pad is harmless). Return-address signing (pac-ret) signs a function's
 * own spilled x30; weft__ctx_jump never spills its own return address (its
 * ret uses x30 as loaded from the resumed frame, as longjmp does), so it
 * needs no paciasp/autiasp. The GNU property note below then marks the
 * object as BTI- and PAC-compatible exactly when the compiler was asked for
 * them, so the linker keeps the output's marking.
 */

#if defined(__aarch64__) && defined(__ELF__)

#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define WEFT_BTI_C bti c
#define WEFT_PROP_BTI 1
#else
#define WEFT_BTI_C
#define WEFT_PROP_BTI 0
#endif
#if defined(__ARM_FEATURE_PAC_DEFAULT) && __ARM_FEATURE_PAC_DEFAULT
#define WEFT_PROP_PAC 2
#else
#define WEFT_PROP_PAC 0
#endif

    .text
    .globl  weft__ctx_jump
    .hidden weft__ctx_jump
    .type   weft__ctx_jump, %function
    .p2align 4
weft__ctx_jump:
    .cfi_startproc
    WEFT_BTI_C
    sub     sp, sp, #176            /* room for the frame in the table */
    .cfi_def_cfa_offset 176
    stp     d8, d9, [sp, #0]        /* callee-saved floating point */
    .cfi_offset d8, -176
    .cfi_offset d9, -168
    stp     d10, d11, [sp, #16]
    .cfi_offset d10, -160
    .cfi_offset d11, -152
    stp     d12, d13, [sp, #32]
    .cfi_offset d12, -144
    .cfi_offset d13, -136
    stp     d14, d15, [sp, #48]
    .cfi_offset d14, -128
    .cfi_offset d15, -120
    stp     x19, x20, [sp, #64]     /* callee-saved integer registers */
    .cfi_offset x19, -112
    .cfi_offset x20, -104
    stp     x21, x22, [sp, #80]
    .cfi_offset x21, -96
    .cfi_offset x22, -88
    stp     x23, x24, [sp, #96]
    .cfi_offset x23, -80
    .cfi_offset x24, -72
    stp     x25, x26, [sp, #112]
    .cfi_offset x25, -64
    .cfi_offset x26, -56
    stp     x27, x28, [sp, #128]
    .cfi_offset x27, -48
    .cfi_offset x28, -40
    stp     x29, x30, [sp, #144]    /* frame pointer and return address */
    .cfi_offset x29, -32
    .cfi_offset x30, -24
    mrs     x9, fpcr                /* save FPCR; x9 keeps it for the compare */
    str     x9, [sp, #160]

    mov     x10, sp                 /* sp cannot be stored directly */
    str     x10, [x0]               /* *save_sp = our stack pointer */
    mov     sp, x1                  /* switch: the frame at to_sp has the
                                       same layout, so the CFI still holds */

    ldr     x10, [sp, #160]         /* the resumed context's FPCR */
    cmp     x9, x10
    b.eq    1f                      /* unchanged: skip the costly write */
    msr     fpcr, x10
1:
    ldp     d8, d9, [sp, #0]        /* restore in the order saved */
    ldp     d10, d11, [sp, #16]
    ldp     d12, d13, [sp, #32]
    ldp     d14, d15, [sp, #48]
    ldp     x19, x20, [sp, #64]
    ldp     x21, x22, [sp, #80]
    ldp     x23, x24, [sp, #96]
    ldp     x25, x26, [sp, #112]
    ldp     x27, x28, [sp, #128]
    ldp     x29, x30, [sp, #144]
    mov     x0, x2                  /* the value travels to the resumed side */
    add     sp, sp, #176            /* pop the frame */
    .cfi_def_cfa_offset 0
    .cfi_restore d8
    .cfi_restore d9
    .cfi_restore d10
    .cfi_restore d11
    .cfi_restore d12
    .cfi_restore d13
    .cfi_restore d14
    .cfi_restore d15
    .cfi_restore x19
    .cfi_restore x20
    .cfi_restore x21
    .cfi_restore x22
    .cfi_restore x23
    .cfi_restore x24
    .cfi_restore x25
    .cfi_restore x26
    .cfi_restore x27
    .cfi_restore x28
    .cfi_restore x29
    .cfi_restore x30
    ret                             /* to x30: the resumed context's caller */
    .cfi_endproc
    .size   weft__ctx_jump, .-weft__ctx_jump

/* First frame of every context: weft__ctx_jump "returns" here with the
 * value in x0 and sp 16-aligned at the top of the new stack. Calls
 * entry(value, arg); entry never returns. The CFI marks the return address
 * (x30) undefined so debuggers and perf stop unwinding here, at the
 * coroutine's first frame, instead of walking off the stack; x29 is zero
 * for frame-pointer unwinders. */
    .globl  weft__ctx_trampoline
    .hidden weft__ctx_trampoline
    .type   weft__ctx_trampoline, %function
    .p2align 4
weft__ctx_trampoline:
    .cfi_startproc
    .cfi_undefined x30
    WEFT_BTI_C
    mov     x1, x20                 /* 2nd argument: entry's arg (x0 is the
                                       switched-in value already) */
    blr     x19                     /* entry(value, arg) */
    udf     #0                      /* entry must not return */
    .cfi_endproc
    .size   weft__ctx_trampoline, .-weft__ctx_trampoline

#if WEFT_PROP_BTI || WEFT_PROP_PAC
/* GNU property note: this object keeps the branch-protection features the
 * compiler was asked for (see the top of this file). */
    .section .note.gnu.property, "a"
    .p2align 3
    .long   4                       /* name size */
    .long   16                      /* descriptor size */
    .long   5                       /* NT_GNU_PROPERTY_TYPE_0 */
    .asciz  "GNU"
    .long   0xc0000000              /* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
    .long   4                       /* data size */
    .long   WEFT_PROP_BTI | WEFT_PROP_PAC /* BTI (1), PAC (2) */
    .long   0                       /* pad to 8 */
#endif

#endif

    .section .note.GNU-stack, "", %progbits
