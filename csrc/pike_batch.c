/*
 * The epoll poller's batched iteration (Linux): one call collects the
 * events ready now and receives for every ready channel that asked the
 * poller to receive for it.
 *
 * epoll_collect(epfd, receive_sizes, read_events) never waits: when
 * nothing is ready the poller waits in Python's own epoll.poll, where a
 * signal ends the wait and its Python handler runs. It returns None when
 * no event is ready, else (data_records, other_records), each None when
 * empty, else a list of tuples, one per event:
 *
 *   data_records:  (fd, bytes)          -- bytes received;
 *   other_records: (fd, bits, result)   -- everything else: the receive's
 *                  result is 0 at EOF, -errno when it failed, or
 *                  NOT_RECEIVED when no receive was made. An event with
 *                  bytes received and other bits too (a write) is in both
 *                  lists, its read bits cleared in other_records.
 *
 * (Tuples, not one flat list: the dispatch unpacks them in a plain for
 * loop, where pairing a flat list up costs a zip object per iteration,
 * about 1,400 instructions.)
 *
 * receive_sizes is a list indexed by fd: how many bytes to receive for
 * that fd when it is readable (0, or an fd beyond the list: none). The
 * reads of one call take at most RECEIVE_BUDGET bytes in all; a read that
 * cannot get its whole size gets what is left, if that is at least
 * MIN_RECEIVE, else no read is made for it (the channel receives itself).
 */
#define _GNU_SOURCE
#include "pike_accel.h"

#ifdef PIKE_HAVE_EPOLL /* (the whole file) */
#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

#define MAX_EVENTS 1024
/* Every bytes object a collect makes is alive at once, until the dispatch
 * has handed it on. With 1 MiB a call, ten streaming connections made
 * glibc grow the heap and trim it again on every iteration (a brk call
 * per two reads, and fresh pages to fault in): 128 KiB stays below its
 * trim threshold. Channels beyond the budget receive for themselves, one
 * at a time, in the dispatch. */
#define RECEIVE_BUDGET (128L * 1024L)
#define MIN_RECEIVE (16L * 1024L)
#define NOT_RECEIVED (-1000000L)

/* Where a short read lands before it is copied into its bytes object.
 * Nothing runs Python code between a read and that copy, so one buffer
 * serves every poller, even a collect made re-entrantly from a finalizer. */
static char receive_buffer[RECEIVE_BUDGET];

/* A read that returned at least LARGE_READ bytes marks its fd as a
 * streaming one: the fd's next read goes straight into a bytes object of
 * the full size, which a stream fills with no copy at all (copying 64 KiB
 * out of receive_buffer cost ~2 us, as much as the recv). A read that
 * comes back short of LARGE_READ clears the mark: for small messages the
 * shared buffer and a copy are cheaper than allocating the full size.
 * Indexed by fd, below STREAM_MARKS (fds above it always take the copy);
 * a mark left by a closed fd costs its successor one allocation. */
#define LARGE_READ (32L * 1024L)
#define STREAM_MARKS 65536
static unsigned char streaming[STREAM_MARKS];

int pike_batch_init(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "NOT_RECEIVED", NOT_RECEIVED) < 0
        || PyModule_AddIntConstant(module, "RECEIVE_BUDGET", RECEIVE_BUDGET) < 0
        || PyModule_AddIntConstant(module, "MIN_RECEIVE", MIN_RECEIVE) < 0)
        return -1;
    return 0;
}

/* A new reference to None (Py_NewRef is 3.10 and later). */
static PyObject *none(void)
{
    Py_INCREF(Py_None);
    return Py_None;
}

/* A list of records, filled in place: the list is made, at its
 * largest size, on the first record, and cut to what was filled at the end
 * (cheaper than growing it record by record). */
typedef struct {
    PyObject *list;
    Py_ssize_t filled;
} records;

static int start_records(records *r, Py_ssize_t largest)
{
    if (r->list == NULL && (r->list = PyList_New(largest)) == NULL)
        return -1;
    return 0;
}

/* Steals item (which may be NULL: the call then fails). */
static int put(records *r, PyObject *item)
{
    if (item == NULL)
        return -1;
    PIKE_LIST_FILL(r->list, r->filled++, item);
    return 0;
}

/* A tuple of the n items; steals them all, any of which may be NULL (a
 * failed call: then NULL, with the exception set). */
