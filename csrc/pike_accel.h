/*
 * pike's C accelerator: the primitives beneath Transport's logic on the C
 * path, as one CPython extension module, pike._pike_accel.
 *
 * Nothing here decides anything for a Transport: each function is a
 * system-call step that the pure path makes through Python's own socket
 * and select modules, done without the Python-level objects, exceptions
 * and calls that the pure path pays for. Every function keeps the GIL:
 * none can block (sockets are non-blocking and MSG_DONTWAIT is passed as
 * well; the epoll collect never waits), and releasing and retaking the GIL
 * costs more than a non-blocking call's own work.
 *
 * Built against CPython's limited API (3.12) where the interpreter has it,
 * else against the full API of the interpreter at hand: the code is the
 * same for both (see setup.py).
 */
#ifndef PIKE_ACCEL_H
#define PIKE_ACCEL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Filling a new tuple or list, and reading a list, per event: the full
 * API's unchecked macros where the build has them (the limited API has
 * only the checked calls, ~15 instructions more each). Arguments are
 * known good: a fresh tuple or list, an index in range. */
#ifdef Py_LIMITED_API
#define PIKE_TUPLE_FILL(tuple, i, item) PyTuple_SetItem((tuple), (i), (item))
#define PIKE_LIST_FILL(list, i, item) PyList_SetItem((list), (i), (item))
#define PIKE_LIST_ITEM(list, i) PyList_GetItem((list), (i))
#else
#define PIKE_TUPLE_FILL(tuple, i, item) PyTuple_SET_ITEM((tuple), (i), (item))
#define PIKE_LIST_FILL(list, i, item) PyList_SET_ITEM((list), (i), (item))
#define PIKE_LIST_ITEM(list, i) PyList_GET_ITEM((list), (i))
#endif

/* pike_send.c: send_now(sock, data) and send_rest(sock, data). */
PyObject *pike_send_now(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *pike_send_rest(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int pike_send_init(void);

/* pike_batch.c: epoll_collect(epfd, receive_sizes, read_events); Linux. */
#ifdef __linux__
#define PIKE_HAVE_EPOLL 1
PyObject *pike_epoll_collect(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int pike_batch_init(PyObject *module);
#endif

#endif
