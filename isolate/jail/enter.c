/* isolate-enter: how a jail's supervisor begins (see launch.py).
 *
 *   isolate-enter COUNT CGROUP_PROCS_FILE... UID PROGRAM [ARG...]
 *
 * Moves itself into each cgroup (a process moves whole into a cgroup v2, so it must be the
 * process that runs on), then, unless UID is "-", drops every group and becomes UID, and
 * runs PROGRAM. It does what `sh` and `setpriv` did, in one program that starts in a tenth of
 * their time: built static, it loads no library and reads no locale.
 *
 * Exit statuses before PROGRAM runs: 96 usage, 97 a cgroup refused it, 98 the uid could not
 * be taken, 99 PROGRAM could not be run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4)
        return 96;
    char *end;
    long count = strtol(argv[1], &end, 10);
    if (*end || count < 0 || count > argc - 4)
        return 96;
    char pid[24];
    int length = snprintf(pid, sizeof pid, "%d", (int)getpid());
    for (long i = 0; i < count; i++) {
        int fd = open(argv[2 + i], O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, pid, length) != length) {
            fprintf(stderr, "isolate-enter: cannot join %s: %s\n", argv[2 + i], strerror(errno));
            return 97;
        }
        close(fd);
    }
    const char *uid_text = argv[2 + count];
    if (strcmp(uid_text, "-") != 0) {
        unsigned long uid = strtoul(uid_text, &end, 10);
        if (*end || !*uid_text || setgroups(0, NULL) || setresgid(uid, uid, uid) || setresuid(uid, uid, uid)) {
            fprintf(stderr, "isolate-enter: cannot become uid %s: %s\n", uid_text, strerror(errno));
            return 98;
        }
    }
    execv(argv[3 + count], &argv[3 + count]);
    fprintf(stderr, "isolate-enter: cannot run %s: %s\n", argv[3 + count], strerror(errno));
    return 99;
}
