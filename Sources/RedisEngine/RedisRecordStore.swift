import Channels
import Store
import Synchronization

/// Records in Redis, shared by every node. Values are stored under their own key as plain
/// strings (`GET gateway:gw01` in redis-cli shows seed 000's seven-field record), and a
/// lexicographic sorted set `hub:keys` indexes the keys for prefix listing without SCAN.
/// Records live on the first shard. With a `MessageIndex`, the records under its prefix also
/// keep analytics counters and a word index up to date (RedisMessageIndex.swift).
///
/// Each `MemberSet` is a Redis set `hub:set:<name>` of record keys, added to or removed from
/// by the same Lua script that writes the record (membership is decided here, before the
/// script is sent, from the value it writes). Records other tools wrote straight into Redis
/// join when `prepareMemberSets`/`rebuildMemberSets` walks the records; a member whose record
/// was changed behind the hub's back is dropped when `members` meets it. Member set prefixes
/// must not overlap the `MessageIndex` prefix (its scripts do not follow sets). With
/// `--redis-min-replicas-ack`, puts, deletes and compare-and-sets wait for the replicas.
///
/// On a Redis Cluster each record stays under its own key, in its own slot, so the index and
/// the sets (each in another slot) are updated in a second step (RedisClusterRecords.swift).
public final class RedisRecordStore: RecordStore, @unchecked Sendable {
    /// Standalone: the first shard, for every key. Cluster: the owner of `hub:keys`.
    let shard: RedisRoute
    let broker: RedisBroker
    static let indexKey = "hub:keys"
    let messageIndex: MessageIndex?
    let wordIndex: TextIndex?
    /// Set once the counters cover every record (`prepareMessageIndex`).
    let ready = Atomic<Bool>(false)
    /// A backfill is under way (so the once-a-second retry does not start a second one).
    let preparing = Atomic<Bool>(false)
    let memberSets: [MemberSet]
    /// Set once the member sets were rebuilt from the records after this start.
    let membersReady = Atomic<Bool>(false)
    let membersPreparing = Atomic<Bool>(false)

    /// `wordIndex` names what `search` covers (the text field of the `messageIndex` records).
    public init(broker: RedisBroker, messageIndex: MessageIndex? = nil, wordIndex: TextIndex? = nil, memberSets: [MemberSet] = []) {
        self.broker = broker
        shard = broker.route(forKey: Self.indexKey)
        self.memberSets = memberSets
        // The counters' scripts touch keys they compute (per day, per word) together with the
        // record: in a cluster those are in many slots, so analytics and search walk the
        // records there instead (as before the counters are ready).
        self.messageIndex = broker.cluster == nil ? messageIndex : nil
        self.wordIndex = broker.cluster == nil ? wordIndex : nil
    }

    static func failure(_ reply: RedisValue) -> StoreError {
        if case .error(let message) = reply { return StoreError("store unavailable: \(message)") }
        return StoreError("store: unexpected reply")
    }

    public func get(_ key: String, completion: @escaping @Sendable (Result<[UInt8]?, StoreError>) -> Void) {
        broker.route(forKey: key).send(["GET", key]) { reply in
            switch reply {
            case .string(let bytes): completion(.success(bytes))
            case .null: completion(.success(nil))
            default: completion(.failure(Self.failure(reply)))
            }
        }
    }

    static func setKey(_ name: String) -> String { "hub:set:" + name }

    /// The member sets `key` falls under (KEYS after the record and hub:keys), and whether a
    /// write of `value` (nil: a delete) makes it a member of each ('1'/'0', ARGV after the rest).
    func sets(for key: String, value: [UInt8]?) -> (keys: [[UInt8]], flags: [[UInt8]]) {
        var keys: [[UInt8]] = [], flags: [[UInt8]] = []
        for set in memberSets where key.hasPrefix(set.prefix) {
            keys.append(Array(Self.setKey(set.name).utf8))
            flags.append(set.includes(key: key, value: value) ? [UInt8(ascii: "1")] : [UInt8(ascii: "0")])
        }
        return (keys, flags)
    }

