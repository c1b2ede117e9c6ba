import Foundation
import Logging
import Synchronization
import XCTest
@testable import Channels
@testable import RedisEngine
@testable import Store
import CSQLite
import TestSupport

/// Waits for a completion-based store call.
func completed<T: Sendable>(_ body: (@escaping @Sendable (Result<T, StoreError>) -> Void) -> Void, file: StaticString = #filePath, line: UInt = #line) throws -> T {
    let box = Mutex<Result<T, StoreError>?>(nil)
    let done = DispatchSemaphore(value: 0)
    body { result in
        box.withLock { $0 = result }
        done.signal()
    }
    guard done.wait(timeout: .now() + 10) == .success else { throw StoreError("timed out") }
    return try box.withLock { $0! }.get()
}

/// The same contract, checked against both implementations.
class RecordStoreContract: XCTestCase {
    func makeStore() throws -> any RecordStore { fatalError("subclass") }

    func checkContract(_ store: any RecordStore) throws {
        XCTAssertNil(try completed { store.get("gateway:gw01", completion: $0) })
        try completed { store.put("gateway:gw01", value: Array("192.168.1.12|started|media|None|2025-01-01T12:00:00|0|0".utf8), completion: $0) }
        XCTAssertEqual(try completed { store.get("gateway:gw01", completion: $0) }.map { String(decoding: $0, as: UTF8.self) },
                       "192.168.1.12|started|media|None|2025-01-01T12:00:00|0|0")
        for i in 2...12 { try completed { store.put(String(format: "gateway:gw%02d", i), value: Array("v\(i)".utf8), completion: $0) } }
        try completed { store.put("job:1", value: [1, 2, 3], completion: $0) }
        let page1 = try completed { store.list(prefix: "gateway:", after: nil, limit: 5, completion: $0) }
        XCTAssertEqual(page1.map(\.key), ["gateway:gw01", "gateway:gw02", "gateway:gw03", "gateway:gw04", "gateway:gw05"])
        let page2 = try completed { store.list(prefix: "gateway:", after: page1.last!.key, limit: 100, completion: $0) }
        XCTAssertEqual(page2.count, 7)
        XCTAssertEqual(page2.last?.key, "gateway:gw12")
        XCTAssertEqual(try completed { store.list(prefix: "job:", after: nil, limit: 10, completion: $0) }, [Record(key: "job:1", value: [1, 2, 3])])
        XCTAssertTrue(try completed { store.delete("gateway:gw12", completion: $0) })
        XCTAssertFalse(try completed { store.delete("gateway:gw12", completion: $0) })
        XCTAssertEqual(try completed { store.list(prefix: "gateway:", after: "gateway:gw10", limit: 10, completion: $0) }.map(\.key), ["gateway:gw11"])
        // Compare-and-set: exactly one of many concurrent claims wins.
        try completed { store.put("slot", value: Array("free".utf8), completion: $0) }
        let wins = Atomic<Int>(0)
        let group = DispatchGroup()
        for i in 0..<50 {
            group.enter()
            store.compareAndSet("slot", expected: Array("free".utf8), new: Array("taken-\(i)".utf8)) { result in
                if case .success(true) = result { wins.add(1, ordering: .relaxed) }
                group.leave()
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(wins.load(ordering: .relaxed), 1)
        XCTAssertFalse(try completed { store.compareAndSet("absent", expected: [1], new: [2], completion: $0) })
        XCTAssertTrue(try completed { store.compareAndSet("absent", expected: nil, new: [2], completion: $0) })
        XCTAssertTrue(try completed { store.compareAndSet("absent", expected: [2], new: nil, completion: $0) })
        XCTAssertNil(try completed { store.get("absent", completion: $0) })
    }

    /// Free gateways, the way `/start` finds them: seven fields, second one `started`.
    static let free = MemberSet(name: "free", prefix: "gateway:") { value in
        let fields = value.split(separator: UInt8(ascii: "|"), omittingEmptySubsequences: false)
        return fields.count == 7 && fields[1].elementsEqual("started".utf8)
    }
    static func gateway(_ state: String) -> [UInt8] { Array("10.0.0.1|\(state)|media|None|2025-01-01T12:00:00|0|0".utf8) }

    func members(_ store: any RecordStore, limit: Int = 100) throws -> [String: String] {
        let found = try completed { store.members(of: "free", limit: limit, completion: $0) }
        return Dictionary(found.map { ($0.key, String(decoding: $0.value, as: UTF8.self)) }, uniquingKeysWith: { a, _ in a })
    }

    /// `members(of:limit:)` follows every kind of write in the same step, picks at random, and
    /// never returns more than asked.
    func checkMemberSets(_ store: any RecordStore) throws {
        XCTAssertEqual(try members(store), [:])
        try completed { store.put("gateway:gw01", value: Self.gateway("started"), completion: $0) }
        try completed { store.put("gateway:gw02", value: Self.gateway("working"), completion: $0) }
        try completed { store.put("gateway:gw03", value: Self.gateway("started"), completion: $0) }
        try completed { store.put("gateway:gw04", value: Array("started".utf8), completion: $0) }
        try completed { store.put("elsewhere:gw05", value: Self.gateway("started"), completion: $0) }
        XCTAssertEqual(try members(store), ["gateway:gw01": String(decoding: Self.gateway("started"), as: UTF8.self),
                                            "gateway:gw03": String(decoding: Self.gateway("started"), as: UTF8.self)])
        XCTAssertEqual(try members(store, limit: 1).count, 1)
        XCTAssertEqual(try members(store, limit: 0).count, 0)
        // Random picks: asked for one at a time, both members come up.
        var seen = Set<String>()
        for _ in 0..<200 where seen.count < 2 { seen.formUnion(try members(store, limit: 1).keys) }
        XCTAssertEqual(seen, ["gateway:gw01", "gateway:gw03"])
        // A claim takes the member out, a release puts it back, a failed claim changes nothing.
        XCTAssertTrue(try completed { store.compareAndSet("gateway:gw01", expected: Self.gateway("started"), new: Self.gateway("working"), completion: $0) })
        XCTAssertEqual(Set(try members(store).keys), ["gateway:gw03"])
        XCTAssertFalse(try completed { store.compareAndSet("gateway:gw03", expected: Self.gateway("stopped"), new: Self.gateway("working"), completion: $0) })
        XCTAssertEqual(Set(try members(store).keys), ["gateway:gw03"])
        XCTAssertTrue(try completed { store.compareAndSet("gateway:gw01", expected: Self.gateway("working"), new: Self.gateway("started"), completion: $0) })
        try completed { store.put("gateway:gw02", value: Self.gateway("started"), completion: $0) }
        XCTAssertEqual(Set(try members(store).keys), ["gateway:gw01", "gateway:gw02", "gateway:gw03"])
        XCTAssertTrue(try completed { store.delete("gateway:gw03", completion: $0) })
        XCTAssertTrue(try completed { store.compareAndSet("gateway:gw02", expected: Self.gateway("started"), new: nil, completion: $0) })
        XCTAssertEqual(Set(try members(store).keys), ["gateway:gw01"])
        // Fifty concurrent claims of the one member: one wins, and the set is empty after it.
        let wins = Atomic<Int>(0)
        let group = DispatchGroup()
        for i in 0..<50 {
            group.enter()
            store.members(of: "free", limit: 16) { result in
                guard case .success(let found) = result, let first = found.first else { group.leave(); return }
                store.compareAndSet(first.key, expected: first.value, new: Self.gateway("working-\(i)")) { result in
                    if case .success(true) = result { wins.add(1, ordering: .relaxed) }
                    group.leave()
                }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(wins.load(ordering: .relaxed), 1)
        XCTAssertEqual(try members(store), [:])
        XCTAssertThrowsError(try completed { store.members(of: "no-such-set", limit: 1, completion: $0) })
    }
}

final class SQLiteRecordStoreTests: RecordStoreContract {
    func testContract() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString).db").path
        let store = try SQLiteRecordStore(path: path)
        try checkContract(store)
        store.close()
        // Reopened, everything is still there.
        let again = try SQLiteRecordStore(path: path)
        XCTAssertEqual(try completed { again.list(prefix: "gateway:", after: nil, limit: 100, completion: $0) }.count, 11)
        again.close()
    }

    /// Reads are served from the store's cache after the first one: every acknowledged write,
    /// delete and compare-and-set must be what the next read sees, never a stale cached value.
    func testReadsAfterAcknowledgedWritesNeverSeeStaleValues() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString).db").path
        let store = try SQLiteRecordStore(path: path)
        defer { store.close() }
        XCTAssertNil(try completed { store.get("k", completion: $0) })  // caches "absent"
        try completed { store.put("k", value: [1], completion: $0) }
        XCTAssertEqual(try completed { store.get("k", completion: $0) }, [1])
        for round in 2..<200 {
            try completed { store.put("k", value: [UInt8(round)], completion: $0) }
            XCTAssertEqual(try completed { store.get("k", completion: $0) }, [UInt8(round)])
        }
        XCTAssertTrue(try completed { store.compareAndSet("k", expected: [199], new: [7], completion: $0) })
        XCTAssertEqual(try completed { store.get("k", completion: $0) }, [7])
        XCTAssertFalse(try completed { store.compareAndSet("k", expected: [199], new: [8], completion: $0) })
        XCTAssertEqual(try completed { store.get("k", completion: $0) }, [7])
        XCTAssertTrue(try completed { store.delete("k", completion: $0) })
        XCTAssertNil(try completed { store.get("k", completion: $0) })
        // Writers racing readers: once every write is acknowledged, the read is the last value.
        let group = DispatchGroup()
        for i in 0..<500 {
            group.enter()
            store.put("race", value: Array("\(i)".utf8)) { _ in group.leave() }
            store.get("race") { _ in }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(try completed { store.get("race", completion: $0) }.map { String(decoding: $0, as: UTF8.self) }, "499")
    }

    func testMembersOfASetFollowTheRecordsAndSurviveReopening() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("store-\(UUID().uuidString).db").path
        // A file from before the set existed: its free records are members once it is opened with the set.
        let before = try SQLiteRecordStore(path: path)
        try completed { before.put("gateway:old1", value: Self.gateway("started"), completion: $0) }
        try completed { before.put("gateway:old2", value: Self.gateway("working"), completion: $0) }
        before.close()
        let store = try SQLiteRecordStore(path: path, memberSets: [Self.free])
        XCTAssertEqual(Set(try members(store).keys), ["gateway:old1"])
        XCTAssertTrue(try completed { store.delete("gateway:old1", completion: $0) })
        try checkMemberSets(store)
        try completed { store.put("gateway:gw07", value: Self.gateway("started"), completion: $0) }
        store.close()
        // Written behind the store's back (another sqlite3 client): the next open sees it right.
        var db: OpaquePointer?
        XCTAssertEqual(sqlite3_open(path, &db), SQLITE_OK)
        XCTAssertEqual(sqlite3_exec(db, "UPDATE records SET value = CAST('10.0.0.1|started|media|None|x|0|0' AS BLOB) WHERE key = 'gateway:old2'", nil, nil, nil), SQLITE_OK)
        sqlite3_close(db)
        let again = try SQLiteRecordStore(path: path, memberSets: [Self.free])
        XCTAssertEqual(Set(try members(again).keys), ["gateway:gw07", "gateway:old2"])
        again.close()
    }

