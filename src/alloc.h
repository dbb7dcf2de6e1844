/* weft's allocator: every runtime allocation (descriptors, deques, channels,
 * timers) goes through here, so one file decides the allocator (jemalloc).
 * Sizes are passed back on free (jemalloc's sized deallocation skips a
 * metadata lookup). Stacks are not allocated here: see ctx/stack.c. */
#ifndef WEFT_ALLOC_H
#define WEFT_ALLOC_H

#include <stddef.h>

/* NULL when out of memory; callers return ENOMEM. */
void *weft__alloc(size_t size);
/* Zero-filled. */
void *weft__calloc(size_t size);
/* Aligned to align (a power of two). */
void *weft__alloc_aligned(size_t size, size_t align);
/* ptr may be NULL; size is the size it was allocated with. */
void weft__free(void *ptr, size_t size);
/* For weft__alloc_aligned memory: size and align as allocated. */
void weft__free_aligned(void *ptr, size_t size, size_t align);

#endif
