/* Generators: values in order, ENODATA at the end, `yield from` (the
 * motivating 1 3 4 2 example and deeper nesting), freeing unfinished
 * generators, overflow reports that name the generator, bad input.
 * All on the test's plain thread, without a runtime. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "overflow_child.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctx/stack.h"
#include "weft.h"

#define V(x) ((void *)(intptr_t)(x))

/* Advances g to its end; stores the values (as chars) in out. Returns the
 * code that ended it (ENODATA when all went well). */
static int drain(weft_gen *g, char *out, size_t cap)
{
    size_t n = 0;
    void *v;
    int err;
    while ((err = weft_gen_next(g, &v)) == 0 && n + 1 < cap)
        out[n++] = (char)(intptr_t)v;
    out[n] = 0;
    return err;
}

/* Yields the characters of the string arg, one per next. */
static void yield_chars(weft_gen *g, void *arg)
{
    for (const char *s = arg; *s; s++)
        weft_gen_yield(g, V(*s));
}

static void test_gen_yields_values_in_order_then_enodata(void **state)
{
    (void)state;
    weft_gen *g;
    void *v = V(-1);
    assert_int_equal(weft_gen_make(&g, NULL, yield_chars, "abc"), 0);
    assert_int_equal(weft_gen_next(g, &v), 0);
    assert_int_equal((intptr_t)v, 'a');
    assert_int_equal(weft_gen_next(g, &v), 0);
    assert_int_equal((intptr_t)v, 'b');
    assert_int_equal(weft_gen_next(g, &v), 0);
    assert_int_equal((intptr_t)v, 'c');
    v = V(-1);
    assert_int_equal(weft_gen_next(g, &v), ENODATA);
    assert_int_equal((intptr_t)v, -1);               /* untouched */
    assert_int_equal(weft_gen_next(g, &v), ENODATA); /* and every time after */
    weft_gen_free(g);
}

static void test_gen_that_yields_nothing_gives_enodata_at_once(void **state)
{
    (void)state;
    weft_gen *g;
    char out[8];
    assert_int_equal(weft_gen_make(&g, NULL, yield_chars, ""), 0);
    assert_int_equal(drain(g, out, sizeof out), ENODATA);
    assert_string_equal(out, "");
    weft_gen_free(g);
}

/* The motivating example: yield 1, yield from an inner generator that
 * yields 3 and 4, yield 2. */
static int from_err = -1;

static void one_from_two(weft_gen *g, void *arg)
{
    (void)arg;
    weft_gen *inner;
    weft_gen_yield(g, V('1'));
    if (weft_gen_make(&inner, NULL, yield_chars, "34") != 0)
        return;
    from_err = weft_gen_yield_from(g, inner);
    weft_gen_free(inner);
    weft_gen_yield(g, V('2'));
}

static void test_gen_yield_from_orders_1_3_4_2(void **state)
{
    (void)state;
    weft_gen *g;
    char out[16];
    from_err = -1;
    assert_int_equal(weft_gen_make(&g, NULL, one_from_two, NULL), 0);
    assert_int_equal(drain(g, out, sizeof out), ENODATA);
    assert_string_equal(out, "1342");
    assert_int_equal(from_err, 0);
    weft_gen_free(g);
}

/* Three levels: outer yields a, yields from middle (b, yield from inner
 * "cd", e), then f. */
static int nest_errs[2] = { -1, -1 };

static void nest_middle(weft_gen *g, void *arg)
{
    (void)arg;
    weft_gen *inner;
    weft_gen_yield(g, V('b'));
    if (weft_gen_make(&inner, NULL, yield_chars, "cd") != 0)
        return;
    nest_errs[1] = weft_gen_yield_from(g, inner);
    weft_gen_free(inner);
    weft_gen_yield(g, V('e'));
}

static void nest_outer(weft_gen *g, void *arg)
{
    (void)arg;
    weft_gen *middle;
    weft_gen_yield(g, V('a'));
    if (weft_gen_make(&middle, NULL, nest_middle, NULL) != 0)
        return;
    nest_errs[0] = weft_gen_yield_from(g, middle);
    weft_gen_free(middle);
    weft_gen_yield(g, V('f'));
}

static void test_gen_nested_yield_from_keeps_order(void **state)
{
    (void)state;
    weft_gen *g;
    char out[16];
    assert_int_equal(weft_gen_make(&g, NULL, nest_outer, NULL), 0);
    assert_int_equal(drain(g, out, sizeof out), ENODATA);
    assert_string_equal(out, "abcdef");
    assert_int_equal(nest_errs[0], 0);
    assert_int_equal(nest_errs[1], 0);
    weft_gen_free(g);
}

