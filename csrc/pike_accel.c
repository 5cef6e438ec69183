/* pike's C accelerator; see pike_accel.h for the contract of each function. */
#define _GNU_SOURCE
#include "pike_accel.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: SO_NOSIGPIPE or an ignored SIGPIPE instead */
#endif

long pike_send(int fd, const char *buf, size_t len)
{
    ssize_t n;

    do {
        n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -(long)errno : (long)n;
}
