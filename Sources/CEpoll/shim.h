#ifndef HUB_BENCH_EPOLL_SHIM_H
#define HUB_BENCH_EPOLL_SHIM_H
// hub-bench's only C: Swift's Glibc module leaves out sys/epoll.h and sys/eventfd.h, so this
// header-only module brings in epoll_create1/ctl/wait and struct epoll_event for
// Sources/HubBench/EventLoop.swift, and eventfd for the floor server's loops (FloorServer.swift).
#include <sys/epoll.h>
#include <sys/eventfd.h>
#endif
