/* pike._pike_accel: the module that holds the C primitives (pike_accel.h). */
#include "pike_accel.h"

#define FASTCALL(f) ((PyCFunction)(void (*)(void))(f)), METH_FASTCALL

static PyMethodDef accel_methods[] = {
    {"send_now", FASTCALL(pike_send_now),
     "send_now(sock, data) -> int: socket.socket.send on a non-blocking "
     "socket, in C, keeping the GIL; but 0 when it would block."},
    {"send_rest", FASTCALL(pike_send_rest),
     "send_rest(sock, data) -> int: as send_now(), but the count of bytes "
     "not sent (all of them when it would block)."},
#ifdef PIKE_HAVE_EPOLL
    {"epoll_collect", FASTCALL(pike_epoll_collect),
     "epoll_collect(epfd, receive_sizes, read_events) -> None or "
     "(data_records, other_records): the events ready now, with the reads "
     "made for them (see csrc/pike_batch.c)."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    "pike._pike_accel",
    "pike's C accelerator: the primitives beneath Transport on the C path.",
    -1,
    accel_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pike_accel(void)
{
    PyObject *module;

    if (pike_send_init() < 0)
        return NULL;
    module = PyModule_Create(&accel_module);
    if (module == NULL)
        return NULL;
#ifdef PIKE_HAVE_EPOLL
    if (pike_batch_init(module) < 0) {
        Py_DECREF(module);
        return NULL;
    }
#endif
    return module;
}
