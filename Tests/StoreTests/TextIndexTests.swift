import Foundation
import XCTest
import TestSupport
@testable import Store

/// The embedded store's FTS5 index follows writes, deletes and overwrites of the indexed
/// records, and picks up records written before it existed.
final class TextIndexTests: XCTestCase {
    let index = TextIndex(prefix: "msg:", field: "content")

    func put(_ store: SQLiteRecordStore, _ key: String, _ json: String) throws {
        try completed { store.put(key, value: Array(json.utf8), completion: $0) }
    }

    func keys(_ store: SQLiteRecordStore, _ words: [String], limit: Int = 10) throws -> [String] {
        try completed { store.search(words: words, limit: limit, completion: $0) }.map(\.0.key)
    }

    func testIndexFollowsWritesAndRanksByRelevance() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fts-\(UUID().uuidString).db").path
        let plain = try SQLiteRecordStore(path: path)
        try put(plain, "msg:1", #"{"content": "Where is my parcel?"}"#)
        try put(plain, "other:1", #"{"content": "parcel parcel"}"#)
        plain.close()

        let store = try SQLiteRecordStore(path: path, textIndex: index)
        defer { store.close() }
        XCTAssertEqual(try keys(store, ["parcel"]), ["msg:1"], "written before the index existed; other prefixes are not indexed")
        try put(store, "msg:2", #"{"content": "Refund policy: refunds take a week, see the refund policy page"}"#)
        try put(store, "msg:3", #"{"content": "A refund, please"}"#)
        try put(store, "msg:4", #"not json at all"#)
        XCTAssertEqual(Set(try keys(store, ["refund", "policy"])), ["msg:2", "msg:3"])
        XCTAssertEqual(try keys(store, ["refund", "policy"]).first, "msg:2", "both words, twice, rank first")
        XCTAssertEqual(try keys(store, ["REFUND"], limit: 1).count, 1)
        XCTAssertEqual(try keys(store, ["refunds"]), ["msg:2"], "whole words")
        XCTAssertEqual(try keys(store, ["\"", "OR", "NEAR("]), [], "query words are never FTS5 syntax")

        try put(store, "msg:3", #"{"content": "Thanks, all sorted"}"#)
        XCTAssertEqual(try keys(store, ["refund"]), ["msg:2"], "an overwrite replaces the indexed text")
        XCTAssertTrue(try completed { store.delete("msg:2", completion: $0) })
        XCTAssertEqual(try keys(store, ["refund"]), [])
        XCTAssertEqual(try keys(store, ["sorted"]), ["msg:3"])
    }
}
