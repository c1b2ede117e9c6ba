import Channels
import Store

/// Seed 003's analytics, computed from stored messages (pure: unit-testable without a store).
///
/// - `average_response_time`: mean of the assistant messages' `response_time` (seconds from the
///   user's message arriving to the reply being stored), 0 when there is none.
/// - `engagement_score` = 0.5 × min(1, user_message_count / 10)
///                      + 0.5 × min(1, assistant_message_count / user_message_count)
///   (0 without user messages): half for how much the user said (ten messages is full), half for
///   how much of it the agent answered. Both rounded to 3 decimals.
public struct ConversationMetrics: Sendable, Equatable {
    public var userID: String
    public var conversationID: String
    public var messageCount = 0
    public var userMessageCount = 0
    public var assistantMessageCount = 0
    public var responseTimeTotal = 0.0
    public var responseCount = 0
    public var first: Double?
    public var last: Double?

    public init(userID: String, conversationID: String) {
        self.userID = userID
        self.conversationID = conversationID
    }

    public mutating func add(_ message: StoredMessage) {
        messageCount += 1
        if message.role == "user" { userMessageCount += 1 }
        if message.role == "assistant" {
            assistantMessageCount += 1
            if let time = message.responseTime {
                responseTimeTotal += time
                responseCount += 1
            }
        }
        first = min(first ?? message.createdAt, message.createdAt)
        last = max(last ?? message.createdAt, message.createdAt)
    }

    /// From a store's counters (`MessageAnalytics`).
    public init(userID: String, conversationID: String, tally: MessageTally) {
        self.userID = userID
        self.conversationID = conversationID
        messageCount = tally.messages
        userMessageCount = tally.userMessages
        assistantMessageCount = tally.assistantMessages
        responseTimeTotal = Double(tally.responseMicros) / 1_000_000
        responseCount = tally.responseCount
        first = tally.first
        last = tally.last
    }

    static func rounded(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }

    public var averageResponseTime: Double { responseCount == 0 ? 0 : Self.rounded(responseTimeTotal / Double(responseCount)) }

    public var engagementScore: Double {
        guard userMessageCount > 0 else { return 0 }
        let said = min(1, Double(userMessageCount) / 10)
        let answered = min(1, Double(assistantMessageCount) / Double(userMessageCount))
        return Self.rounded(0.5 * said + 0.5 * answered)
    }

    /// The seed's metrics answer.
    public var json: JSONValue {
        [
            "message_count": .int(Int64(messageCount)), "user_message_count": .int(Int64(userMessageCount)),
            "assistant_message_count": .int(Int64(assistantMessageCount)), "average_response_time": .double(averageResponseTime),
            "engagement_score": .double(engagementScore),
            "first_message_at": first.map { .string(ISOTime.string($0)) } ?? .null,
            "last_message_at": last.map { .string(ISOTime.string($0)) } ?? .null,
        ]
    }

    static let csvHeader = ["user_id", "conversation_id", "message_count", "user_message_count", "assistant_message_count",
                            "average_response_time", "engagement_score", "first_message_at", "last_message_at"]

    var csvRow: [String] {
        [userID, conversationID, String(messageCount), String(userMessageCount), String(assistantMessageCount),
         String(averageResponseTime), String(engagementScore), first.map(ISOTime.string) ?? "", last.map(ISOTime.string) ?? ""]
    }
}

/// A time window for the dashboard and the report: `start` inclusive, `end` exclusive.
public struct AnalyticsWindow: Sendable, Equatable {
    public var start: Double?
    public var end: Double?

    /// Parses the seed's `start_date` / `end_date` (ISO 8601). A bare date as `end_date` means
    /// through the end of that day.
    public static func parse(start: String?, end: String?) throws(RouteError) -> AnalyticsWindow {
        var window = AnalyticsWindow()
        if let start, !start.isEmpty {
            guard let value = ISOTime.parse(start) else { throw RouteError(400, "start_date must be an ISO 8601 date or date-time") }
            window.start = value
        }
        if let end, !end.isEmpty {
            guard let value = ISOTime.parse(end) else { throw RouteError(400, "end_date must be an ISO 8601 date or date-time") }
            window.end = end.utf8.count == 10 ? value + 86_400 : value
        }
        if let s = window.start, let e = window.end, e < s { throw RouteError(400, "end_date is before start_date") }
        return window
    }