    func testUnwritableLocationIsAClearError() {
        XCTAssertThrowsError(try SQLiteRecordStore(path: "/proc/nope/store.db")) { error in
            XCTAssertTrue("\(error)".contains("cannot open store"))
        }
    }
}

final class RedisRecordStoreTests: RecordStoreContract {
    func testContractAndByteCompatibleRecords() throws {
        let redis = try RedisServer()
        let broker = RedisBroker(addresses: [RedisShard.Address(url: "redis://127.0.0.1:\(redis.port)/0")!], logger: Logger(label: "test"))
        broker.start()
        defer { broker.stop() }
        for _ in 0..<100 where !broker.shards[0].isConnected { usleep(20_000) }
        let store = RedisRecordStore(broker: broker)
        try checkContract(store)
        // Other tools see and write the plain record.
        XCTAssertEqual(redis.cli("GET", "gateway:gw01"), "192.168.1.12|started|media|None|2025-01-01T12:00:00|0|0")
        _ = redis.cli("SET", "gateway:gw99", "10.0.0.9|started|sip|None|2025-01-01T12:00:00|0|0")
        XCTAssertEqual(try completed { store.indexExisting(pattern: "gateway:*", completion: $0) }, 12)
        XCTAssertEqual(try completed { store.list(prefix: "gateway:gw9", after: nil, limit: 10, completion: $0) }.map(\.key), ["gateway:gw99"])
    }