static PyObject *pack(Py_ssize_t n, PyObject *items[])
{
    PyObject *tuple;
    Py_ssize_t i;

    for (i = 0; i < n; i++)
        if (items[i] == NULL)
            goto fail;
    tuple = PyTuple_New(n);
    if (tuple == NULL)
        goto fail;
    for (i = 0; i < n; i++)
        PIKE_TUPLE_FILL(tuple, i, items[i]);
    return tuple;

fail:
    for (i = 0; i < n; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

static PyObject *pair(PyObject *first, PyObject *second)
{
    PyObject *items[2] = {first, second};

    return pack(2, items);
}

/* (fd, bits, result), built directly: Py_BuildValue would parse its
 * format for every event of a channel that reads for itself. */
static PyObject *record3(int fd, unsigned int bits, long result)
{
    PyObject *items[3] = {PyLong_FromLong(fd), PyLong_FromUnsignedLong(bits),
                          PyLong_FromLong(result)};

    return pack(3, items);
}

/* The list, cut to its records; None when there were none. */
static PyObject *finish_records(records *r)
{
    if (r->list == NULL)
        return none();
    if (r->filled < PyList_Size(r->list)
        && PyList_SetSlice(r->list, r->filled, PyList_Size(r->list), NULL) < 0) {
        Py_CLEAR(r->list);
        return NULL;
    }
    return r->list;
}

/* How many bytes to receive for fd (0: none), or -1 with an exception. */
static long receive_size(PyObject *receive_sizes, Py_ssize_t known, int fd)
{
    long size;

    if (fd < 0 || fd >= known)
        return 0;
    size = PyLong_AsLong(PIKE_LIST_ITEM(receive_sizes, fd));
    if (size == -1 && PyErr_Occurred())
        return -1;
    return size > 0 ? size : 0;
}

#define NO_MEMORY (NOT_RECEIVED - 1)

/* One read of at most want bytes from fd: the count received, with *data
 * a new bytes object holding them; 0 at EOF; -errno when it failed; or
 * NO_MEMORY with an exception set, when the bytes object could not be made
 * (the process is out of memory: bytes already read are lost with it). */
static long receive(int fd, long want, PyObject **data)
{
    int marked = fd < STREAM_MARKS && streaming[fd];
    PyObject *whole = NULL;
    char *into = receive_buffer;
    ssize_t got;

    if (marked && want >= LARGE_READ) {
        whole = PyBytes_FromStringAndSize(NULL, want);
        if (whole == NULL)
            return NO_MEMORY;
        into = PyBytes_AsString(whole);
    }
    do {
        got = recv(fd, into, (size_t)want, MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        int failed = errno;

        Py_XDECREF(whole);
        return -(long)failed;
    }
    if (fd < STREAM_MARKS)
        streaming[fd] = got >= LARGE_READ;
    if (got == 0) {
        Py_XDECREF(whole);
        return 0;
    }
    if (whole != NULL && got == want) {
        *data = whole; /* the stream's case: no copy */
        return (long)got;
    }
    /* Short: copy what came into a bytes object of its size (the limited
     * API has no way to shrink one). */
    *data = PyBytes_FromStringAndSize(into, got);
    Py_XDECREF(whole);
    return *data == NULL ? NO_MEMORY : (long)got;
}

PyObject *pike_epoll_collect(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    struct epoll_event events[MAX_EVENTS]; /* on the stack: re-entrant */
    PyObject *receive_sizes, *received, *others;
    records data_records = {NULL, 0}, other_records = {NULL, 0};
    Py_ssize_t known;
    unsigned long read_events;
    long budget = RECEIVE_BUDGET;
    int epfd, n, i;

    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError,
                     "epoll_collect() takes 3 arguments (epfd, receive_sizes, "
                     "read_events), got %zd", nargs);
        return NULL;
    }
    epfd = (int)PyLong_AsLong(args[0]);
    if (epfd == -1 && PyErr_Occurred())
        return NULL;
    receive_sizes = args[1];
    if (!PyList_Check(receive_sizes)) {
        PyErr_SetString(PyExc_TypeError, "receive_sizes must be a list");
        return NULL;
    }
    known = PyList_Size(receive_sizes);
    read_events = PyLong_AsUnsignedLong(args[2]);
    if (read_events == (unsigned long)-1 && PyErr_Occurred())
        return NULL;

    n = epoll_wait(epfd, events, MAX_EVENTS, 0); /* no timeout: never blocks */
    if (n < 0) {
        if (errno == EINTR) /* as epoll.poll: run the handlers, report nothing */
            return PyErr_CheckSignals() < 0 ? NULL : none();
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (n == 0)
        Py_RETURN_NONE;

    for (i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        unsigned int bits = events[i].events;
        long outcome = NOT_RECEIVED, asked = 0, want;
        PyObject *data = NULL;

        if (bits & read_events) {
            asked = receive_size(receive_sizes, known, fd);
            if (asked < 0)
                goto fail;
        }
        want = asked < budget ? asked : budget;
        if (want >= MIN_RECEIVE || (want > 0 && want == asked)) {
            outcome = receive(fd, want, &data);
            if (outcome == NO_MEMORY)
                goto fail;
        }
        if (outcome > 0) {
            if (start_records(&data_records, n - i) < 0
                || put(&data_records, pair(PyLong_FromLong(fd), data)) < 0)
                goto fail;
            budget -= outcome;
            bits &= ~(unsigned int)read_events; /* what else happened? */
            if (bits == 0)
                continue;
            outcome = NOT_RECEIVED;
        }
        if (start_records(&other_records, n - i) < 0
            || put(&other_records, record3(fd, bits, outcome)) < 0)
            goto fail;
    }
    received = finish_records(&data_records);
    if (received == NULL)
        goto fail;
    others = finish_records(&other_records);
    if (others == NULL) {
        Py_DECREF(received);
        return NULL;
    }
    return pair(received, others);

fail:
    Py_XDECREF(data_records.list);
    Py_XDECREF(other_records.list);
    return NULL;
}

#endif /* PIKE_HAVE_EPOLL */
