/// An event loop that carries a shard's two sockets once they are connected: the hub's
/// libwebsockets service loop. Commands are then written, and replies and PUB/SUB messages
/// read, on the thread that also serves the clients, so a publication crosses no thread on
/// its way to Redis or back (with the shard's own I/O thread it cost about three context
/// switches per publication on the publishing node, bench/hub-profile-notes.md), and every
/// command queued during one turn of the loop leaves in one write.
///
/// The shard's own thread keeps what may block or wait: connecting (bounded, blocking
/// hiredis connects), Sentinel lookups and the `+switch-master` watch, backoff, and the
/// once-a-second reply-timeout check it asks the host to run. See RedisShard.
public protocol RedisHost: AnyObject, Sendable {
    /// Whether the caller runs on the host's thread.
    var isCurrentThread: Bool { get }

    /// Runs `work` on the host's thread soon; from any thread. False when the host no longer
    /// runs (its loop ended): `work` is dropped.
    func post(_ work: @escaping @Sendable () -> Void) -> Bool

    /// Host thread only. Watches `descriptor` for input, and for output when asked, calling
    /// `events` on the host's thread. The host watches a duplicate of the descriptor, so ending
    /// the watch never closes the shard's socket. Nil when the host cannot watch it.
    func watch(_ descriptor: Int32, _ events: any RedisSocketEvents) -> (any RedisSocketWatch)?
}

/// What a host reports about a watched socket (on the host's thread).
public protocol RedisSocketEvents: AnyObject, Sendable {
    func readable()
    func writable()
    /// The host dropped the watch without being asked: its loop is `ending`, or else the
    /// socket hung up.
    func hostClosed(ending: Bool)
}

/// A socket a host watches (used on the host's thread only).
public protocol RedisSocketWatch: AnyObject, Sendable {
    /// One `writable()` call once the socket can take more output.
    func requestWritable()
    /// Stops watching; no event is reported after this.
    func end()
}
