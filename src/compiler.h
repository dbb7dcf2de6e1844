/* Compiler helpers shared by every src file: branch hints, cache-line size,
 * the internal assertion, and sanitizer detection. Leaf header: includes
 * nothing of weft's. */
#ifndef WEFT_COMPILER_H
#define WEFT_COMPILER_H

#include <stdio.h>
#include <stdlib.h>

#define WEFT_LIKELY(x) __builtin_expect(!!(x), 1)
#define WEFT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define WEFT_NOINLINE __attribute__((noinline))
#define WEFT_UNUSED __attribute__((unused))
#define WEFT_HIDDEN __attribute__((visibility("hidden")))

/* 128, not 64: adjacent-line prefetch on x86 pulls lines in pairs, so two
 * fields 64 bytes apart still share traffic (as Go's and Folly's padding). */
#define WEFT_CACHELINE 128

/* A broken internal invariant aborts: it is never an error code. */
#define WEFT_ASSERT(cond)                                                                          \
    do {                                                                                           \
        if (WEFT_UNLIKELY(!(cond))) {                                                              \
            fprintf(stderr, "weft: internal error: %s (%s:%d)\n", #cond, __FILE__, __LINE__);      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#if defined(__SANITIZE_ADDRESS__)
#define WEFT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WEFT_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define WEFT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define WEFT_TSAN 1
#endif
#endif

/* Thread-locals read by the SIGSEGV handler and the switch use the
 * initial-exec model: no allocation on first access, safe in a handler. */
#define WEFT_TLS __thread __attribute__((tls_model("initial-exec")))

#endif
