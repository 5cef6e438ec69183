/*
 * loadgen: load generator for pike's echo benchmark.
 *
 *   loadgen --port PORT [--host 127.0.0.1|::1] [--unix PATH]
 *           [--mode pingpong|stream] [--connections N] [--size BYTES]
 *           [--window BYTES] [--warmup SECONDS] [--duration SECONDS]
 *           [--idle N] [--timeout SECONDS] [--grace SECONDS]
 *           [--server-pid PID] [--line]
 *
 * Opens --idle idle connections first, then --connections active ones, and
 * drives the active ones from a single level-triggered epoll loop:
 *
 *   pingpong  each connection sends one message of --size bytes, waits for
 *             the whole echo, checks every byte, records the round-trip time
 *             (CLOCK_MONOTONIC) and sends the next message.
 *   stream    each connection writes --size byte chunks while fewer than
 *             --window bytes are unechoed, and checks the echoed stream byte
 *             for byte. "requests" is then echoed bytes / --size.
 *
 * Every connection carries its own deterministic byte stream (a fixed
 * pseudo-random table read from a per-connection offset), so lost,
 * duplicated, reordered, corrupted or cross-connection bytes are caught.
 *
 *   --line    (pingpong only) makes every message a line for line-based
 *             protocols: its last byte is '\n' and its other --size - 1
 *             bytes are the connection's pattern with every '\n' replaced
 *             by ' '. The echo is checked against exactly those bytes. The
 *             JSON then also has "line": true.
 *
 * Only --warmup seconds after the last connection is up does the measured
 * window of --duration seconds start. After it, no new data is sent, the
 * echoes in flight are awaited for a moment (verified too) and everything
 * is closed. The whole run is bounded: at most warmup + duration + grace
 * seconds (connecting and draining both come out of the grace).
 *
 * Output: one JSON line on stdout, also on a run-time failure (then with
 * "errors" > 0 and an "error" message). Exit status: 0 success; 1 run-time
 * failure (connection error, verification error, stall longer than
 * --timeout, connect timeout, nothing completed); 2 bad command line,
 * including any host other than 127.0.0.1 or ::1 (only loopback traffic is
 * allowed: such a host is refused before any socket is created).
 *
 * Linux only (epoll).
 */
#define _GNU_SOURCE

#ifndef __linux__
#error "loadgen needs Linux (epoll)"
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PAT_LEN (1u << 20)          /* period of the pattern table */
#define IO_MAX (256u * 1024)        /* largest single send/recv */
#define MAX_EVENTS 1024
#define CONNECT_BATCH 128           /* connects in flight at once */
#define STALL_CHECK_NS 100000000LL  /* how often stalls are looked for */
#define DRAIN_NS 500000000LL        /* longest wait for the last echoes */
#define NS 1000000000LL

/* Latency histogram: log-linear, 64 sub-buckets per power of two (values in
 * ns), so any recorded value is known to within 1/64 (~1.6%). */
#define HIST_SUB_BITS 6
#define HIST_SUB (1 << HIST_SUB_BITS)
#define HIST_MAX_SHIFT 36
#define HIST_BUCKETS ((HIST_MAX_SHIFT + 2) * HIST_SUB)

enum { MODE_PINGPONG, MODE_STREAM };
enum { PH_CONNECT, PH_WARMUP, PH_MEASURE, PH_DRAIN, PH_DONE };
enum { ST_NEW, ST_CONNECTING, ST_OPEN, ST_CLOSED };

struct conn {
    int fd;
    int state;
    int idle;
    uint32_t events;        /* epoll interest currently registered */
    uint64_t base;          /* table offset of stream byte 0 */
    uint64_t sent;          /* stream bytes sent */
    uint64_t rcvd;          /* stream bytes echoed and verified */
    uint64_t target;        /* pingpong: stream end of the current message */
    int64_t t_send;         /* pingpong: when the current message started */
    int64_t t_progress;     /* last echo received, or when data went out */
};

struct options {
    const char *host;
    const char *unix_path;
    long port;
    int mode;
    long connections;
    long idle;
    long size;
    long window;
    double warmup;
    double duration;
    double timeout;
    double grace;
    long server_pid;
    int line;
};

