import Channels
import Synchronization

/// Presence in Redis: per channel a hash (client → info) and a sorted set of expiry times.
/// Entries of live connections are refreshed by their node; a node that dies stops
/// refreshing, and its clients drop out of presence within `ttl` seconds.
public final class RedisPresenceStore: PresenceStore, @unchecked Sendable {
    let broker: RedisBroker
    let ttl: Double
    private let clock: any Clock
    /// What this node put in, to refresh it.
    private let local = Mutex<[String: [String: ClientInfo]]>([:])

    public init(broker: RedisBroker, ttl: Double = 60, clock: any Clock = SystemClock()) {
        self.broker = broker
        self.ttl = ttl
        self.clock = clock
    }

    /// Tagged with the channel in a cluster, beside its stream (RedisBroker).
    func hashKey(_ channel: String) -> String { broker.key("hub:presence:", channel) }
    func expiryKey(_ channel: String) -> String { broker.key("hub:presence:exp:", channel) }

    public func add(channel: String, info: ClientInfo) {
        local.withLock { $0[channel, default: [:]][info.client] = info }
        write(channel: channel, infos: [info])
    }

    private func write(channel: String, infos: [ClientInfo]) {
        guard !infos.isEmpty else { return }
        let shard = broker.shard(for: channel)
        let expiresAt = String(Int(clock.now() + ttl))
        let seconds = String(Int(ttl) + 10)
        var hset = ["HSET", hashKey(channel)]
        var zadd = ["ZADD", expiryKey(channel)]
        for info in infos {
            hset += [info.client, JSONWriter.string(info.json)]
            zadd += [expiresAt, info.client]
        }
        shard.send(hset) { _ in }
        shard.send(zadd) { _ in }
        shard.send(["EXPIRE", hashKey(channel), seconds]) { _ in }
        shard.send(["EXPIRE", expiryKey(channel), seconds]) { _ in }
    }

    public func remove(channel: String, client: String) {
        local.withLock { map in
            map[channel]?.removeValue(forKey: client)
            if map[channel]?.isEmpty == true { map.removeValue(forKey: channel) }
        }
        let shard = broker.shard(for: channel)
        shard.send(["HDEL", hashKey(channel), client]) { _ in }
        shard.send(["ZREM", expiryKey(channel), client]) { _ in }
    }

    /// Re-announces every local entry; called periodically (well within `ttl`).
    public func refresh() {
        for (channel, clients) in local.withLock({ $0 }) { write(channel: channel, infos: Array(clients.values)) }
    }

    static let readScript = RedisScript("""
        local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
        for _, client in ipairs(expired) do
          redis.call('hdel', KEYS[1], client)
          redis.call('zrem', KEYS[2], client)
        end
        return redis.call('hvals', KEYS[1])
        """)

    public func presence(channel: String, completion: @escaping @Sendable (Result<[ClientInfo], ProtocolError>) -> Void) {
        Self.readScript.run(on: broker.shard(for: channel), keys: [hashKey(channel), expiryKey(channel)],
                            arguments: [Array(String(Int(clock.now())).utf8)]) { reply in
            guard case .array(let values) = reply else {
                completion(.failure(RedisBroker.unavailable(reply)))
                return
            }
            let infos = values.compactMap { value -> ClientInfo? in
                guard case .string(let bytes) = value, let json = try? JSONParser.parse(bytes) else { return nil }
                return ClientInfo(json: json)
            }
            completion(.success(infos.sorted { $0.client < $1.client }))
        }
    }

    public func stats(channel: String, completion: @escaping @Sendable (Result<PresenceStats, ProtocolError>) -> Void) {
        presence(channel: channel) { result in
            completion(result.map { PresenceStats(clients: $0.count, users: Set($0.map(\.user)).count) })
        }
    }
}