    /// The same contract on a Redis Cluster: records in their own slots, the index and the sets
    /// in theirs, settled after each write (RedisClusterRecords.swift).
    func testContractOnACluster() throws {
        let cluster = try RedisClusterServers()
        let broker = RedisBroker(cluster: cluster.seeds.compactMap(RedisShard.Address.init(url:)), logger: Logger(label: "test"))
        broker.start()
        defer { broker.stop() }
        for _ in 0..<200 where !broker.isConnected { usleep(20_000) }
        XCTAssertTrue(broker.isConnected)
        let plain = RedisRecordStore(broker: broker)
        try checkContract(plain)
        // Under plain keys, in several slots.
        XCTAssertEqual(cluster.cli("GET", "gateway:gw01"), "192.168.1.12|started|media|None|2025-01-01T12:00:00|0|0")
        for server in cluster.servers { server.cli("FLUSHALL") }
        let store = RedisRecordStore(broker: broker, memberSets: [Self.free])
        try checkMemberSets(store)
        // Other tools' records are found on every primary, listed and made members.
        _ = cluster.cli("SET", "gateway:gw99", "10.0.0.9|started|sip|None|2025-01-01T12:00:00|0|0")
        XCTAssertGreaterThanOrEqual(try completed { store.indexExisting(pattern: "gateway:*", completion: $0) }, 1)
        XCTAssertEqual(try completed { store.list(prefix: "gateway:gw9", after: nil, limit: 10, completion: $0) }.map(\.key), ["gateway:gw99"])
        XCTAssertTrue(try members(store).keys.contains("gateway:gw99"))
        // Rewritten behind the hub's back: not handed out, and settled out of the set.
        _ = cluster.cli("SET", "gateway:gw99", "10.0.0.9|working|sip|room|2025-01-01T12:00:00|0|0")
        XCTAssertFalse(try members(store).keys.contains("gateway:gw99"))
    }

