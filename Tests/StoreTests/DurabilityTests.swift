import Foundation
import XCTest
import TestSupport
@testable import Store

/// `kill -9` in the middle of a stream of writes: every write acknowledged before the kill
/// is there after reopening.
final class SQLiteDurabilityTests: XCTestCase {
    /// Runs only as the child process started by `testAcknowledgedWritesSurviveKill9`.
    func testWriterProcess() throws {
        guard let path = ProcessInfo.processInfo.environment["STORE_WRITER_PATH"] else {
            throw XCTSkip("runs only as the child process of testAcknowledgedWritesSurviveKill9")
        }
        let store = try SQLiteRecordStore(path: path)
        let out = FileHandle.standardOutput
        for i in 0..<1_000_000 {
            let key = "ack:\(i)"
            try completed { store.put(key, value: Array("value-\(i)".utf8), completion: $0) }
            out.write(Data("\(key)\n".utf8))
        }
    }

    func testAcknowledgedWritesSurviveKill9() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("durable-\(UUID().uuidString).db").path
        let child = try Subprocess(CommandLine.arguments[0], ["StoreTests.SQLiteDurabilityTests/testWriterProcess"],
                                   environment: ProcessInfo.processInfo.environment.merging(["STORE_WRITER_PATH": path]) { $1 })
        var acknowledged: [String] = []
        var buffer = Data()
        let deadline = Date().addingTimeInterval(30)
        while acknowledged.count < 200 && Date() < deadline {
            let chunk = child.output!.availableData
            if chunk.isEmpty { break }
            buffer.append(chunk)
            while let newline = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...newline)
                if line.hasPrefix("ack:") { acknowledged.append(line) }
            }
        }
        child.signal(SIGKILL)
        child.wait()
        XCTAssertGreaterThanOrEqual(acknowledged.count, 200, "the writer acknowledged writes")
        let store = try SQLiteRecordStore(path: path)
        defer { store.close() }
        for key in acknowledged {
            let value = try completed { store.get(key, completion: $0) }
            XCTAssertEqual(value.map { String(decoding: $0, as: UTF8.self) }, "value-\(key.dropFirst(4))", key)
        }
    }
}
