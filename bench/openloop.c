/* openloop: an open-loop HTTP/1.1 load generator for bench_serve.py's overload runs.
 *
 *   openloop HOST PORT PATH RATE SECONDS BODIES_FILE MAX_CONNS TIMEOUT_MS OUT_FILE
 *
 * Request i falls due at start + i / RATE whether or not earlier ones were answered (the load is offered, not
 * negotiated). A due request goes out on an idle keep-alive connection, or on a new one while fewer than
 * MAX_CONNS are open, or waits in a queue for the next free connection; its latency counts from the moment it
 * fell due, so time spent waiting for a connection is the server's, not hidden (no coordinated omission).
 * BODIES_FILE holds one JSON body per line, used in turn. OUT_FILE gets one line per request:
 * "STATUS LATENCY_US RETRY_AFTER" (STATUS 0: timed out after TIMEOUT_MS; -1: connection error; RETRY_AFTER 1
 * when the answer carried a Retry-After header).
 *
 * Why C: the Python generator (aiohttp on uvloop) spent 0.8-0.9 of one of this machine's 2 cores to offer
 * 4,500 req/s and fell behind its own schedule, so its latencies were mostly its own. This one spends a few
 * percent of a core for the same rate: one thread, epoll, no allocation per request.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RESPONSE_BUF 65536

typedef struct {
    int fd;
    int busy;            /* a request is on this connection */
    int connected;       /* the non-blocking connect has finished */
    long request;        /* index of the request in flight */
    const char *out;     /* bytes still to write */
    size_t out_left;
    char in[RESPONSE_BUF];
    size_t in_len;
} Conn;

typedef struct {
    int done;
    int status;          /* see the header comment */
    int retry_after;
    long latency_us;
} Result;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in server_addr;
static int epfd;
static Conn *conns;
static int n_conns, max_conns;
static Result *results;
static double *due;       /* when each request fell due */
static long done_count;
static char **requests;   /* complete HTTP requests, one per body */
static size_t *request_len;
static long n_bodies;
static double timeout_s;

static void finish(long req, int status, int retry_after) {
    if (req < 0 || results[req].done) return;
    results[req].done = 1;
    results[req].status = status;
    results[req].retry_after = retry_after;
    results[req].latency_us = (long)((now_s() - due[req]) * 1e6);
    done_count++;
}

static void drop_conn(Conn *c, int status) {
    if (c->busy) finish(c->request, status, 0);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->busy = 0;
    c->connected = 0;
    n_conns--;
}

static Conn *open_conn(void) {
    for (int i = 0; i < max_conns; i++) {
        Conn *c = &conns[i];
        if (c->fd >= 0) continue;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) return NULL;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 && errno != EINPROGRESS) {
            close(fd);
            return NULL;
        }
        c->fd = fd;
        c->busy = 0;
        c->connected = 0;
        c->in_len = 0;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        n_conns++;
        return c;
    }
    return NULL;
}

static void try_write(Conn *c) {
    while (c->busy && c->connected && c->out_left > 0) {
        ssize_t n = write(c->fd, c->out, c->out_left);
        if (n < 0) {
            if (errno == EAGAIN) return;
            drop_conn(c, -1);
            return;
        }
        c->out += n;
        c->out_left -= (size_t)n;
    }
}

static void start_request(Conn *c, long req) {
    c->busy = 1;
    c->request = req;
    c->out = requests[req % n_bodies];
    c->out_left = request_len[req % n_bodies];
    c->in_len = 0;
    try_write(c);
}

