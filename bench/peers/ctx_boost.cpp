/* ctx_boost: the `ctx` workload on Boost.Context's fcontext (make_fcontext /
 * jump_fcontext, the assembly switch under Boost.Fiber), the bar weft's
 * weft_ctx_switch is measured against.
 *
 * A main context and one made with make_fcontext bounce control back and
 * forth; each jump_fcontext call is one switch. Default 10,000,000 switches
 * (--size N). Checksum: the switches counted on both sides equal N.
 * Prints bench=ctx impl=boost_fcontext workers=1 metric=ns_per_switch. */
#include <boost/context/detail/fcontext.hpp>
#include "peer.h"

namespace bcd = boost::context::detail;

static volatile uint64_t switches_done;

static void bounce(bcd::transfer_t t)
{
    for (;;) {
        switches_done++;
        t = bcd::jump_fcontext(t.fctx, nullptr);
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

    const size_t stack_bytes = 64 * 1024;
    char *stack = static_cast<char *>(aligned_alloc(64, stack_bytes));
    /* make_fcontext takes the top of the stack (stacks grow down on x86-64). */
    bcd::fcontext_t other = bcd::make_fcontext(stack + stack_bytes, stack_bytes, bounce);

    int64_t t0 = peer_now_ns();
    for (int64_t i = 0; i < switches / 2; i++) {
        switches_done++;
        other = bcd::jump_fcontext(other, nullptr).fctx;
    }
    int64_t t1 = peer_now_ns();

    if (switches_done != (uint64_t)switches)
        peer_fail("ctx", "boost_fcontext", "counted %llu switches, want %lld",
                  (unsigned long long)switches_done, (long long)switches);
    char note[64];
    snprintf(note, sizeof note, "%lld switches", (long long)switches);
    peer_line("ctx", "boost_fcontext", 1, "ns_per_switch",
              (double)(t1 - t0) / (double)switches, "ns", note);
    free(stack);
    return 0;
}
