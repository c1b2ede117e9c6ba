import CHiredis
import Channels
import Glibc
import Logging
import Synchronization

/// A Redis reply, copied out of hiredis' memory.
public enum RedisValue: Sendable, Equatable {
    case string([UInt8])
    case integer(Int64)
    case array([RedisValue])
    case status(String)
    case error(String)
    case null

    public var text: String? {
        switch self {
        case .string(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .status(let s): return s
        case .integer(let i): return String(i)
        default: return nil
        }
    }

    public var int: Int64? {
        switch self {
        case .integer(let i): return i
        case .string(let bytes): return Int64(String(decoding: bytes, as: UTF8.self))
        default: return nil
        }
    }

    public var isError: Bool { if case .error = self { return true } else { return false } }
}

/// One Redis server (a shard): a command connection and a PUB/SUB connection. The shard's own
/// thread connects them (blocking, bounded) and, until a host is attached, drives them with
/// poll(2). With a host (`attach(host:)`: the hub's service loop) the connected sockets are
/// handed to it: commands, replies and PUB/SUB messages are then handled on the host's thread,
/// and the own thread only watches Sentinel, checks reply timeouts (through the host) and
/// reconnects after the host hands a broken connection back. Callers queue commands from any
/// thread and are called back on whichever thread drives the sockets.
///
/// Commands queued meanwhile are pipelined in one write (on a host: all those of one turn of
/// its loop); replies come back in order. While Redis is unreachable, commands fail at once
/// (nothing queues without bound) and the thread reconnects with backoff, then resubscribes
/// every channel.
///
/// This file holds all hiredis pointer handling.
public final class RedisShard: @unchecked Sendable {
    public struct Address: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int
        public var db: Int
        public var password: String?

        public var description: String { "redis://\(host):\(port)/\(db)" }

        public init(host: String, port: Int, db: Int = 0, password: String? = nil) {
            self.host = host
            self.port = port
            self.db = db
            self.password = password
        }

        /// Parses `redis://[:password@]host[:port][/db]`.
        public init?(url: String) {
            guard url.hasPrefix("redis://") else { return nil }
            var rest = Substring(url.dropFirst("redis://".count))
            password = nil
            if let at = rest.lastIndex(of: "@") {
                let credentials = rest[..<at]
                password = credentials.split(separator: ":", maxSplits: 1).last.map(String.init)
                rest = rest[rest.index(after: at)...]
            }
            var dbPart: Substring = "0"
            if let slash = rest.firstIndex(of: "/") {
                dbPart = rest[rest.index(after: slash)...]
                rest = rest[..<slash]
            }
            let hostPort = rest.split(separator: ":", maxSplits: 1)
            guard let first = hostPort.first, !first.isEmpty else { return nil }
            host = String(first)
            port = hostPort.count > 1 ? Int(hostPort[1]) ?? -1 : 6379
            db = dbPart.isEmpty ? 0 : Int(dbPart) ?? -1
            guard (1...65535).contains(port), db >= 0 else { return nil }
        }
    }

    /// Where a Sentinel-managed shard's primary is found: the sentinels to ask and the
    /// master name they monitor.
    public struct SentinelSource: Sendable, Equatable {
        public var sentinels: [Endpoint]
        public var masterName: String
        public var password: String?

        public init(sentinels: [Endpoint], masterName: String, password: String? = nil) {
            self.sentinels = sentinels
            self.masterName = masterName
            self.password = password
        }
    }

    /// Writes sent `acknowledged` are followed by `WAIT replicas timeout` and succeed only once
    /// that many replicas have them (`--redis-min-replicas-ack`).
    public struct ReplicaAcknowledgement: Sendable, Equatable {
        public var replicas: Int
        public var timeoutMilliseconds: Int

        public init(replicas: Int, timeoutMilliseconds: Int) {
            self.replicas = replicas
            self.timeoutMilliseconds = timeoutMilliseconds
        }
    }

