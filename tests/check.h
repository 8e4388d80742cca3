/* check.h -- the tiny test vocabulary shared by the C tests.
 *
 * Each check prints one line, "PASS name" or "FAIL name: why (file:line)"; SKIP says what
 * was not run and why. tests/run.sh counts the lines across every test program, so a test
 * program's exit status only has to say whether anything failed. */
#ifndef CLIP_CHECK_H
#define CLIP_CHECK_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

static int check_failed_count;

__attribute__((format(printf, 4, 5)))
static int check_report(int ok, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs(ok ? "PASS " : "FAIL ", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    if (!ok) {
        printf(" (%s:%d)", file, line);
        check_failed_count++;
    }
    putchar('\n');
    fflush(stdout);
    return ok;
}

/* CHECK(condition, "name or description %s", args...) -- returns the condition. */
#define CHECK(cond, ...) check_report(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

__attribute__((format(printf, 1, 2)))
static void check_skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("SKIP ", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* The shared reference fixtures (../shared/reference), or NULL when they are absent. */
static const char *check_reference_dir(void)
{
    const char *dir = getenv("CLIP_REFERENCE_DIR");
    if (!dir) dir = "../shared/reference";
    struct stat st;
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? dir : NULL;
}

static int check_exit(void) { return check_failed_count ? 1 : 0; }

#endif