static struct options opt;
static struct conn *conns;
static long total_conns;
static unsigned char *pattern;       /* PAT_LEN + IO_MAX bytes */
static unsigned char *line_pattern;  /* --line: pattern without '\n' */
static unsigned char recv_buf[IO_MAX];
static unsigned char line_buf[IO_MAX];   /* --line: bytes to send / expected */
static int epfd = -1;
static int phase = PH_CONNECT;
static struct sockaddr_storage peer;
static socklen_t peer_len;
static int peer_is_tcp;
static long open_active;              /* active connections not yet closed */

/* counters of the measured window */
static uint64_t requests;
static uint64_t bytes_echoed;
static uint64_t hist[HIST_BUCKETS];
static uint64_t lat_count;
static double lat_sum_ns;
static int64_t lat_max_ns;
static int64_t t_measure_begin, t_measure_end;   /* actual */
static double cpu_begin, cpu_end;
static double srv_cpu_begin = -1, srv_cpu_end = -1;

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static double self_cpu_seconds(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* utime + stime of a process from /proc/<pid>/stat, or -1. */
static double proc_cpu_seconds(long pid)
{
    char path[64], text[1024];
    unsigned long long utime, stime;
    const char *p;
    FILE *f;
    size_t n;
    int field;

    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    /* The command name (field 2) may contain anything: skip to its last ')'. */
    p = strrchr(text, ')');
    if (p == NULL)
        return -1;
    p++;
    /* Fields 3..13 come before utime (14) and stime (15). */
    for (field = 3; field <= 13; field++) {
        while (*p == ' ')
            p++;
        while (*p && *p != ' ')
            p++;
    }
    if (sscanf(p, " %llu %llu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

/* ---- latency histogram ---- */

static int hist_index(int64_t v)
{
    int e, shift;

    if (v < 0)
        v = 0;
    if (v < 2 * HIST_SUB)
        return (int)v;
    e = 63 - __builtin_clzll((unsigned long long)v);
    shift = e - HIST_SUB_BITS;
    if (shift > HIST_MAX_SHIFT)
        return HIST_BUCKETS - 1;
    return shift * HIST_SUB + (int)(v >> shift);
}

/* Midpoint of a bucket, in ns. */
static double hist_value(int idx)
{
    int shift;
    uint64_t top;

    if (idx < 2 * HIST_SUB)
        return idx;
    shift = (idx >> HIST_SUB_BITS) - 1;
    top = (uint64_t)(idx - shift * HIST_SUB);
    return (double)(top << shift) + (double)(1ULL << shift) / 2.0;
}

static void hist_add(int64_t v)
{
    hist[hist_index(v)]++;
    lat_count++;
    lat_sum_ns += (double)v;
    if (v > lat_max_ns)
        lat_max_ns = v;
}

/* The q-quantile in microseconds (0 when nothing was recorded). */
static double hist_quantile_us(double q)
{
    uint64_t rank, seen = 0;
    double v;
    int i;

    if (lat_count == 0)
        return 0.0;
    rank = (uint64_t)(q * (double)lat_count);
    if ((double)rank < q * (double)lat_count)
        rank++;   /* ceil, without libm */
    if (rank < 1)
        rank = 1;
    for (i = 0; i < HIST_BUCKETS; i++) {
        seen += hist[i];
        if (seen >= rank)
            break;
    }
    v = hist_value(i);
    if (v > (double)lat_max_ns)
        v = (double)lat_max_ns;
    return v / 1000.0;
}

/* ---- output ---- */

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20)
            printf("\\u%04x", ch);
        else
            putchar(ch);
    }
    putchar('"');
}

static void report(const char *error)
{
    int64_t end = t_measure_end ? t_measure_end : (t_measure_begin ? now_ns() : 0);
    double seconds = t_measure_begin ? (double)(end - t_measure_begin) / 1e9 : 0.0;
    double cpu = t_measure_begin ? (t_measure_end ? cpu_end : self_cpu_seconds()) - cpu_begin : 0.0;
    double rps, mibs;
    uint64_t reqs = requests;

    if (opt.mode == MODE_STREAM && opt.size > 0)
        reqs = bytes_echoed / (uint64_t)opt.size;
    rps = seconds > 0 ? (double)reqs / seconds : 0.0;
    mibs = seconds > 0 ? (double)bytes_echoed / seconds / 1048576.0 : 0.0;

    printf("{\"requests\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"seconds\": %.6f"
           ", \"rps\": %.3f, \"mib_per_s\": %.3f"
           ", \"p50_us\": %.3f, \"p90_us\": %.3f, \"p99_us\": %.3f, \"p999_us\": %.3f"
           ", \"max_us\": %.3f, \"mean_us\": %.3f"
           ", \"errors\": %d, \"loadgen_cpu_s\": %.6f",
           reqs, bytes_echoed, seconds, rps, mibs,
           hist_quantile_us(0.50), hist_quantile_us(0.90), hist_quantile_us(0.99),
           hist_quantile_us(0.999), (double)lat_max_ns / 1000.0,
           lat_count ? lat_sum_ns / (double)lat_count / 1000.0 : 0.0,
           error ? 1 : 0, cpu);
    if (opt.server_pid > 0) {
        if (srv_cpu_begin >= 0 && srv_cpu_end >= 0)
            printf(", \"server_cpu_s\": %.6f", srv_cpu_end - srv_cpu_begin);
        else
            printf(", \"server_cpu_s\": null");
    }
    printf(", \"connections\": %ld, \"idle\": %ld, \"size\": %ld, \"window\": %ld, \"mode\": ",
           opt.connections, opt.idle, opt.size,
           opt.mode == MODE_STREAM ? opt.window : 0L);
    json_string(opt.mode == MODE_STREAM ? "stream" : "pingpong");
    if (opt.line)
        printf(", \"line\": true");
    if (error) {
        printf(", \"error\": ");
        json_string(error);
    }
    printf("}\n");
    fflush(stdout);
}

/* Run-time failure: report it (stderr and JSON) and exit 1. */
static void fail(const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "loadgen: %s\n", msg);
    if (t_measure_begin && !t_measure_end) {
        t_measure_end = now_ns();
        cpu_end = self_cpu_seconds();
    }
    report(msg);
    exit(1);
}

