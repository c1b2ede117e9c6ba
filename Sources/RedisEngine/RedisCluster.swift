import CHiredis
import Channels
import Glibc
import Logging
import Synchronization

/// A Redis Cluster: the slot map, one `RedisShard` (command + sharded PUB/SUB connection) per
/// node, and the routing of each command to the node that owns its key's slot.
///
/// - Discovery: `CLUSTER SLOTS` from any reachable node (the seeds first), again after a
///   `MOVED`, a lost connection, a subscription Redis ended, and every `refreshInterval`.
/// - Redirections: `MOVED` updates the map and resends; `ASK` resends once, after `ASKING`, to
///   the importing node; `TRYAGAIN`/`CLUSTERDOWN` and "unavailable" (never sent, e.g. during a
///   failover) are retried after a pause. A command whose connection broke mid-flight is not
///   resent: it may have taken effect.
/// - Sharded PUB/SUB: each channel is SSUBSCRIBEd on its slot's owner only. When the owner
///   changes (resharding, failover) the subscription moves to the new owner, and the broker
///   checks the channel's stream position there, so subscribers recover what was published
///   while it moved.
///
/// Map changes and retries run on the cluster's own thread; replies arrive on the shards' I/O
/// threads. No service thread waits for any of it.
public final class RedisCluster: @unchecked Sendable {
    let seeds: [RedisShard.Address]
    let logger: Logger
    static let refreshInterval = 10.0
    /// Redirections one command may follow (a map in flux sends it round a few nodes at most).
    static let maxRedirects = 5
    /// Retries of a command refused while the cluster heals, 100 ms apart.
    static let maxRetries = 30

    /// Called on an I/O thread for every sharded PUB/SUB message.
    var onMessage: (@Sendable (_ topic: String, _ payload: [UInt8]) -> Void)?
    /// Whether the node still wants a topic (a channel with local subscribers, the control topic).
    var wanted: (@Sendable (String) -> Bool)?
    /// Called once topics are subscribed on a node they were not on before (moved, resubscribed):
    /// anything published meanwhile is found by reading the streams there.
    var onResubscribed: (@Sendable (_ topics: [String], _ slot: Int) -> Void)?

    private struct State {
        /// Node name ("host:port") per slot; nil until the map is known.
        var owners: [String?] = Array(repeating: nil, count: RedisSlot.count)
        var shards: [String: RedisShard] = [:]
        /// Topics the node subscribed, and the node each is subscribed on (nil: to be (re)placed).
        var topics: [String: String?] = [:]
        var refreshWanted = true
        var refreshInFlight = false
        var lastRefresh = -1e9
        var mapReply: (RedisValue, queried: String)?
        var deferred: [(at: Double, run: @Sendable () -> Void)] = []
        var stopping = false
        var everMapped = false
        /// Loops that carry the nodes' connections (RedisHost), each node on the next in turn.
        var hosts: [any RedisHost] = []
        var hostsAssigned = 0
    }

    private let state = Mutex(State())
    private let wakeFD: Int32
    private var thread: pthread_t?

    public init(seeds: [RedisShard.Address], logger: Logger) {
        precondition(!seeds.isEmpty)
        self.seeds = seeds
        self.logger = logger
        wakeFD = hub_eventfd()
        state.withLock { state in
            for seed in seeds { state.shards[Self.name(seed.host, seed.port)] = makeShard(seed) }
        }
    }

    static func name(_ host: String, _ port: Int) -> String { "\(host):\(port)" }

    /// Every node's connections, and those of nodes met later, go to one of `hosts` in turn.
    public func attach(hosts: [any RedisHost]) {
        let placed = state.withLock { state -> [(RedisShard, any RedisHost)] in
            state.hosts = hosts
            return state.shards.keys.sorted().compactMap { name in
                state.shards[name].map { ($0, Self.nextHost(&state)!) }
            }
        }
        for (shard, host) in placed { shard.attach(host: host) }
    }

    private static func nextHost(_ state: inout State) -> (any RedisHost)? {
        guard !state.hosts.isEmpty else { return nil }
        defer { state.hostsAssigned += 1 }
        return state.hosts[state.hostsAssigned % state.hosts.count]
    }

