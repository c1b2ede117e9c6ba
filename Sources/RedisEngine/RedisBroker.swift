import Channels
import Logging
import Synchronization

/// The scale-out engine: several hub nodes share channels through Redis.
///
/// - Fan-out: each node SUBSCRIBEs (PUB/SUB) to the channels it has subscribers in; a
///   publication is appended and PUBLISHed by one Lua script, so offsets and delivery order
///   agree on every node.
/// - History: a Redis Stream per channel with explicit `<offset>-0` ids, bounded by MAXLEN and
///   expiring with the channel's TTL; offset and epoch live in a hash beside it, so a client
///   recovers the same way on any node. A stream whose position was lost (Redis restarted
///   without persistence, keys expired) gets a new epoch: clients learn `recovered:false`.
/// - Shards: each channel lives on one Redis, chosen by a stable hash of its name (FNV-1a).
///   Control messages and the node directory live on the first shard.
/// - Cluster (`init(cluster:)`): a channel's keys and PUB/SUB channel carry its name as a hash
///   tag (`hub:stream:{news}`, `hub:meta:{news}`, `hub:ch:{news}`), so they share a slot and the
///   scripts stay single-slot; fan-out is sharded PUB/SUB (SPUBLISH/SSUBSCRIBE), reaching only
///   the nodes that own the slot instead of every node of the cluster (RedisCluster.swift).
/// - Failover (Sentinel): replication is asynchronous, so a promoted replica may lack a
///   stream's last entries and would hand out their offsets again. Streams remember the
///   primary (replication ID) they were last written under; the first publication or read
///   under another starts a new epoch, and subscribers learn `recovered:false` instead of
///   taking new publications for ones they hold.
public final class RedisBroker: Broker, @unchecked Sendable {
    /// The standalone shards; empty in cluster mode.
    let shards: [RedisShard]
    let cluster: RedisCluster?
    let logger: Logger
    private let handler = Mutex<(any BrokerEventHandler)?>(nil)
    private let clock: any Clock
    static let channelPrefix = "hub:ch:"
    static let controlChannel = "hub:control"

    /// Seconds a node stays in the directory after its last announcement.
    let nodeTTL: Int

    public convenience init(addresses: [RedisShard.Address], nodeTTL: Int = 15, clock: any Clock = SystemClock(), logger: Logger) {
        self.init(shards: addresses.map { RedisShard(address: $0, logger: logger) }, nodeTTL: nodeTTL, clock: clock, logger: logger)
    }

    /// Shards built by the caller: standalone servers, or primaries found through Sentinel.
    public init(shards: [RedisShard], nodeTTL: Int = 15, clock: any Clock = SystemClock(), logger: Logger) {
        precondition(!shards.isEmpty)
        self.nodeTTL = nodeTTL
        self.clock = clock
        self.logger = logger
        self.shards = shards
        cluster = nil
        for shard in shards {
            shard.onMessage = { [unowned self] channel, payload in self.deliver(redisChannel: channel, payload: payload) }
            shard.onResubscribed = { [unowned self, unowned shard] redisChannels in
                self.checkPositions(on: .shard(shard), redisChannels: redisChannels)
            }
            shard.wanted = { [unowned self] redisChannel in
                guard redisChannel.hasPrefix(Self.channelPrefix) else { return false }
                return self.eventHandler?.hasLocalSubscribers(channel: String(redisChannel.dropFirst(Self.channelPrefix.count))) ?? false
            }
        }
    }

    /// The engine on a Redis Cluster, found from any of `seeds` (their password applies to every node).
    public init(cluster seeds: [RedisShard.Address], nodeTTL: Int = 15, clock: any Clock = SystemClock(), logger: Logger) {
        precondition(!seeds.isEmpty)
        self.nodeTTL = nodeTTL
        self.clock = clock
        self.logger = logger
        shards = []
        let cluster = RedisCluster(seeds: seeds, logger: logger)
        self.cluster = cluster
        cluster.onMessage = { [unowned self] topic, payload in self.deliver(redisChannel: topic, payload: payload) }
        cluster.wanted = { [unowned self] topic in
            if topic == Self.controlChannel { return true }
            guard let channel = self.channel(ofTopic: topic) else { return false }
            return self.eventHandler?.hasLocalSubscribers(channel: channel) ?? false
        }
        cluster.onResubscribed = { [unowned self, unowned cluster] topics, slot in
            self.checkPositions(on: RedisRoute(target: .slot(cluster, slot)), redisChannels: topics)
        }
    }