/* ---- connections ---- */

static long conn_id(const struct conn *c)
{
    return (long)(c - conns);
}

static void watch(struct conn *c, uint32_t events)
{
    struct epoll_event ev;

    if (c->events == events)
        return;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = (uint64_t)conn_id(c);
    if (epoll_ctl(epfd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) < 0)
        fail("epoll_ctl: %s", strerror(errno));
    c->events = events;
}

static void conn_close(struct conn *c)
{
    if (c->state == ST_CLOSED)
        return;
    close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
    c->events = 0;
    if (!c->idle)
        open_active--;
}

/* --line: the `len` (<= IO_MAX) stream bytes of `c` from stream offset
 * `off`, into line_buf: the '\n'-free pattern, with '\n' as the last byte
 * of every --size byte message. */
static const unsigned char *line_bytes(const struct conn *c, uint64_t off, size_t len)
{
    uint64_t size = (uint64_t)opt.size;
    uint64_t end = off + len;
    uint64_t nl;

    memcpy(line_buf, line_pattern + (c->base + off) % PAT_LEN, len);
    /* first message end at or after off: the byte at k * size - 1 */
    nl = (off / size + 1) * size - 1;
    for (; nl < end; nl += size)
        line_buf[nl - off] = '\n';
    return line_buf;
}

/* The `len` (<= IO_MAX) bytes connection `c` sends from stream offset `off`. */
static const unsigned char *stream_bytes(const struct conn *c, uint64_t off, size_t len)
{
    if (opt.line)
        return line_bytes(c, off, len);
    return pattern + (c->base + off) % PAT_LEN;
}

/* Sends pattern bytes up to stream offset `limit`, in chunks of at most
 * `chunk`; waits for EPOLLOUT if the socket fills up. */
