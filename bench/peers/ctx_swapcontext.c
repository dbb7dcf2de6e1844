/* ctx_swapcontext: the `ctx` workload on glibc's swapcontext, the floor weft's
 * weft_ctx_switch must beat by far (swapcontext saves and restores the signal
 * mask with a system call on every switch).
 *
 * A main context and one made with makecontext bounce control back and forth;
 * each swapcontext call is one switch. Default 10,000,000 switches
 * (--size N). Checksum: the switches counted on both sides equal N.
 * Prints bench=ctx impl=swapcontext workers=1 metric=ns_per_switch. */
#define _GNU_SOURCE
#include <ucontext.h>
#include "peer.h"

#define STACK_BYTES (64 * 1024)

static ucontext_t main_uc, other_uc;
static volatile uint64_t switches_done;

static void bounce(void)
{
    for (;;) {
        switches_done++;
        swapcontext(&other_uc, &main_uc);
    }
}

int main(int argc, char **argv)
{
    struct peer_opts o;
    peer_parse(argc, argv, "ctx", &o);
    if (strcmp(o.id, "ctx") != 0)
        peer_usage(argv[0], "ctx");

    int64_t switches = o.size ? o.size : 10000000;
    switches += switches % 2; /* one round trip is two switches */

    static char stack[STACK_BYTES] __attribute__((aligned(64)));
    getcontext(&other_uc);
    other_uc.uc_stack.ss_sp = stack;
    other_uc.uc_stack.ss_size = sizeof stack;
    other_uc.uc_link = NULL;
    makecontext(&other_uc, bounce, 0);

    int64_t t0 = peer_now_ns();
    for (int64_t i = 0; i < switches / 2; i++) {
        switches_done++;
        swapcontext(&main_uc, &other_uc);
    }
    int64_t t1 = peer_now_ns();

    if (switches_done != (uint64_t)switches)
        peer_fail("ctx", "swapcontext", "counted %llu switches, want %lld",
                  (unsigned long long)switches_done, (long long)switches);
    char note[64];
    snprintf(note, sizeof note, "%lld switches", (long long)switches);
    peer_line("ctx", "swapcontext", 1, "ns_per_switch", (double)(t1 - t0) / (double)switches, "ns",
              note);
    return 0;
}
