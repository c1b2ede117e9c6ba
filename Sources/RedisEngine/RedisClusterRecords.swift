import Channels
import Store
import Synchronization

/// Records on a Redis Cluster.
///
/// A record keeps its plain key (`gateway:gw01`, readable with `redis-cli -c GET gateway:gw01`),
/// so it hashes to its own slot, while the index `hub:keys` and each member set `hub:set:<name>`
/// live in theirs: one script cannot write them together. The record is the authority and is
/// written alone (SET, DEL, or a one-key compare-and-set script); its companions are then
/// *settled*: the record is read back and the index and sets are brought in line with what it
/// holds now. A removal is followed by a second read, and settled again if the record changed
/// meanwhile, so a concurrent write that made it a member cannot be undone by a stale removal:
/// after the last write's settle, its sets agree with it. What can remain for a while is
/// harmless: an extra member (a claim CASes the record itself, and `members` drops members whose
/// record no longer qualifies) or an index entry of a deleted record (`list` drops it). A node
/// dying between the two steps leaves a record out of a set until the next start's
/// `rebuildMemberSets`, or the gateway monitor's periodic discovery, settles it.
extension RedisRecordStore {
    func route(_ key: String) -> RedisRoute { broker.route(forKey: key) }

    /// Reads `key` and puts it in or out of the index and each member set its prefix falls under.
    func settle(_ key: String, rounds: Int = 3, completion: @escaping @Sendable (Result<[UInt8]?, StoreError>) -> Void) {
        route(key).send(["GET", key]) { [self] reply in
            let value: [UInt8]?
            switch reply {
            case .string(let bytes): value = bytes
            case .null: value = nil
            default: completion(.failure(Self.failure(reply))); return
            }
            var steps: [(key: String, command: [[UInt8]])] = [
                (Self.indexKey, value != nil ? ["ZADD", Self.indexKey, "0", key].map { Array($0.utf8) } : ["ZREM", Self.indexKey, key].map { Array($0.utf8) }),
            ]
            var removes = value == nil
            for set in memberSets where key.hasPrefix(set.prefix) {
                let member = set.includes(key: key, value: value)
                if !member { removes = true }
                steps.append((Self.setKey(set.name), [Array((member ? "SADD" : "SREM").utf8), Array(Self.setKey(set.name).utf8), Array(key.utf8)]))
            }
            let recheck = removes
            Self.gather(steps.map { step in { done in self.route(step.key).send(step.command, completion: done) } }) { [self] replies in
                if let failed = replies.first(where: \.isError) { completion(.failure(Self.failure(failed))); return }
                guard recheck, rounds > 1 else { completion(.success(value)); return }
                // A write between the read and a removal made the removal stale: settle again.
                route(key).send(["GET", key]) { [self] again in
                    let now: [UInt8]? = if case .string(let bytes) = again { bytes } else { nil }
                    if again.isError || now == value { completion(.success(value)) } else { settle(key, rounds: rounds - 1, completion: completion) }
                }
            }
        }
    }

    /// Runs the sends concurrently; the replies come back in the order of `sends`.
    static func gather(_ sends: [@Sendable (@escaping @Sendable (RedisValue) -> Void) -> Void],
                       completion: @escaping @Sendable ([RedisValue]) -> Void) {
        guard !sends.isEmpty else { completion([]); return }
        let replies = Mutex<(left: Int, values: [RedisValue])>((sends.count, Array(repeating: .null, count: sends.count)))
        for (index, send) in sends.enumerated() {
            send { reply in
                let done = replies.withLock { state -> [RedisValue]? in
                    state.values[index] = reply
                    state.left -= 1
                    return state.left == 0 ? state.values : nil
                }
                if let done { completion(done) }
            }
        }
    }

    func clusterPut(_ key: String, value: [UInt8], completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) {
        route(key).send([Array("SET".utf8), Array(key.utf8), value]) { [self] reply in
            if reply.isError { completion(.failure(Self.failure(reply))); return }
            settle(key) { completion($0.map { _ in () }) }
        }
    }

    func clusterDelete(_ key: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        route(key).send(["DEL", key]) { [self] reply in
            guard let count = reply.int else { completion(.failure(Self.failure(reply))); return }
            settle(key) { completion($0.map { _ in count > 0 }) }
        }
    }

    /// KEYS: record. ARGV: has expected, expected, has new, new. The record alone: one slot.
    static let recordCASScript = RedisScript("""
        local current = redis.call('get', KEYS[1])
        local expected = ARGV[1] == '1' and ARGV[2] or false
        if current ~= expected then return 0 end
        if ARGV[3] == '1' then redis.call('set', KEYS[1], ARGV[4]) else redis.call('del', KEYS[1]) end
        return 1
        """)

    func clusterCompareAndSet(_ key: String, expected: [UInt8]?, new: [UInt8]?, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        Self.recordCASScript.run(on: route(key), keys: [key], arguments: [
            Array((expected != nil ? "1" : "0").utf8), expected ?? [], Array((new != nil ? "1" : "0").utf8), new ?? [],
        ]) { [self] reply in
            guard let done = reply.int else { completion(.failure(Self.failure(reply))); return }
            guard done == 1 else { completion(.success(false)); return }
            settle(key) { completion($0.map { _ in true }) }
        }
    }

