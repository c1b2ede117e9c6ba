#ifndef HUB_LWS_SHIM_H
#define HUB_LWS_SHIM_H
// The only C the hub adds over libwebsockets: one-line helpers for macros and flag
// arithmetic that Swift cannot import. Everything else is called directly.
#include <libwebsockets.h>
#include <ev.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h> /* mallinfo2 for /metrics: Swift's Glibc module leaves malloc.h out */
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static inline int hub_lws_pre(void) { return LWS_PRE; }

/* The service loop's event loop: libev on its best backend (epoll on Linux), handed to lws as
 * a foreign loop, so a turn costs the ready descriptors, not a poll(2) of every connection.
 * The hub runs it one iteration per turn (ServiceLoop.run). */
static inline struct ev_loop *hub_ev_loop_new(void) { return ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK); }
/* One iteration; with `nowait`, without waiting for a descriptor to become ready. */
static inline void hub_ev_run(struct ev_loop *loop, int nowait) { ev_run(loop, nowait ? EVRUN_NOWAIT : EVRUN_ONCE); }
static inline void hub_ev_loop_destroy(struct ev_loop *loop) { ev_loop_destroy(loop); }

static inline uint64_t hub_lws_server_options(int tls) {
    uint64_t o = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_LIBEV;
    if (tls) o |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    return o;
}

/* permessage-deflate (RFC 7692) as lws offers it; the list lives for the process. */
static inline const struct lws_extension *hub_lws_extensions(void) {
    static const struct lws_extension list[] = {
        { "permessage-deflate", lws_extension_callback_pm_deflate,
          "permessage-deflate; client_no_context_takeover; client_max_window_bits" },
        { NULL, NULL, NULL }
    };
    return list;
}

static inline int hub_lws_write_text(void) { return LWS_WRITE_TEXT; }
static inline int hub_lws_write_binary(void) { return LWS_WRITE_BINARY; }
static inline int hub_lws_write_raw(void) { return LWS_WRITE_RAW; }
static inline int hub_lws_write_http_final(void) { return LWS_WRITE_HTTP_FINAL; }
static inline int hub_lws_write_http(void) { return LWS_WRITE_HTTP; }
static inline int hub_lws_write_http_headers(void) { return LWS_WRITE_HTTP_HEADERS; }
/* Headers that also end an HTTP/2 stream (no body follows). */
static inline int hub_lws_write_http_headers_final(void) { return LWS_WRITE_HTTP_HEADERS | LWS_WRITE_H2_STREAM_END; }


/* Adopts a descriptor of ours into a context as a raw descriptor: lws polls it and calls
 * the protocol with LWS_CALLBACK_RAW_RX_FILE / LWS_CALLBACK_RAW_WRITEABLE_FILE. Used for our
 * own SO_REUSEPORT listening socket (this lws build has LWS_MAX_SMP 1, so its own listen
 * sharing never sets SO_REUSEPORT) and for the Redis engine's sockets. */
static inline struct lws *hub_adopt_raw_descriptor(struct lws_vhost *vh, int fd, const char *protocol) {
    lws_sock_file_fd_type u;
    u.filefd = fd;
    return lws_adopt_descriptor_vhost(vh, LWS_ADOPT_RAW_FILE_DESC, u, protocol, NULL);
}

/* A non-blocking listening socket with SO_REUSEPORT, so each service thread has its own
 * and the kernel spreads new connections across them. Returns the fd or -errno.
 * With `exclusive`, the port is first bound once without SO_REUSEPORT: that fails with
 * EADDRINUSE when any other process listens there (SO_REUSEPORT alone would let a second
 * hub of the same user silently share the port). */
static inline int hub_listen_socket(const char *host, int port, int exclusive) {
    struct addrinfo hints, *res = NULL, *ai;
    char service[16];
    int fd = -1, one = 1, err = EADDRNOTAVAIL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(service, sizeof service, "%d", port);
    if (getaddrinfo(host && *host ? host : NULL, service, &hints, &res) != 0) return -EADDRNOTAVAIL;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) { err = errno; continue; }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (exclusive) {
            if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0) { err = errno; close(fd); fd = -1; continue; }
            close(fd);
            fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) { err = errno; continue; }
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd >= 0 ? fd : -err;
}

/* Accepts one pending connection (non-blocking, close-on-exec); -1 when none waits. The
 * peer's address (numeric, no port) goes into `peer`. */
static inline int hub_accept(int listen_fd, char *peer, int peer_size) {
    /* accept + fcntl rather than accept4: accept4 needs _GNU_SOURCE, which changes glibc's
     * fd_set definition and makes this module clash with the other C modules. */
    struct sockaddr_storage addr;
    socklen_t addr_len = sizeof addr;
    int fd = accept(listen_fd, (struct sockaddr *)&addr, &addr_len);
    if (peer_size > 0) peer[0] = 0;
    if (fd >= 0) {
        if (getnameinfo((struct sockaddr *)&addr, addr_len, peer, (socklen_t)peer_size, NULL, 0, NI_NUMERICHOST) != 0 && peer_size > 0)
            peer[0] = 0;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}


/* A TCP socket's byte counters from one TCP_INFO read: what the kernel has received
 * (tcpi_bytes_received, Linux 4.1+) and what the process has written so far (tcpi_bytes_acked
 * plus what is still queued, TIOCOUTQ). Either is -1 when unknown. Read by offset: glibc's
 * netinet/tcp.h has an older struct tcp_info and linux/tcp.h cannot be included beside it.
 * The layout is append-only kernel ABI. One call per answered request, so one getsockopt. */
static inline void hub_tcp_counters(int fd, long long *received, long long *written) {
    unsigned char info[256];
    socklen_t len = sizeof info;
    unsigned long long value;
    int queued = 0;
    *received = -1;
    *written = -1;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, &len) != 0) return;
    if (len >= 136) { memcpy(&value, info + 128, sizeof value); *received = (long long)value; }
    if (len >= 128 && ioctl(fd, TIOCOUTQ, &queued) == 0) { memcpy(&value, info + 120, sizeof value); *written = (long long)value + queued; }
}

/* A short answer written straight to a socket lws does not (or no longer) write to:
 * best effort, never blocks, no SIGPIPE. */
static inline void hub_send_now(int fd, const char *bytes, int length) {
    if (fd >= 0 && length > 0) (void)send(fd, bytes, (size_t)length, MSG_NOSIGNAL | MSG_DONTWAIT);
}

#endif