/* A complete response in c->in: returns its total length, or 0 while more bytes are needed. */
static size_t parse_response(Conn *c, int *status, int *retry_after, int *close_after) {
    c->in[c->in_len < RESPONSE_BUF ? c->in_len : RESPONSE_BUF - 1] = 0;
    char *end = strstr(c->in, "\r\n\r\n");
    if (!end) return 0;
    size_t head = (size_t)(end - c->in) + 4;
    long content_length = 0;
    *status = atoi(c->in + 9);  /* "HTTP/1.1 503 ..." */
    *retry_after = 0;
    *close_after = 0;
    for (char *line = strstr(c->in, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        if (strncasecmp(line, "content-length:", 15) == 0) content_length = atol(line + 15);
        else if (strncasecmp(line, "retry-after:", 12) == 0) *retry_after = 1;
        else if (strncasecmp(line, "connection:", 11) == 0 && strstr(line, "close") &&
                 strstr(line, "close") < strstr(line, "\r\n")) *close_after = 1;
    }
    if (c->in_len < head + (size_t)content_length) return 0;
    return head + (size_t)content_length;
}

static void on_readable(Conn *c) {
    int closed = 0;  /* the server closed its side: whatever arrived before still counts */
    for (;;) {
        if (c->in_len >= RESPONSE_BUF - 1) {  /* an answer larger than the buffer: not ours to judge */
            drop_conn(c, -1);
            return;
        }
        ssize_t n = read(c->fd, c->in + c->in_len, RESPONSE_BUF - 1 - c->in_len);
        if (n == 0) {
            closed = 1;
            break;
        }
        if (n < 0) {
            if (errno == EAGAIN) break;
            drop_conn(c, -1);
            return;
        }
        c->in_len += (size_t)n;
    }
    if (c->busy) {
        int status, retry_after, close_after;
        size_t total = parse_response(c, &status, &retry_after, &close_after);
        if (total > 0) {
            finish(c->request, status, retry_after);
            c->busy = 0;
            c->in_len = 0;
            closed |= close_after;
        }
    }
    if (closed) drop_conn(c, -1);  /* counts only if a request was still waiting for its answer */
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size + 1);
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        free(buf);
        return NULL;
    }
    buf[size] = 0;
    fclose(f);
    *len = (size_t)size;
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 10) {
        fprintf(stderr, "usage: %s HOST PORT PATH RATE SECONDS BODIES_FILE MAX_CONNS TIMEOUT_MS OUT_FILE\n", argv[0]);
        return 2;
    }
    const char *host = argv[1], *path = argv[3];
    double rate = atof(argv[4]), seconds = atof(argv[5]);
    max_conns = atoi(argv[7]);
    timeout_s = atof(argv[8]) / 1000.0;
    if (rate <= 0 || seconds <= 0 || max_conns < 1) {
        fprintf(stderr, "RATE, SECONDS and MAX_CONNS must be positive\n");
        return 2;
    }
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, host, &server_addr.sin_addr) != 1) {
        fprintf(stderr, "HOST must be an IPv4 address, not %s\n", host);
        return 2;
    }

    size_t file_len;
    char *file = read_file(argv[6], &file_len);
    if (!file) {
        perror(argv[6]);
        return 2;
    }
    long capacity = 16;
    requests = malloc(capacity * sizeof *requests);
    request_len = malloc(capacity * sizeof *request_len);
    for (char *line = strtok(file, "\n"); line; line = strtok(NULL, "\n")) {
        if (!*line) continue;
        if (n_bodies == capacity) {
            capacity *= 2;
            requests = realloc(requests, capacity * sizeof *requests);
            request_len = realloc(request_len, capacity * sizeof *request_len);
        }
        size_t body_len = strlen(line);
        char *req = malloc(body_len + 256);
        int head = snprintf(req, 256, "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                            "Content-Length: %zu\r\n\r\n", path, host, argv[2], body_len);
        memcpy(req + head, line, body_len);
        requests[n_bodies] = req;
        request_len[n_bodies] = (size_t)head + body_len;
        n_bodies++;
    }
    if (n_bodies == 0) {
        fprintf(stderr, "%s: no bodies\n", argv[6]);
        return 2;
    }

    long total = (long)(rate * seconds);
    results = calloc((size_t)total, sizeof *results);
    due = calloc((size_t)total, sizeof *due);
    long *waiting = malloc((size_t)total * sizeof *waiting);  /* FIFO of due requests without a connection */
    long wait_head = 0, wait_tail = 0;
    conns = calloc((size_t)max_conns, sizeof *conns);
    for (int i = 0; i < max_conns; i++) conns[i].fd = -1;
    epfd = epoll_create1(0);
    struct epoll_event *events = malloc((size_t)max_conns * sizeof *events);

    double start = now_s(), last_timeout_check = start;
    long next = 0;
    while (done_count < total) {
        double t = now_s();
        /* Requests that fell due join the queue. */
        while (next < total && start + next / rate <= t) {
            due[next] = start + next / rate;
            waiting[wait_tail++] = next++;
        }
        /* Requests that waited too long in the queue time out there. */
        while (wait_head < wait_tail && t - due[waiting[wait_head]] > timeout_s) finish(waiting[wait_head++], 0, 0);
        /* Hand queued requests to idle connections, opening new ones up to the limit. */
        for (int i = 0; i < max_conns && wait_head < wait_tail; i++)
            if (conns[i].fd >= 0 && !conns[i].busy) start_request(&conns[i], waiting[wait_head++]);
        while (wait_head < wait_tail && n_conns < max_conns) {
            Conn *c = open_conn();
            if (!c) break;
            start_request(c, waiting[wait_head++]);
        }
        /* Connections whose request is past the timeout are closed (checked every 10 ms). */
        if (t - last_timeout_check > 0.01) {
            last_timeout_check = t;
            for (int i = 0; i < max_conns; i++)
                if (conns[i].fd >= 0 && conns[i].busy && t - due[conns[i].request] > timeout_s)
                    drop_conn(&conns[i], 0);
        }

        /* Sleep until the next request falls due (to the microsecond: epoll_wait's milliseconds would send
         * each request up to 1 ms late at these rates), or 1 ms when all are out. */
        double until = next < total ? start + next / rate - now_s() : 1e-3;
        if (until < 0) until = 0;
        struct timespec wait = {.tv_sec = (time_t)until, .tv_nsec = (long)((until - (time_t)until) * 1e9)};
        int n = epoll_pwait2(epfd, events, max_conns, &wait, NULL);
        for (int i = 0; i < n; i++) {
            Conn *c = events[i].data.ptr;
            if (c->fd < 0) continue;
            if (!c->connected && (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    drop_conn(c, -1);
                    continue;
                }
                c->connected = 1;
            }
            if (events[i].events & EPOLLOUT) try_write(c);
            if (c->fd >= 0 && (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) on_readable(c);
        }
    }
    double elapsed = now_s() - start;

    FILE *out = fopen(argv[9], "w");
    if (!out) {
        perror(argv[9]);
        return 2;
    }
    for (long i = 0; i < total; i++)
        fprintf(out, "%d %ld %d\n", results[i].status, results[i].latency_us, results[i].retry_after);
    fclose(out);
    fprintf(stderr, "openloop: %ld requests offered at %.0f req/s over %.1f s, %d connections at the end\n",
            total, total / ((next ? (due[next - 1] - start) : 0) + 1.0 / rate), elapsed, n_conns);
    return 0;
}