static void pump(struct conn *c, uint64_t limit, size_t chunk)
{
    if (c->sent == c->rcvd && c->sent < limit)
        c->t_progress = now_ns();   /* the stall clock starts with new data */
    while (c->sent < limit) {
        uint64_t len = limit - c->sent;
        ssize_t n;

        if (len > chunk)
            len = chunk;
        n = send(c->fd, stream_bytes(c, c->sent, (size_t)len), (size_t)len, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (uint64_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            watch(c, EPOLLIN | EPOLLOUT);
            return;
        } else {
            fail("connection %ld: send: %s", conn_id(c), n < 0 ? strerror(errno) : "sent nothing");
        }
    }
    watch(c, EPOLLIN);
}

static size_t send_chunk(void)
{
    if (opt.mode == MODE_STREAM && (unsigned long)opt.size < IO_MAX)
        return (size_t)opt.size;
    return IO_MAX;
}

/* Sends whatever the mode wants in flight now. */
static void refill(struct conn *c)
{
    if (phase != PH_WARMUP && phase != PH_MEASURE)
        return;
    if (opt.mode == MODE_PINGPONG)
        pump(c, c->target, IO_MAX);
    else
        pump(c, c->rcvd + (uint64_t)opt.window, send_chunk());
}

static void start_active(struct conn *c, int64_t now)
{
    if (opt.mode == MODE_PINGPONG) {
        c->target = (uint64_t)opt.size;
        c->t_send = now;
    }
    c->t_progress = now;
    refill(c);
}

static void on_readable(struct conn *c)
{
    ssize_t n;
    int64_t now;
    const unsigned char *expected;

    n = recv(c->fd, recv_buf, sizeof recv_buf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        fail("connection %ld%s: recv: %s", conn_id(c), c->idle ? " (idle)" : "", strerror(errno));
    }
    if (n == 0)
        fail("connection %ld%s closed by the server", conn_id(c), c->idle ? " (idle)" : "");
    if (c->idle)
        fail("connection %ld (idle): received %zd unexpected bytes", conn_id(c), n);
    if (c->rcvd + (uint64_t)n > c->sent)
        fail("connection %ld: received %" PRIu64 " bytes more than were sent",
             conn_id(c), c->rcvd + (uint64_t)n - c->sent);
    expected = stream_bytes(c, c->rcvd, (size_t)n);
    if (memcmp(recv_buf, expected, (size_t)n) != 0) {
        ssize_t i = 0;
        while (i < n && recv_buf[i] == expected[i])
            i++;
        fail("connection %ld: verification error at stream byte %" PRIu64
             ": expected 0x%02x, got 0x%02x",
             conn_id(c), c->rcvd + (uint64_t)i, expected[i], recv_buf[i]);
    }
    c->rcvd += (uint64_t)n;
    now = now_ns();
    c->t_progress = now;

    if (opt.mode == MODE_PINGPONG) {
        if (c->rcvd < c->target)
            return;
        if (phase == PH_MEASURE) {
            requests++;
            bytes_echoed += (uint64_t)opt.size;
            hist_add(now - c->t_send);
        }
        if (phase == PH_WARMUP || phase == PH_MEASURE) {
            c->target += (uint64_t)opt.size;
            c->t_send = now;
            refill(c);
        }
    } else {
        if (phase == PH_MEASURE)
            bytes_echoed += (uint64_t)n;
        refill(c);
    }
    if (phase == PH_DRAIN && c->rcvd == c->sent)
        conn_close(c);
}

/* ---- connecting ---- */

static long next_to_open;     /* index of the next connection to open */
static long connecting;       /* connects in flight */
static long established;
static int connect_retry;     /* unix backlog full: try again shortly */

static void on_established(struct conn *c)
{
    c->state = ST_OPEN;
    established++;
    watch(c, EPOLLIN);
}

static void open_more(void)
{
    connect_retry = 0;
    while (connecting < CONNECT_BATCH && next_to_open < total_conns) {
        struct conn *c = &conns[next_to_open];
        int one = 1;
        int fd = socket(peer.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        if (fd < 0)
            fail("socket: %s (connection %ld)", strerror(errno), next_to_open);
        if (peer_is_tcp)
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->fd = fd;
        c->events = 0;
        if (connect(fd, (struct sockaddr *)&peer, peer_len) == 0) {
            next_to_open++;
            on_established(c);
            continue;
        }
        if (errno == EINPROGRESS || errno == EINTR) {
            next_to_open++;
            connecting++;
            c->state = ST_CONNECTING;
            watch(c, EPOLLOUT);
            continue;
        }
        if (errno == EAGAIN && !peer_is_tcp) {
            /* unix socket backlog full: retry from the loop */
            close(fd);
            c->fd = -1;
            connect_retry = 1;
            return;
        }
        fail("connect (connection %ld): %s", next_to_open, strerror(errno));
    }
}

static void on_connect_done(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err == EINPROGRESS || err == EALREADY)
        return;
    if (err != 0)
        fail("connect (connection %ld): %s", conn_id(c), strerror(err));
    connecting--;
    on_established(c);
}

/* ---- command line ---- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: loadgen --port PORT [--host 127.0.0.1|::1] [--unix PATH]\n"
            "               [--mode pingpong|stream] [--connections N] [--size BYTES]\n"
            "               [--window BYTES] [--warmup S] [--duration S] [--idle N]\n"
            "               [--timeout S] [--grace S] [--server-pid PID] [--line]\n"
            "\n"
            "  --host         127.0.0.1 (default) or ::1; nothing else is accepted\n"
            "  --port         server TCP port (required unless --unix)\n"
            "  --unix         connect to this unix stream socket instead\n"
            "  --mode         pingpong (default) or stream\n"
            "  --connections  active connections (default 1)\n"
            "  --size         pingpong message size / stream write size (default 1024)\n"
            "  --window       stream: most unechoed bytes per connection (default 65536)\n"
            "  --warmup       seconds before measuring (default 0.5)\n"
            "  --duration     measured seconds (default 2)\n"
            "  --idle         extra idle connections, opened first (default 0)\n"
            "  --timeout      fail if an echo makes no progress this long (default 5)\n"
            "  --grace        time allowed for connecting and draining (default 5)\n"
            "  --server-pid   also report that process's CPU seconds in the window\n"
            "  --line         pingpong: each message is a line ending in '\\n' (no other\n"
            "                 '\\n' in it), for line-based echo servers\n"
            "\n"
            "Prints one JSON line. Exit 0 ok, 1 run-time failure, 2 bad arguments.\n");
}

static void bad_arg(const char *fmt, ...)
{
    va_list ap;

    fputs("loadgen: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static long arg_long(const char *name, const char *text, long lo, long hi)
{
    char *end;
    long value;

    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || value < lo || value > hi)
        bad_arg("%s must be an integer in [%ld, %ld], not '%s'", name, lo, hi, text);
    return value;
}

static double arg_seconds(const char *name, const char *text, double lo, double hi)
{
    char *end;
    double value;

    errno = 0;
    value = strtod(text, &end);
    if (errno || end == text || *end != '\0' || !(value >= lo && value <= hi))
        bad_arg("%s must be a number of seconds in [%g, %g], not '%s'", name, lo, hi, text);
    return value;
}

static void parse_args(int argc, char **argv)
{
    int i;

    opt.host = "127.0.0.1";
    opt.port = -1;
    opt.mode = MODE_PINGPONG;
    opt.connections = 1;
    opt.size = 1024;
    opt.window = 65536;
    opt.warmup = 0.5;
    opt.duration = 2.0;
    opt.timeout = 5.0;
    opt.grace = 5.0;

    for (i = 1; i < argc; i++) {
        char *arg = argv[i];
        const char *val;
        char *eq;

        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(arg, "--line") == 0) {   /* the one flag without a value */
            opt.line = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0)
            bad_arg("unexpected argument '%s' (see --help)", arg);
        /* --name value, or --name=value */
        eq = strchr(arg, '=');
        if (eq != NULL) {
            *eq = '\0';
            val = eq + 1;
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            bad_arg("%s needs a value", arg);
            return;
        }
        if (strcmp(arg, "--host") == 0)
            opt.host = val;
        else if (strcmp(arg, "--port") == 0)
            opt.port = arg_long(arg, val, 1, 65535);
        else if (strcmp(arg, "--unix") == 0)
            opt.unix_path = val;
        else if (strcmp(arg, "--mode") == 0) {
            if (strcmp(val, "pingpong") == 0)
                opt.mode = MODE_PINGPONG;
            else if (strcmp(val, "stream") == 0)
                opt.mode = MODE_STREAM;
            else
                bad_arg("--mode must be pingpong or stream, not '%s'", val);
        } else if (strcmp(arg, "--connections") == 0)
            opt.connections = arg_long(arg, val, 1, 1000000);
        else if (strcmp(arg, "--idle") == 0)
            opt.idle = arg_long(arg, val, 0, 1000000);
        else if (strcmp(arg, "--size") == 0)
            opt.size = arg_long(arg, val, 1, 64L << 20);
        else if (strcmp(arg, "--window") == 0)
            opt.window = arg_long(arg, val, 1, 64L << 20);
        else if (strcmp(arg, "--warmup") == 0)
            opt.warmup = arg_seconds(arg, val, 0, 3600);
        else if (strcmp(arg, "--duration") == 0)
            opt.duration = arg_seconds(arg, val, 0.001, 3600);
        else if (strcmp(arg, "--timeout") == 0)
            opt.timeout = arg_seconds(arg, val, 0.001, 3600);
        else if (strcmp(arg, "--grace") == 0)
            opt.grace = arg_seconds(arg, val, 0.001, 3600);
        else if (strcmp(arg, "--server-pid") == 0)
            opt.server_pid = arg_long(arg, val, 1, 0x7fffffffL);
        else
            bad_arg("unknown option %s (see --help)", arg);
    }

    if (opt.line && opt.mode != MODE_PINGPONG)
        bad_arg("--line needs --mode pingpong");

    memset(&peer, 0, sizeof peer);
    if (opt.unix_path != NULL) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&peer;
        size_t len = strlen(opt.unix_path);

        if (len == 0 || len >= sizeof sun->sun_path)
            bad_arg("bad unix socket path '%s'", opt.unix_path);
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, opt.unix_path, len + 1);
        peer_len = sizeof *sun;
        peer_is_tcp = 0;
    } else {
        /* Loopback only: the literal addresses 127.0.0.1 and ::1. No name
         * is resolved, and anything else is refused before any socket. */
        struct sockaddr_in *sin = (struct sockaddr_in *)&peer;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&peer;

        if (opt.port < 0)
            bad_arg("--port is required (or --unix)");
        if (inet_pton(AF_INET, opt.host, &sin->sin_addr) == 1 &&
            ntohl(sin->sin_addr.s_addr) == INADDR_LOOPBACK) {
            sin->sin_family = AF_INET;
            sin->sin_port = htons((uint16_t)opt.port);
            peer_len = sizeof *sin;
        } else if (inet_pton(AF_INET6, opt.host, &sin6->sin6_addr) == 1 &&
                   IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr)) {
            memset(sin, 0, sizeof *sin);
            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons((uint16_t)opt.port);
            peer_len = sizeof *sin6;
        } else {
            bad_arg("refusing host '%s': only 127.0.0.1 and ::1 are allowed", opt.host);
        }
        peer_is_tcp = 1;
    }
    if (opt.server_pid > 0 && proc_cpu_seconds(opt.server_pid) < 0)
        bad_arg("cannot read /proc/%ld/stat", opt.server_pid);
}