    public func start() {
        if let cluster {
            cluster.start()
            // Engine-wide, yet one sharded channel: every node SSUBSCRIBEs it on its slot's owner.
            cluster.subscribe(Self.controlChannel) { _ in }
            return
        }
        for shard in shards { shard.start() }
        shards[0].subscribe(Self.controlChannel, always: true) { _ in }
    }

    /// Hands each shard's (or cluster node's) connections to one of `hosts`, in turn, once
    /// their loops run; see RedisHost.
    public func attach(hosts: [any RedisHost]) {
        guard !hosts.isEmpty else { return }
        if let cluster { return cluster.attach(hosts: hosts) }
        for (index, shard) in shards.enumerated() { shard.attach(host: hosts[index % hosts.count]) }
    }

    public func stop() {
        cluster?.stop()
        for shard in shards { shard.stop() }
    }

    /// Every shard (or every slot's owner) is connected.
    public var isConnected: Bool { cluster?.isConnected ?? shards.allSatisfy(\.isConnected) }

    /// The shard a channel lives on: FNV-1a of its UTF-8 name, modulo the shard count.
    public static func shardIndex(for channel: String, count: Int) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in channel.utf8 {
            hash ^= UInt32(byte)
            hash = hash &* 16_777_619
        }
        return Int(hash % UInt32(count))
    }

    /// Where a channel's keys and PUB/SUB channel live.
    func shard(for channel: String) -> RedisRoute {
        if let cluster { return .cluster(cluster, key: topic(channel)) }
        return .shard(shards[Self.shardIndex(for: channel, count: shards.count)])
    }

    /// Where engine-wide keys (records, rate limits, the node directory) live: the first shard,
    /// or in a cluster the owner of the key's own slot.
    public func route(forKey key: String) -> RedisRoute {
        if let cluster { return .cluster(cluster, key: key) }
        return .shard(shards[0])
    }

    /// Keys carry a channel's name as their hash tag (cluster mode).
    var tagsKeys: Bool { cluster != nil }

    /// A key of `name` under `prefix`: hash-tagged in a cluster, plain otherwise (as before).
    func key(_ prefix: String, _ name: String) -> String { tagsKeys ? RedisSlot.taggedKey(prefix, name) : prefix + name }

    func topic(_ channel: String) -> String { key(Self.channelPrefix, channel) }

    func channel(ofTopic topic: String) -> String? {
        if tagsKeys { return RedisSlot.name(inTaggedKey: topic, prefix: Self.channelPrefix) }
        return topic.hasPrefix(Self.channelPrefix) ? String(topic.dropFirst(Self.channelPrefix.count)) : nil
    }

    func streamKey(_ channel: String) -> String { key("hub:stream:", channel) }
    func metaKey(_ channel: String) -> String { key("hub:meta:", channel) }
    /// Sharded PUB/SUB in a cluster: a message goes to its slot's nodes, not to every node.
    var publishCommand: [UInt8] { Array((tagsKeys ? "SPUBLISH" : "PUBLISH").utf8) }
    var nodesKey: String { tagsKeys ? "{hub:nodes}" : "hub:nodes" }
    var nodesExpiryKey: String { tagsKeys ? "{hub:nodes}:exp" : "hub:nodes:exp" }

    public func setEventHandler(_ handler: any BrokerEventHandler) { self.handler.withLock { $0 = handler } }
    private var eventHandler: (any BrokerEventHandler)? { handler.withLock { $0 } }


    // MARK: Publish and deliver

    /// Lua that starts a new epoch when the stream has none, or (ARGV[g] not empty: the
    /// primary's replication ID) was last written under another primary. KEYS[1] stream,
    /// KEYS[2] meta; defines `epoch`.
    static func epochCheck(newEpoch e: Int, generation g: Int) -> String {
        """
        local epoch = redis.call('hget', KEYS[2], 'e')
        if epoch and ARGV[\(g)] ~= '' and redis.call('hget', KEYS[2], 'g') ~= ARGV[\(g)] then
          -- written under another primary: a failover may have lost its last entries
          epoch = false
        end
        if not epoch then
          epoch = ARGV[\(e)]
          redis.call('del', KEYS[1], KEYS[2])
          redis.call('hset', KEYS[2], 'e', epoch)
          if ARGV[\(g)] ~= '' then redis.call('hset', KEYS[2], 'g', ARGV[\(g)]) end
        end

        """
    }

    static let publishScript = RedisScript(epochCheck(newEpoch: 6, generation: 8) + """
        local offset = redis.call('hincrby', KEYS[2], 's', 1)
        redis.call('expire', KEYS[2], ARGV[5])
        redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[3], offset .. '-0', 'd', ARGV[2])
        redis.call('expire', KEYS[1], ARGV[4])
        redis.call(ARGV[7], ARGV[1], 'p' .. offset .. ':' .. epoch .. ':' .. ARGV[2])
        return {offset, epoch}
        """)

    public func publish(channel: String, publication: Publication, options: ChannelOptions,
                        completion: @escaping @Sendable (Result<StreamPosition?, ProtocolError>) -> Void) {
        var publication = publication
        if publication.time == 0 { publication.time = Int64(clock.now() * 1000) }
        let body = JSONWriter.bytes(publication.json)
        let published = publication
        let shard = shard(for: channel)
        // Replies come back in command order on the shard's one connection: handlePublished
        // sees this node's publications of a channel in offset order.
        guard options.historyEnabled else {
            shard.send([publishCommand, Array(topic(channel).utf8), Array("p0::".utf8) + body]) { [weak self] reply in
                if !reply.isError { self?.eventHandler?.handlePublished(channel: channel, publication: published, position: nil) }
                completion(reply.isError ? .failure(Self.unavailable(reply)) : .success(nil))
            }
            return
        }
        let metaTTL = max(options.historyMetaTTL, options.historyTTL)
        let generation = shard.generation
        Self.publishScript.run(on: shard, keys: [streamKey(channel), metaKey(channel)], arguments: [
            Array(topic(channel).utf8), body, Array(String(options.historySize).utf8),
            Array(String(Int(options.historyTTL.rounded(.up))).utf8), Array(String(Int(metaTTL.rounded(.up))).utf8),
            Array(RandomID.make(length: 8).utf8), publishCommand, Array(generation.utf8),
        ], generation: generation, acknowledged: true) { [weak self] reply in
            guard case .array(let parts) = reply, parts.count == 2, let offset = parts[0].int, let epoch = parts[1].text else {
                completion(.failure(Self.unavailable(reply)))
                return
            }
            let position = StreamPosition(offset: UInt64(offset), epoch: epoch)
            var stored = published
            stored.offset = position.offset
            self?.eventHandler?.handlePublished(channel: channel, publication: stored, position: position)
            completion(.success(position))
        }
    }

    /// Runs one command on the shard that holds `key` (the engine's own connection, replies in order).
    public func send(key: String, _ arguments: [[UInt8]], completion: @escaping @Sendable (RedisValue) -> Void) {
        // In a cluster the key's own slot (shard(for:) would route by the channel topic's tag).
        (cluster == nil ? shard(for: key) : route(forKey: key)).send(arguments, completion: completion)
    }

    static func unavailable(_ reply: RedisValue) -> ProtocolError {
        if case .error(let message) = reply { return ProtocolError.internal.with(message: "engine: \(message)") }
        return ProtocolError.internal.with(message: "engine: unexpected reply")
    }

    public func publishJoin(channel: String, info: ClientInfo) {
        shard(for: channel).send([publishCommand, Array(topic(channel).utf8), Array("j".utf8) + JSONWriter.bytes(info.json)]) { _ in }
    }

    public func publishLeave(channel: String, info: ClientInfo) {
        shard(for: channel).send([publishCommand, Array(topic(channel).utf8), Array("l".utf8) + JSONWriter.bytes(info.json)]) { _ in }
    }

    public func publishControl(_ command: JSONValue, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        route(forKey: Self.controlChannel).send([publishCommand, Array(Self.controlChannel.utf8), JSONWriter.bytes(command)]) { reply in
            completion(reply.isError ? .failure(Self.unavailable(reply)) : .success(()))
        }
    }

    /// A PUB/SUB message: `p<offset>:<epoch>:<publication>`, `j<info>`, `l<info>`, or a control command.
    private func deliver(redisChannel: String, payload: [UInt8]) {
        guard let handler = eventHandler else { return }
        if redisChannel == Self.controlChannel {
            if let command = try? JSONParser.parse(payload) { handler.handleControl(command) }
            return
        }
        guard let channel = channel(ofTopic: redisChannel), let kind = payload.first else { return }
        switch kind {
        case UInt8(ascii: "p"):
            guard let first = payload.firstIndex(of: UInt8(ascii: ":")),
                  let second = payload[(first + 1)...].firstIndex(of: UInt8(ascii: ":")),
                  let offset = UInt64(String(decoding: payload[1..<first], as: UTF8.self)),
                  let json = try? JSONParser.parse(Array(payload[(second + 1)...])),
                  var publication = Publication(json: json)
            else { return }
            let epoch = String(decoding: payload[(first + 1)..<second], as: UTF8.self)
            publication.offset = offset
            handler.handlePublication(channel: channel, publication: publication,
                                      position: offset > 0 ? StreamPosition(offset: offset, epoch: epoch) : nil)
        case UInt8(ascii: "j"), UInt8(ascii: "l"):
            guard let json = try? JSONParser.parse(Array(payload.dropFirst())), let info = ClientInfo(json: json) else { return }
            if kind == UInt8(ascii: "j") { handler.handleJoin(channel: channel, info: info) } else { handler.handleLeave(channel: channel, info: info) }
        default:
            return
        }
    }

    /// After a reconnection: reads where each resubscribed channel's stream is now and hands
    /// the positions to the node in one batch. A stream that moved on (publications made
    /// while this node was not subscribed) or was lost (Redis restarted empty) makes its
    /// subscribers recover instead of waiting, unaware, for the next publication.
    private func checkPositions(on shard: RedisRoute, redisChannels: [String]) {
        let channels = redisChannels.compactMap { channel(ofTopic: $0) }
        guard !channels.isEmpty else { return }
        // Replies come back in order on the shard's I/O thread; the last one hands the batch over.
        let batch = Mutex<(remaining: Int, positions: [(channel: String, position: StreamPosition?)])>((channels.count, []))
        for channel in channels {
            shard.send(["HMGET", metaKey(channel), "e", "s"]) { [weak self] reply in
                let done = batch.withLock { batch -> [(channel: String, position: StreamPosition?)]? in
                    batch.remaining -= 1
                    if case .array(let fields) = reply, fields.count == 2 {
                        let position = fields[0].text.map { StreamPosition(offset: UInt64(fields[1].int ?? 0), epoch: $0) }
                        batch.positions.append((channel, position))
                    }
                    return batch.remaining == 0 ? batch.positions : nil
                }
                if let done, let self { self.eventHandler?.handleStreamPositions(done) }
            }
        }
    }

    // MARK: History

    static let historyScript = RedisScript(epochCheck(newEpoch: 1, generation: 6) + """
        if redis.call('ttl', KEYS[2]) < 0 then redis.call('expire', KEYS[2], ARGV[2]) end
        local top = redis.call('hget', KEYS[2], 's') or '0'
        if ARGV[4] == '0' then return {top, epoch, {}} end
        local entries
        if ARGV[5] == '1' then
          entries = redis.call('xrevrange', KEYS[1], ARGV[3], '-', 'COUNT', ARGV[4])
        else
          entries = redis.call('xrange', KEYS[1], ARGV[3], '+', 'COUNT', ARGV[4])
        end
        return {top, epoch, entries}
        """)

    public func history(channel: String, filter: HistoryFilter, options: ChannelOptions,
                        completion: @escaping @Sendable (Result<HistoryResult, ProtocolError>) -> Void) {
        guard options.historyEnabled else {
            completion(.failure(.notAvailable.with(message: "history is not enabled for this channel")))
            return
        }
        let limit = filter.limit.map { $0 < 0 ? options.historySize : min($0, options.historySize) } ?? options.historySize
        var start = filter.reverse ? "+" : "-"
        if let since = filter.since {
            if filter.reverse {
                start = since.offset > 1 ? "\(since.offset - 1)-0" : "0-1"
            } else {
                start = "\(since.offset + 1)-0"
            }
        }
        let metaTTL = max(options.historyMetaTTL, options.historyTTL)
        let now = clock.now()
        let ttl = options.historyTTL
        let shard = shard(for: channel)
        let generation = shard.generation
        Self.historyScript.run(on: shard, keys: [streamKey(channel), metaKey(channel)], arguments: [
            Array(RandomID.make(length: 8).utf8), Array(String(Int(metaTTL.rounded(.up))).utf8), Array(start.utf8),
            Array(String(limit).utf8), Array((filter.reverse ? "1" : "0").utf8), Array(generation.utf8),
        ], generation: generation) { reply in
            guard case .array(let parts) = reply, parts.count == 3, let top = parts[0].int, let epoch = parts[1].text,
                  case .array(let entries) = parts[2]
            else {
                completion(.failure(Self.unavailable(reply)))
                return
            }
            let position = StreamPosition(offset: UInt64(top), epoch: epoch)
            var publications: [Publication] = []
            for entry in entries {
                guard case .array(let pair) = entry, pair.count == 2, let id = pair[0].text,
                      let offset = UInt64(id.split(separator: "-").first ?? ""),
                      case .array(let fields) = pair[1], fields.count == 2, case .string(let bytes) = fields[1],
                      let json = try? JSONParser.parse(bytes), var publication = Publication(json: json)
                else { continue }
                // Streams expire as a whole; single entries past the TTL are skipped here.
                if Double(publication.time) / 1000 + ttl <= now { continue }
                publication.offset = offset
                publications.append(publication)
            }
            if filter.reverse { publications.sort { $0.offset > $1.offset } }
            if let since = filter.since, !filter.reverse {
                let complete = publications.first.map { $0.offset == since.offset + 1 } ?? (since.offset == position.offset)
                if since.epoch != epoch || since.offset > position.offset || (!complete && limit > 0) {
                    completion(.failure(.unrecoverablePosition))
                    return
                }
            } else if let since = filter.since, since.epoch != epoch || since.offset > position.offset {
                completion(.failure(.unrecoverablePosition))
                return
            }
            completion(.success(HistoryResult(publications: publications, position: position)))
        }
    }

    public func removeHistory(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        // Drops the publications, keeps offset and epoch: positions never go backwards.
        shard(for: channel).send(["DEL", streamKey(channel)]) { reply in
            completion(reply.isError ? .failure(Self.unavailable(reply)) : .success(()))
        }
    }

    // MARK: Node-level subscriptions

    public func subscribe(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        if let cluster { cluster.subscribe(topic(channel), completion: completion); return }
        shards[Self.shardIndex(for: channel, count: shards.count)].subscribe(Self.channelPrefix + channel, completion: completion)
    }

    public func unsubscribe(channel: String) {
        if let cluster { cluster.release(topic(channel)); return }
        shards[Self.shardIndex(for: channel, count: shards.count)].release(Self.channelPrefix + channel)
    }

    public func sweep(now: Double) {}  // Redis expires keys itself

    // MARK: Node directory

    static let nodesScript = RedisScript("""
        local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
        for _, uid in ipairs(expired) do
          redis.call('hdel', KEYS[1], uid)
          redis.call('zrem', KEYS[2], uid)
        end
        return redis.call('hvals', KEYS[1])
        """)

    public func announce(node: NodeInfo) {
        let expiresAt = String(Int(clock.now()) + nodeTTL)
        let route = route(forKey: nodesKey)
        route.send(["HSET", nodesKey, node.uid, JSONWriter.string(node.json)]) { _ in }
        route.send(["ZADD", nodesExpiryKey, expiresAt, node.uid]) { _ in }
    }

    public func nodes(completion: @escaping @Sendable (Result<[NodeInfo], ProtocolError>) -> Void) {
        Self.nodesScript.run(on: route(forKey: nodesKey), keys: [nodesKey, nodesExpiryKey].map { Array($0.utf8) },
                             arguments: [Array(String(Int(clock.now())).utf8)]) { reply in
            guard case .array(let values) = reply else {
                completion(.failure(Self.unavailable(reply)))
                return
            }
            completion(.success(values.compactMap { value in
                guard case .string(let bytes) = value, let json = try? JSONParser.parse(bytes) else { return nil }
                return NodeInfo(json: json)
            }))
        }
    }
}

