/* The runtime's allocations go to jemalloc through its non-standard API
 * (mallocx/sdallocx), not malloc: libweft does not replace the program's
 * malloc (the program's own link order decides that), and jemalloc's
 * per-thread caches make a worker's descriptor churn contention-free.
 * Rejected: glibc malloc (its arenas serialise on free from another thread,
 * the common case when a coroutine is spawned on one worker and finishes on
 * a thief) and a hand-written slab (per-worker free lists already sit in
 * front of this for the hottest objects, see sched/co.c). */
#include <jemalloc/jemalloc.h>
#include <stdlib.h>

#include "alloc.h"
#include "compiler.h"

#if defined(WEFT_ASAN)

/* Under AddressSanitizer everything comes from malloc, which ASan replaces
 * with its quarantining allocator: a touch of freed runtime memory is then
 * reported, which ASan cannot see inside jemalloc's. */
void *weft__alloc(size_t size)
{
    return malloc(size ? size : 1);
}

void *weft__calloc(size_t size)
{
    return calloc(1, size ? size : 1);
}

void *weft__alloc_aligned(size_t size, size_t align)
{
    void *p = NULL;
    return posix_memalign(&p, align, size ? size : 1) == 0 ? p : NULL;
}

void weft__free(void *ptr, size_t size)
{
    (void)size;
    free(ptr);
}

void weft__free_aligned(void *ptr, size_t size, size_t align)
{
    (void)size, (void)align;
    free(ptr);
}

#else

void *weft__alloc(size_t size)
{
    return mallocx(size ? size : 1, 0);
}

void *weft__calloc(size_t size)
{
    return mallocx(size ? size : 1, MALLOCX_ZERO);
}

void *weft__alloc_aligned(size_t size, size_t align)
{
    return mallocx(size ? size : 1, MALLOCX_ALIGN(align));
}

void weft__free(void *ptr, size_t size)
{
    if (ptr)
        sdallocx(ptr, size ? size : 1, 0);
}

void weft__free_aligned(void *ptr, size_t size, size_t align)
{
    if (ptr)
        sdallocx(ptr, size ? size : 1, MALLOCX_ALIGN(align));
}

#endif
