/*
 * echo_ref: reference echo server for pike's benchmark.
 *
 * A single-threaded, level-triggered epoll echo server: the yardstick for
 * what the kernel allows, against which the Python servers are compared.
 *
 *   echo_ref [--host 127.0.0.1] [--port 0] [--unix PATH] [--backlog N]
 *            [--file PATH]
 *
 * Once listening it prints one line on stdout, the bound TCP port (or the
 * socket path with --unix), flushes, and serves until SIGTERM or SIGINT,
 * then exits 0. Errors go to stderr; a bad command line exits 2, a failure
 * to set up the listening socket exits 1.
 *
 * Data path: every readable connection gets one recv() into a shared
 * buffer, immediately sent back. Whatever the socket does not take is
 * copied into a per-connection pending buffer and the connection switches
 * from EPOLLIN to EPOLLOUT until the rest is sent: no data is ever dropped,
 * and a client that does not read cannot make the server buffer more than
 * one recv() worth of its data. EOF or an error closes the connection.
 *
 * With --file PATH it serves a file instead of echoing: every accepted
 * connection gets the whole file by sendfile(2) (each connection at its
 * own offset of one shared descriptor), then a shutdown of the sending
 * side; whatever the client sends is read and dropped until its EOF, which
 * closes the connection. The file's size is taken once, at start.
 *
 * Linux only (epoll, accept4, signalfd).
 */
#define _GNU_SOURCE

#ifndef __linux__
#error "echo_ref needs Linux (epoll, accept4, signalfd)"
#endif

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define RECV_SIZE (64 * 1024)
#define MAX_EVENTS 512

struct conn {
    int fd;
    char *pend;          /* bytes received but not yet sent back, or NULL */
    size_t pend_off;     /* first unsent byte in pend */
    size_t pend_len;     /* bytes in pend */
    off_t file_off;      /* --file: next byte of the file to send */
    int file_done;       /* --file: all sent and our side shut down */
};

static int epfd = -1;
static int listen_fd = -1;
static int listen_is_tcp;
static int listen_paused;    /* listener left out of epoll after EMFILE */
static char recv_buf[RECV_SIZE];
static int file_fd = -1;     /* --file: the file every connection gets */
static off_t file_size;

/* Addresses of these two tag the listener and the signalfd in epoll data. */
static char listen_tag;
static char signal_tag;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: echo_ref [--host ADDR] [--port PORT] [--unix PATH] [--backlog N]\n"
            "\n"
            "Level-triggered epoll echo server. Prints the bound port (or the\n"
            "unix socket path) on one line, then serves until SIGTERM/SIGINT.\n"
            "\n"
            "  --host ADDR    address to bind (default 127.0.0.1)\n"
            "  --port PORT    TCP port, 0 for an ephemeral one (default 0)\n"
            "  --unix PATH    listen on a unix stream socket instead of TCP\n"
            "  --backlog N    listen backlog (default 4096)\n"
            "  --file PATH    send this file to every connection instead of echoing\n");
}

static int parse_long(const char *text, long lo, long hi, long *out)
{
    char *end;
    long value;

    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || value < lo || value > hi)
        return -1;
    *out = value;
    return 0;
}

/* Lets the server keep as many connections as the hard limit allows. */
static void raise_nofile_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int listener_add(void)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = &listen_tag;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, listen_fd, &ev);
}

static void conn_close(struct conn *c)
{
    /* Closing the only descriptor also removes it from the epoll set. */
    close(c->fd);
    free(c->pend);
    free(c);
    if (listen_paused && listener_add() == 0)
        listen_paused = 0;
}

static int conn_watch(struct conn *c, uint32_t events)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.ptr = c;
    return epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Sends buf[*off..len); returns 0 when done or the socket is full, -1 on error. */
static int send_some(int fd, const char *buf, size_t len, size_t *off)
{
    while (*off < len) {
        ssize_t n = send(fd, buf + *off, len - *off, MSG_NOSIGNAL);
        if (n > 0) {
            *off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            return -1;
        }
    }
    return 0;
}

