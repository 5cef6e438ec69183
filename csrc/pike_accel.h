/*
 * pike's C accelerator: the system calls of the hot path, with errors
 * returned as negative errno values instead of raised exceptions -- the
 * send beneath Transport.send, and the epoll poller's batched iteration.
 *
 * Every function is safe to call from Python through cffi (API mode): no
 * function keeps a pointer it was given, and none blocks (sockets are
 * non-blocking; MSG_DONTWAIT is passed as well, so a socket left blocking
 * by mistake cannot hang the loop; the poller's batch never waits).
 */
#ifndef PIKE_ACCEL_H
#define PIKE_ACCEL_H

#include <stddef.h>

/* Bytes sent (>= 0) or -errno. Never raises SIGPIPE. */
long pike_send(int fd, const char *buf, size_t len);

/*
 * The epoll poller's batched iteration (csrc/pike_batch.c; Linux only,
 * elsewhere it returns -ENOSYS). Collects the events ready now, without
 * waiting, at most max_events of them (at most 65535) into event_space
 * (max_events times pike_epoll_event_size() bytes); then, for each event that has one
 * of the read_events bits, receives for its fd up to receive_sizes[fd]
 * bytes when that is > 0 (fds beyond receive_sizes_len count as 0): up to
 * what the arena has left, when that is less, as long as it is at least
 * 64 KiB (below that, no receive is made). Each event becomes a record:
 *   - in data_records, two longs for bytes received: the fd, and the
 *     arena offset where they end (they start where the previous record's
 *     end, the first at 0);
 *   - in other_records, three longs for everything else: the fd, the event bits, and
 *     the receive's result (0 at EOF, -errno, or PIKE_NOT_RECEIVED when
 *     no receive was made). An event with bytes received and write bits
 *     too is in both lists, its read bits cleared in other_records.
 * Returns (data count << 16) | other count, or -errno when epoll_wait
 * failed.
 */
#define PIKE_NOT_RECEIVED (-1000000L)

size_t pike_epoll_event_size(void);

long pike_epoll_batch(int epfd, void *event_space, int max_events,
                      const long *receive_sizes, long receive_sizes_len,
                      unsigned int read_events, char *arena, long arena_size,
                      long *data_records, long *other_records);

#endif
