/*
 * nodelay.so: an LD_PRELOAD shim that turns Nagle's algorithm off
 * (TCP_NODELAY) on every TCP socket a process connects or accepts.
 *
 * OpenSSH sets TCP_NODELAY only for interactive sessions (a terminal), so
 * `ssh -W` and `sshd` relaying a forwarded stream keep Nagle on, and a small
 * request can wait for the previous one's acknowledgement. `cargo xtask
 * bench` compiles this file with `cc -shared -fPIC` into its target folder
 * and runs ssh and sshd under LD_PRELOAD for its "nodelay" rows, so that
 * OpenSSH is measured at its best on request/response work.
 *
 *   cc -shared -fPIC -O2 -o nodelay.so nodelay.c -ldl
 *   LD_PRELOAD=./nodelay.so ssh -W host:port ...
 *
 * Wrapped: connect (ssh to sshd; sshd to the -W target), accept and accept4
 * (sshd's listener). Sockets that are not TCP are left alone; errors from
 * setsockopt are ignored (the call itself still returns its own result).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* Sets TCP_NODELAY on fd when it is a TCP socket; keeps errno as it was. */
static void nodelay(int fd)
{
    int saved = errno;
    int type = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 && type == SOCK_STREAM) {
        struct sockaddr_storage addr;
        socklen_t alen = sizeof addr;
        if (getsockname(fd, (struct sockaddr *)&addr, &alen) == 0 &&
            (addr.ss_family == AF_INET || addr.ss_family == AF_INET6)) {
            int on = 1;
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        }
    }
    errno = saved;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real)
        real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    /* Set before connecting: a non-blocking connect returns EINPROGRESS,
       and the option holds for the connection either way. */
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
        int saved = errno;
        int type = 0;
        socklen_t tlen = sizeof type;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_STREAM) {
            int on = 1;
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
        }
        errno = saved;
    }
    return real(fd, addr, len);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int conn = real(fd, addr, len);
    if (conn >= 0)
        nodelay(conn);
    return conn;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real)
        real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int conn = real(fd, addr, len, flags);
    if (conn >= 0)
        nodelay(conn);
    return conn;
}