    /// KEYS: record, hub:keys, member sets. ARGV: value, one flag per member set.
    static let putScript = RedisScript("""
        redis.call('set', KEYS[1], ARGV[1])
        redis.call('zadd', KEYS[2], 0, KEYS[1])
        for i = 3, #KEYS do
          if ARGV[i - 1] == '1' then redis.call('sadd', KEYS[i], KEYS[1]) else redis.call('srem', KEYS[i], KEYS[1]) end
        end
        return 1
        """)

    public func put(_ key: String, value: [UInt8], completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) {
        if broker.cluster != nil { clusterPut(key, value: value, completion: completion); return }
        if isIndexed(key) {
            Self.indexedPutScript.run(on: shard, keys: [key, Self.indexKey], arguments: [value, factsBytes(key, value)], acknowledged: true) { reply in
                completion(reply.isError ? .failure(Self.failure(reply)) : .success(()))
            }
            return
        }
        let sets = sets(for: key, value: value)
        Self.putScript.run(on: shard, keys: [Array(key.utf8), Array(Self.indexKey.utf8)] + sets.keys, arguments: [value] + sets.flags,
                           acknowledged: true) { reply in
            completion(reply.isError ? .failure(Self.failure(reply)) : .success(()))
        }
    }

    /// KEYS: record, hub:keys, member sets.
    static let deleteScript = RedisScript("""
        redis.call('zrem', KEYS[2], KEYS[1])
        for i = 3, #KEYS do redis.call('srem', KEYS[i], KEYS[1]) end
        return redis.call('del', KEYS[1])
        """)

    public func delete(_ key: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        if broker.cluster != nil { clusterDelete(key, completion: completion); return }
        let indexed = isIndexed(key)
        let sets: (keys: [[UInt8]], flags: [[UInt8]]) = indexed ? ([], []) : sets(for: key, value: nil)
        (indexed ? Self.indexedDeleteScript : Self.deleteScript).run(on: shard, keys: [Array(key.utf8), Array(Self.indexKey.utf8)] + sets.keys,
                                                                     arguments: [[UInt8]](), acknowledged: true) { reply in
            guard let count = reply.int else { completion(.failure(Self.failure(reply))); return }
            completion(.success(count > 0))
        }
    }

    static let listScript = RedisScript("""
        local keys = redis.call('zrangebylex', KEYS[1], ARGV[1], ARGV[2], 'LIMIT', 0, ARGV[3])
        local out = {}
        for _, key in ipairs(keys) do
          local value = redis.call('get', key)
          if value then
            table.insert(out, key)
            table.insert(out, value)
          else
            -- written by another tool and removed since: keep the index honest
            redis.call('zrem', KEYS[1], key)
          end
        end
        return out
        """)

    public func list(prefix: String, after: String?, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) {
        let start = after.map { $0 < prefix ? "[" + prefix : "(" + $0 } ?? "[" + prefix
        let end = Array(("[" + prefix).utf8) + [0xFF]
        if broker.cluster != nil { clusterList(start: Array(start.utf8), end: end, limit: limit, completion: completion); return }
        Self.listScript.run(on: shard, keys: [Array(Self.indexKey.utf8)], arguments: [Array(start.utf8), end, Array(String(max(0, limit)).utf8)]) { reply in
            guard case .array(let items) = reply else { completion(.failure(Self.failure(reply))); return }
            var records: [Record] = []
            var index = 0
            while index + 1 < items.count {
                if let key = items[index].text, case .string(let value) = items[index + 1] { records.append(Record(key: key, value: value)) }
                index += 2
            }
            completion(.success(records))
        }
    }

    /// KEYS: record, hub:keys, member sets. ARGV: has expected, expected, has new, new, one flag per member set.
    static let casScript = RedisScript("""
        local current = redis.call('get', KEYS[1])
        local expected = ARGV[1] == '1' and ARGV[2] or false
        if current ~= expected then return 0 end
        if ARGV[3] == '1' then
          redis.call('set', KEYS[1], ARGV[4])
          redis.call('zadd', KEYS[2], 0, KEYS[1])
        else
          redis.call('del', KEYS[1])
          redis.call('zrem', KEYS[2], KEYS[1])
        end
        for i = 3, #KEYS do
          if ARGV[i + 2] == '1' then redis.call('sadd', KEYS[i], KEYS[1]) else redis.call('srem', KEYS[i], KEYS[1]) end
        end
        return 1
        """)

