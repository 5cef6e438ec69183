/*
 * pike's C accelerator: the per-event system calls of the hot path, with
 * errors returned as negative errno values instead of raised exceptions,
 * and the framing layer's byte scanning.
 *
 * Every function is safe to call from Python through cffi (API mode): no
 * function keeps a pointer it was given, and none blocks (sockets are
 * non-blocking; MSG_DONTWAIT is passed as well, so a socket left blocking
 * by mistake cannot hang the loop).
 */
#ifndef PIKE_ACCEL_H
#define PIKE_ACCEL_H

#include <stddef.h>

/* Bytes sent (>= 0) or -errno. Never raises SIGPIPE. */
long pike_send(int fd, const char *buf, size_t len);

/* Bytes received (0 means EOF) or -errno. */
long pike_recv(int fd, char *buf, size_t len);

/* Index of the first occurrence of needle in hay[start:], or -1. */
long pike_find(const char *hay, size_t hay_len, size_t start,
               const char *needle, size_t needle_len);

/*
 * Offsets just past each non-overlapping occurrence of needle in
 * hay[start:], at most max of them, written to ends; returns how many.
 * A line protocol splits a whole received chunk with one call.
 */
long pike_find_all(const char *hay, size_t hay_len, size_t start,
                   const char *needle, size_t needle_len,
                   long *ends, long max);

/*
 * Length of the longest proper prefix of needle that hay ends with: the
 * bytes that may be the start of a terminator split across two reads.
 */
long pike_prefix_at_end(const char *hay, size_t hay_len,
                        const char *needle, size_t needle_len);

/*
 * Frames of a length-prefixed stream: each frame is a header_size-byte
 * unsigned length (1, 2, 4 or 8 bytes; big-endian unless little_endian)
 * followed by that many bytes. Writes the end offset of each complete
 * frame found from start on (at most max) to ends and returns how many;
 * returns -1 if a length exceeds max_frame (the caller closes the stream).
 */
long pike_scan_lengths(const unsigned char *buf, size_t len, size_t start,
                       int header_size, int little_endian,
                       unsigned long long max_frame, long *ends, long max);

#endif
