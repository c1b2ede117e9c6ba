import XCTest

@testable import Channels

final class DeltaAndFilterTests: XCTestCase {
    func testFossilDeltaRoundTripsAndIsSmallForAStateChange() throws {
        let before = Array(#"{"gw_id":"gw01","status":"working","room":"r42","lines":17,"note":"\#(String(repeating: "x", count: 300))"}"#.utf8)
        let after = Array(#"{"gw_id":"gw01","status":"working","room":"r42","lines":18,"note":"\#(String(repeating: "x", count: 300))"}"#.utf8)
        let delta = FossilDelta.delta(from: before, to: after)
        XCTAssertEqual(try FossilDelta.apply(delta, to: before), after)
        XCTAssertLessThan(delta.count * 5, after.count, "a one-digit change costs a few bytes")
        for (a, b) in [([UInt8](), Array("hello".utf8)), (Array("short".utf8), []), (Array(repeating: 7, count: 100), Array(repeating: 7, count: 1000))] {
            XCTAssertEqual(try FossilDelta.apply(FossilDelta.delta(from: a, to: b), to: a), b)
        }
    }

    func testFossilDecoderRefusesCorruptDeltas() {
        let source = Array("the quick brown fox jumps over".utf8)
        var delta = FossilDelta.delta(from: source, to: Array("the quick brown cat jumps over".utf8))
        delta[delta.count - 2] ^= 1  // the checksum
        XCTAssertThrowsError(try FossilDelta.apply(delta, to: source))
        XCTAssertThrowsError(try FossilDelta.apply(Array("5\n3@100,0;".utf8), to: source), "copy past the source")
        XCTAssertThrowsError(try FossilDelta.apply(Array("5\n9:ab".utf8), to: source), "insert past the delta")
        XCTAssertThrowsError(try FossilDelta.apply([], to: source))
    }

    func testTagFilterMatchesAsTheSDKHelpersMeanIt() throws {
        let filter = try TagFilter(json: try JSONParser.parse(#"{"op":"and","nodes":[{"key":"ticker","cmp":"eq","val":"AAPL"},{"key":"price","cmp":"gte","val":"100"},{"key":"source","cmp":"in","vals":["NASDAQ","NYSE"]}]}"#))
        XCTAssertTrue(filter.matches([("ticker", "AAPL"), ("price", "100"), ("source", "NYSE")]))
        XCTAssertFalse(filter.matches([("ticker", "AAPL"), ("price", "99.5"), ("source", "NYSE")]))
        XCTAssertFalse(filter.matches([("ticker", "AAPL"), ("price", "120")]), "a missing tag is not in the list")
        let none = try TagFilter(json: try JSONParser.parse(#"{"op":"not","nodes":[{"key":"source","cmp":"ex"}]}"#))
        XCTAssertTrue(none.matches([]))
        XCTAssertFalse(none.matches([("source", "x")]))
        XCTAssertThrowsError(try TagFilter(json: try JSONParser.parse(#"{"key":"p","cmp":"lt","val":"NaN"}"#)))
    }
}