    private func makeShard(_ address: RedisShard.Address) -> RedisShard {
        let shard = RedisShard(address: address, logger: logger)
        let name = Self.name(address.host, address.port)
        shard.shardedPubSub = true
        shard.onMessage = { [unowned self] topic, payload in self.onMessage?(topic, payload) }
        // A shard keeps a topic only while it owns the topic's slot: after a move the old owner
        // lets go (SUNSUBSCRIBE) and does not take it back on reconnection.
        shard.wanted = { [unowned self] topic in
            guard self.wanted?(topic) ?? false else { return false }
            return self.state.withLock { $0.owners[RedisSlot.of(topic)] == name && $0.topics[topic] == name }
        }
        shard.onResubscribed = { [unowned self] topics in
            for (slot, group) in Dictionary(grouping: topics, by: { RedisSlot.of($0) }) { self.onResubscribed?(group, slot) }
        }
        shard.onChannelDropped = { [unowned self] topic, reason in
            self.logger.debug("redis cluster: \(name) ended the subscription of \(topic) (\(reason)); placing it again")
            self.state.withLock { state in
                if state.topics[topic] == name { state.topics[topic] = .some(nil) }
                state.refreshWanted = true
            }
            self.signal()
        }
        shard.onConnectionLost = { [unowned self] in self.requestRefresh() }
        return shard
    }

    public func start() {
        for shard in state.withLock({ Array($0.shards.values) }) { shard.start() }
        let box = Unmanaged.passRetained(self)
        var handle = pthread_t()
        pthread_create(&handle, nil, { raw in
            let cluster = Unmanaged<RedisCluster>.fromOpaque(raw!).takeRetainedValue()
            cluster.run()
            return nil
        }, box.toOpaque())
        thread = handle
    }

    public func stop() {
        state.withLock { $0.stopping = true }
        signal()
        if let thread { pthread_join(thread, nil) }
        for shard in state.withLock({ Array($0.shards.values) }) { shard.stop() }
    }

    /// Connected to the owner of every slot (or, before the map is known, to some node).
    public var isConnected: Bool {
        let (owners, shards) = state.withLock { state in (Set(state.owners.compactMap { $0 }), state.shards) }
        if owners.isEmpty { return false }
        return owners.allSatisfy { shards[$0]?.isConnected ?? false }
    }

    /// The primaries as the map has them now (for commands every node must run, e.g. SCAN).
    public var primaries: [RedisShard] {
        state.withLock { state in Set(state.owners.compactMap { $0 }).sorted().compactMap { state.shards[$0] } }
    }

    func requestRefresh() {
        state.withLock { $0.refreshWanted = true }
        signal()
    }

    private func signal() { hub_eventfd_signal(wakeFD) }