    public func compareAndSet(_ key: String, expected: [UInt8]?, new: [UInt8]?,
                              completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        if broker.cluster != nil { clusterCompareAndSet(key, expected: expected, new: new, completion: completion); return }
        let indexed = isIndexed(key)
        let sets: (keys: [[UInt8]], flags: [[UInt8]]) = indexed ? ([], []) : sets(for: key, value: new)
        (indexed ? Self.indexedCASScript : Self.casScript).run(on: shard, keys: [Array(key.utf8), Array(Self.indexKey.utf8)] + sets.keys, arguments: [
            Array((expected != nil ? "1" : "0").utf8), expected ?? [], Array((new != nil ? "1" : "0").utf8), new ?? [],
        ] + (indexed ? [new.map { factsBytes(key, $0) } ?? []] : sets.flags), acknowledged: true) { reply in
            guard let done = reply.int else { completion(.failure(Self.failure(reply))); return }
            completion(.success(done == 1))
        }
    }

    /// KEYS: member set. ARGV: limit. Members whose record is gone are dropped on the way.
    static let membersScript = RedisScript("""
        local keys = redis.call('srandmember', KEYS[1], tonumber(ARGV[1]))
        local out = {}
        for _, key in ipairs(keys) do
          local value = redis.call('get', key)
          if value then
            table.insert(out, key)
            table.insert(out, value)
          else
            redis.call('srem', KEYS[1], key)
          end
        end
        return out
        """)

    /// KEYS: member set. ARGV: record key, value as read, '1'/'0' (member or not), … Each record
    /// is added or removed only if it still holds that value (a write since did it itself).
    static let followScript = RedisScript("""
        for i = 1, #ARGV, 3 do
          if redis.call('get', ARGV[i]) == ARGV[i + 1] then
            if ARGV[i + 2] == '1' then redis.call('sadd', KEYS[1], ARGV[i]) else redis.call('srem', KEYS[1], ARGV[i]) end
          end
        end
        return 1
        """)

    public func members(of set: String, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) {
        guard let memberSet = memberSets.first(where: { $0.name == set }) else {
            completion(.failure(StoreError("no member set '\(set)'")))
            return
        }
        if broker.cluster != nil { clusterMembers(of: memberSet, limit: limit, completion: completion); return }
        let setKey = Array(Self.setKey(set).utf8)
        Self.membersScript.run(on: shard, keys: [setKey], arguments: [Array(String(max(0, limit)).utf8)]) { [shard] reply in
            guard case .array(let items) = reply else { completion(.failure(Self.failure(reply))); return }
            var records: [Record] = [], stale: [[UInt8]] = []
            var index = 0
            while index + 1 < items.count {
                if let key = items[index].text, case .string(let value) = items[index + 1] {
                    if memberSet.includes(key: key, value: value) {
                        records.append(Record(key: key, value: value))
                    } else {
                        // Rewritten by another tool (`redis-cli SET`): no longer a member.
                        stale += [Array(key.utf8), value, [UInt8(ascii: "0")]]
                    }
                }
                index += 2
            }
            if !stale.isEmpty { Self.followScript.run(on: shard, keys: [setKey], arguments: stale) { _ in } }
            completion(.success(records))
        }
    }

    /// Rebuilds the member sets from the records once per start (tried again on each call until
    /// it succeeds), so records written before the sets existed are found.
    public func prepareMemberSets(completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        guard !memberSets.isEmpty, !membersReady.load(ordering: .acquiring),
              membersPreparing.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        rebuildMemberSets { [self] result in
            if case .success = result { membersReady.store(true, ordering: .releasing) }
            membersPreparing.store(false, ordering: .releasing)
            completion(result)
        }
    }

