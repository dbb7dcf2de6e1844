/* Shared by the tests that overflow a stack on purpose (test_ctx.c,
 * test_gen.c): a recursion that overflows, and a harness that runs it in
 * a forked child, captures its stderr and returns its wait status.
 *
 * weft's SIGSEGV/SIGBUS handlers, as installed, are saved by
 * overflow_child_save() in main() before cmocka runs: cmocka replaces the
 * handlers around every test with signal(), and its restore reinstalls
 * weft's without SA_SIGINFO and SA_ONSTACK, which an overflow report
 * needs. Each child puts them back. Include after <cmocka.h>. */
#ifndef WEFT_TESTS_OVERFLOW_CHILD_H
#define WEFT_TESTS_OVERFLOW_CHILD_H

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static struct sigaction weft_segv, weft_bus;
static volatile int never;

/* Recurses until the stack ends. */
static __attribute__((noinline, unused)) int overflow_down(int n)
{
    volatile char buf[512];
    buf[n & 511] = (char)n;
    if (never)
        return buf[0];
    return overflow_down(n + 1) + buf[(n * 7) & 511];
}

/* Recurses `depth` frames of about 512 bytes, then returns. */
static __attribute__((noinline, unused)) int overflow_down_to(int n, int depth)
{
    volatile char buf[512];
    buf[n & 511] = (char)n;
    if (n >= depth)
        return buf[0];
    return overflow_down_to(n + 1, depth) + buf[(n * 7) & 511];
}

static void overflow_child_save(void)
{
    sigaction(SIGSEGV, NULL, &weft_segv);
    sigaction(SIGBUS, NULL, &weft_bus);
}

/* Runs child() in a child process whose stderr is captured into err;
 * returns the wait status. */
static int run_child(void (*child)(void), char *err, size_t cap)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        close(fds[1]);
        sigaction(SIGSEGV, &weft_segv, NULL);
        sigaction(SIGBUS, &weft_bus, NULL);
        child();
        _exit(0); /* not reached when the overflow is caught */
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t n;
    while (len + 1 < cap && (n = read(fds[0], err + len, cap - 1 - len)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        len += (size_t)n;
    }
    err[len] = 0;
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return status;
}

#endif
