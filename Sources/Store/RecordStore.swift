/// Why a store operation failed. Callers answer 500/503 and change nothing.
public struct StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A record: key and raw bytes (raw so that formats other tools read, like seed 000's
/// `ip|state|type|room|start|duration|progress`, stay byte-compatible).
public struct Record: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public init(key: String, value: [UInt8]) {
        self.key = key
        self.value = value
    }
}

/// The state behind RESTCompat: gateway mappings, jobs, users, conversations, meetings.
/// Embedded (SQLite under `--data-dir`) for one node, Redis for many.
///
/// A completion with success means the write is durable (embedded: committed with a full
/// fsync; Redis: acknowledged by the server). Completions run on the store's own thread.
public protocol RecordStore: AnyObject, Sendable {
    func get(_ key: String, completion: @escaping @Sendable (Result<[UInt8]?, StoreError>) -> Void)
    func put(_ key: String, value: [UInt8], completion: @escaping @Sendable (Result<Void, StoreError>) -> Void)
    /// Completes with whether the key existed.
    func delete(_ key: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void)
    /// Records whose key starts with `prefix`, in key order, after the key `after` (exclusive).
    func list(prefix: String, after: String?, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void)
    /// Sets `key` to `new` (deletes it when nil) only if it currently holds `expected` (absent
    /// when nil). Completes with whether it did: the building block for allocations that
    /// must never double-assign.
    func compareAndSet(_ key: String, expected: [UInt8]?, new: [UInt8]?,
                       completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void)
    /// Up to `limit` records of the `MemberSet` named `set`, with their current values, picked at
    /// random (so concurrent callers spread over the members instead of all trying the first).
    /// A read of the set, never a scan of the records; an unknown set fails.
    func members(of set: String, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void)
}

/// The records under `prefix` whose value `contains` accepts (e.g. the free gateways), kept by
/// the store in the same atomic step as every write of such a record, so finding one is a read
/// of the set rather than a walk over every record.
public struct MemberSet: Sendable {
    public var name: String
    public var prefix: String
    public var contains: @Sendable ([UInt8]) -> Bool
    public init(name: String, prefix: String, contains: @escaping @Sendable ([UInt8]) -> Bool) {
        self.name = name
        self.prefix = prefix
        self.contains = contains
    }

    /// Whether a value written under `key` belongs to the set.
    public func includes(key: String, value: [UInt8]?) -> Bool {
        guard let value, key.hasPrefix(prefix) else { return false }
        return contains(value)
    }
}

/// One JSON string field of the records under a key prefix, indexed for word search
/// (e.g. `content` of the chat messages under `june:msg:`).
public struct TextIndex: Sendable, Equatable {
    public var prefix: String
    public var field: String
    public init(prefix: String, field: String) {
        self.prefix = prefix
        self.field = field
    }
}

/// A store that ranks the records of its `TextIndex` by relevance itself (the embedded store,
/// with SQLite FTS5). Stores without one are searched by scanning (see `ConversationArchive`).
public protocol TextSearchable: Sendable {
    /// What is indexed; nil when the store was opened without an index.
    var textIndex: TextIndex? { get }
    /// Records matching any of `words` (whole words, case-insensitive), best first, each with
    /// its relevance (higher is better); at most `limit`.
    func search(words: [String], limit: Int, completion: @escaping @Sendable (Result<[(Record, Double)], StoreError>) -> Void)
}
