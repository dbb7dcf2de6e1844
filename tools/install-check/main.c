/* Links against an installed weft (find_package or pkg-config) and runs
 * one coroutine: exit status 0 when it returned 41 + 1. */
#include <weft.h>
#include <stdint.h>
static void *f(void *a)
{
    return (void *)((intptr_t)a + 1);
}
int main(void)
{
    void *r;
    return weft_main(NULL, f, (void *)41, &r) || (intptr_t)r != 42;
}