    private func later(_ seconds: Double, _ run: @escaping @Sendable () -> Void) {
        let at = Self.now() + seconds
        state.withLock { $0.deferred.append((at, run)) }
        signal()
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    // MARK: Commands

    /// Sends a command about a key of `slot` to the node that owns it, following redirections.
    public func send(slot: Int, _ arguments: [[UInt8]], completion: @escaping @Sendable (RedisValue) -> Void) {
        dispatch(slot: slot, arguments, to: nil, asking: false, redirects: 0, retries: 0, completion: completion)
    }

    private func dispatch(slot: Int, _ arguments: [[UInt8]], to target: RedisShard?, asking: Bool, redirects: Int, retries: Int,
                          completion: @escaping @Sendable (RedisValue) -> Void) {
        let shard = target ?? state.withLock { state -> RedisShard? in
            if let owner = state.owners[slot], let shard = state.shards[owner] { return shard }
            // Map not known yet: any node answers, with MOVED if it is the wrong one.
            return state.shards.values.first { $0.isConnected }
        }
        guard let shard else {
            retry(slot: slot, arguments, retries: retries, error: "redis cluster: no node reachable", completion: completion)
            return
        }
        let handle: @Sendable (RedisValue) -> Void = { [self] reply in
            guard case .error(let message) = reply else { completion(reply); return }
            if let redirect = RedisRedirect(error: message), redirects < Self.maxRedirects {
                let next = node(redirect.host, redirect.port, like: shard.address)
                if redirect.kind == .moved {
                    state.withLock { $0.owners[redirect.slot] = Self.name(redirect.host, redirect.port) }
                    requestRefresh()
                }
                // A node just met is still connecting: give it a moment rather than fail.
                if next.isConnected {
                    dispatch(slot: slot, arguments, to: redirect.kind == .ask ? next : nil, asking: redirect.kind == .ask,
                             redirects: redirects + 1, retries: retries, completion: completion)
                } else {
                    later(0.05) { [self] in
                        dispatch(slot: slot, arguments, to: redirect.kind == .ask ? next : nil, asking: redirect.kind == .ask,
                                 redirects: redirects + 1, retries: retries + 1, completion: completion)
                    }
                }
                return
            }
            // Multi-key command mid-migration, a cluster healing, or a node not reachable (the
            // command was never sent): the same command is safe to send again shortly.
            if message.hasPrefix("TRYAGAIN") || message.hasPrefix("CLUSTERDOWN") || message.hasSuffix(" unavailable") {
                if !message.hasPrefix("TRYAGAIN") { requestRefresh() }
                retry(slot: slot, arguments, retries: retries, error: message, completion: completion)
                return
            }
            completion(reply)
        }
        if asking { shard.sendAsking(arguments, completion: handle) } else { shard.send(arguments, completion: handle) }
    }

    private func retry(slot: Int, _ arguments: [[UInt8]], retries: Int, error: String, completion: @escaping @Sendable (RedisValue) -> Void) {
        guard retries < Self.maxRetries, !state.withLock({ $0.stopping }) else { completion(.error(error)); return }
        later(0.1) { [self] in dispatch(slot: slot, arguments, to: nil, asking: false, redirects: 0, retries: retries + 1, completion: completion) }
    }

    /// The shard for a node, created (and started) when first met. Nodes are few and stay known:
    /// a demoted primary's shard just holds no slots.
    private func node(_ host: String, _ port: Int, like template: RedisShard.Address) -> RedisShard {
        let name = Self.name(host, port)
        let (shard, created, carrier) = state.withLock { state -> (RedisShard, Bool, (any RedisHost)?) in
            if let shard = state.shards[name] { return (shard, false, nil) }
            var address = template
            address.host = host
            address.port = port
            let shard = makeShard(address)
            state.shards[name] = shard
            return (shard, true, Self.nextHost(&state))
        }
        if let carrier { shard.attach(host: carrier) }
        if created { shard.start() }
        return shard
    }

    // MARK: Sharded PUB/SUB

    /// Subscribes a topic on its slot's owner; completes once Redis confirmed there.
    func subscribe(_ topic: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        // Known before it is placed: should every attempt fail, the next map still places it.
        state.withLock { state in if state.topics[topic] == nil { state.topics[topic] = .some(nil) } }
        place(topic, attempts: 0, completion: completion)
    }

    private func place(_ topic: String, attempts: Int, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        let slot = RedisSlot.of(topic)
        let shard = state.withLock { state -> RedisShard? in
            guard let owner = state.owners[slot] ?? state.shards.first(where: { $0.value.isConnected })?.key else { return nil }
            state.topics[topic] = owner
            return state.shards[owner]
        }
        guard let shard else {
            if attempts < Self.maxRetries { later(0.1) { [self] in place(topic, attempts: attempts + 1, completion: completion) } }
            else { completion(.failure(ProtocolError.internal.with(message: "redis cluster: no node reachable"))) }
            return
        }
        shard.subscribe(topic) { [self] result in
            // Ended by Redis (slot moved, MOVED) or the node went away: place it again once
            // the map is fresh.
            if case .failure = result, attempts < Self.maxRetries, wanted?(topic) ?? true {
                requestRefresh()
                later(0.1) { [self] in place(topic, attempts: attempts + 1, completion: completion) }
                return
            }
            completion(result)
        }
    }

    /// The topic may no longer be wanted; its shard asks `wanted` before letting go.
    func release(_ topic: String) {
        // Asked outside the lock: `wanted` takes the node's own locks.
        let stillWanted = wanted?(topic) ?? false
        let shard = state.withLock { state -> RedisShard? in
            guard let placed = state.topics[topic] else { return nil }
            if !stillWanted { state.topics.removeValue(forKey: topic) }
            return placed.flatMap { state.shards[$0] }
        }
        shard?.release(topic)
    }

    // MARK: Cluster thread

    private func run() {
        while true {
            let (stopping, due, wait) = state.withLock { state -> (Bool, [@Sendable () -> Void], Double) in
                let now = Self.now()
                let due = state.deferred.filter { $0.at <= now }.map(\.run)
                state.deferred.removeAll { $0.at <= now }
                let next = state.deferred.map(\.at).min().map { $0 - now } ?? 1
                return (state.stopping, due, max(0.005, min(next, 1)))
            }
            if stopping { break }
            for run in due { run() }
            if let (reply, queried) = state.withLock({ state in defer { state.mapReply = nil }; return state.mapReply }) {
                apply(map: reply, queried: queried)
            }
            refreshIfDue()
            var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 1, Int32(wait * 1000))
            hub_eventfd_drain(wakeFD)
        }
        close(wakeFD)
    }

