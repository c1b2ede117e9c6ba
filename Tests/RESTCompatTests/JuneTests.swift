import Channels
import Store
import XCTest
@testable import RESTCompat

final class JuneTests: XCTestCase {
    func testPasswordHashIsSaltedAndVerifies() {
        let a = PasswordHash.make("correct horse", iterations: 10_000)
        let b = PasswordHash.make("correct horse", iterations: 10_000)
        XCTAssertNotEqual(a, b, "each hash has its own salt")
        XCTAssertTrue(a.hasPrefix("pbkdf2_sha256$10000$"))
        XCTAssertTrue(PasswordHash.verify("correct horse", against: a))
        XCTAssertFalse(PasswordHash.verify("correct horsf", against: a))
        XCTAssertFalse(PasswordHash.verify("correct horse", against: "pbkdf2_sha256$x$y$z"))
        XCTAssertFalse(PasswordHash.verify("", against: ""))
    }

    func testChatInputFollowsTheSeed() throws {
        let ok = try ChatInput.parse(["type": "text", "content": "Hello!", "conversation_id": "c-1"])
        XCTAssertEqual(ok, ChatInput(type: "text", content: "Hello!", conversationID: "c-1"))
        XCTAssertNil(try ChatInput.parse(["type": "audio", "content": "UklGRg=="]).conversationID)
        let bad: [JSONValue] = [
            ["type": "video", "content": "x"], ["type": "text"], ["type": "text", "content": ""],
            ["type": "text", "content": "x", "conversation_id": "a:b#c"], ["type": 1, "content": "x"], "text",
        ]
        for body in bad {
            XCTAssertThrowsError(try ChatInput.parse(body), "\(body)") { XCTAssertEqual(($0 as? RouteError)?.status, 400) }
        }
    }

    func testCacheKeysSeparateParts() {
        XCTAssertNotEqual(ServiceCache.key("tts", [Array("ab".utf8), Array("c".utf8)]), ServiceCache.key("tts", [Array("a".utf8), Array("bc".utf8)]))
        XCTAssertEqual(ServiceCache.key("llm", [Array("p".utf8)]), ServiceCache.key("llm", [Array("p".utf8)]))
        XCTAssertTrue(ServiceCache.key("llm", [[]]).hasPrefix("june:cache:llm:"))
    }

    func testTimestampsAndBase64() {
        XCTAssertEqual(ISOTime.string(0), "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(ISOTime.string(1_735_689_600.25), "2025-01-01T00:00:00.250Z")
        // .123 is held as .12299995…: printed as stored (it came from "….123Z"), not cut to .122
        XCTAssertEqual(ISOTime.string(1_741_000_000.123), "2025-03-03T11:06:40.123Z")
        XCTAssertEqual(ISOTime.string(1_741_000_000.9996), "2025-03-03T11:06:41.000Z")
        XCTAssertEqual(ISOTime.string(ISOTime.parse("2025-03-03T11:06:40.999Z")!), "2025-03-03T11:06:40.999Z")
        XCTAssertEqual(Base64.encode(Array("hi?".utf8)), "aGk/")
        XCTAssertEqual(Base64.encode(Array("h".utf8)), "aA==")
        XCTAssertEqual(Base64.decode("aGk/"), Array("hi?".utf8))
        XCTAssertNil(Base64.decode("%%%"))
    }

    func testRefreshTokensAreNotAccessTokens() throws {
        let store = MemoryStoreForTests()
        let verifier = TokenVerifier(hmacSecret: "s")
        let tokens = AuthTokens(secret: "s", accessVerifier: verifier, store: store)
        let refresh = try XCTUnwrap(tokens.refresh(user: "alice"))
        let access = try XCTUnwrap(tokens.access(user: "alice", role: "user"))
        XCTAssertNotNil(tokens.refreshClaims(refresh))
        XCTAssertNil(tokens.refreshClaims(access))
        XCTAssertThrowsError(try verifier.verify(refresh, now: SystemClock().now()))
        XCTAssertEqual(try verifier.verify(access, now: SystemClock().now())["sub"]?.stringValue, "alice")
    }
}

/// Just enough of a record store for token tests (nothing is stored).
final class MemoryStoreForTests: RecordStore, @unchecked Sendable {
    func get(_ key: String, completion: @escaping @Sendable (Result<[UInt8]?, StoreError>) -> Void) { completion(.success(nil)) }
    func put(_ key: String, value: [UInt8], completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) { completion(.success(())) }
    func delete(_ key: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) { completion(.success(false)) }
    func list(prefix: String, after: String?, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) { completion(.success([])) }
    func compareAndSet(_ key: String, expected: [UInt8]?, new: [UInt8]?, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) { completion(.success(false)) }
    func members(of set: String, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) { completion(.success([])) }
}