/// A Lua script run with EVALSHA, falling back to EVAL after a Redis restart emptied the
/// script cache.
struct RedisScript: Sendable {
    let source: String
    let sha: String

    init(_ source: String) {
        self.source = source
        sha = SHA1.hex(Array(source.utf8))
    }

    /// `generation` and `acknowledged` as for `RedisShard.send` (a cluster route ignores them).
    func run(on shard: RedisRoute, keys: [String], arguments: [[UInt8]], generation: String? = nil, acknowledged: Bool = false,
             completion: @escaping @Sendable (RedisValue) -> Void) {
        run(on: shard, keys: keys.map { Array($0.utf8) }, arguments: arguments, generation: generation, acknowledged: acknowledged, completion: completion)
    }

    func run(on shard: RedisRoute, keys: [[UInt8]], arguments: [[UInt8]], generation: String? = nil, acknowledged: Bool = false,
             completion: @escaping @Sendable (RedisValue) -> Void) {
        let tail = [Array(String(keys.count).utf8)] + keys + arguments
        shard.send([Array("EVALSHA".utf8), Array(sha.utf8)] + tail, generation: generation, acknowledged: acknowledged) { [source] reply in
            if case .error(let message) = reply, message.hasPrefix("NOSCRIPT") {
                shard.send([Array("EVAL".utf8), Array(source.utf8)] + tail, generation: generation, acknowledged: acknowledged, completion: completion)
            } else {
                completion(reply)
            }
        }
    }
}
