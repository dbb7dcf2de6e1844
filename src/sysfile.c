#include <stdio.h>

#include "sysfile.h"

int weft__read_line(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re"); /* close-on-exec: a forking program keeps no copy */
    if (!f)
        return 0;
    int ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    return ok;
}
