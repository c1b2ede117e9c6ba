import Channels
import Store
import Synchronization

/// Records in Redis, shared by every node. Values are stored under their own key as plain
/// strings (`GET gateway:gw01` in redis-cli shows seed 000's seven-field record), and a
/// lexicographic sorted set `hub:keys` indexes the keys for prefix listing without SCAN.
/// Records live on the first shard. With a `MessageIndex`, the records under its prefix also
/// keep analytics counters and a word index up to date (RedisMessageIndex.swift).
public final class RedisRecordStore: RecordStore, @unchecked Sendable {
    let shard: RedisShard
    static let indexKey = "hub:keys"
    let messageIndex: MessageIndex?
    let wordIndex: TextIndex?
    /// Set once the counters cover every record (`prepareMessageIndex`).
    let ready = Atomic<Bool>(false)
    /// A backfill is under way (so the once-a-second retry does not start a second one).
    let preparing = Atomic<Bool>(false)

    /// `wordIndex` names what `search` covers (the text field of the `messageIndex` records).
    public init(broker: RedisBroker, messageIndex: MessageIndex? = nil, wordIndex: TextIndex? = nil) {
        shard = broker.shards[0]
        self.messageIndex = messageIndex
        self.wordIndex = wordIndex
    }

    static func failure(_ reply: RedisValue) -> StoreError {
        if case .error(let message) = reply { return StoreError("store unavailable: \(message)") }
        return StoreError("store: unexpected reply")
    }

    public func get(_ key: String, completion: @escaping @Sendable (Result<[UInt8]?, StoreError>) -> Void) {
        shard.send(["GET", key]) { reply in
            switch reply {
            case .string(let bytes): completion(.success(bytes))
            case .null: completion(.success(nil))
            default: completion(.failure(Self.failure(reply)))
            }
        }
    }

    static let putScript = RedisScript("""
        redis.call('set', KEYS[1], ARGV[1])
        redis.call('zadd', KEYS[2], 0, KEYS[1])
        return 1
        """)

    public func put(_ key: String, value: [UInt8], completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) {
        if isIndexed(key) {
            Self.indexedPutScript.run(on: shard, keys: [key, Self.indexKey], arguments: [value, factsBytes(key, value)]) { reply in
                completion(reply.isError ? .failure(Self.failure(reply)) : .success(()))
            }
            return
        }
        Self.putScript.run(on: shard, keys: [key, Self.indexKey], arguments: [value]) { reply in
            completion(reply.isError ? .failure(Self.failure(reply)) : .success(()))
        }
    }

    static let deleteScript = RedisScript("""
        redis.call('zrem', KEYS[2], KEYS[1])
        return redis.call('del', KEYS[1])
        """)

    public func delete(_ key: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        (isIndexed(key) ? Self.indexedDeleteScript : Self.deleteScript).run(on: shard, keys: [key, Self.indexKey], arguments: []) { reply in
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
        return 1
        """)

    public func compareAndSet(_ key: String, expected: [UInt8]?, new: [UInt8]?,
                              completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        let indexed = isIndexed(key)
        (indexed ? Self.indexedCASScript : Self.casScript).run(on: shard, keys: [key, Self.indexKey], arguments: [
            Array((expected != nil ? "1" : "0").utf8), expected ?? [], Array((new != nil ? "1" : "0").utf8), new ?? [],
        ] + (indexed ? [new.map { factsBytes(key, $0) } ?? []] : [])) { reply in
            guard let done = reply.int else { completion(.failure(Self.failure(reply))); return }
            completion(.success(done == 1))
        }
    }

    /// Adds keys written by other tools (`redis-cli SET gateway:gw09 …`) to the index.
    public func indexExisting(pattern: String, completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        scan(cursor: "0", pattern: pattern, found: 0, completion: completion)
    }

    private func scan(cursor: String, pattern: String, found: Int, completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        shard.send(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"]) { [self] reply in
            guard case .array(let parts) = reply, parts.count == 2, let next = parts[0].text, case .array(let keys) = parts[1] else {
                completion(.failure(Self.failure(reply)))
                return
            }
            let names = keys.compactMap(\.text)
            if !names.isEmpty { shard.send(["ZADD", Self.indexKey] + names.flatMap { ["0", $0] }) { _ in } }
            if next == "0" { completion(.success(found + names.count)) } else { scan(cursor: next, pattern: pattern, found: found + names.count, completion: completion) }
        }
    }
}