static void on_readable(struct conn *c)
{
    ssize_t n;
    size_t off = 0;

    n = recv(c->fd, recv_buf, sizeof recv_buf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_close(c);
        return;
    }
    if (n == 0) {   /* EOF: nothing is pending while we are reading */
        conn_close(c);
        return;
    }
    if (send_some(c->fd, recv_buf, (size_t)n, &off) < 0) {
        conn_close(c);
        return;
    }
    if (off == (size_t)n)
        return;
    /* Partial send: keep the rest, stop reading, wait for writability. */
    c->pend_len = (size_t)n - off;
    c->pend_off = 0;
    c->pend = malloc(c->pend_len);
    if (c->pend == NULL) {
        fprintf(stderr, "echo_ref: out of memory\n");
        conn_close(c);
        return;
    }
    memcpy(c->pend, recv_buf + off, c->pend_len);
    if (conn_watch(c, EPOLLOUT) < 0)
        conn_close(c);
}

static void on_writable(struct conn *c)
{
    if (send_some(c->fd, c->pend, c->pend_len, &c->pend_off) < 0) {
        conn_close(c);
        return;
    }
    if (c->pend_off < c->pend_len)
        return;
    free(c->pend);
    c->pend = NULL;
    c->pend_off = c->pend_len = 0;
    if (conn_watch(c, EPOLLIN) < 0)
        conn_close(c);
}

/* --file: send what the socket takes of the rest of the file; when all is
 * sent, shut our side down and wait for the client's EOF. */
static void file_send_some(struct conn *c)
{
    while (c->file_off < file_size) {
        ssize_t n = sendfile(c->fd, file_fd, &c->file_off, (size_t)(file_size - c->file_off));
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;     /* still watching EPOLLOUT */
        conn_close(c);  /* an error, or the file shrank under us */
        return;
    }
    shutdown(c->fd, SHUT_WR);
    c->file_done = 1;
    if (conn_watch(c, EPOLLIN) < 0)
        conn_close(c);
}

/* --file: the client sent something, or its EOF: drop it, close on EOF. */
static void file_drain(struct conn *c)
{
    ssize_t n = recv(c->fd, recv_buf, sizeof recv_buf, 0);

    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        conn_close(c);
}

static void accept_all(void)
{
    static int warned;

    for (;;) {
        struct conn *c;
        struct epoll_event ev;
        int one = 1;
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop polling the listener (level
                 * triggered, it would spin) until a connection closes. */
                if (!warned) {
                    fprintf(stderr, "echo_ref: accept4: %s (pausing accepts)\n", strerror(errno));
                    warned = 1;
                }
                if (epoll_ctl(epfd, EPOLL_CTL_DEL, listen_fd, NULL) == 0)
                    listen_paused = 1;
                return;
            }
            fprintf(stderr, "echo_ref: accept4: %s\n", strerror(errno));
            return;
        }
        if (listen_is_tcp)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c = calloc(1, sizeof *c);
        if (c == NULL) {
            fprintf(stderr, "echo_ref: out of memory\n");
            close(fd);
            return;
        }
        c->fd = fd;
        memset(&ev, 0, sizeof ev);
        ev.events = file_fd >= 0 ? EPOLLOUT : EPOLLIN;
        ev.data.ptr = c;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            fprintf(stderr, "echo_ref: epoll_ctl: %s\n", strerror(errno));
            close(fd);
            free(c);
        }
    }
}

