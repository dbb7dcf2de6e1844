/* Compiler helpers shared by every src file: branch hints, cache-line size,
 * the internal assertion, and sanitizer detection. Leaf header: includes
 * nothing of weft's. */
#ifndef WEFT_COMPILER_H
#define WEFT_COMPILER_H

#include <stdbool.h>
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

/* Fetches the cache line at p for writing. gcc's __builtin_prefetch(p, 1)
 * becomes a read prefetch (prefetcht0) on baseline x86-64, after which the
 * first store still waits to take the line from its last writer; PREFETCHW
 * asks for it exclusive at once. CPUID says whether the CPU has it
 * (weft__prefetchw, set once per process by weft__cpu_probe(), which
 * weft_start calls). */
#if defined(__x86_64__)
extern bool weft__prefetchw;
void weft__cpu_probe(void);
#define WEFT_PREFETCH_WRITE(p)                                                                     \
    do {                                                                                           \
        if (weft__prefetchw)                                                                       \
            __asm__ volatile("prefetchw %0" : : "m"(*(const char *)(p)));                          \
        else                                                                                       \
            __builtin_prefetch((p), 1, 3);                                                         \
    } while (0)
#else
static inline void weft__cpu_probe(void) {}
#define WEFT_PREFETCH_WRITE(p) __builtin_prefetch((p), 1, 3)
#endif

#endif