static void raise_nofile_limit(long needed)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= (rlim_t)needed)
        return;
    rl.rlim_cur = (rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= (rlim_t)needed)
                      ? (rlim_t)needed : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)needed)
        fail("need %ld file descriptors but RLIMIT_NOFILE allows only %llu",
             needed, (unsigned long long)rl.rlim_cur);
}

static void fill_pattern(void)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    size_t i;

    pattern = malloc(PAT_LEN + IO_MAX);
    if (pattern == NULL)
        fail("out of memory");
    for (i = 0; i < PAT_LEN; i++) {
        /* xorshift64*: a fixed, well-mixed byte stream */
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        pattern[i] = (unsigned char)((x * 0x2545f4914f6cdd1dULL) >> 56);
    }
    /* slack so that any read of up to IO_MAX bytes is contiguous */
    memcpy(pattern + PAT_LEN, pattern, IO_MAX);
    if (opt.line) {
        line_pattern = malloc(PAT_LEN + IO_MAX);
        if (line_pattern == NULL)
            fail("out of memory");
        for (i = 0; i < PAT_LEN + IO_MAX; i++)
            line_pattern[i] = pattern[i] == '\n' ? ' ' : pattern[i];
    }
}

static int64_t min64(int64_t a, int64_t b)
{
    return a < b ? a : b;
}