static int listen_tcp(const char *host, const char *port, int backlog)
{
    struct addrinfo hints, *res, *ai;
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    int err, fd = -1, one = 1;
    unsigned port_out;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    err = getaddrinfo(host, port, &hints, &res);
    if (err != 0) {
        fprintf(stderr, "echo_ref: %s: %s\n", host, gai_strerror(err));
        return -1;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
        errno = err;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "echo_ref: cannot listen on %s port %s: %s\n", host, port, strerror(errno));
        return -1;
    }
    if (getsockname(fd, (struct sockaddr *)&bound, &bound_len) < 0) {
        fprintf(stderr, "echo_ref: getsockname: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    if (bound.ss_family == AF_INET6)
        port_out = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
    else
        port_out = ntohs(((struct sockaddr_in *)&bound)->sin_port);
    listen_is_tcp = 1;
    printf("%u\n", port_out);
    fflush(stdout);
    return fd;
}

static int listen_unix(const char *path, int backlog)
{
    struct sockaddr_un sun;
    struct stat st;
    int fd;

    if (strlen(path) >= sizeof sun.sun_path) {
        fprintf(stderr, "echo_ref: unix socket path too long: %s\n", path);
        return -1;
    }
    /* Replace a stale socket left by an earlier run, nothing else. */
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "echo_ref: socket: %s\n", strerror(errno));
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(fd, backlog) < 0) {
        fprintf(stderr, "echo_ref: cannot listen on %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    printf("%s\n", path);
    fflush(stdout);
    return fd;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    const char *unix_path = NULL;
    char port_text[16] = "0";
    long backlog = 4096;
    struct epoll_event events[MAX_EVENTS], ev;
    sigset_t mask;
    int sfd, i, stop = 0;

    for (i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *val = NULL;
        long num;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(arg, "--host") == 0 || strcmp(arg, "--port") == 0 ||
            strcmp(arg, "--unix") == 0 || strcmp(arg, "--backlog") == 0 ||
            strcmp(arg, "--file") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "echo_ref: %s needs a value\n", arg);
                return 2;
            }
            val = argv[++i];
        } else {
            fprintf(stderr, "echo_ref: unknown argument: %s\n", arg);
            usage(stderr);
            return 2;
        }
        if (strcmp(arg, "--host") == 0) {
            host = val;
        } else if (strcmp(arg, "--file") == 0) {
            struct stat st;

            file_fd = open(val, O_RDONLY | O_CLOEXEC);
            if (file_fd < 0 || fstat(file_fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                fprintf(stderr, "echo_ref: --file %s: %s\n", val,
                        file_fd < 0 ? strerror(errno) : "not a regular file");
                return 2;
            }
            file_size = st.st_size;
        } else if (strcmp(arg, "--unix") == 0) {
            unix_path = val;
        } else if (strcmp(arg, "--port") == 0) {
            if (parse_long(val, 0, 65535, &num) < 0) {
                fprintf(stderr, "echo_ref: bad port: %s\n", val);
                return 2;
            }
            snprintf(port_text, sizeof port_text, "%ld", num);
        } else {
            if (parse_long(val, 1, 1 << 20, &num) < 0) {
                fprintf(stderr, "echo_ref: bad backlog: %s\n", val);
                return 2;
            }
            backlog = num;
        }
    }

    /* SIGTERM/SIGINT arrive through a signalfd polled with the sockets, so
     * there is no race between checking a flag and blocking in epoll. */
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
        fprintf(stderr, "echo_ref: sigprocmask: %s\n", strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile_limit();

    sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (sfd < 0 || epfd < 0) {
        fprintf(stderr, "echo_ref: signalfd/epoll_create1: %s\n", strerror(errno));
        return 1;
    }
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.ptr = &signal_tag;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev) < 0) {
        fprintf(stderr, "echo_ref: epoll_ctl: %s\n", strerror(errno));
        return 1;
    }

    listen_fd = unix_path ? listen_unix(unix_path, (int)backlog)
                          : listen_tcp(host, port_text, (int)backlog);
    if (listen_fd < 0)
        return 1;
    if (listener_add() < 0) {
        fprintf(stderr, "echo_ref: epoll_ctl: %s\n", strerror(errno));
        return 1;
    }

    while (!stop) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "echo_ref: epoll_wait: %s\n", strerror(errno));
            return 1;
        }
        for (i = 0; i < n; i++) {
            void *tag = events[i].data.ptr;
            struct conn *c;

            if (tag == &listen_tag) {
                accept_all();
            } else if (tag == &signal_tag) {
                struct signalfd_siginfo info;
                while (read(sfd, &info, sizeof info) == (ssize_t)sizeof info)
                    stop = 1;
            } else {
                /* Each connection waits for exactly one thing: input when
                 * nothing is pending, writability while something is. Any
                 * event (including EPOLLERR/EPOLLHUP) retries that, and the
                 * syscall reports EOF or the error. */
                c = tag;
                if (file_fd >= 0 && c->file_done)
                    file_drain(c);
                else if (file_fd >= 0)
                    file_send_some(c);
                else if (c->pend != NULL)
                    on_writable(c);
                else
                    on_readable(c);
            }
        }
    }

    close(listen_fd);
    if (unix_path != NULL)
        unlink(unix_path);
    return 0;
}