    func testMembersOfASetFollowTheRecordsAndOtherTools() throws {
        let redis = try RedisServer()
        let broker = RedisBroker(addresses: [RedisShard.Address(url: "redis://127.0.0.1:\(redis.port)/0")!], logger: Logger(label: "test"))
        broker.start()
        defer { broker.stop() }
        for _ in 0..<100 where !broker.shards[0].isConnected { usleep(20_000) }
        // Records from before the set existed (and from other tools) join when the sets are prepared.
        let plain = RedisRecordStore(broker: broker)
        try completed { plain.put("gateway:old1", value: Self.gateway("started"), completion: $0) }
        _ = redis.cli("SET", "gateway:old2", "10.0.0.9|started|sip|None|2025-01-01T12:00:00|0|0")
        let store = RedisRecordStore(broker: broker, memberSets: [Self.free])
        XCTAssertEqual(try members(store), [:])
        // Found by the index walk: listed and a member in the same step.
        XCTAssertEqual(try completed { store.indexExisting(pattern: "gateway:*", completion: $0) }, 2)
        XCTAssertEqual(Set(try members(store).keys), ["gateway:old1", "gateway:old2"])
        _ = redis.cli("DEL", "hub:set:free")
        XCTAssertEqual(try completed { store.prepareMemberSets(completion: $0) }, 2)
        XCTAssertEqual(Set(try members(store).keys), ["gateway:old1", "gateway:old2"])
        XCTAssertEqual(redis.cli("SCARD", "hub:set:free"), "2")
        // Rewritten by another tool: dropped from the set when met, not handed out.
        _ = redis.cli("SET", "gateway:old2", "10.0.0.9|working|sip|room|2025-01-01T12:00:00|0|0")
        _ = redis.cli("DEL", "gateway:old1")
        XCTAssertEqual(try members(store), [:])
        XCTAssertEqual(redis.cli("SCARD", "hub:set:free"), "0")
        _ = redis.cli("DEL", "gateway:old2")
        try checkMemberSets(store)
    }
}
