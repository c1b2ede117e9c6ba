import Foundation
import Logging
import Synchronization
import XCTest
@testable import Channels
@testable import RedisEngine
@testable import Store
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
}
