import Channels
import Store
import Synchronization

/// A chat message as `ChatService` stores it (`june:msg:<user>:<conversation>:<ms>-<seq>`).
public struct StoredMessage: Sendable, Equatable {
    public var key: String
    public var messageID: String
    public var userID: String
    public var conversationID: String
    public var role: String
    public var type: String
    public var content: String
    public var createdAt: Double
    public var responseTime: Double?

    public init?(record: Record) {
        guard let value = try? JSONParser.parse(record.value), let user = value["user_id"]?.stringValue,
              let conversation = value["conversation_id"]?.stringValue, let role = value["role"]?.stringValue,
              let created = value["created_at"]?.stringValue.flatMap(ISOTime.parse) else { return nil }
        key = record.key
        messageID = value["message_id"]?.stringValue ?? ""
        userID = user
        conversationID = conversation
        self.role = role
        type = value["type"]?.stringValue ?? "text"
        content = value["content"]?.stringValue ?? ""
        createdAt = created
        responseTime = value["response_time"]?.doubleValue
    }

    var json: JSONValue {
        [
            "message_id": .string(messageID), "role": .string(role), "type": .string(type), "content": .string(content),
            "created_at": .string(ISOTime.string(createdAt)), "response_time": responseTime.map { .double($0) } ?? .null,
        ]
    }
}

/// A conversation's summary record (`june:conv:<user>:<conversation>`).
public struct ConversationSummary: Sendable, Equatable {
    public var key: String
    public var userID: String
    public var conversationID: String
    public var createdAt: String
    public var updatedAt: String
    public var messageCount: Int

    init?(record: Record) {
        guard let value = try? JSONParser.parse(record.value), let user = value["user_id"]?.stringValue,
              let conversation = value["conversation_id"]?.stringValue else { return nil }
        key = record.key
        userID = user
        conversationID = conversation
        createdAt = value["created_at"]?.stringValue ?? ""
        updatedAt = value["updated_at"]?.stringValue ?? ""
        messageCount = Int(value["message_count"]?.intValue ?? 0)
    }

    var json: JSONValue {
        [
            "conversation_id": .string(conversationID), "user_id": .string(userID), "created_at": .string(createdAt),
            "updated_at": .string(updatedAt), "message_count": .int(Int64(messageCount)),
        ]
    }
}

/// Walks every record under a prefix, a page at a time, folding them into a value: memory
/// stays bounded by the page and whatever the fold keeps.
enum StoreWalk {
    static let page = 500

    static func fold<State: Sendable>(_ store: any RecordStore, prefix: String, after: String? = nil, into state: State,
                                      _ step: @escaping @Sendable (inout State, Record) -> Bool,
                                      done: @escaping @Sendable (Result<State, StoreError>) -> Void) {
        store.list(prefix: prefix, after: after, limit: page) { result in
            switch result {
            case .failure(let error):
                done(.failure(error))
            case .success(let records):
                var state = state
                for record in records where !step(&state, record) {
                    done(.success(state))
                    return
                }
                if records.count == page, let last = records.last {
                    fold(store, prefix: prefix, after: last.key, into: state, step, done: done)
                } else {
                    done(.success(state))
                }
            }
        }
    }
}

/// Reads, searches and deletes the conversations `ChatService` keeps. Listing is a walk over
/// store prefixes (the same on SQLite and Redis). Analytics use the store's counters when it
/// keeps them (Redis: `MessageAnalytics`) and search its word index (SQLite FTS5, Redis sorted
/// sets); otherwise they walk every message, so their cost grows with the archive while
/// memory does not.
public final class ConversationArchive: Sendable {
    let store: any RecordStore
    let events: AdminEvents

    public init(store: any RecordStore, events: AdminEvents) {
        self.store = store
        self.events = events
    }

    static func conversationPrefix(user: String?) -> String { "june:conv:" + (user.map { $0 + ":" } ?? "") }
    static func messagePrefix(user: String, conversation: String) -> String { "june:msg:\(user):\(conversation):" }
    static let allMessages = "june:msg:"

    /// A page of conversations in key order (user, then conversation id).
    public func list(user: String?, limit: Int, offset: Int, completion: @escaping @Sendable (Result<[ConversationSummary], StoreError>) -> Void) {
        struct Page: Sendable { var skipped = 0; var items: [ConversationSummary] = [] }
        StoreWalk.fold(store, prefix: Self.conversationPrefix(user: user), into: Page()) { page, record in
            guard let summary = ConversationSummary(record: record) else { return true }
            if page.skipped < offset { page.skipped += 1; return true }
            page.items.append(summary)
            return page.items.count < limit
        } done: { completion($0.map(\.items)) }
    }

