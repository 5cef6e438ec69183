/*
 * The epoll poller's batched iteration: one call waits for events and
 * receives for every ready channel that asked the poller to receive for it.
 *
 * This file includes Python.h for one reason: a wait that blocks must let
 * other threads run, so it releases the GIL around a blocking epoll_wait
 * (PyEval_SaveThread / PyEval_RestoreThread, both in the limited API), as
 * Python's own select.epoll.poll does. A signal that interrupts the wait
 * ends it with EINTR; Python runs the handler when the call returns (as
 * with epoll.poll, a signal that lands just before the wait begins is
 * handled when the wait ends). Nothing else here touches Python objects. See pike_accel.h for the
 * contract of pike_epoll_batch.
 */
#define _GNU_SOURCE
#include <Python.h>

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

long pike_epoll_batch(int epfd, int timeout_ms, void *event_space, int max_events,
                      const long *receive_sizes, long receive_sizes_len,
                      unsigned int read_events, char *arena, long arena_size,
                      long *data_records, long *other_records)
{
    struct epoll_event *events = event_space;
    long used = 0, n_data = 0, n_other = 0;
    int n, i;

    /* A busy loop finds events at once: ask without a timeout first, and
     * release the GIL only when the wait may really block. */
    n = epoll_wait(epfd, events, max_events, 0);
    if (n == 0 && timeout_ms != 0) {
        PyThreadState *state = PyEval_SaveThread();
        int wait_errno;

        n = epoll_wait(epfd, events, max_events, timeout_ms);
        wait_errno = errno; /* (taking the GIL back must not hide it) */
        PyEval_RestoreThread(state);
        errno = wait_errno;
    }
    if (n < 0)
        return -(long)errno; /* EINTR included: Python runs the signal handlers */

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

long pike_epoll_batch(int epfd, int timeout_ms, void *event_space, int max_events,
                      const long *receive_sizes, long receive_sizes_len,
                      unsigned int read_events, char *arena, long arena_size,
                      long *data_records, long *other_records)
{
    (void)epfd; (void)timeout_ms; (void)event_space; (void)max_events;
    (void)receive_sizes; (void)receive_sizes_len; (void)read_events;
    (void)arena; (void)arena_size; (void)data_records; (void)other_records;
    return -ENOSYS;
}

#endif
