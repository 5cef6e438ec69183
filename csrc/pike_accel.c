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

long pike_recv(int fd, char *buf, size_t len)
{
    ssize_t n;

    do {
        n = recv(fd, buf, len, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -(long)errno : (long)n;
}

static const char *find_bytes(const char *hay, size_t hay_len,
                              const char *needle, size_t needle_len)
{
    if (needle_len == 1)
        return memchr(hay, needle[0], hay_len);
#if defined(__GLIBC__) || defined(__APPLE__) || defined(__FreeBSD__)
    return memmem(hay, hay_len, needle, needle_len);
#else
    {
        const char *p = hay, *end = hay + hay_len;

        while ((size_t)(end - p) >= needle_len) {
            p = memchr(p, needle[0], (size_t)(end - p) - needle_len + 1);
            if (p == NULL)
                return NULL;
            if (memcmp(p, needle, needle_len) == 0)
                return p;
            p++;
        }
        return NULL;
    }
#endif
}

long pike_find(const char *hay, size_t hay_len, size_t start,
               const char *needle, size_t needle_len)
{
    const char *hit;

    if (needle_len == 0 || start > hay_len || hay_len - start < needle_len)
        return -1;
    hit = find_bytes(hay + start, hay_len - start, needle, needle_len);
    return hit == NULL ? -1 : (long)(hit - hay);
}

long pike_find_all(const char *hay, size_t hay_len, size_t start,
                   const char *needle, size_t needle_len,
                   long *ends, long max)
{
    long count = 0;

    if (needle_len == 0)
        return 0;
    while (count < max && start <= hay_len && hay_len - start >= needle_len) {
        const char *hit = find_bytes(hay + start, hay_len - start, needle, needle_len);

        if (hit == NULL)
            break;
        start = (size_t)(hit - hay) + needle_len;
        ends[count++] = (long)start;
    }
    return count;
}

long pike_prefix_at_end(const char *hay, size_t hay_len,
                        const char *needle, size_t needle_len)
{
    size_t l;

    if (needle_len == 0)
        return 0;
    l = needle_len - 1;
    if (l > hay_len)
        l = hay_len;
    for (; l > 0; l--) {
        if (memcmp(hay + hay_len - l, needle, l) == 0)
            return (long)l;
    }
    return 0;
}

long pike_scan_lengths(const unsigned char *buf, size_t len, size_t start,
                       int header_size, int little_endian,
                       unsigned long long max_frame, long *ends, long max)
{
    long count = 0;

    if (header_size != 1 && header_size != 2 && header_size != 4 && header_size != 8)
        return -1;
    while (count < max && start <= len && len - start >= (size_t)header_size) {
        unsigned long long size = 0;
        int i;

        for (i = 0; i < header_size; i++) {
            unsigned long long byte = buf[start + (little_endian ? header_size - 1 - i : i)];
            size = (size << 8) | byte;
        }
        if (size > max_frame)
            return -1;
        if (len - start - (size_t)header_size < size)
            break; /* incomplete: wait for more */
        start += (size_t)header_size + (size_t)size;
        ends[count++] = (long)start;
    }
    return count;
}