    /// Where a newest-first page of one user's conversations resumes: the last one shown, as
    /// `<updated_at>~<conversation_id>` (ids never hold `~`).
    public struct Cursor: Sendable, Equatable {
        var updatedAt: String
        var conversationID: String

        public init?(_ text: String) {
            let parts = text.split(separator: "~", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, parts[0].utf8.count <= 40, JuneInput.isIdentifier(String(parts[1])) else { return nil }
            updatedAt = String(parts[0])
            conversationID = String(parts[1])
        }

        init(_ summary: ConversationSummary) {
            updatedAt = summary.updatedAt
            conversationID = summary.conversationID
        }

        public var text: String { updatedAt + "~" + conversationID }

        /// Newest first: later `updated_at` first, then the larger id.
        static func precedes(_ a: ConversationSummary, _ b: ConversationSummary) -> Bool {
            (a.updatedAt, a.conversationID) > (b.updatedAt, b.conversationID)
        }
    }

    /// One user's conversations, most recently updated first, `limit` after `cursor`; memory holds
    /// at most `limit + 1` summaries whatever the user's count. The cursor is nil on the last page.
    public func own(user: String, limit: Int, after cursor: Cursor?,
                    completion: @escaping @Sendable (Result<(page: [ConversationSummary], next: Cursor?), StoreError>) -> Void) {
        StoreWalk.fold(store, prefix: Self.conversationPrefix(user: user), into: [ConversationSummary]()) { kept, record in
            guard let summary = ConversationSummary(record: record), summary.userID == user else { return true }
            if let cursor, (summary.updatedAt, summary.conversationID) >= (cursor.updatedAt, cursor.conversationID) { return true }
            let at = kept.firstIndex { Cursor.precedes(summary, $0) } ?? kept.endIndex
            if at <= limit { kept.insert(summary, at: at) }
            if kept.count > limit + 1 { kept.removeLast() }
            return true
        } done: { result in
            completion(result.map { kept in
                let page = Array(kept.prefix(limit))
                return (page, kept.count > limit ? page.last.map(Cursor.init) : nil)
            })
        }
    }

    public enum LookupError: Error, Sendable { case notFound, ambiguous([String]), store(StoreError) }

    /// Finds a conversation by id (ids are chosen per user, so `user` narrows it when two
    /// users picked the same one).
    public func find(_ id: String, user: String?, completion: @escaping @Sendable (Result<ConversationSummary, LookupError>) -> Void) {
        if let user {
            store.get("june:conv:\(user):\(id)") { result in
                switch result {
                case .failure(let error): completion(.failure(.store(error)))
                case .success(nil): completion(.failure(.notFound))
                case .success(let bytes?):
                    guard let found = ConversationSummary(record: Record(key: "june:conv:\(user):\(id)", value: bytes)) else {
                        completion(.failure(.notFound)); return
                    }
                    completion(.success(found))
                }
            }
            return
        }
        StoreWalk.fold(store, prefix: Self.conversationPrefix(user: nil), into: [ConversationSummary]()) { found, record in
            if record.key.hasSuffix(":" + id), let summary = ConversationSummary(record: record), summary.conversationID == id {
                found.append(summary)
            }
            return found.count < 10
        } done: { result in
            switch result {
            case .failure(let error): completion(.failure(.store(error)))
            case .success(let found) where found.isEmpty: completion(.failure(.notFound))
            case .success(let found) where found.count > 1: completion(.failure(.ambiguous(found.map(\.userID))))
            case .success(let found): completion(.success(found[0]))
            }
        }
    }

    /// A conversation's messages in the order they were said (at most `limit`).
    public func messages(of conversation: ConversationSummary, limit: Int = 1000,
                         completion: @escaping @Sendable (Result<[StoredMessage], StoreError>) -> Void) {
        StoreWalk.fold(store, prefix: Self.messagePrefix(user: conversation.userID, conversation: conversation.conversationID),
                       into: [StoredMessage]()) { messages, record in
            if let message = StoredMessage(record: record) { messages.append(message) }
            return messages.count < limit
        } done: { completion($0) }
    }

