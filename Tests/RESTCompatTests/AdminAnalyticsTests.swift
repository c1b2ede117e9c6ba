import XCTest
@testable import Channels
@testable import RESTCompat
import Store

/// Seed 003's analytics formulas, search score and date parsing, on hand-made messages.
final class AdminAnalyticsTests: XCTestCase {
    func message(_ user: String, _ conversation: String, _ role: String, _ content: String, _ at: String, _ responseTime: Double? = nil) -> StoredMessage {
        let value: JSONValue = .compact([
            ("message_id", "m"), ("user_id", .string(user)), ("conversation_id", .string(conversation)), ("role", .string(role)),
            ("type", "text"), ("content", .string(content)), ("created_at", .string(at)), ("response_time", responseTime.map { .double($0) }),
        ])
        return StoredMessage(record: Record(key: "k", value: JSONWriter.bytes(value)))!
    }

    func testISODatesAsPythonWritesThem() {
        XCTAssertEqual(ISOTime.parse("1970-01-02"), 86_400)
        XCTAssertEqual(ISOTime.parse("2025-01-01T00:00:00Z"), 1_735_689_600)
        XCTAssertEqual(ISOTime.parse("2025-01-01T00:00:00.250Z"), 1_735_689_600.25)
        XCTAssertEqual(ISOTime.parse("2025-01-01T02:00:00+02:00"), 1_735_689_600)
        XCTAssertEqual(ISOTime.parse("2025-01-01 00:00"), 1_735_689_600)
        for bad in ["", "2025", "2025-13-01", "2025-01-01T25:00:00", "2025-01-01Tnoon", "2025-01-01T00:00:00Zjunk", "yesterday"] {
            XCTAssertNil(ISOTime.parse(bad), bad)
        }
    }

    func testConversationMetricsAndEngagement() {
        var metrics = ConversationMetrics(userID: "alice", conversationID: "a1")
        for m in [
            message("alice", "a1", "user", "hi", "2025-01-01T10:00:00.000Z"),
            message("alice", "a1", "assistant", "hello", "2025-01-01T10:00:02.000Z", 2),
            message("alice", "a1", "user", "more", "2025-01-01T10:01:00.000Z"),
            message("alice", "a1", "assistant", "sure", "2025-01-01T10:01:01.000Z", 1),
            message("alice", "a1", "user", "and?", "2025-01-01T10:02:00.000Z"),
        ] { metrics.add(m) }
        XCTAssertEqual(metrics.messageCount, 5)
        XCTAssertEqual(metrics.userMessageCount, 3)
        XCTAssertEqual(metrics.assistantMessageCount, 2)
        XCTAssertEqual(metrics.averageResponseTime, 1.5)
        XCTAssertEqual(metrics.engagementScore, 0.483)  // 0.5 * 3/10 + 0.5 * 2/3
        XCTAssertEqual(metrics.json["first_message_at"]?.stringValue, "2025-01-01T10:00:00.000Z")
        XCTAssertEqual(metrics.json["last_message_at"]?.stringValue, "2025-01-01T10:02:00.000Z")
        XCTAssertEqual(ConversationMetrics(userID: "x", conversationID: "y").engagementScore, 0)

        var talkative = ConversationMetrics(userID: "b", conversationID: "c")
        for _ in 0..<12 { talkative.add(message("b", "c", "user", "x", "2025-01-01T00:00:00Z")) }
        for _ in 0..<20 { talkative.add(message("b", "c", "assistant", "y", "2025-01-01T00:00:01Z", 0.5)) }
        XCTAssertEqual(talkative.engagementScore, 1, "both halves are capped at 1")
    }

    func testWindowsAndCSV() throws {
        let window = try AnalyticsWindow.parse(start: "2025-01-01", end: "2025-01-01")
        XCTAssertTrue(window.contains(ISOTime.parse("2025-01-01T23:59:59Z")!), "a bare end date includes its day")
        XCTAssertFalse(window.contains(ISOTime.parse("2025-01-02T00:00:00Z")!))
        XCTAssertThrowsError(try AnalyticsWindow.parse(start: "2025-02-01", end: "2025-01-01"))
        XCTAssertThrowsError(try AnalyticsWindow.parse(start: "soon", end: nil))

        var totals = AnalyticsTotals(window: window)
        totals.add(message("o\"brien", "x,1", "user", "hi", "2025-01-01T10:00:00Z"))
        totals.add(message("o\"brien", "x,1", "assistant", "hi", "2025-01-01T10:00:03Z", 3))
        totals.add(message("late", "z", "user", "hi", "2025-01-05T10:00:00Z"))
        XCTAssertEqual(totals.dashboard, ["total_conversations": 1, "total_messages": 2, "active_users": 1, "average_response_time": 3.0])
        let lines = totals.csv.components(separatedBy: "\r\n")
        XCTAssertEqual(lines[0], #""user_id","conversation_id","message_count","user_message_count","assistant_message_count","average_response_time","engagement_score","first_message_at","last_message_at""#)
        XCTAssertEqual(lines[1], #""o""brien","x,1","2","1","1","3.0","0.55","2025-01-01T10:00:00.000Z","2025-01-01T10:00:03.000Z""#)
        XCTAssertEqual(lines.count, 3)
    }

    func testSearchScore() {
        let search = TextSearch(query: "Refund  policy!")
        XCTAssertEqual(search.score("What is your refund policy exactly?"), 27)  // 2 words ×10, once each, phrase +5
        XCTAssertEqual(search.score("refund refund refund policy"), 29)
        XCTAssertEqual(search.score("Order 42, I would like a refund"), 11)
        XCTAssertEqual(search.score("Refunds take five days"), 0, "words match whole")
        XCTAssertEqual(search.score("policy about the refund"), 22, "both words, not as a phrase")
        XCTAssertEqual(TextSearch(query: "x").score(String(repeating: "x ", count: 50)), 15, "occurrences count up to 5")
        XCTAssertTrue(TextSearch(query: " !? ").isEmpty)
        XCTAssertEqual(TextSearch(query: "café").score("Un CAFÉ, s'il vous plaît"), 11)
    }
}
