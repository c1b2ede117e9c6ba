import XCTest
@testable import RedisEngine

/// Slots as `CLUSTER KEYSLOT` of Redis 7.0.15 gives them, redirections as cluster nodes send them.
final class RedisClusterRoutingTests: XCTestCase {
    func testSlotsMatchRedis() {
        XCTAssertEqual(RedisSlot.crc16(Array("123456789".utf8)[...]), 0x31C3)  // the spec's check value
        XCTAssertEqual(RedisSlot.of("foo"), 12182)
        XCTAssertEqual(RedisSlot.of("bar"), 5061)
        XCTAssertEqual(RedisSlot.of("somekey"), 11058)
        XCTAssertEqual(RedisSlot.of("{user1000}.following"), 3443)
        XCTAssertEqual(RedisSlot.of("hub:ch:{news}"), 5161)
    }

    func testHashTagRules() {
        XCTAssertEqual(RedisSlot.of("foo{}{bar}"), 8363, "an empty tag hashes the whole key")
        XCTAssertEqual(RedisSlot.of("foo{{bar}}zap"), 4015, "the tag runs from the first { to the first } after it")
        XCTAssertEqual(RedisSlot.of("foo{bar}{zap}"), RedisSlot.of("bar"), "only the first tag counts")
        XCTAssertEqual(RedisSlot.of("{user1000}.following"), RedisSlot.of("{user1000}.followers"))
    }

    func testEveryKeyOfAChannelSharesItsSlot() {
        for channel in ["news", "chat:room#42", "a}b", "}lead", "a{b", "x{y}z", "ü"] {
            let keys = ["hub:ch:", "hub:stream:", "hub:meta:", "hub:presence:", "hub:presence:exp:"].map { RedisSlot.taggedKey($0, channel) }
            XCTAssertEqual(Set(keys.map { RedisSlot.of($0) }).count, 1, channel)
            XCTAssertEqual(RedisSlot.name(inTaggedKey: keys[0], prefix: "hub:ch:"), channel)
        }
        XCTAssertEqual(RedisSlot.taggedKey("hub:stream:", "a}b"), "hub:stream:{a)b}a}b")
        XCTAssertEqual(RedisSlot.of("hub:stream:{a)b}a}b"), 7361)
        // Distinct channels keep distinct keys, even where their tags agree.
        XCTAssertNotEqual(RedisSlot.taggedKey("hub:ch:", "a)b"), RedisSlot.taggedKey("hub:ch:", "a}b"))
        XCTAssertNil(RedisSlot.name(inTaggedKey: "hub:ch:news", prefix: "hub:ch:"))
    }

    func testRedirections() {
        XCTAssertEqual(RedisRedirect(error: "MOVED 3999 127.0.0.1:6381"), RedisRedirect(kind: .moved, slot: 3999, host: "127.0.0.1", port: 6381))
        XCTAssertEqual(RedisRedirect(error: "ASK 12182 10.0.0.7:7002"), RedisRedirect(kind: .ask, slot: 12182, host: "10.0.0.7", port: 7002))
        XCTAssertEqual(RedisRedirect(.error("MOVED 1 [::1]:7000")), RedisRedirect(kind: .moved, slot: 1, host: "::1", port: 7000))
        XCTAssertEqual(RedisRedirect(error: "MOVED 1 ::1:7000")?.host, "::1")
        XCTAssertNil(RedisRedirect(error: "ERR unknown command"))
        XCTAssertNil(RedisRedirect(error: "MOVED 16384 127.0.0.1:7000"), "slots are 0-16383")
        XCTAssertNil(RedisRedirect(error: "MOVED 7 127.0.0.1"))
        XCTAssertNil(RedisRedirect(error: "TRYAGAIN Multiple keys request during rehashing of slot"))
        XCTAssertNil(RedisRedirect(.string(Array("MOVED 1 a:1".utf8))), "only error replies redirect")
    }

    func testSlotMapFromClusterSlots() {
        let node: (String, Int64) -> RedisValue = { .array([.string(Array($0.utf8)), .integer($1), .string(Array("id".utf8))]) }
        let reply = RedisValue.array([
            .array([.integer(0), .integer(5460), node("127.0.0.1", 7000), node("127.0.0.1", 7003)]),
            .array([.integer(5461), .integer(16383), node("", 7001)]),
        ])
        let ranges = RedisCluster.parseSlots(reply, queriedHost: "10.1.1.1")
        XCTAssertEqual(ranges?.count, 2)
        XCTAssertEqual(ranges?[0].host, "127.0.0.1")
        XCTAssertEqual(ranges?[0].last, 5460)
        XCTAssertEqual(ranges?[1].host, "10.1.1.1", "an empty host is the node that answered")
        XCTAssertNil(RedisCluster.parseSlots(.array([.array([.integer(0), .integer(20000), node("h", 1)])]), queriedHost: "h"))
        XCTAssertNil(RedisCluster.parseSlots(.error("ERR This instance has cluster support disabled"), queriedHost: "h"))
    }
}