    public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public var description: String { "\(host):\(port)" }

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Parses `host:port`.
        public init?(_ text: String) {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
                  (1...65535).contains(port), colon != text.startIndex else { return nil }
            host = String(text[..<colon])
            self.port = port
        }
    }

    /// The address the shard started with; with Sentinel, the primary named at start.
    public let address: Address
    /// With Sentinel: asked again for the primary on every (re)connection and followed on
    /// `+switch-master`.
    public let sentinel: SentinelSource?
    /// With `--redis-min-replicas-ack`: how acknowledged writes wait for replicas.
    public let acknowledgement: ReplicaAcknowledgement?
    /// How log lines and errors name this shard (the primary moves with Sentinel).
    let label: String
    let logger: Logger
    /// Called on the I/O thread for every PUB/SUB message.
    var onMessage: (@Sendable (_ channel: String, _ payload: [UInt8]) -> Void)?
    /// Called on the I/O thread after each (re)connection, once channels are resubscribed.
    var onConnected: (@Sendable () -> Void)?
    /// Whether the node still wants a channel (it has local subscribers).
    var wanted: (@Sendable (String) -> Bool)?
    /// Called on the I/O thread once Redis confirmed every channel resubscribed after a
    /// reconnection: from then on nothing published there can pass this node unseen.
    var onResubscribed: (@Sendable (_ channels: [String]) -> Void)?

    // MARK: Cluster hooks (RedisCluster.swift drives these; a standalone shard leaves them unset)

    /// Sharded PUB/SUB (SSUBSCRIBE/SUNSUBSCRIBE, one channel per command since a cluster refuses
    /// channels of several slots in one) instead of SUBSCRIBE. Set before `start`.
    var shardedPubSub = false
    /// Called on the I/O thread when Redis ended a subscription itself: a `sunsubscribe` push
    /// (its slot moved away) or an error (`MOVED`) answering SSUBSCRIBE. Waiters were failed.
    var onChannelDropped: (@Sendable (_ channel: String, _ reason: String) -> Void)?
    /// Called on the I/O thread when a connection broke (the node may have failed over).
    var onConnectionLost: (@Sendable () -> Void)?
    /// SSUBSCRIBEs sent and not yet confirmed, in order: an error reply belongs to the first.
    private var shardSubscribesPending: [String] = []

    /// Sends `ASKING` and the command back to back on the command connection, as an `ASK`
    /// redirection requires (the command is served by a node still importing the slot).
    public func sendAsking(_ arguments: [[UInt8]], completion: @escaping @Sendable (RedisValue) -> Void) {
        let accepted = inbox.withLock { inbox -> Bool in
            guard inbox.connected, !inbox.stopping else { return false }
            inbox.commands.append(([Array("ASKING".utf8)], false, { _ in }))
            inbox.commands.append((arguments, false, completion))
            return true
        }
        if accepted { wake() } else { completion(.error("redis \(label) unavailable")) }
    }

    // MARK: -

    private struct Inbox {
        var commands: [QueuedCommand] = []
        var subscribeWaiters: [String: [@Sendable (Result<Void, ProtocolError>) -> Void]] = [:]
        var dirtyChannels: Set<String> = []
        var alwaysSubscribed: Set<String> = []
        var connected = false
        var stopping = false
        /// The primary's replication ID (`master_replid`) while connected with Sentinel: it
        /// changes when a replica is promoted, which is how streams notice a failover.
        var generation = ""
        /// The loop that drives the sockets once connected; nil: the own thread does.
        var host: (any RedisHost)?
    }

    private typealias QueuedCommand = (arguments: [[UInt8]], acknowledged: Bool, completion: @Sendable (RedisValue) -> Void)

    private let inbox = Mutex(Inbox())
    private let wakeFD: Int32
    private var thread: pthread_t?

    /// Which thread owns the connections and every "I/O thread state" variable below. Each
    /// hand-over goes through this atomic (release/acquire), so the two never touch them at once.
    private enum Owner: UInt8 {
        /// The shard's own thread polls them (also while disconnected).
        case ownThread
        /// Posted to the host, which has not taken them yet: nobody touches them.
        case handingOver
        /// The host's thread drives them.
        case host
        /// The host let go (`returnReason` says why, nil: healthy): the own thread takes them back.
        case returning
    }

    private let ownerState = Atomic<UInt8>(Owner.ownThread.rawValue)
    private var owner: Owner { Owner(rawValue: ownerState.load(ordering: .acquiring))! }
    private func setOwner(_ next: Owner) { ownerState.store(next.rawValue, ordering: .releasing) }
    /// A pump is posted to the host and has not run yet (coalesces wake-ups from other threads).
    private let pumpPosted = Atomic<Bool>(false)
    // Host thread state (while the host owns the connections).
    private var commandWatch: (any RedisSocketWatch)?
    private var pubsubWatch: (any RedisSocketWatch)?
    private var writeRequested = false
    /// Why the host handed the connections back; nil when they are healthy.
    private var returnReason: String?
    // Own thread, while hosted.
    private var nextHealthCheck = 0.0

    // I/O thread state.
    private var command: UnsafeMutablePointer<redisContext>?
    private var pubsub: UnsafeMutablePointer<redisContext>?
    private var inflight: [@Sendable (RedisValue) -> Void] = []
    /// When each command in `inflight` was queued (parallel array).
    private var inflightSince: [Double] = []
    private var inflightHead = 0
    /// A Redis that keeps the connection open but stops answering (stopped, partitioned) is
    /// treated as down after this long: callers get an error instead of waiting forever,
    /// and queued commands cannot pile up without bound. The node's announcements keep a
    /// command in flight every few seconds, so a silent Redis is noticed even when idle.
    static let replyTimeout = 5.0
    private var subscribed: Set<String> = []
    private var confirmed: Set<String> = []
    private var backoff = 0.05
    private var nextAttempt = 0.0
    private var reportedDown = false
    private var everConnected = false
    /// Channels resubscribed after a reconnection and not yet confirmed.
    private var resubscribing: Set<String> = []
    private var resubscribed: [String] = []
    /// Where the command and PUB/SUB connections go now (moves with Sentinel).
    private var current: Address
    /// A sentinel connection subscribed to `+switch-master`, to follow a failover at once
    /// rather than when the old primary's connections break or time out.
    private var watch: UnsafeMutablePointer<redisContext>?
    private var nextWatchAttempt = 0.0
    /// The sentinel that answered last; asked first next time.
    private var sentinelIndex = 0
    /// A reply said this server is not (or no longer) a writable primary.
    private var demoted = false
    /// The primary `+switch-master` named: tried first on the next connection, before the
    /// sentinels (one that has not heard of the switch yet would name the old primary).
    private var switchedTo: Address?
    /// Acknowledged writes waiting for the `WAIT` in flight to answer: at most one `WAIT` is
    /// outstanding, so while replicas lag the writes queued meanwhile share the next one
    /// instead of each blocking the connection for the whole timeout in turn.
    private var awaitingAcknowledgement: [QueuedCommand] = []
    private var acknowledgementInFlight = false

    public init(address: Address, sentinel: SentinelSource? = nil, acknowledgement: ReplicaAcknowledgement? = nil, logger: Logger) {
        self.address = address
        self.sentinel = sentinel
        self.acknowledgement = acknowledgement
        current = address
        label = sentinel.map { "master '\($0.masterName)' (via sentinel)" } ?? address.description
        self.logger = logger
        wakeFD = hub_eventfd()
    }

    public func start() {
        let box = Unmanaged.passRetained(self)
        var handle = pthread_t()
        pthread_create(&handle, nil, { raw in
            let shard = Unmanaged<RedisShard>.fromOpaque(raw!).takeRetainedValue()
            shard.run()
            return nil
        }, box.toOpaque())
        thread = handle
    }

    public func stop() {
        inbox.withLock { $0.stopping = true }
        hub_eventfd_signal(wakeFD)
        if let thread { pthread_join(thread, nil) }
    }

    public var isConnected: Bool { inbox.withLock { $0.connected } }

    /// The current primary's replication ID with Sentinel, "" otherwise.
    public var generation: String { inbox.withLock { $0.generation } }

    // MARK: API for other threads

    /// Sends a command; the completion runs on the I/O thread with the reply or an error.
    /// With `generation`, the command is refused unless it goes to that very primary: a
    /// command prepared for the old primary must not reach the new one after a failover.
    /// `acknowledged` (a write, with `acknowledgement` configured): the reply is handed over
    /// only once enough replicas have the write, else an error saying it may still have
    /// happened.
    public func send(_ arguments: [[UInt8]], generation: String? = nil, acknowledged: Bool = false,
                     completion: @escaping @Sendable (RedisValue) -> Void) {
        let accepted = inbox.withLock { inbox -> Bool in
            guard inbox.connected, !inbox.stopping, generation == nil || generation == inbox.generation else { return false }
            inbox.commands.append((arguments, acknowledged && acknowledgement != nil, completion))
            return true
        }
        if accepted { wake() } else { completion(.error("redis \(label) unavailable")) }
    }

    public func send(_ arguments: [String], completion: @escaping @Sendable (RedisValue) -> Void) {
        send(arguments.map { Array($0.utf8) }, completion: completion)
    }

    /// Makes sure this shard delivers the channel's messages; completes once Redis confirmed.
    func subscribe(_ channel: String, always: Bool = false, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        let refused = inbox.withLock { inbox -> Bool in
            if always { inbox.alwaysSubscribed.insert(channel) }
            guard inbox.connected else { return true }
            inbox.subscribeWaiters[channel, default: []].append(completion)
            inbox.dirtyChannels.insert(channel)
            return false
        }
        if refused {
            completion(.failure(ProtocolError.internal.with(message: "redis \(label) unavailable")))
        } else {
            wake()
        }
    }

    /// The channel may no longer be wanted; the I/O thread asks `wanted` before dropping it.
    func release(_ channel: String) {
        inbox.withLock { _ = $0.dirtyChannels.insert(channel) }
        wake()
    }

    /// Hands the connections to `host` once connected (now, or after the next connection), so
    /// they are driven on its thread from then on. Call once the host's loop runs.
    public func attach(host: any RedisHost) {
        inbox.withLock { $0.host = host }
        hub_eventfd_signal(wakeFD)
    }

    /// Gets queued work to whichever thread drives the connections. On the host's own thread
    /// this only asks for a writeable callback: everything queued in the same turn of its loop
    /// then goes out in one write.
    private func wake() {
        if owner == .host, let host = inbox.withLock({ $0.host }) {
            if host.isCurrentThread {
                if !writeRequested, let commandWatch {
                    writeRequested = true
                    commandWatch.requestWritable()
                }
            } else {
                postPump(to: host)
            }
            return
        }
        // The own thread forwards it if the host took the connections meanwhile.
        hub_eventfd_signal(wakeFD)
    }

    private func postPump(to host: any RedisHost) {
        guard !pumpPosted.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let posted = host.post { [self] in
            pumpPosted.store(false, ordering: .releasing)
            if owner == .host { pump() } else { hub_eventfd_signal(wakeFD) }
        }
        if !posted {
            pumpPosted.store(false, ordering: .releasing)
            hub_eventfd_signal(wakeFD)
        }
    }

    // MARK: I/O thread

    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    private func run() {
        while !inbox.withLock({ $0.stopping }) {
            if sentinel != nil, watch == nil, now() >= nextWatchAttempt { openWatch() }
            switch owner {
            case .returning:
                setOwner(.ownThread)
                if let reason = returnReason {
                    returnReason = nil
                    disconnect(reason: reason)
                }
                continue
            case .host, .handingOver:
                superviseHosted()
                continue
            case .ownThread:
                if command != nil, pubsub != nil, let host = inbox.withLock({ $0.host }) {
                    handOver(to: host)
                    continue
                }
            }
            if command == nil || pubsub == nil {
                if now() >= nextAttempt { connect() }
                if command == nil {
                    // The sentinel watch is read while down too: a failover's `+switch-master`
                    // ends the backoff at once.
                    var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
                               pollfd(fd: watch?.pointee.fd ?? -1, events: Int16(POLLIN), revents: 0)]
                    var until = nextAttempt
                    if sentinel != nil, watch == nil { until = min(until, nextWatchAttempt) }
                    _ = poll(&fds, 2, Int32(max(10, (until - now()) * 1000)))
                    hub_eventfd_drain(wakeFD)
                    if fds[1].revents != 0, let switched = readWatch() {
                        switchedTo = switched
                        nextAttempt = now()
                    }
                    failQueuedWhileDown()
                    continue
                }
            }
            moveInbox()
            guard let command, let pubsub else { continue }
            var fds = [
                pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: command.pointee.fd, events: Int16(POLLIN) | (hasPendingOutput(command) ? Int16(POLLOUT) : 0), revents: 0),
                pollfd(fd: pubsub.pointee.fd, events: Int16(POLLIN) | (hasPendingOutput(pubsub) ? Int16(POLLOUT) : 0), revents: 0),
                pollfd(fd: watch?.pointee.fd ?? -1, events: Int16(POLLIN), revents: 0),
            ]
            _ = poll(&fds, 4, 1000)
            if fds[0].revents != 0 { hub_eventfd_drain(wakeFD) }
            var healthy = true
            var failure: String?
            if fds[1].revents & Int16(POLLOUT) != 0 || hasPendingOutput(command) { healthy = flush(command) && healthy }
            if fds[2].revents & Int16(POLLOUT) != 0 || hasPendingOutput(pubsub) { healthy = flush(pubsub) && healthy }
            // Messages before replies: a publication Redis sent before answering a read is then
            // seen before that answer (fewer needless recoveries after a position check).
            if fds[2].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { healthy = readMessages(pubsub) && healthy }
            if fds[1].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { healthy = readReplies(command) && healthy }
            if fds[3].revents != 0, let switched = readWatch() {
                disconnect(reason: "sentinel switched the master to \(switched.host):\(switched.port)")
                switchedTo = switched
                nextAttempt = now()
                continue
            }
            if demoted {
                healthy = false
                failure = "the server is no longer a writable primary"
            }
            if healthy, inflightHead < inflight.count, now() - inflightSince[inflightHead] > Self.replyTimeout {
                healthy = false
                failure = "no reply within \(Int(Self.replyTimeout)) s; a command sent meanwhile may still take effect"
            }
            if !healthy { disconnect(reason: failure ?? errorText(command.pointee.err != 0 ? command : pubsub)) }
        }
        if owner != .ownThread, !takeBackForStop() {
            // The host neither answered nor ended: its thread may still use the connections,
            // so they are left to the process exit rather than freed under it.
            logger.warning("redis \(label): the service loop did not hand the connections back within 3 s")
            closeWatch()
            return
        }
        disconnect(reason: "stopping", quiet: true)
        closeWatch()
        close(wakeFD)
    }

    // MARK: Driven by a host

    /// Own thread: the connections are healthy and idle here; the host takes them over.
    private func handOver(to host: any RedisHost) {
        setOwner(.handingOver)
        let posted = host.post { [self] in adopt(by: host) }
        if !posted {
            inbox.withLock { if $0.host === host { $0.host = nil } }
            setOwner(.ownThread)
        }
    }

    /// Host thread: watch both sockets and serve whatever queued meanwhile.
    private func adopt(by host: any RedisHost) {
        guard let command, let pubsub,
              let commandWatch = host.watch(command.pointee.fd, ShardSocket(self, pubsub: false))
        else { return refuseHost(host) }
        guard let pubsubWatch = host.watch(pubsub.pointee.fd, ShardSocket(self, pubsub: true)) else {
            commandWatch.end()
            return refuseHost(host)
        }
        self.commandWatch = commandWatch
        self.pubsubWatch = pubsubWatch
        writeRequested = false
        setOwner(.host)
        pump()
    }

    /// Host thread: it cannot carry the sockets (its loop is ending); the own thread keeps them.
    private func refuseHost(_ host: any RedisHost) {
        inbox.withLock { if $0.host === host { $0.host = nil } }
        giveBack(nil)
    }

    /// Host thread: queued commands and channel changes into the output buffers, then as much
    /// of them onto the sockets as they take; the rest when they are writeable again.
    private func pump() {
        writeRequested = false
        moveInbox()
        guard let command, let pubsub else { return }
        guard flush(command), flush(pubsub) else { return giveBack(errorText(command.pointee.err != 0 ? command : pubsub)) }
        if hasPendingOutput(command) {
            writeRequested = true
            commandWatch?.requestWritable()
        }
        if hasPendingOutput(pubsub) { pubsubWatch?.requestWritable() }
    }

    /// Host thread: one of the sockets has input (or broke).
    fileprivate func hostReadable(pubsub isPubsub: Bool) {
        guard owner == .host, let command, let pubsub else { return }
        if isPubsub {
            guard readMessages(pubsub) else { return giveBack(errorText(pubsub)) }
        } else {
            guard readReplies(command) else { return giveBack(errorText(command)) }
            if demoted { return giveBack("the server is no longer a writable primary") }
        }
    }

    fileprivate func hostWritable() {
        if owner == .host { pump() }
    }

    /// Host thread: the host dropped a watch itself. When its loop is ending the connections
    /// are healthy: the own thread drives them again (and offers them to the host, which
    /// refuses once it has ended); a socket that hung up is reconnected.
    fileprivate func hostGone(ending: Bool) {
        if owner == .host { giveBack(ending ? nil : "the connection hung up") }
    }

    /// Host thread: stop watching and let the own thread take the connections back (and, with
    /// a reason, drop them and reconnect).
    private func giveBack(_ reason: String?) {
        commandWatch?.end()
        pubsubWatch?.end()
        commandWatch = nil
        pubsubWatch = nil
        writeRequested = false
        returnReason = reason
        setOwner(.returning)
        hub_eventfd_signal(wakeFD)
    }

    /// Host thread: what the own thread's poll loop checks after each wake-up, once a second.
    private func checkHealth() {
        guard owner == .host else { return }
        if demoted { return giveBack("the server is no longer a writable primary") }
        if inflightHead < inflight.count, now() - inflightSince[inflightHead] > Self.replyTimeout {
            giveBack("no reply within \(Int(Self.replyTimeout)) s; a command sent meanwhile may still take effect")
        }
    }

    /// Own thread while the host drives the connections: the Sentinel watch, the reply-timeout
    /// check, and wake-ups that raced a hand-over.
    private func superviseHosted() {
        var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: watch?.pointee.fd ?? -1, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 2, Int32(max(10, min(1, nextHealthCheck - now()) * 1000)))
        guard owner == .host, let host = inbox.withLock({ $0.host }) else {
            if fds[0].revents != 0 { hub_eventfd_drain(wakeFD) }
            return
        }
        if fds[0].revents != 0 {
            hub_eventfd_drain(wakeFD)
            postPump(to: host)
        }
        if fds[1].revents != 0, let switched = readWatch() {
            switchedTo = switched
            nextAttempt = now()
            _ = host.post { [self] in
                if owner == .host { giveBack("sentinel switched the master to \(switched.host):\(switched.port)") }
            }
        }
        if now() >= nextHealthCheck {
            nextHealthCheck = now() + 1
            _ = host.post { [self] in checkHealth() }
        }
    }

    /// Own thread, stopping: asks the host for the connections and waits (bounded) for them.
    private func takeBackForStop() -> Bool {
        let deadline = now() + 3
        var asked = false
        while now() < deadline {
            switch owner {
            case .returning, .ownThread:
                setOwner(.ownThread)
                return true
            case .host:
                if !asked, let host = inbox.withLock({ $0.host }) {
                    asked = true
                    _ = host.post { [self] in if owner == .host { giveBack(nil) } }
                }
            case .handingOver:
                break
            }
            var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, 50)
            hub_eventfd_drain(wakeFD)
        }
        return false
    }

    private func errorText(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafePointer(to: context.pointee.errstr) { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
    }

    private func hasPendingOutput(_ context: UnsafeMutablePointer<redisContext>) -> Bool {
        guard let obuf = context.pointee.obuf else { return false }
        return obuf[0] != 0  // hiredis keeps obuf as an sds string; empty means nothing to write
    }

    private func flush(_ context: UnsafeMutablePointer<redisContext>) -> Bool {
        var done: Int32 = 0
        return redisBufferWrite(context, &done) == REDIS_OK
    }

    private func connect() {
        var generation = ""
        if let sentinel {
            switch locatePrimary(sentinel) {
            case .success(let primary):
                current = primary.address
                generation = primary.generation
            case .failure(let problem):
                retryLater(problem.description)
                return
            }
        }
        guard let cmd = open() else {
            retryLater("unreachable")
            return
        }
        guard let sub = open() else {
            redisFree(cmd)
            retryLater("unreachable")
            return
        }
        command = cmd
        pubsub = sub
        demoted = false
        backoff = 0.05
        subscribed = []
        confirmed = []
        shardSubscribesPending = []
        let channels = inbox.withLock { inbox -> Set<String> in
            inbox.connected = true
            inbox.generation = generation
            return inbox.alwaysSubscribed.union(inbox.subscribeWaiters.keys).union(inbox.dirtyChannels)
        }
        // Resubscribe everything the node still wants, in batches.
        var all = Array(channels)
        for channel in subscribedWanted() where !channels.contains(channel) { all.append(channel) }
        subscribeChannels(all)
        if everConnected && !all.isEmpty {
            resubscribing = Set(all)
            resubscribed = all
        }
        everConnected = true
        logger.notice("redis \(label) connected\(reportedDown ? " again" : "")\(sentinel != nil ? " at \(current.host):\(current.port)" : "")")
        reportedDown = false
        onConnected?()
    }

    private func retryLater(_ problem: String) {
        if !reportedDown {
            logger.error("redis \(label): \(problem); retrying with backoff")
            reportedDown = true
        }
        nextAttempt = now() + backoff
        backoff = min(backoff * 2, 2)
    }

    /// Channels the node had before a reconnect (tracked by the broker through `wanted`).
    private var knownChannels: Set<String> = []

    private func subscribedWanted() -> [String] {
        knownChannels.filter { wanted?($0) ?? false }
    }

    private func open() -> UnsafeMutablePointer<redisContext>? {
        let address = current
        var setup: [[String]] = []
        if let password = address.password { setup.append(["AUTH", password]) }
        if address.db != 0 { setup.append(["SELECT", String(address.db)]) }
        setup.append(["PING"])
        guard let context = Self.openBlocking(host: address.host, port: address.port, timeout: 2, setup: setup) else { return nil }
        guard hub_redis_make_nonblocking(context) == 0 else { redisFree(context); return nil }
        return context
    }

    /// Connects and runs `setup` blocking, on the calling thread (the shard's I/O thread, or
    /// the main thread at start) but bounded: a server that accepts TCP connections without
    /// answering (stopped, overloaded) counts as unreachable.
    private static func openBlocking(host: String, port: Int, timeout: Int, setup: [[String]]) -> UnsafeMutablePointer<redisContext>? {
        guard let context = hub_redis_connect(host, Int32(port), Int32(timeout * 1000)) else { return nil }
        if context.pointee.err != 0 {
            redisFree(context)
            return nil
        }
        guard redisSetTimeout(context, timeval(tv_sec: timeout, tv_usec: 0)) == REDIS_OK else { redisFree(context); return nil }
        for arguments in setup {
            guard let reply = call(context, arguments), !reply.isError else { redisFree(context); return nil }
        }
        return context
    }

    /// One command on a blocking context; nil when the connection failed.
    private static func call(_ context: UnsafeMutablePointer<redisContext>, _ arguments: [String]) -> RedisValue? {
        append(context, arguments.map { Array($0.utf8) })
        var raw: UnsafeMutableRawPointer?
        guard redisGetReply(context, &raw) == REDIS_OK, let raw else { return nil }
        let reply = copy(raw.assumingMemoryBound(to: redisReply.self))
        freeReplyObject(raw)
        return reply
    }

    // MARK: Sentinel

    public enum SentinelProblem: Error, CustomStringConvertible {
        case unreachable([Endpoint])
        case unknownMaster(String, [Endpoint])
        /// The sentinels name a primary that cannot be reached or is not (yet) a primary:
        /// between a primary's death and the end of the failover.
        case noPrimary(Address)

        public var description: String {
            switch self {
            case .unreachable(let sentinels):
                return "no Redis Sentinel answered at \(sentinels.map(\.description).joined(separator: ", "))"
            case .unknownMaster(let name, let sentinels):
                return "the Redis Sentinels at \(sentinels.map(\.description).joined(separator: ", ")) monitor no master named '\(name)'"
            case .noPrimary(let address):
                return "the primary the sentinels name, \(address.host):\(address.port), is unreachable or not a primary"
            }
        }
    }

    /// Asks the sentinels in turn (from `first`) where the primary is. Blocking, bounded by
    /// one second per sentinel: called at start (to refuse a bad configuration) and on the
    /// shard's I/O thread, never on a service thread.
    public static func askSentinels(_ source: SentinelSource, from first: Int = 0) -> Result<(address: Address, sentinel: Int), SentinelProblem> {
        var anyAnswered = false
        for step in 0..<source.sentinels.count {
            let index = (first + step) % source.sentinels.count
            let endpoint = source.sentinels[index]
            guard let context = openBlocking(host: endpoint.host, port: endpoint.port, timeout: 1,
                                             setup: source.password.map { [["AUTH", $0]] } ?? []) else { continue }
            defer { redisFree(context) }
            guard let reply = call(context, ["SENTINEL", "get-master-addr-by-name", source.masterName]) else { continue }
            anyAnswered = true
            guard case .array(let parts) = reply, parts.count == 2, let host = parts[0].text, let port = parts[1].int else { continue }
            return .success((Address(host: host, port: Int(port)), index))
        }
        return .failure(anyAnswered ? .unknownMaster(source.masterName, source.sentinels) : .unreachable(source.sentinels))
    }

    /// The primary the sentinels name, once `ROLE` on it confirms it is one: during a
    /// failover a sentinel may still name the old primary, now a replica, and writes there
    /// would be refused (or lost). Also reads its replication ID, the shard's generation.
    private func locatePrimary(_ source: SentinelSource) -> Result<(address: Address, generation: String), SentinelProblem> {
        if let switched = switchedTo {
            switchedTo = nil
            if let generation = confirmPrimary(switched) { return .success((withCredentials(switched), generation)) }
        }
        var problem = SentinelProblem.unreachable(source.sentinels)
        for step in 0..<source.sentinels.count {
            switch Self.askSentinels(source, from: sentinelIndex + step) {
            case .failure(let failure):
                return .failure(failure)
            case .success(let found):
                if let generation = confirmPrimary(found.address) {
                    sentinelIndex = found.sentinel
                    return .success((withCredentials(found.address), generation))
                }
                problem = .noPrimary(found.address)
                // The next sentinel may know of a failover this one has not heard of yet.
                sentinelIndex = found.sentinel + 1
            }
        }
        return .failure(problem)
    }

    /// The address the sentinels name, with this shard's password and database.
    private func withCredentials(_ found: Address) -> Address {
        Address(host: found.host, port: found.port, db: address.db, password: address.password)
    }

    /// The server's replication ID when `ROLE` says it is a primary; nil otherwise.
    private func confirmPrimary(_ found: Address) -> String? {
        let candidate = withCredentials(found)
        let setup = candidate.password.map { [["AUTH", $0]] } ?? []
        guard let context = Self.openBlocking(host: candidate.host, port: candidate.port, timeout: 1, setup: setup) else { return nil }
        defer { redisFree(context) }
        guard case .array(let role)? = Self.call(context, ["ROLE"]), role.first?.text == "master",
              let info = Self.call(context, ["INFO", "replication"])?.text
        else { return nil }
        return info.split(whereSeparator: \.isNewline).first { $0.hasPrefix("master_replid:") }
            .map { String($0.dropFirst("master_replid:".count).filter { !$0.isWhitespace }) } ?? ""
    }

    private func openWatch() {
        guard let source = sentinel else { return }
        nextWatchAttempt = now() + 2
        for step in 0..<source.sentinels.count {
            let endpoint = source.sentinels[(sentinelIndex + step) % source.sentinels.count]
            guard let context = Self.openBlocking(host: endpoint.host, port: endpoint.port, timeout: 1,
                                                  setup: source.password.map { [["AUTH", $0]] } ?? []) else { continue }
            guard case .array? = Self.call(context, ["SUBSCRIBE", "+switch-master"]), hub_redis_make_nonblocking(context) == 0 else {
                redisFree(context)
                continue
            }
            watch = context
            return
        }
    }

    private func closeWatch() {
        if let watch { redisFree(watch) }
        watch = nil
    }

    /// Reads the sentinel's messages; returns the new primary when this shard's master was
    /// switched (`+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`).
    private func readWatch() -> Address? {
        guard let watch, let source = sentinel else { return nil }
        guard redisBufferRead(watch) == REDIS_OK else {
            closeWatch()
            return nil
        }
        var switched: Address?
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReplyFromReader(watch, &raw) == REDIS_OK else {
                closeWatch()
                return switched
            }
            guard let raw else { break }
            let reply = Self.copy(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            guard case .array(let parts) = reply, parts.count == 3, parts[0].text == "message", let text = parts[2].text else { continue }
            let words = text.split(separator: " ")
            if words.count == 5, words[0] == source.masterName, let port = Int(words[4]) { switched = Address(host: String(words[3]), port: port) }
        }
        return switched
    }

    private func disconnect(reason: String, quiet: Bool = false) {
        if let command { redisFree(command) }
        if let pubsub { redisFree(pubsub) }
        command = nil
        pubsub = nil
        let failed = inflight[inflightHead...]
        inflight = []
        inflightSince = []
        inflightHead = 0
        knownChannels.formUnion(subscribed)
        subscribed = []
        confirmed = []
        resubscribing = []
        resubscribed = []
        shardSubscribesPending = []
        let held = awaitingAcknowledgement.map(\.completion)
        awaitingAcknowledgement = []
        acknowledgementInFlight = false
        let (queued, waiters) = inbox.withLock { inbox -> ([@Sendable (RedisValue) -> Void], [@Sendable (Result<Void, ProtocolError>) -> Void]) in
            inbox.connected = false
            inbox.generation = ""
            let queued = inbox.commands.map(\.completion)
            inbox.commands = []
            let waiters = inbox.subscribeWaiters.values.flatMap { $0 }
            inbox.subscribeWaiters = [:]
            return (queued, waiters)
        }
        for callback in failed { callback(.error("redis connection lost")) }
        for callback in queued + held { callback(.error("redis connection lost")) }
        for waiter in waiters { waiter(.failure(ProtocolError.internal.with(message: "redis connection lost"))) }
        if !quiet {
            logger.error("redis \(label) connection lost (\(reason)); reconnecting")
            reportedDown = true
            onConnectionLost?()
        }
        nextAttempt = now() + backoff
    }

    private func failQueuedWhileDown() {
        let (queued, waiters) = inbox.withLock { inbox -> ([@Sendable (RedisValue) -> Void], [@Sendable (Result<Void, ProtocolError>) -> Void]) in
            let queued = inbox.commands.map(\.completion)
            inbox.commands = []
            let waiters = inbox.subscribeWaiters.values.flatMap { $0 }
            inbox.subscribeWaiters = [:]
            return (queued, waiters)
        }
        for callback in queued { callback(.error("redis \(label) unavailable")) }
        for waiter in waiters { waiter(.failure(ProtocolError.internal.with(message: "redis unavailable"))) }
    }

    /// Moves queued commands and channel changes into the connections' output buffers.
    private func moveInbox() {
        guard let command else { return }
        let (commands, dirty, waiting) = inbox.withLock { inbox -> ([QueuedCommand], Set<String>, [String: [@Sendable (Result<Void, ProtocolError>) -> Void]]) in
            let taken = (inbox.commands, inbox.dirtyChannels, inbox.subscribeWaiters.filter { confirmed.contains($0.key) })
            inbox.commands.removeAll(keepingCapacity: true)
            inbox.dirtyChannels.removeAll()
            for key in taken.2.keys { inbox.subscribeWaiters.removeValue(forKey: key) }
            return taken
        }
        let queuedAt = now()
        for queued in commands {
            if queued.acknowledged {
                awaitingAcknowledgement.append(queued)
                continue
            }
            Self.append(command, queued.arguments)
            inflight.append(queued.completion)
            inflightSince.append(queuedAt)
        }
        sendAcknowledged(on: command, at: queuedAt)
        for waiters in waiting.values { for waiter in waiters { waiter(.success(())) } }
        if !dirty.isEmpty {
            let always = inbox.withLock { $0.alwaysSubscribed }
            var add: [String] = []
            var remove: [String] = []
            for channel in dirty {
                let want = always.contains(channel) || (wanted?(channel) ?? false) || inbox.withLock({ $0.subscribeWaiters[channel] != nil })
                if want && !subscribed.contains(channel) { add.append(channel) }
                if !want && subscribed.contains(channel) { remove.append(channel) }
            }
            subscribeChannels(add)
            if !remove.isEmpty, let pubsub, shardedPubSub {
                for channel in remove { Self.append(pubsub, [Array("SUNSUBSCRIBE".utf8), Array(channel.utf8)]) }
                for channel in remove { subscribed.remove(channel); confirmed.remove(channel); knownChannels.remove(channel) }
            } else if !remove.isEmpty, let pubsub {
                for chunk in stride(from: 0, to: remove.count, by: 512) {
                    Self.append(pubsub, [Array("UNSUBSCRIBE".utf8)] + remove[chunk..<min(chunk + 512, remove.count)].map { Array($0.utf8) })
                }
                for channel in remove { subscribed.remove(channel); confirmed.remove(channel); knownChannels.remove(channel) }
            }
        }
    }

    /// Writes the acknowledged writes held so far, then one `WAIT` for all of them (it waits
    /// for this connection's latest write); their replies are handed over when it answers.
    private func sendAcknowledged(on command: UnsafeMutablePointer<redisContext>, at queuedAt: Double) {
        guard let acknowledgement, !acknowledgementInFlight, !awaitingAcknowledgement.isEmpty else { return }
        let batch = awaitingAcknowledgement
        awaitingAcknowledgement = []
        acknowledgementInFlight = true
        let replies = AcknowledgedReplies(count: batch.count)
        for (index, queued) in batch.enumerated() {
            Self.append(command, queued.arguments)
            inflight.append { reply in replies.values[index] = reply }
            inflightSince.append(queuedAt)
        }
        Self.append(command, ["WAIT", String(acknowledgement.replicas), String(acknowledgement.timeoutMilliseconds)].map { Array($0.utf8) })
        inflight.append { [self] reply in
            acknowledgementInFlight = false
            let replicas = reply.int ?? 0
            for (queued, value) in zip(batch, replies.values) {
                // A refused command wrote nothing: its own error says more than WAIT's count.
                if value.isError || replicas >= Int64(acknowledgement.replicas) {
                    queued.completion(value)
                } else {
                    queued.completion(.error("only \(replicas) of \(acknowledgement.replicas) replicas acknowledged the write within \(acknowledgement.timeoutMilliseconds) ms; it may still have taken effect"))
                }
            }
        }
        inflightSince.append(queuedAt)
    }

    private func subscribeChannels(_ channels: [String]) {
        guard let pubsub, !channels.isEmpty else { return }
        if shardedPubSub {
            for channel in channels { Self.append(pubsub, [Array("SSUBSCRIBE".utf8), Array(channel.utf8)]) }
            shardSubscribesPending += channels
            subscribed.formUnion(channels)
            knownChannels.formUnion(channels)
            return
        }
        for chunk in stride(from: 0, to: channels.count, by: 512) {
            Self.append(pubsub, [Array("SUBSCRIBE".utf8)] + channels[chunk..<min(chunk + 512, channels.count)].map { Array($0.utf8) })
        }
        subscribed.formUnion(channels)
        knownChannels.formUnion(channels)
    }

    private static func append(_ context: UnsafeMutablePointer<redisContext>, _ arguments: [[UInt8]]) {
        // hiredis copies the arguments into its output buffer before returning.
        let count = arguments.count
        let pointers = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: count)
        let lengths = UnsafeMutablePointer<Int>.allocate(capacity: count)
        var storage: [UnsafeMutablePointer<CChar>] = []
        for (i, argument) in arguments.enumerated() {
            let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(argument.count, 1))
            argument.withUnsafeBytes { raw in
                if argument.count > 0 { UnsafeMutableRawPointer(buffer).copyMemory(from: raw.baseAddress!, byteCount: argument.count) }
            }
            storage.append(buffer)
            pointers[i] = UnsafePointer(buffer)
            lengths[i] = argument.count
        }
        redisAppendCommandArgv(context, Int32(count), pointers, lengths)
        for buffer in storage { buffer.deallocate() }
        pointers.deallocate()
        lengths.deallocate()
    }

    private func readReplies(_ context: UnsafeMutablePointer<redisContext>) -> Bool {
        guard redisBufferRead(context) == REDIS_OK else { return false }
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReplyFromReader(context, &raw) == REDIS_OK else { return false }
            guard let raw else { return true }
            let reply = Self.copy(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            // A replica refuses writes (READONLY) and a primary loading its data answers
            // LOADING: with Sentinel, ask again where the primary is.
            if sentinel != nil, case .error(let message) = reply, message.contains("READONLY") || message.hasPrefix("LOADING") { demoted = true }
            guard inflightHead < inflight.count else { continue }
            let callback = inflight[inflightHead]
            inflightHead += 1
            if inflightHead == inflight.count {
                inflight.removeAll(keepingCapacity: true)
                inflightSince.removeAll(keepingCapacity: true)
                inflightHead = 0
            }
            callback(reply)
        }
    }

    private func readMessages(_ context: UnsafeMutablePointer<redisContext>) -> Bool {
        guard redisBufferRead(context) == REDIS_OK else { return false }
        var confirmedNow: [String] = []
        var dropped: [(String, String)] = []
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisGetReplyFromReader(context, &raw) == REDIS_OK else { return false }
            guard let raw else { break }
            let reply = Self.copy(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            if case .error(let message) = reply, shardedPubSub, !shardSubscribesPending.isEmpty {
                let channel = shardSubscribesPending.removeFirst()
                subscribed.remove(channel)
                knownChannels.remove(channel)
                dropped.append((channel, message))
                continue
            }
            guard case .array(let parts) = reply, parts.count >= 3, let kind = parts[0].text else { continue }
            switch kind {
            case "message", "smessage":
                if let channel = parts[1].text, case .string(let payload) = parts[2] { onMessage?(channel, payload) }
            case "sunsubscribe":
                // Still subscribed as far as this side knows: Redis ended it (the slot moved).
                if let channel = parts[1].text, subscribed.remove(channel) != nil {
                    confirmed.remove(channel)
                    knownChannels.remove(channel)
                    dropped.append((channel, "slot moved"))
                }
            case "subscribe", "ssubscribe":
                if kind == "ssubscribe", let channel = parts[1].text, let at = shardSubscribesPending.firstIndex(of: channel) {
                    shardSubscribesPending.remove(at: at)
                }
                if let channel = parts[1].text {
                    confirmed.insert(channel)
                    confirmedNow.append(channel)
                    if resubscribing.remove(channel) != nil, resubscribing.isEmpty {
                        let channels = resubscribed
                        resubscribed = []
                        onResubscribed?(channels)
                    }
                }
            default:
                break
            }
        }
        if !confirmedNow.isEmpty {
            let waiters = inbox.withLock { inbox -> [@Sendable (Result<Void, ProtocolError>) -> Void] in
                confirmedNow.flatMap { inbox.subscribeWaiters.removeValue(forKey: $0) ?? [] }
            }
            for waiter in waiters { waiter(.success(())) }
        }
        if !dropped.isEmpty {
            let waiters = inbox.withLock { inbox -> [@Sendable (Result<Void, ProtocolError>) -> Void] in
                dropped.flatMap { inbox.subscribeWaiters.removeValue(forKey: $0.0) ?? [] }
            }
            for waiter in waiters { waiter(.failure(ProtocolError.internal.with(message: "redis subscription moved"))) }
            for (channel, reason) in dropped {
                if resubscribing.remove(channel) != nil, resubscribing.isEmpty {
                    let channels = resubscribed
                    resubscribed = []
                    onResubscribed?(channels)
                }
                onChannelDropped?(channel, reason)
            }
        }
        return true
    }

    private static func copy(_ reply: UnsafeMutablePointer<redisReply>) -> RedisValue {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            return .string(r.len > 0 ? Array(UnsafeRawBufferPointer(start: r.str, count: r.len)) : [])
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: UnsafeRawBufferPointer(start: r.str, count: r.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: UnsafeRawBufferPointer(start: r.str, count: r.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(r.integer)
        case REDIS_REPLY_ARRAY:
            var items: [RedisValue] = []
            items.reserveCapacity(r.elements)
            for i in 0..<r.elements { if let element = r.element[i] { items.append(Self.copy(element)) } }
            return .array(items)
        default:
            return .null
        }
    }
}

/// One of a shard's sockets as its host reports it (host thread only).
private final class ShardSocket: RedisSocketEvents, @unchecked Sendable {
    unowned let shard: RedisShard
    let pubsub: Bool

    init(_ shard: RedisShard, pubsub: Bool) {
        self.shard = shard
        self.pubsub = pubsub
    }

    func readable() { shard.hostReadable(pubsub: pubsub) }
    func writable() { shard.hostWritable() }
    func hostClosed(ending: Bool) { shard.hostGone(ending: ending) }
}

/// The replies of one batch of acknowledged writes, kept until their `WAIT` answers. Only the
/// shard's I/O thread touches it.
private final class AcknowledgedReplies: @unchecked Sendable {
    var values: [RedisValue]

    init(count: Int) { values = Array(repeating: .null, count: count) }
}
