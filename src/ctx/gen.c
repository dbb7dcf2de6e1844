/* Generators: asymmetric coroutines that yield values, as Python's do.
 *
 * A generator is a fiber with its own guarded stack. weft_gen_next switches
 * from whatever fiber is running (a plain thread, a coroutine, or an outer
 * generator) into the generator; weft_gen_yield switches back to that
 * caller. Nothing here knows about the scheduler: when the generator's
 * function calls something that waits inside a coroutine, the scheduler
 * parks "the running fiber", which is the generator's, and later resumes it
 * (perhaps on another worker); the generator then yields back to its
 * caller fiber on that worker. So waiting inside a generator needs no
 * support from this file.
 *
 * `yield from` is a loop of next and yield: each value crosses two
 * switches, which keeps the inner generator an ordinary one (it can be
 * advanced by anyone before and after) and costs ~2 switches a value;
 * delegating the switch straight to the innermost generator would save one
 * switch but make freeing and re-entry rules much harder. The stack of a
 * finished generator goes back to the pool at once. */
#include <errno.h>
#include <string.h>

#include "../alloc.h"
#include "ctx.h"
#include "stack.h"
#include "weft.h"

struct weft_gen {
    weft__fiber fiber;
    weft__fiber *caller; /* the fiber that called weft_gen_next */
    void (*fn)(weft_gen *g, void *arg);
    void *arg;
    void *value; /* the value being yielded */
    char *name;  /* owned copy of attr->name */
    unsigned char running, finished;
};

static void gen_entry(void *value, void *arg)
{
    (void)value;
    weft__fiber_started();
    weft_gen *g = arg;
    g->fn(g, g->arg);
    g->finished = 1;
    weft__fiber_exit(&g->fiber, g->caller, NULL);
}

int weft_gen_make(weft_gen **out, const weft_attr *attr, void (*fn)(weft_gen *g, void *arg),
                  void *arg)
{
    if (!out || !fn)
        return EINVAL;
    weft_gen *g = weft__calloc(sizeof *g);
    if (!g)
        return ENOMEM;
    if (attr && attr->name) {
        size_t len = strlen(attr->name) + 1;
        g->name = weft__alloc(len);
        if (!g->name) {
            weft__free(g, sizeof *g);
            return ENOMEM;
        }
        memcpy(g->name, attr->name, len);
    }
    weft__stack *s;
    int err = weft__stack_get(attr ? attr->stack_size : 0, &s);
    if (err) {
        if (g->name)
            weft__free(g->name, strlen(g->name) + 1);
        weft__free(g, sizeof *g);
        return err;
    }
    weft__overflow_init();
    weft__fiber_init(&g->fiber, s, WEFT__FIBER_GENERATOR, g->name, gen_entry, g);
    g->fn = fn;
    g->arg = arg;
    *out = g;
    return 0;
}

static void release_stack(weft_gen *g)
{
    if (g->fiber.stack) {
        weft__fiber_destroy(&g->fiber);
        weft__stack_put(g->fiber.stack);
        g->fiber.stack = NULL;
    }
}

int weft_gen_next(weft_gen *g, void **value)
{
    if (!g || !value)
        return EINVAL;
    if (g->running)
        return EDEADLK; /* a generator cannot advance itself */
    if (g->finished)
        return ENODATA;
    g->caller = weft__fiber_current();
    /* The thread advancing it may not be the one that made it: an
     * overflow report needs this thread's alternate signal stack. */
    weft__overflow_ready();
    g->running = 1;
    weft__fiber_switch(g->caller, &g->fiber, NULL);
    g->running = 0;
    if (g->finished) {
        release_stack(g);
        return ENODATA;
    }
    *value = g->value;
    return 0;
}

void weft_gen_yield(weft_gen *g, void *value)
{
    if (!g || !g->running || weft__fiber_current() != &g->fiber)
        return;
    g->value = value;
    weft__fiber_switch(&g->fiber, g->caller, NULL);
}

int weft_gen_yield_from(weft_gen *g, weft_gen *inner)
{
    if (!g || !inner || inner == g)
        return EINVAL;
    if (!g->running || weft__fiber_current() != &g->fiber)
        return EPERM;
    void *v;
    int err;
    while ((err = weft_gen_next(inner, &v)) == 0)
        weft_gen_yield(g, v);
    return err == ENODATA ? 0 : err;
}

void weft_gen_free(weft_gen *g)
{
    if (!g || g->running)
        return;
    release_stack(g);
    if (g->name)
        weft__free(g->name, strlen(g->name) + 1);
    weft__free(g, sizeof *g);
}