    /// Deletes a conversation and every message in it; completes with how many messages went.
    public func delete(_ conversation: ConversationSummary, by admin: String?, completion: @escaping @Sendable (Result<Int, StoreError>) -> Void) {
        StoreWalk.fold(store, prefix: Self.messagePrefix(user: conversation.userID, conversation: conversation.conversationID),
                       into: [String]()) { keys, record in
            keys.append(record.key)
            return true
        } done: { [self] listed in
            guard case .success(let keys) = listed else { completion(listed.map(\.count)); return }
            deleteAll(keys + [conversation.key]) { [self] result in
                if case .success = result {
                    events.publish(AdminEvents.conversations, event: "conversation_deleted", [
                        ("conversation_id", .string(conversation.conversationID)), ("user_id", .string(conversation.userID)),
                        ("deleted_messages", .int(Int64(keys.count))), ("by", admin.map { .string($0) }),
                    ])
                }
                completion(result.map { keys.count })
            }
        }
    }

    /// Deletes every key; all are queued at once so the embedded store commits them together.
    /// Completes once every delete has, with the first failure if any.
    private func deleteAll(_ keys: [String], completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) {
        guard !keys.isEmpty else { completion(.success(())); return }
        let outstanding = Mutex((left: keys.count, failure: StoreError?.none))
        for key in keys {
            store.delete(key) { result in
                let finished = outstanding.withLock { state -> (Bool, StoreError?) in
                    if case .failure(let error) = result, state.failure == nil { state.failure = error }
                    state.left -= 1
                    return (state.left == 0, state.failure)
                }
                guard finished.0 else { return }
                completion(finished.1.map { .failure($0) } ?? .success(()))
            }
        }
    }

    /// Every stored message (optionally of one conversation) folded into a value.
    func foldMessages<State: Sendable>(prefix: String = allMessages, into state: State,
                                       _ step: @escaping @Sendable (inout State, StoredMessage) -> Void,
                                       done: @escaping @Sendable (Result<State, StoreError>) -> Void) {
        StoreWalk.fold(store, prefix: prefix, into: state) { state, record in
            if let message = StoredMessage(record: record) { step(&state, message) }
            return true
        } done: { done($0) }
    }

    /// What the embedded store indexes for `search` (message content).
    public static let textIndex = TextIndex(prefix: allMessages, field: "content")

    /// What the Redis store counts for analytics and indexes for `search`: every message,
    /// its words split as `TextSearch` splits them.
    public static let messageIndex = MessageIndex(prefix: allMessages) { record in
        guard let message = StoredMessage(record: record) else { return nil }
        let tokens = TextSearch.tokens(message.content)
        var terms: [String: Int] = [:]
        for token in tokens { terms[token, default: 0] += 1 }
        return MessageFacts(userID: message.userID, conversationID: message.conversationID, role: message.role,
                            createdAt: message.createdAt, responseTime: message.responseTime, terms: terms, length: tokens.count)
    }

    /// The store's own counters when it keeps them and they are complete.
    var analytics: (any MessageAnalytics)? {
        guard let counted = store as? any MessageAnalytics, counted.messageIndexReady else { return nil }
        return counted
    }

    /// Figures over a window: from the store's counters when it keeps them (cost grows with the
    /// days and conversations in the window), otherwise by walking every message.
    func totals(_ window: AnalyticsWindow, rows: Bool, completion: @escaping @Sendable (Result<AnalyticsTotals, StoreError>) -> Void) {
        if let analytics {
            analytics.tally(start: window.start, end: window.end, rows: rows) { result in
                completion(result.map { AnalyticsTotals(window: window, counted: $0) })
            }
            return
        }
        foldMessages(into: AnalyticsTotals(window: window)) { totals, message in totals.add(message) } done: { completion($0) }
    }

    /// One conversation's metrics; nil when it has no message.
    func metrics(user: String, conversation: String, completion: @escaping @Sendable (Result<ConversationMetrics?, StoreError>) -> Void) {
        if let analytics {
            analytics.tally(userID: user, conversationID: conversation) { result in
                completion(result.map { $0.map { ConversationMetrics(userID: user, conversationID: conversation, tally: $0) } })
            }
            return
        }
        foldMessages(prefix: Self.messagePrefix(user: user, conversation: conversation),
                     into: ConversationMetrics(userID: user, conversationID: conversation)) { metrics, message in
            metrics.add(message)
        } done: { completion($0.map { $0.messageCount == 0 ? nil : $0 }) }
    }