    /// Reads each key (each from its own slot); nil where there is no record.
    func values(of keys: [String], completion: @escaping @Sendable ([RedisValue]) -> Void) {
        Self.gather(keys.map { key in { done in self.route(key).send(["GET", key], completion: done) } }, completion: completion)
    }

    func clusterList(start: [UInt8], end: [UInt8], limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) {
        route(Self.indexKey).send([Array("ZRANGEBYLEX".utf8), Array(Self.indexKey.utf8), start, end,
                                   Array("LIMIT".utf8), Array("0".utf8), Array(String(max(0, limit)).utf8)]) { [self] reply in
            guard case .array(let items) = reply else { completion(.failure(Self.failure(reply))); return }
            let keys = items.compactMap(\.text)
            values(of: keys) { [self] values in
                if let failed = values.first(where: \.isError) { completion(.failure(Self.failure(failed))); return }
                var records: [Record] = []
                for (key, value) in zip(keys, values) {
                    if case .string(let bytes) = value {
                        records.append(Record(key: key, value: bytes))
                    } else {
                        // Removed (by another tool, or a delete not settled yet): keep the index honest.
                        settle(key) { _ in }
                    }
                }
                completion(.success(records))
            }
        }
    }

    func clusterMembers(of set: MemberSet, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) {
        route(Self.setKey(set.name)).send(["SRANDMEMBER", Self.setKey(set.name), String(max(0, limit))]) { [self] reply in
            guard case .array(let items) = reply else { completion(.failure(Self.failure(reply))); return }
            let keys = items.compactMap(\.text)
            values(of: keys) { [self] values in
                if let failed = values.first(where: \.isError) { completion(.failure(Self.failure(failed))); return }
                var records: [Record] = []
                for (key, value) in zip(keys, values) {
                    let bytes: [UInt8]? = if case .string(let bytes) = value { bytes } else { nil }
                    if let bytes, set.includes(key: key, value: bytes) {
                        records.append(Record(key: key, value: bytes))
                    } else {
                        // Gone, or rewritten behind the hub's back (`redis-cli SET`): settled out.
                        settle(key) { _ in }
                    }
                }
                completion(.success(records))
            }
        }
    }

    /// Settles every record under each member set's prefix, a page at a time.
    func clusterRebuildMemberSets(completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        @Sendable func walk(_ remaining: ArraySlice<MemberSet>, after: String?, members: Int) {
            guard let set = remaining.first else { completion(.success(members)); return }
            list(prefix: set.prefix, after: after, limit: 500) { [self] result in
                guard case .success(let records) = result else {
                    if case .failure(let error) = result { completion(.failure(error)) }
                    return
                }
                let found = members + records.filter { set.contains($0.value) }.count
                Self.gather(records.map { record in { done in
                    self.settle(record.key) { result in done(result.isSuccess ? .integer(1) : .error("settle failed")) }
                } }) { replies in
                    if replies.contains(where: \.isError) { completion(.failure(StoreError("store unavailable: member sets not settled"))); return }
                    if records.count < 500 { walk(remaining.dropFirst(), after: nil, members: found) } else { walk(remaining, after: records.last!.key, members: found) }
                }
            }
        }
        walk(memberSets[...], after: nil, members: 0)
    }

    /// SCANs every primary (each holds only its slots' keys) and settles what it finds, so
    /// records other tools wrote are indexed and join their sets.
    func clusterIndexExisting(pattern: String, primaries: [RedisShard], completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        guard !primaries.isEmpty else { completion(.failure(StoreError("store unavailable: cluster map not known yet"))); return }
        Self.gather(primaries.map { primary in { done in
            self.scanNode(.shard(primary), cursor: "0", pattern: pattern, found: 0) { result in
                switch result {
                case .success(let count): done(.integer(Int64(count)))
                case .failure(let error): done(.error(error.description))
                }
            }
        } }) { replies in
            if let failed = replies.first(where: \.isError) { completion(.failure(Self.failure(failed))); return }
            completion(.success(replies.reduce(0) { $0 + Int($1.int ?? 0) }))
        }
    }

    private func scanNode(_ node: RedisRoute, cursor: String, pattern: String, found: Int,
                          completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        node.send(["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"]) { [self] reply in
            guard case .array(let parts) = reply, parts.count == 2, let next = parts[0].text, case .array(let keys) = parts[1] else {
                completion(.failure(Self.failure(reply)))
                return
            }
            let names = keys.compactMap(\.text)
            Self.gather(names.map { name in { done in self.settle(name) { _ in done(.integer(1)) } } }) { [self] _ in
                if next == "0" { completion(.success(found + names.count)) } else { scanNode(node, cursor: next, pattern: pattern, found: found + names.count, completion: completion) }
            }
        }
    }
}

extension Result {
    var isSuccess: Bool { if case .success = self { return true } else { return false } }
}
