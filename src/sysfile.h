/* Reading the kernel's one-line settings files (/proc/sys, /sys). */
#ifndef WEFT_SYSFILE_H
#define WEFT_SYSFILE_H

#include <stddef.h>

/* Reads the first line of `path` into buf (NUL-terminated, at most len - 1
 * bytes, the newline kept). 1 on success; 0 if the file cannot be opened
 * or is empty. */
int weft__read_line(const char *path, char *buf, size_t len);

#endif
