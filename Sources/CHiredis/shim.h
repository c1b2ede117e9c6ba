#ifndef HUB_HIREDIS_SHIM_H
#define HUB_HIREDIS_SHIM_H
// hiredis from Debian, plus the two helpers the hub needs to drive its contexts from its
// own poll loop: connect blocking (on the Redis thread), then switch to non-blocking I/O.
#include <hiredis/hiredis.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

static inline int hub_redis_make_nonblocking(redisContext *c) {
    int flags = fcntl(c->fd, F_GETFL, 0);
    if (flags < 0 || fcntl(c->fd, F_SETFL, flags | O_NONBLOCK) < 0) return -1;
    c->flags &= ~REDIS_BLOCK;
    return 0;
}

static inline redisContext *hub_redis_connect(const char *host, int port, int timeout_ms) {
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    return redisConnectWithTimeout(host, port, tv);
}

static inline int hub_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }
static inline void hub_eventfd_signal(int fd) { uint64_t one = 1; (void)!write(fd, &one, sizeof one); }
static inline void hub_eventfd_drain(int fd) { uint64_t value; (void)!read(fd, &value, sizeof value); }

#endif