    private func refreshIfDue() {
        let now = Self.now()
        let shard = state.withLock { state -> RedisShard? in
            // While a slot's owner is unreachable its replica may be taking over: look often.
            let ownerDown = Set(state.owners.compactMap { $0 }).contains { !(state.shards[$0]?.isConnected ?? false) }
            let periodic = now - state.lastRefresh >= (ownerDown ? 0.5 : Self.refreshInterval)
            // At most ten refreshes a second, however many MOVED replies ask for one.
            guard !state.refreshInFlight, periodic || (state.refreshWanted && now - state.lastRefresh >= 0.1) else { return nil }
            // Ask a node that owns slots first; the seeds when the map is unknown or all are down.
            let owners = Set(state.owners.compactMap { $0 })
            let candidates = state.shards.filter { $0.value.isConnected }
            guard let pick = candidates.first(where: { owners.contains($0.key) }) ?? candidates.first else { return nil }
            state.refreshWanted = false
            state.refreshInFlight = true
            state.lastRefresh = now
            return pick.value
        }
        guard let shard else { return }
        let queried = shard.address.host
        shard.send(["CLUSTER", "SLOTS"]) { [self] reply in
            state.withLock { state in
                state.refreshInFlight = false
                if reply.isError { state.refreshWanted = true } else { state.mapReply = (reply, queried) }
            }
            signal()
        }
    }

    /// `CLUSTER SLOTS`: [[first, last, [host, port, id], replicas…], …]; an empty host means
    /// the host of the node that answered.
    static func parseSlots(_ reply: RedisValue, queriedHost: String) -> [(first: Int, last: Int, host: String, port: Int)]? {
        guard case .array(let ranges) = reply else { return nil }
        var out: [(Int, Int, String, Int)] = []
        for range in ranges {
            guard case .array(let parts) = range, parts.count >= 3, let first = parts[0].int, let last = parts[1].int,
                  case .array(let primary) = parts[2], primary.count >= 2, let port = primary[1].int,
                  first >= 0, last < RedisSlot.count, first <= last else { return nil }
            let host = primary[0].text.flatMap { $0.isEmpty || $0 == "?" ? nil : $0 } ?? queriedHost
            out.append((Int(first), Int(last), host, Int(port)))
        }
        return out
    }

    private func apply(map reply: RedisValue, queried: String) {
        guard let ranges = Self.parseSlots(reply, queriedHost: queried), let template = seeds.first else {
            requestRefresh()
            return
        }
        for range in ranges { _ = node(range.host, range.port, like: template) }
        let (moved, first) = state.withLock { state -> ([(String, RedisShard?, RedisShard)], Bool) in
            var owners = [String?](repeating: nil, count: RedisSlot.count)
            for range in ranges { for slot in range.first...range.last { owners[slot] = Self.name(range.host, range.port) } }
            state.owners = owners
            let first = !state.everMapped
            state.everMapped = true
            // Topics whose slot is now elsewhere (or that Redis dropped) go to the new owner.
            var moved: [(String, RedisShard?, RedisShard)] = []
            for (topic, placed) in state.topics {
                guard let owner = owners[RedisSlot.of(topic)], placed != owner, let target = state.shards[owner] else { continue }
                moved.append((topic, placed.flatMap { state.shards[$0] }, target))
            }
            return (moved, first)
        }
        if first { logger.notice("redis cluster: \(Set(ranges.map { Self.name($0.host, $0.port) }).count) primaries, \(ranges.count) slot ranges") }
        for (topic, old, _) in moved {
            guard wanted?(topic) ?? false else {
                state.withLock { _ = $0.topics.removeValue(forKey: topic) }
                old?.release(topic)
                continue
            }
            old?.release(topic)  // no longer its owner: `wanted` says no, it sends SUNSUBSCRIBE
            place(topic, attempts: 0) { [self] result in
                if case .success = result { onResubscribed?([topic], RedisSlot.of(topic)) }
            }
        }
    }
}