    /// Walks the records under every member set's prefix and adds or removes each as its current
    /// value says; completes with how many are members.
    public func rebuildMemberSets(completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        if broker.cluster != nil { clusterRebuildMemberSets(completion: completion); return }
        @Sendable func walk(_ remaining: ArraySlice<MemberSet>, after: String?, members: Int) {
            guard let set = remaining.first else { completion(.success(members)); return }
            list(prefix: set.prefix, after: after, limit: 500) { [self] result in
                guard case .success(let records) = result else {
                    if case .failure(let error) = result { completion(.failure(error)) }
                    return
                }
                var arguments: [[UInt8]] = []
                var count = 0
                for record in records {
                    let member = set.contains(record.value)
                    if member { count += 1 }
                    arguments += [Array(record.key.utf8), record.value, member ? [UInt8(ascii: "1")] : [UInt8(ascii: "0")]]
                }
                let found = members + count
                let next: @Sendable () -> Void = {
                    if records.count < 500 { walk(remaining.dropFirst(), after: nil, members: found) } else { walk(remaining, after: records.last!.key, members: found) }
                }
                guard !arguments.isEmpty else { next(); return }
                Self.followScript.run(on: shard, keys: [Array(Self.setKey(set.name).utf8)], arguments: arguments) { reply in
                    if reply.isError { completion(.failure(Self.failure(reply))); return }
                    next()
                }
            }
        }
        walk(memberSets[...], after: nil, members: 0)
    }

    /// Adds keys written by other tools (`redis-cli SET gateway:gw09 …`) to the index.
    public func indexExisting(pattern: String, completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        if let cluster = broker.cluster { clusterIndexExisting(pattern: pattern, primaries: cluster.primaries, completion: completion); return }
        scan(cursor: "0", pattern: pattern, found: 0, completion: completion)
    }

    private func scan(cursor: String, pattern: String, found: Int, completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        shard.send(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"]) { [self] reply in
            guard case .array(let parts) = reply, parts.count == 2, let next = parts[0].text, case .array(let keys) = parts[1] else {
                completion(.failure(Self.failure(reply)))
                return
            }
            let names = keys.compactMap(\.text)
            let proceed: @Sendable () -> Void = { [self] in
                if next == "0" { completion(.success(found + names.count)) } else { scan(cursor: next, pattern: pattern, found: found + names.count, completion: completion) }
            }
            guard !names.isEmpty else { proceed(); return }
            index(names, then: proceed)
        }
    }

    /// KEYS: hub:keys. ARGV: n, the n member sets, then per record: key, '1' when present, value,
    /// n flags. Indexes each key and, if it still holds the value read, puts it in or out of each
    /// set in the same step, so a record other tools wrote is never listed without being claimable.
    static let indexScript = RedisScript("""
        local n = tonumber(ARGV[1])
        local i = n + 2
        while i <= #ARGV do
          local key = ARGV[i]
          redis.call('zadd', KEYS[1], 0, key)
          if ARGV[i + 1] == '1' and redis.call('get', key) == ARGV[i + 2] then
            for s = 1, n do
              if ARGV[i + 2 + s] == '1' then redis.call('sadd', ARGV[1 + s], key) else redis.call('srem', ARGV[1 + s], key) end
            end
          end
          i = i + 3 + n
        end
        return 1
        """)

    private func index(_ names: [String], then proceed: @escaping @Sendable () -> Void) {
        shard.send(["MGET"] + names) { [self] reply in
            let values: [RedisValue] = if case .array(let items) = reply, items.count == names.count { items } else { Array(repeating: .null, count: names.count) }
            var arguments: [[UInt8]] = [Array(String(memberSets.count).utf8)] + memberSets.map { Array(Self.setKey($0.name).utf8) }
            for (name, value) in zip(names, values) {
                let bytes: [UInt8]? = if case .string(let bytes) = value { bytes } else { nil }
                arguments += [Array(name.utf8), bytes == nil ? [UInt8(ascii: "0")] : [UInt8(ascii: "1")], bytes ?? []]
                arguments += memberSets.map { $0.includes(key: name, value: bytes) ? [UInt8(ascii: "1")] : [UInt8(ascii: "0")] }
            }
            Self.indexScript.run(on: shard, keys: [Array(Self.indexKey.utf8)], arguments: arguments) { _ in proceed() }
        }
    }
}