int main(int argc, char **argv)
{
    struct epoll_event events[MAX_EVENTS];
    int64_t t_begin, t_ready = 0, t_window_begin = 0, t_window_end = 0;
    int64_t connect_deadline, hard_deadline = 0, drain_deadline = 0, next_stall_check = 0;
    long i;

    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);

    total_conns = opt.connections + opt.idle;
    raise_nofile_limit(total_conns + 64);
    fill_pattern();
    conns = calloc((size_t)total_conns, sizeof *conns);
    if (conns == NULL)
        fail("out of memory");
    for (i = 0; i < total_conns; i++) {
        conns[i].fd = -1;
        conns[i].idle = i < opt.idle;
        /* distinct, spread-out stream start per connection */
        conns[i].base = ((uint64_t)i * 2654435761ULL) % PAT_LEN;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fail("epoll_create1: %s", strerror(errno));

    t_begin = now_ns();
    connect_deadline = t_begin + (int64_t)(opt.grace * 1e9);
    open_more();

    while (phase != PH_DONE) {
        int64_t now = now_ns(), next;
        int n, k, timeout_ms;

        /* phase changes, deadlines and stall checks */
        if (phase == PH_CONNECT) {
            if (established == total_conns) {
                t_ready = now;
                t_window_begin = t_ready + (int64_t)(opt.warmup * 1e9);
                t_window_end = t_window_begin + (int64_t)(opt.duration * 1e9);
                hard_deadline = t_begin + (int64_t)((opt.warmup + opt.duration + opt.grace) * 1e9);
                next_stall_check = now + STALL_CHECK_NS;
                phase = PH_WARMUP;
                open_active = opt.connections;
                for (i = opt.idle; i < total_conns; i++)
                    start_active(&conns[i], now);
                continue;
            }
            if (now >= connect_deadline)
                fail("timeout: %ld of %ld connections established after %.3g s",
                     established, total_conns, opt.grace);
            if (connect_retry)
                open_more();
        }
        if (phase == PH_WARMUP && now >= t_window_begin) {
            phase = PH_MEASURE;
            t_measure_begin = now;
            cpu_begin = self_cpu_seconds();
            if (opt.server_pid > 0)
                srv_cpu_begin = proc_cpu_seconds(opt.server_pid);
        }
        if (phase == PH_MEASURE && now >= t_window_end) {
            t_measure_end = now;
            cpu_end = self_cpu_seconds();
            if (opt.server_pid > 0) {
                srv_cpu_end = proc_cpu_seconds(opt.server_pid);
                if (srv_cpu_end < 0)
                    fail("server process %ld is gone", opt.server_pid);
            }
            phase = PH_DRAIN;
            drain_deadline = min64(now + DRAIN_NS, hard_deadline);
            /* no new data; close what is fully echoed, await the rest */
            for (i = opt.idle; i < total_conns; i++) {
                struct conn *c = &conns[i];
                if (c->rcvd == c->sent)
                    conn_close(c);
                else
                    watch(c, EPOLLIN);
            }
        }
        if ((phase == PH_WARMUP || phase == PH_MEASURE) && now >= next_stall_check) {
            next_stall_check = now + STALL_CHECK_NS;
            for (i = opt.idle; i < total_conns; i++) {
                struct conn *c = &conns[i];
                if (c->sent > c->rcvd && now - c->t_progress > (int64_t)(opt.timeout * 1e9))
                    fail("timeout: connection %ld waited %.3g s for its echo (%" PRIu64
                         " of %" PRIu64 " bytes back)",
                         i, (double)(now - c->t_progress) / 1e9, c->rcvd, c->sent);
            }
        }
        if (phase == PH_DRAIN) {
            if (open_active == 0 || now >= drain_deadline) {
                phase = PH_DONE;
                break;
            }
        }

        switch (phase) {
        case PH_CONNECT:
            next = connect_retry ? now + 1000000 : connect_deadline;
            break;
        case PH_WARMUP:
            next = min64(t_window_begin, next_stall_check);
            break;
        case PH_MEASURE:
            next = min64(t_window_end, next_stall_check);
            break;
        default:
            next = drain_deadline;
            break;
        }
        timeout_ms = next <= now ? 0 : (int)((next - now + 999999) / 1000000);

        n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("epoll_wait: %s", strerror(errno));
        }
        for (k = 0; k < n; k++) {
            struct conn *c = &conns[events[k].data.u64];
            uint32_t ev = events[k].events;

            if (c->state == ST_CONNECTING) {
                on_connect_done(c);
                if (phase == PH_CONNECT)
                    open_more();
                continue;
            }
            if (c->state != ST_OPEN)
                continue;
            if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
                on_readable(c);
            if (c->state == ST_OPEN && (ev & EPOLLOUT) && !c->idle)
                refill(c);
        }
    }

    for (i = 0; i < total_conns; i++)
        conn_close(&conns[i]);
    if (opt.mode == MODE_PINGPONG ? requests == 0 : bytes_echoed == 0)
        fail("nothing was echoed in the measured window");
    report(NULL);
    return 0;
}