    /// Ranked text search over message content: the store's own index when it has one
    /// (SQLite FTS5, bm25), otherwise a scan scored by `TextSearch`.
    public func search(_ query: String, limit: Int, completion: @escaping @Sendable (Result<[TextSearch.Hit], StoreError>) -> Void) {
        let search = TextSearch(query: query)
        if let indexed = store as? any TextSearchable, indexed.textIndex == Self.textIndex {
            // The best messages decide; enough of them that `limit` conversations are usually found.
            indexed.search(words: search.words, limit: min(1000, limit * 20)) { result in
                completion(result.map { found in
                    var ranking = TextSearch.Ranking(limit: limit)
                    for (record, relevance) in found {
                        if let message = StoredMessage(record: record) { ranking.consider(message, score: max(relevance, 1e-9)) }
                    }
                    return ranking.hits
                })
            }
            return
        }
        foldMessages(into: TextSearch.Ranking(limit: limit)) { ranking, message in
            ranking.consider(message, score: Double(search.score(message.content)))
        } done: { completion($0.map { $0.hits }) }
    }
}

/// Word search over message content. A message's score is
/// `10 × (distinct query words it contains) + Σ min(occurrences of each query word, 5)`, plus 5
/// when it contains the whole query as a phrase; words are runs of letters and digits, compared
/// case-insensitively. A conversation ranks by its best message (ties: more matching messages,
/// then the most recent); each hit lists its three best messages.
public struct TextSearch: Sendable {
    public let words: [String]
    let phrase: String

    public init(query: String) {
        let tokens = Self.tokens(query)
        var seen = Set<String>()
        words = tokens.filter { seen.insert($0).inserted }
        phrase = tokens.joined(separator: " ")
    }

    public var isEmpty: Bool { words.isEmpty }

    static func tokens(_ text: String) -> [String] {
        var out: [String] = []
        var current = ""
        for scalar in text.lowercased().unicodeScalars {
            if scalar.properties.isAlphabetic || scalar.properties.numericType != nil {
                current.unicodeScalars.append(scalar)
            } else if !current.isEmpty {
                out.append(current)
                current = ""
            }
        }
        if !current.isEmpty { out.append(current) }
        return out
    }

    public func score(_ content: String) -> Int {
        guard !words.isEmpty else { return 0 }
        let tokens = Self.tokens(content)
        var counts: [String: Int] = [:]
        for token in tokens where words.contains(token) { counts[token, default: 0] += 1 }
        guard !counts.isEmpty else { return 0 }
        var score = 10 * counts.count + counts.values.reduce(0) { $0 + min($1, 5) }
        if words.count > 1, (" " + tokens.joined(separator: " ") + " ").contains(" " + phrase + " ") { score += 5 }
        return score
    }

    public struct Hit: Sendable {
        public var userID: String
        public var conversationID: String
        public var score: Double
        public var matchingMessages: Int
        public var lastMatch: Double
        public var best: [(score: Double, message: StoredMessage)]

        var json: JSONValue {
            [
                "conversation_id": .string(conversationID), "user_id": .string(userID), "score": .double((score * 1000).rounded() / 1000),
                "matching_messages": .int(Int64(matchingMessages)),
                "matches": .array(best.map { entry in
                    ["message_id": .string(entry.message.messageID), "role": .string(entry.message.role),
                     "content": .string(String(entry.message.content.prefix(500))), "created_at": .string(ISOTime.string(entry.message.createdAt)),
                     "score": .double((entry.score * 1000).rounded() / 1000)]
                }),
            ]
        }
    }

    /// Keeps a hit per matching conversation (content cut to what is shown), sorted at the end.
    struct Ranking: Sendable {
        let limit: Int
        var byConversation: [String: Hit] = [:]

        mutating func consider(_ message: StoredMessage, score: Double) {
            guard score > 0 else { return }
            var kept = message
            kept.content = String(message.content.prefix(500))
            let key = message.userID + "\u{0}" + message.conversationID
            var hit = byConversation[key] ?? Hit(userID: message.userID, conversationID: message.conversationID, score: 0,
                                                  matchingMessages: 0, lastMatch: 0, best: [])
            hit.score = max(hit.score, score)
            hit.matchingMessages += 1
            hit.lastMatch = max(hit.lastMatch, message.createdAt)
            hit.best.append((score, kept))
            hit.best.sort { $0.score != $1.score ? $0.score > $1.score : $0.message.createdAt > $1.message.createdAt }
            if hit.best.count > 3 { hit.best.removeLast() }
            byConversation[key] = hit
        }

        var hits: [Hit] {
            Array(byConversation.values.sorted {
                if $0.score != $1.score { return $0.score > $1.score }
                if $0.matchingMessages != $1.matchingMessages { return $0.matchingMessages > $1.matchingMessages }
                return $0.lastMatch > $1.lastMatch
            }.prefix(limit))
        }
    }
}
