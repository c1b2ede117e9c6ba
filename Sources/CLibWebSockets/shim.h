#ifndef HUB_LWS_SHIM_H
#define HUB_LWS_SHIM_H
// The only C the hub adds over libwebsockets: one-line helpers for macros and flag
// arithmetic that Swift cannot import. Everything else is called directly.
#include <libwebsockets.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static inline int hub_lws_pre(void) { return LWS_PRE; }

static inline uint64_t hub_lws_server_options(int ipv6) {
    uint64_t o = LWS_SERVER_OPTION_VALIDATE_UTF8;
    (void)ipv6;
    return o;
}

static inline int hub_lws_write_text(void) { return LWS_WRITE_TEXT; }
static inline int hub_lws_write_raw(void) { return LWS_WRITE_RAW; }
static inline int hub_lws_write_http_final(void) { return LWS_WRITE_HTTP_FINAL; }
static inline int hub_lws_write_http(void) { return LWS_WRITE_HTTP; }
static inline int hub_lws_write_http_headers(void) { return LWS_WRITE_HTTP_HEADERS; }


/* Adopts our own SO_REUSEPORT listening socket into a context as a raw descriptor, so lws
 * tells us (LWS_CALLBACK_RAW_RX_FILE) when connections wait to be accepted. This lws build
 * has LWS_MAX_SMP 1, so its own listen sharing never sets SO_REUSEPORT. */
static inline struct lws *hub_adopt_listener(struct lws_vhost *vh, int fd, const char *protocol) {
    lws_sock_file_fd_type u;
    u.filefd = fd;
    return lws_adopt_descriptor_vhost(vh, LWS_ADOPT_RAW_FILE_DESC, u, protocol, NULL);
}

/* A non-blocking listening socket with SO_REUSEPORT, so each service thread has its own
 * and the kernel spreads new connections across them. Returns the fd or -errno. */
static inline int hub_listen_socket(const char *host, int port) {
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
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd >= 0 ? fd : -err;
}

/* Accepts one pending connection (non-blocking, close-on-exec); -1 when none waits. */
static inline int hub_accept(int listen_fd) {
    /* accept + fcntl rather than accept4: accept4 needs _GNU_SOURCE, which changes glibc's
     * fd_set definition and makes this module clash with the other C modules. */
    int fd = accept(listen_fd, NULL, NULL);
    if (fd >= 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

#endif
