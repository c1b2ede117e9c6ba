import Synchronization

/// The embedded broker: history in process memory, delivery straight to the local node.
///
/// One lock per shard of channels; a publication is appended and delivered under its
/// shard's lock so every subscriber sees a channel's publications in offset order.
public final class MemoryBroker: Broker {
    private struct Shard {
        var streams: [String: ChannelStream] = [:]
    }

    private let shards: [Guarded<Shard>]
    private let handler = Mutex<(any BrokerEventHandler)?>(nil)
    private let clock: any Clock

    public init(clock: any Clock = SystemClock(), shardCount: Int = 64) {
        self.clock = clock
        shards = (0..<shardCount).map { _ in Guarded(Shard()) }
    }

    private func shard(_ channel: String) -> Guarded<Shard> {
        shards[Int(UInt(bitPattern: channel.hashValue) % UInt(shards.count))]
    }

    public func setEventHandler(_ handler: any BrokerEventHandler) {
        self.handler.withLock { $0 = handler }
    }

    private var eventHandler: (any BrokerEventHandler)? { handler.withLock { $0 } }

    public func publish(
        channel: String, publication: Publication, options: ChannelOptions,
        completion: @escaping @Sendable (Result<StreamPosition?, ProtocolError>) -> Void
    ) {
        let handler = eventHandler
        let now = clock.now()
        var publication = publication
        if publication.time == 0 { publication.time = Int64(now * 1000) }
        guard options.historyEnabled else {
            handler?.handlePublication(channel: channel, publication: publication, position: nil)
            handler?.handlePublished(channel: channel, publication: publication, position: nil)
            completion(.success(nil))
            return
        }
        let position = shard(channel).withLock { shard -> StreamPosition in
            var stream = shard.streams.removeValue(forKey: channel)
                ?? ChannelStream(epoch: RandomID.make(length: 8), capacity: options.historySize, ttl: options.historyTTL, now: now)
            stream.trim(now: now)
            let stored = stream.append(publication, now: now)
            let position = stream.position
            shard.streams[channel] = stream
            // Delivered under the shard lock: concurrent publishers cannot reorder offsets.
            handler?.handlePublication(channel: channel, publication: stored, position: position)
            handler?.handlePublished(channel: channel, publication: stored, position: position)
            return position
        }
        completion(.success(position))
    }

    public func publishJoin(channel: String, info: ClientInfo) {
        eventHandler?.handleJoin(channel: channel, info: info)
    }

    public func publishLeave(channel: String, info: ClientInfo) {
        eventHandler?.handleLeave(channel: channel, info: info)
    }

    public func history(
        channel: String, filter: HistoryFilter, options: ChannelOptions,
        completion: @escaping @Sendable (Result<HistoryResult, ProtocolError>) -> Void
    ) {
        guard options.historyEnabled else {
            completion(.failure(.notAvailable.with(message: "history is not enabled for this channel")))
            return
        }
        let now = clock.now()
        let result = shard(channel).withLock { shard -> Result<HistoryResult, ProtocolError> in
            if shard.streams[channel] == nil {
                // A stream exists from the first read so that its epoch is stable for
                // clients that subscribe before anything is published.
                shard.streams[channel] = ChannelStream(
                    epoch: RandomID.make(length: 8), capacity: options.historySize, ttl: options.historyTTL, now: now)
            }
            shard.streams[channel]!.trim(now: now)
            return Result { () throws(ProtocolError) in try shard.streams[channel]!.history(filter) }
        }
        completion(result)
    }

    public func removeHistory(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        shard(channel).withLock { shard in
            guard let stream = shard.streams[channel] else { return }
            // Keep the position, drop the publications: offsets never go backwards.
            var emptied = stream
            emptied.trim(now: .infinity)
            shard.streams[channel] = emptied
        }
        completion(.success(()))
    }

    public func subscribe(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        completion(.success(()))
    }

    public func unsubscribe(channel: String) {}

    public func publishControl(_ command: JSONValue, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        eventHandler?.handleControl(command)
        completion(.success(()))
    }

    private let announced = Mutex<NodeInfo?>(nil)

    public func announce(node: NodeInfo) { announced.withLock { $0 = node } }

    public func nodes(completion: @escaping @Sendable (Result<[NodeInfo], ProtocolError>) -> Void) {
        completion(.success(announced.withLock { $0.map { [$0] } ?? [] }))
    }

    public func sweep(now: Double) {
        for shard in shards {
            shard.withLock { shard in
                for (channel, var stream) in shard.streams {
                    stream.trim(now: now)
                    let metaTTL = max(stream.ttl, 86_400.0)
                    if stream.isEmpty && now - stream.lastAppend > metaTTL {
                        shard.streams.removeValue(forKey: channel)
                    } else {
                        shard.streams[channel] = stream
                    }
                }
            }
        }
    }

    /// Number of channels with a stream, for `/api/info` and tests.
    public var streamCount: Int { shards.reduce(0) { $0 + $1.withLock { $0.streams.count } } }
}

/// The embedded presence store: per channel, the clients in it.
public final class MemoryPresenceStore: PresenceStore {
    private let shards: [Guarded<[String: [String: ClientInfo]]>]

    public init(shardCount: Int = 64) {
        shards = (0..<shardCount).map { _ in Guarded([:]) }
    }

    private func shard(_ channel: String) -> Guarded<[String: [String: ClientInfo]]> {
        shards[Int(UInt(bitPattern: channel.hashValue) % UInt(shards.count))]
    }

    public func add(channel: String, info: ClientInfo) {
        shard(channel).withLock { $0[channel, default: [:]][info.client] = info }
    }

    public func remove(channel: String, client: String) {
        shard(channel).withLock { map in
            map[channel]?.removeValue(forKey: client)
            if map[channel]?.isEmpty == true { map.removeValue(forKey: channel) }
        }
    }

    public func presence(channel: String, completion: @escaping @Sendable (Result<[ClientInfo], ProtocolError>) -> Void) {
        let clients = shard(channel).withLock { Array(($0[channel] ?? [:]).values) }
        completion(.success(clients.sorted { $0.client < $1.client }))
    }

    public func stats(channel: String, completion: @escaping @Sendable (Result<PresenceStats, ProtocolError>) -> Void) {
        let stats = shard(channel).withLock { map -> PresenceStats in
            let clients = map[channel] ?? [:]
            return PresenceStats(clients: clients.count, users: Set(clients.values.map(\.user)).count)
        }
        completion(.success(stats))
    }
}