/* yield from a generator that was partly advanced already: only the rest. */
static weft_gen *partial_inner;

static void from_partial(weft_gen *g, void *arg)
{
    (void)arg;
    weft_gen_yield_from(g, partial_inner);
}

static void test_gen_yield_from_takes_the_rest_of_a_started_generator(void **state)
{
    (void)state;
    weft_gen *g;
    void *v;
    char out[16];
    assert_int_equal(weft_gen_make(&partial_inner, NULL, yield_chars, "wxyz"), 0);
    assert_int_equal(weft_gen_next(partial_inner, &v), 0);
    assert_int_equal((intptr_t)v, 'w');
    assert_int_equal(weft_gen_make(&g, NULL, from_partial, NULL), 0);
    assert_int_equal(drain(g, out, sizeof out), ENODATA);
    assert_string_equal(out, "xyz");
    assert_int_equal(weft_gen_next(partial_inner, &v), ENODATA);
    weft_gen_free(g);
    weft_gen_free(partial_inner);
}

/* Counts up forever; records how far fn got. */
static int count_reached;

static void count_forever(weft_gen *g, void *arg)
{
    (void)arg;
    for (int i = 0;; i++) {
        count_reached = i;
        weft_gen_yield(g, V(i));
    }
}

static void test_gen_free_of_unfinished_generator_never_resumes_it(void **state)
{
    (void)state;
    weft_gen *g;
    void *v;
    count_reached = -1;
    /* Never started: fn never runs. */
    assert_int_equal(weft_gen_make(&g, NULL, count_forever, NULL), 0);
    weft_gen_free(g);
    assert_int_equal(count_reached, -1);
    /* Started: stops where it was. */
    assert_int_equal(weft_gen_make(&g, NULL, count_forever, NULL), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(weft_gen_next(g, &v), 0);
        assert_int_equal((intptr_t)v, i);
    }
    weft_gen_free(g);
    assert_int_equal(count_reached, 2);
}

static int count_mappings(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    int lines = 0, c;
    if (!f)
        return -1;
    while ((c = fgetc(f)) != EOF)
        lines += c == '\n';
    fclose(f);
    return lines;
}

/* 1000 started-and-freed generators on a non-default stack size (which is
 * not pooled but unmapped on free) with mprotect guards (a guard and a
 * stack per mapping pair, which never merge): a stack kept alive would add
 * at least one mapping each. */
static void test_gen_free_releases_the_stack_of_an_unfinished_generator(void **state)
{
    (void)state;
    weft_attr attr = { .stack_size = 64 * 1024, .name = NULL };
    unsigned mode = weft__stack_mode();
    weft__stack_force_mode(WEFT__GUARD_MPROTECT);
    int before = count_mappings();
    for (int i = 0; i < 1000; i++) {
        weft_gen *g;
        void *v;
        assert_int_equal(weft_gen_make(&g, &attr, count_forever, NULL), 0);
        assert_int_equal(weft_gen_next(g, &v), 0);
        weft_gen_free(g);
    }
    int after = count_mappings();
    weft__stack_force_mode(mode);
    assert_true(before > 0);
    assert_true(after - before < 100);
}

/* --- errors from inside ------------------------------------------------- */

static int inside_next, inside_from_self, inside_v;

static void misuse_inside(weft_gen *g, void *arg)
{
    (void)arg;
    void *v;
    inside_next = weft_gen_next(g, &v);           /* itself: EDEADLK */
    inside_from_self = weft_gen_yield_from(g, g); /* itself: EINVAL */
    weft_gen_yield(g, V(7));
}

static void test_gen_misuse_from_inside_gives_codes(void **state)
{
    (void)state;
    weft_gen *g;
    char out[8];
    inside_v = 0;
    assert_int_equal(weft_gen_make(&g, NULL, misuse_inside, NULL), 0);
    assert_int_equal(drain(g, out, sizeof out), ENODATA);
    assert_int_equal(out[0], 7);
    assert_int_equal(inside_next, EDEADLK);
    assert_int_equal(inside_from_self, EINVAL);
    weft_gen_free(g);
}

