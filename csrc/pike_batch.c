/*
 * The epoll poller's batched iteration: one call collects the ready events
 * and receives for every ready channel that asked the poller to receive
 * for it. It never blocks: when nothing is ready the poller waits in
 * Python's own epoll.poll, where a signal ends the wait and its Python
 * handler runs. (A blocking wait in here would widen the window in which a
 * signal that arrives just before the wait is noted but does not end it:
 * a server stopped by SIGTERM could sleep on.) See pike_accel.h for the
 * contract of pike_epoll_batch.
 */
#define _GNU_SOURCE
#include "pike_accel.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __linux__
#include <sys/epoll.h>

/* The least a receive into the arena asks for when the arena cannot hold
 * the channel's whole read size: a smaller read is left to the channel. */
#define PIKE_MIN_RECEIVE 65536L

size_t pike_epoll_event_size(void)
{
    return sizeof(struct epoll_event);
}

long pike_epoll_batch(int epfd, void *event_space, int max_events,
                      const long *receive_sizes, long receive_sizes_len,
                      unsigned int read_events, char *arena, long arena_size,
                      long *data_records, long *other_records)
{
    struct epoll_event *events = event_space;
    long used = 0, n_data = 0, n_other = 0;
    int n, i;

    n = epoll_wait(epfd, events, max_events, 0); /* no timeout: never blocks */
    if (n < 0)
        return -(long)errno;

    for (i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        unsigned int bits = events[i].events;
        long result = PIKE_NOT_RECEIVED;

        long want = (bits & read_events) && fd >= 0 && fd < receive_sizes_len
                    ? receive_sizes[fd] : 0;

        /* Up to what the arena has left; once less than PIKE_MIN_RECEIVE
         * is left (or asked for), the channel receives for itself. */
        if (want > arena_size - used)
            want = arena_size - used;
        if (want >= PIKE_MIN_RECEIVE || (want > 0 && want == receive_sizes[fd])) {
            ssize_t got;

            do {
                got = recv(fd, arena + used, (size_t)want, MSG_DONTWAIT);
            } while (got < 0 && errno == EINTR);
            result = got < 0 ? -(long)errno : (long)got;
        }
        if (result > 0) {
            long *record = data_records + 2 * n_data++;

            used += result;
            record[0] = fd;
            record[1] = used;
            bits &= ~read_events; /* the read is done: what else happened? */
            if (bits == 0)
                continue;
        }
        {
            long *record = other_records + 3 * n_other++;

            record[0] = fd;
            record[1] = (long)bits;
            record[2] = result > 0 ? PIKE_NOT_RECEIVED : result;
        }
    }
    return (n_data << 16) | n_other;
}

#else /* no epoll: the poller never calls these */

size_t pike_epoll_event_size(void)
{
    return 0;
}

long pike_epoll_batch(int epfd, void *event_space, int max_events,
                      const long *receive_sizes, long receive_sizes_len,
                      unsigned int read_events, char *arena, long arena_size,
                      long *data_records, long *other_records)
{
    (void)epfd; (void)event_space; (void)max_events;
    (void)receive_sizes; (void)receive_sizes_len; (void)read_events;
    (void)arena; (void)arena_size; (void)data_records; (void)other_records;
    return -ENOSYS;
}

#endif
