import CLibWebSockets
import Glibc
import RedisEngine

// The Redis engine's sockets inside the service loop (RedisHost): each connected shard's
// command and PUB/SUB sockets are adopted as raw descriptors, so lws's one poll covers them
// with the clients' sockets and their replies and messages are read on this thread.

let redisSocketProtocol = "hub-redis"

/// One Redis socket the loop watches (service thread only). lws polls a duplicate of the
/// shard's descriptor and closes that duplicate with the wsi, never the shard's own socket.
final class RedisSocket: RedisSocketWatch, @unchecked Sendable {
    unowned let loop: ServiceLoop
    let wsi: OpaquePointer
    let events: any RedisSocketEvents
    /// Ended by the shard (or closed by lws): nothing more is reported.
    var ended = false
    /// Inside this socket's writeable callback: lws turns POLLOUT off for a raw descriptor
    /// *after* that callback returns, so a request made in it would be lost.
    var inWriteable = false

    init(loop: ServiceLoop, wsi: OpaquePointer, events: any RedisSocketEvents) {
        self.loop = loop
        self.wsi = wsi
        self.events = events
    }

    func requestWritable() {
        guard !ended else { return }
        if inWriteable {
            // Asked again once the turn is over (ServiceLoop.run), when lws is done disarming.
            loop.redisRearm.append(self)
        } else {
            lws_callback_on_writable(wsi)
        }
    }

    func end() {
        guard !ended else { return }
        ended = true
        // Closed on the loop's next turn (possibly from inside this wsi's own callback, where a
        // synchronous close is not allowed); its close callback then finds it ended.
        if !loop.ending { lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC) }
    }
}

extension ServiceLoop: RedisHost {
    var isCurrentThread: Bool { onLoopThread }

    func post(_ work: @escaping @Sendable () -> Void) -> Bool {
        let accepted = posted.withLock { posted -> Bool in
            guard posted.open else { return false }
            posted.work.append(work)
            return true
        }
        if accepted, let context { lws_cancel_service(context) }
        return accepted
    }

    func watch(_ descriptor: Int32, _ events: any RedisSocketEvents) -> (any RedisSocketWatch)? {
        guard !ending, let context, let vhost = lws_get_vhost_by_name(context, "default") else { return nil }
        let copy = dup(descriptor)
        guard copy >= 0 else { return nil }
        // On failure lws may already have closed the duplicate: leaving it is safer than
        // closing a descriptor number something else may now hold.
        guard let wsi = hub_adopt_raw_descriptor(vhost, copy, redisSocketProtocol) else { return nil }
        let socket = RedisSocket(loop: self, wsi: wsi, events: events)
        redisSockets[wsi] = socket
        return socket
    }

    /// The loop ended: sockets lws did not report closed are reported now, and work posted
    /// meanwhile runs (a hand-over then finds no context and leaves the shard its sockets).
    func releaseRedisSockets() {
        for socket in redisSockets.values where !socket.ended {
            socket.ended = true
            socket.events.hostClosed(ending: true)
        }
        redisSockets = [:]
        let leftovers = posted.withLock { posted -> [@Sendable () -> Void] in
            posted.open = false
            defer { posted.work = [] }
            return posted.work
        }
        for work in leftovers { work() }
    }

    /// Work other threads posted (service thread, on a wake-up).
    func runPosted() {
        let work = posted.withLock { posted -> [@Sendable () -> Void] in
            guard !posted.work.isEmpty else { return [] }
            defer { posted.work.removeAll(keepingCapacity: true) }
            return posted.work
        }
        for item in work { item() }
    }
}

func redisSocketCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let wsi, let loop = loopFor(wsi) else { return 0 }
    switch reason {
    case LWS_CALLBACK_RAW_RX_FILE:
        if let socket = loop.redisSockets[wsi], !socket.ended { socket.events.readable() }
    case LWS_CALLBACK_RAW_WRITEABLE_FILE:
        if let socket = loop.redisSockets[wsi], !socket.ended {
            socket.inWriteable = true
            socket.events.writable()
            socket.inWriteable = false
        }
    case LWS_CALLBACK_RAW_CLOSE_FILE:
        if let socket = loop.redisSockets.removeValue(forKey: wsi), !socket.ended {
            socket.ended = true
            socket.events.hostClosed(ending: loop.ending)
        }
    default:
        break
    }
    return 0
}
