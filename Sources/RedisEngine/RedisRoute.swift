/// Where the commands about one thing (a channel, a record, a rate-limit subject) go: a
/// standalone Redis, or, in cluster mode, whichever node owns the slot of its key (found
/// anew for each command, so a slot that moved is followed).
public struct RedisRoute: Sendable {
    enum Target: Sendable {
        case shard(RedisShard)
        case slot(RedisCluster, Int)
    }

    let target: Target

    public static func shard(_ shard: RedisShard) -> RedisRoute { RedisRoute(target: .shard(shard)) }
    public static func cluster(_ cluster: RedisCluster, key: String) -> RedisRoute { RedisRoute(target: .slot(cluster, RedisSlot.of(key))) }

    /// The primary a standalone or Sentinel-found shard serves under (RedisShard.generation);
    /// empty for a cluster slot, whose failovers the slot map follows instead.
    public var generation: String {
        switch target {
        case .shard(let shard): return shard.generation
        case .slot: return ""
        }
    }

    /// The completion runs on an I/O thread with the reply or an error. `generation` and
    /// `acknowledged` (Sentinel failover and `--redis-min-replicas-ack`) apply to a shard.
    public func send(_ arguments: [[UInt8]], generation: String? = nil, acknowledged: Bool = false,
                     completion: @escaping @Sendable (RedisValue) -> Void) {
        switch target {
        case .shard(let shard): shard.send(arguments, generation: generation, acknowledged: acknowledged, completion: completion)
        case .slot(let cluster, let slot): cluster.send(slot: slot, arguments, completion: completion)
        }
    }

    public func send(_ arguments: [String], completion: @escaping @Sendable (RedisValue) -> Void) {
        send(arguments.map { Array($0.utf8) }, completion: completion)
    }
}