static void test_gen_bad_input_gives_einval(void **state)
{
    (void)state;
    weft_gen *untouched = (weft_gen *)&untouched;
    weft_gen *g = untouched, *other;
    void *v = V(5);
    assert_int_equal(weft_gen_make(NULL, NULL, yield_chars, "a"), EINVAL);
    assert_int_equal(weft_gen_make(&g, NULL, NULL, NULL), EINVAL);
    assert_ptr_equal(g, untouched);
    assert_int_equal(weft_gen_next(NULL, &v), EINVAL);
    assert_int_equal((intptr_t)v, 5);

    assert_int_equal(weft_gen_make(&g, NULL, yield_chars, "a"), 0);
    assert_int_equal(weft_gen_make(&other, NULL, yield_chars, "b"), 0);
    assert_int_equal(weft_gen_next(g, NULL), EINVAL);
    assert_int_equal(weft_gen_yield_from(NULL, other), EINVAL);
    assert_int_equal(weft_gen_yield_from(g, NULL), EINVAL);
    /* Not from inside g. */
    assert_int_equal(weft_gen_yield_from(g, other), EPERM);
    weft_gen_yield(g, V(1)); /* not inside g: nothing happens */
    weft_gen_yield(NULL, V(1));
    weft_gen_free(NULL);
    /* g and other are intact. */
    assert_int_equal(weft_gen_next(g, &v), 0);
    assert_int_equal((intptr_t)v, 'a');
    assert_int_equal(weft_gen_next(other, &v), 0);
    assert_int_equal((intptr_t)v, 'b');
    weft_gen_free(g);
    weft_gen_free(other);
}

/* --- overflow report names the generator ----------------------------------- */

static void overflow_gen(weft_gen *g, void *arg)
{
    (void)arg;
    weft_gen_yield(g, V(overflow_down(0)));
}

static void *ctx_fn_unused(void *v)
{
    return v;
}

static void uses_contexts_inside(weft_gen *g, void *arg)
{
    weft_ctx **c = arg;
    weft_ctx *made;
    weft_gen_yield(g, (void *)(intptr_t)weft_ctx_make(&made, 0, ctx_fn_unused));
    weft_gen_yield(g, weft_ctx_current());
    weft_gen_yield(g, weft_ctx_switch(*c, (void *)1));
}

/* Contexts belong to plain threads' own stacks: a generator is refused,
 * rather than having its stack saved into a context it does not run on. */
static void test_gen_refuses_contexts_inside_a_generator(void **state)
{
    (void)state;
    weft_ctx *c;
    assert_int_equal(weft_ctx_make(&c, 0, ctx_fn_unused), 0);
    weft_gen *g;
    assert_int_equal(weft_gen_make(&g, NULL, uses_contexts_inside, &c), 0);
    void *v;
    assert_int_equal(weft_gen_next(g, &v), 0);
    assert_int_equal((intptr_t)v, EPERM);
    assert_int_equal(weft_gen_next(g, &v), 0);
    assert_null(v);
    assert_int_equal(weft_gen_next(g, &v), 0);
    assert_null(v);
    assert_int_equal(weft_gen_next(g, &v), ENODATA);
    weft_gen_free(g);
    weft_ctx_free(c);
}

static void child_overflows_generator(void)
{
    weft_attr attr = { .stack_size = 64 * 1024, .name = "lexer" };
    weft_gen *g;
    void *v;
    if (weft_gen_make(&g, &attr, overflow_gen, NULL) == 0)
        weft_gen_next(g, &v);
}

static void test_gen_overflow_report_names_the_generator(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_overflows_generator, err, sizeof err);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    assert_non_null(strstr(err, "weft: stack overflow in generator 'lexer' (stack 65536 bytes)\n"));
}

/* --- contexts freed from inside a generator -------------------------------- */

static weft_ctx *gen_caller_ctx;

static void yields_twice(weft_gen *g, void *arg)
{
    (void)arg;
    volatile char frame[2048]; /* written where a recycled stack's top is */
    for (size_t i = 0; i < sizeof frame; i++)
        frame[i] = (char)i;
    weft_gen_yield(g, V(frame[7]));
    weft_gen_yield(g, V(2));
}

/* Frees the context that advanced it, then runs another generator, whose
 * stack would be that context's if the free had gone through. */
static void frees_its_caller(weft_gen *g, void *arg)
{
    (void)arg;
    weft_ctx_free(gen_caller_ctx);
    weft_gen *other;
    void *v;
    if (weft_gen_make(&other, NULL, yields_twice, NULL) == 0) {
        weft_gen_next(other, &v);
        weft_gen_free(other);
    }
    weft_gen_yield(g, V(1));
}