    public func contains(_ time: Double) -> Bool {
        if let start, time < start { return false }
        if let end, time >= end { return false }
        return true
    }
}

/// The dashboard over a window: conversations with at least one message in it, messages in
/// it, users who sent a message in it, mean response time of the replies in it. The report
/// adds one row per conversation.
public struct AnalyticsTotals: Sendable {
    public var window: AnalyticsWindow
    public var perConversation: [String: ConversationMetrics] = [:]
    public var users = Set<String>()
    public var messages = 0
    public var responseTimeTotal = 0.0
    public var responseCount = 0
    public var userMessages = 0
    public var assistantMessages = 0

    /// Distinct counts a store's counters gave without listing the users or conversations.
    var countedConversations: Int?
    var countedUsers: Int?

    public init(window: AnalyticsWindow) { self.window = window }

    /// From a store's counters: the rows are there only when they were asked for.
    public init(window: AnalyticsWindow, counted: WindowTally) {
        self.window = window
        messages = counted.total.messages
        userMessages = counted.total.userMessages
        assistantMessages = counted.total.assistantMessages
        responseTimeTotal = Double(counted.total.responseMicros) / 1_000_000
        responseCount = counted.total.responseCount
        countedConversations = counted.conversations
        countedUsers = counted.users
        for row in counted.rows {
            perConversation[row.userID + "\u{0}" + row.conversationID] = ConversationMetrics(userID: row.userID, conversationID: row.conversationID, tally: row.tally)
        }
    }

    public var conversationCount: Int { countedConversations ?? perConversation.count }
    public var userCount: Int { countedUsers ?? users.count }

    public mutating func add(_ message: StoredMessage) {
        guard window.contains(message.createdAt) else { return }
        messages += 1
        if message.role == "user" { users.insert(message.userID); userMessages += 1 }
        if message.role == "assistant" {
            assistantMessages += 1
            if let time = message.responseTime { responseTimeTotal += time; responseCount += 1 }
        }
        let key = message.userID + "\u{0}" + message.conversationID
        var metrics = perConversation[key] ?? ConversationMetrics(userID: message.userID, conversationID: message.conversationID)
        metrics.add(message)
        perConversation[key] = metrics
    }

    public var averageResponseTime: Double {
        responseCount == 0 ? 0 : ConversationMetrics.rounded(responseTimeTotal / Double(responseCount))
    }

    public var dashboard: JSONValue {
        [
            "total_conversations": .int(Int64(conversationCount)), "total_messages": .int(Int64(messages)),
            "active_users": .int(Int64(userCount)), "average_response_time": .double(averageResponseTime),
        ]
    }

    var rows: [ConversationMetrics] {
        perConversation.values.sorted { ($0.userID, $0.conversationID) < ($1.userID, $1.conversationID) }
    }

    public func report(generatedAt: Double) -> JSONValue {
        [
            "start_date": window.start.map { .string(ISOTime.string($0)) } ?? .null,
            "end_date": window.end.map { .string(ISOTime.string($0)) } ?? .null,
            "generated_at": .string(ISOTime.string(generatedAt)),
            "summary": dashboard,
            "conversations": .array(rows.map { row in
                var json = row.json
                if case .object(var members) = json {
                    members.insert(contentsOf: [("user_id", .string(row.userID)), ("conversation_id", .string(row.conversationID))], at: 0)
                    json = .object(members)
                }
                return json
            }),
        ]
    }

    /// RFC 4180: a header row, every field quoted (quotes doubled), CRLF line ends.
    public var csv: String {
        ([ConversationMetrics.csvHeader] + rows.map(\.csvRow)).map { fields in
            fields.map { "\"" + $0.replacingQuotes() + "\"" }.joined(separator: ",")
        }.joined(separator: "\r\n") + "\r\n"
    }
}

extension String {
    func replacingQuotes() -> String {
        var out = ""
        for character in self {
            if character == "\"" { out += "\"\"" } else { out.append(character) }
        }
        return out
    }
}
