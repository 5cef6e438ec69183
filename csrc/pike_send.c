/*
 * The sends beneath Transport.send and Transport.write on the C path.
 *
 * send_now(sock, data), beneath Transport.send, keeps socket.socket.send's
 * contract for a non-blocking socket -- the count of bytes sent, or an
 * OSError of the errno's own subclass -- except that it returns 0 where
 * socket.send raises BlockingIOError, which is what an asyncore-style
 * send() loop ends with every time.
 *
 * send_rest(sock, data), beneath Transport.write: the count of bytes of
 * data the kernel did not take (0 when it took them all, all of them when
 * it would block), or the OSError. Its usual result, 0, is a cached int,
 * where a count of bytes sent is a new one, and it spares write the len()
 * it would compare that count with.
 *
 * Both send on the fd the socket object holds at the time of the call
 * (its C-level fileno(), -1 once closed), never on a number remembered
 * earlier: a socket closed behind the transport fails with EBADF, as
 * socket.send does, instead of reaching whatever the kernel gave that
 * number to next.
 */
#define _GNU_SOURCE
#include "pike_accel.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: SO_NOSIGPIPE or an ignored SIGPIPE instead */
#endif

/* _socket.socket.fileno, unbound: it reads the C-level fd whatever a
 * subclass does to fileno(), as socket.socket.send itself does. */
static PyObject *socket_fileno;

int pike_send_init(void)
{
    PyObject *socket_module, *socket_type;

    socket_module = PyImport_ImportModule("_socket");
    if (socket_module == NULL)
        return -1;
    socket_type = PyObject_GetAttrString(socket_module, "socket");
    Py_DECREF(socket_module);
    if (socket_type == NULL)
        return -1;
    socket_fileno = PyObject_GetAttrString(socket_type, "fileno");
    Py_DECREF(socket_type);
    return socket_fileno == NULL ? -1 : 0;
}

/* The socket's fd now; -2 with an exception set when sock is no socket. */
static int current_fd(PyObject *sock)
{
    PyObject *result = PyObject_Vectorcall(socket_fileno, &sock, 1, NULL);
    long fd;

    if (result == NULL)
        return -2;
    fd = PyLong_AsLong(result);
    Py_DECREF(result);
    if (fd == -1 && PyErr_Occurred())
        return -2;
    return (int)fd;
}

/* What a send returns (see the top of this file). */
typedef enum { SENT, UNSENT } send_result;

static PyObject *send_common(PyObject *const *args, Py_ssize_t nargs,
                             const char *name, send_result returns)
{
    PyObject *result = NULL;
    Py_buffer view;
    Py_ssize_t length;
    ssize_t sent;
    int fd;

    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (sock, data), got %zd",
                     name, nargs);
        return NULL;
    }
    fd = current_fd(args[0]);
    if (fd == -2)
        return NULL;
    if (PyBytes_CheckExact(args[1])) {
        /* The common case, without the buffer protocol's bookkeeping. */
        char *start;

        if (PyBytes_AsStringAndSize(args[1], &start, &length) < 0)
            return NULL;
        view.obj = NULL;
        view.buf = start;
        view.len = length;
    } else if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    for (;;) {
        sent = send(fd, view.buf, (size_t)view.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent >= 0 || errno != EINTR)
            break;
        if (PyErr_CheckSignals() < 0) /* a handler raised: as socket.send */
            goto done;
    }
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        sent = 0; /* would block: 0 sent (so all of it left, for send_rest) */
    if (sent < 0)
        PyErr_SetFromErrno(PyExc_OSError);
    else
        result = PyLong_FromSsize_t(returns == UNSENT ? view.len - sent : sent);
done:
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    return result;
}

PyObject *pike_send_now(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return send_common(args, nargs, "send_now", SENT);
}

PyObject *pike_send_rest(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return send_common(args, nargs, "send_rest", UNSENT);
}