static void *advances_a_generator(void *value)
{
    volatile intptr_t marker = 4242;
    weft_gen *g;
    void *v = NULL;
    if (weft_gen_make(&g, NULL, frees_its_caller, NULL) != 0 || weft_gen_next(g, &v) != 0)
        return NULL;
    weft_gen_free(g);
    return (intptr_t)v == 1 && marker == 4242 ? value : NULL;
}

static void child_frees_caller_inside_generator(void)
{
    if (weft_ctx_make(&gen_caller_ctx, 0, advances_a_generator) != 0)
        _exit(2);
    void *r = weft_ctx_switch(gen_caller_ctx, V(77));
    _exit(r == V(77) ? 0 : 1);
}

/* A generator cannot know which context it runs above, so weft_ctx_free
 * does nothing inside one: freeing the context that called it would hand
 * a live stack to the next generator. */
static void test_gen_cannot_free_the_context_beneath_it(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_frees_caller_inside_generator, err, sizeof err);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* --- a changed default stack size reaches stacks cached on this thread -------- */

static void recurse_deep(weft_gen *g, void *arg)
{
    (void)arg;
    /* About 600 KiB of frames: beyond the 256 KiB default. */
    weft_gen_yield(g, V(overflow_down_to(0, 1200)));
}

static void child_uses_the_new_default(void)
{
    weft_gen *g;
    void *v;
    /* A default-size stack goes to this thread's cache... */
    if (weft_gen_make(&g, NULL, yields_twice, NULL) != 0)
        _exit(2);
    weft_gen_next(g, &v);
    weft_gen_free(g);
    /* ...and the runtime's start changes the default to 1 MiB. */
    weft_config cfg = { .workers = 1, .stack_size = 1 << 20 };
    if (weft_start(&cfg) != 0 || weft_gen_make(&g, NULL, recurse_deep, NULL) != 0)
        _exit(3);
    int rc = weft_gen_next(g, &v);
    weft_gen_free(g);
    weft_stop();
    _exit(rc == 0 ? 0 : 4);
}

static void test_gen_stack_follows_a_changed_default_size(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_uses_the_new_default, err, sizeof err);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_null(strstr(err, "stack overflow"));
}

/* --- an overflow on a thread that did not make the generator ------------------ */

static weft_gen *made_elsewhere;

static void *advance_made_elsewhere(void *arg)
{
    (void)arg;
    void *v;
    weft_gen_next(made_elsewhere, &v);
    return NULL;
}

static void child_overflows_on_another_thread(void)
{
    weft_attr attr = { .stack_size = 64 * 1024, .name = "moved" };
    pthread_t t;
    if (weft_gen_make(&made_elsewhere, &attr, overflow_gen, NULL) != 0)
        _exit(2);
    if (pthread_create(&t, NULL, advance_made_elsewhere, NULL) == 0)
        pthread_join(t, NULL);
}

static void test_gen_overflow_is_reported_on_any_thread(void **state)
{
    (void)state;
    char err[4096];
    int status = run_child(child_overflows_on_another_thread, err, sizeof err);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGSEGV);
    assert_non_null(strstr(err, "weft: stack overflow in generator 'moved' (stack 65536 bytes)\n"));
}

int main(void)
{
    weft__overflow_init();
    overflow_child_save();

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gen_yields_values_in_order_then_enodata),
        cmocka_unit_test(test_gen_that_yields_nothing_gives_enodata_at_once),
        cmocka_unit_test(test_gen_yield_from_orders_1_3_4_2),
        cmocka_unit_test(test_gen_nested_yield_from_keeps_order),
        cmocka_unit_test(test_gen_yield_from_takes_the_rest_of_a_started_generator),
        cmocka_unit_test(test_gen_free_of_unfinished_generator_never_resumes_it),
        cmocka_unit_test(test_gen_free_releases_the_stack_of_an_unfinished_generator),
        cmocka_unit_test(test_gen_misuse_from_inside_gives_codes),
        cmocka_unit_test(test_gen_bad_input_gives_einval),
        cmocka_unit_test(test_gen_refuses_contexts_inside_a_generator),
        cmocka_unit_test(test_gen_overflow_report_names_the_generator),
        cmocka_unit_test(test_gen_cannot_free_the_context_beneath_it),
        cmocka_unit_test(test_gen_stack_follows_a_changed_default_size),
        cmocka_unit_test(test_gen_overflow_is_reported_on_any_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
