/// What an incremental analytics index keeps of one chat message: enough to add it to the
/// per-day, per-conversation and per-user counters and to the word index, and to take it out
/// again exactly when the message is deleted or overwritten.
public struct MessageFacts: Sendable, Equatable {
    public var userID: String
    public var conversationID: String
    public var role: String
    public var createdAt: Double
    /// Seconds, for replies that carry one.
    public var responseTime: Double?
    /// Each distinct word of the content with how often it occurs.
    public var terms: [String: Int]
    /// Words in the content (repeats counted): bm25's document length.
    public var length: Int

    public init(userID: String, conversationID: String, role: String, createdAt: Double, responseTime: Double?,
                terms: [String: Int], length: Int) {
        self.userID = userID
        self.conversationID = conversationID
        self.role = role
        self.createdAt = createdAt
        self.responseTime = responseTime
        self.terms = terms
        self.length = length
    }

    /// The UTC day the message belongs to (days since 1970-01-01).
    public var day: Int64 { Int64((createdAt / 86_400).rounded(.down)) }
}

/// The records an analytics index follows (keys under `prefix`) and how to read one; a record
/// `facts` cannot read is left out, as the full walk leaves it out.
public struct MessageIndex: Sendable {
    public var prefix: String
    public var facts: @Sendable (Record) -> MessageFacts?

    public init(prefix: String, facts: @escaping @Sendable (Record) -> MessageFacts?) {
        self.prefix = prefix
        self.facts = facts
    }
}

/// Counters over a set of messages.
public struct MessageTally: Sendable, Equatable {
    public var messages = 0
    public var userMessages = 0
    public var assistantMessages = 0
    /// Sum of the replies' response times in microseconds: integers, so adding and taking out
    /// messages never drifts.
    public var responseMicros: Int64 = 0
    public var responseCount = 0
    public var first: Double?
    public var last: Double?

    public init() {}
}

/// Figures over a time window: the tally of the messages in it, how many conversations have
/// a message in it, how many users sent one in it, and (when asked) a tally per conversation.
public struct WindowTally: Sendable {
    public var total = MessageTally()
    public var conversations = 0
    public var users = 0
    public var rows: [(userID: String, conversationID: String, tally: MessageTally)] = []

    public init() {}
}

/// A store that keeps a `MessageIndex`'s counters itself, so analytics cost what the window
/// asks (days, conversations in it), not what the archive holds.
public protocol MessageAnalytics: Sendable {
    /// False until the counters cover every record (e.g. while a first start backfills them);
    /// callers fall back to walking the records meanwhile.
    var messageIndexReady: Bool { get }
    /// The messages with `start <= created_at < end` (either side open when nil).
    func tally(start: Double?, end: Double?, rows: Bool, completion: @escaping @Sendable (Result<WindowTally, StoreError>) -> Void)
    /// One conversation's messages; nil when it has none.
    func tally(userID: String, conversationID: String, completion: @escaping @Sendable (Result<MessageTally?, StoreError>) -> Void)
}
