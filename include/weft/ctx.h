/* weft/ctx.h: the bare symmetric context switch, for plain threads.
 *
 * Like greenlet: a context runs a function on its own stack; any context
 * can switch to any other, passing a value both ways; when a context's
 * function returns, its return value is switched to its parent (the context
 * that made it) and the context is finished. Contexts belong to the thread
 * that made them. Inside a coroutine use generators (weft.h) instead. */
#ifndef WEFT_CTX_PUBLIC_H
#define WEFT_CTX_PUBLIC_H

#include <stddef.h>

#ifndef WEFT_API
#define WEFT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct weft_ctx weft_ctx;

/* The calling thread's running context: the thread's own context before
 * any switch. Returns NULL inside a coroutine or a generator (where
 * contexts are not allowed) and when out of memory. */
WEFT_API weft_ctx *weft_ctx_current(void);

/* Makes a context that will run fn on a stack of at least stack_size bytes
 * (0: the default, 256 KiB; sizes round up to whole pages, 16 KiB at
 * least). Its parent is the caller's current context. The first switch into
 * it calls fn(value). The stack is guarded: an overflow ends the process
 * with a report on stderr.
 * Returns 0; EINVAL if c or fn is NULL; EPERM inside a coroutine or a
 * generator; ENOMEM, also for a stack_size above 1 TiB. */
WEFT_API int weft_ctx_make(weft_ctx **c, size_t stack_size, void *(*fn)(void *));

/* Runs `to`, passing it value (as fn's argument on the first switch, else
 * as the return value of the weft_ctx_switch that left it). Returns the
 * value passed by whoever switches back to the caller, or the return value
 * of a child context whose function ended. Switching to a finished or freed
 * context, or to NULL, returns NULL at once and does nothing; switching to
 * the running context returns value. Call on the thread that made `to`;
 * inside a coroutine or a generator it returns NULL and does nothing. */
WEFT_API void *weft_ctx_switch(weft_ctx *to, void *value);

/* Frees c, finished or not (an unfinished context's function never
 * resumes, and its stack is released without unwinding it). Does nothing
 * for NULL, the thread's own context or the running context, nor inside a
 * generator (which may have been called from c). Children of
 * c that finish later return to c's nearest live ancestor. */
WEFT_API void weft_ctx_free(weft_ctx *c);

#ifdef __cplusplus
}
#endif

#endif
