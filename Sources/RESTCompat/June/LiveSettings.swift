import Channels
import Store
import Synchronization

/// A settings object an admin edits at run time (seed 003's `/admin/config` and
/// `/admin/bot/config`), shared by every node.
///
/// The record `june:<name>` holds `{"version": n, "value": {…}}`; a change is compare-and-set
/// against what was read (two admins on two nodes cannot lose each other's edit) and bumps the
/// version, so a node that hears of two changes out of order keeps the newer; then it is written to the history
/// `june:<name>-history:<13-digit ms>-<id>` (who, when, each key's old and new value; only the
/// newest `historyLimit` are kept, the oldest dropped), then sent as a control command every node
/// applies at once, and published on `admin:config`.
public final class LiveSettings: Sendable {
    public struct Change: Sendable {
        public var key: String
        public var old: JSONValue?
        public var new: JSONValue?
    }

    public let name: String
    let store: any RecordStore
    let node: Node
    let events: AdminEvents
    let defaults: [(String, JSONValue)]
    /// How many history entries are kept (`config_history_size`).
    let historyLimit: Int
    /// Checks one key's new value; the message is the 400's.
    let validate: @Sendable (String, JSONValue) -> String?
    private let current: Mutex<(value: JSONValue, version: Int64)>
    private let listeners = Mutex<[@Sendable (JSONValue) -> Void]>([])

    static let maxKeys = 100
    static let maxBytes = 64 * 1024

    public init(name: String, store: any RecordStore, node: Node, events: AdminEvents, defaults: [(String, JSONValue)],
                historyLimit: Int = 1000, validate: @escaping @Sendable (String, JSONValue) -> String?) {
        precondition(historyLimit >= 1, "historyLimit must be at least 1")
        self.historyLimit = historyLimit
        self.name = name
        self.store = store
        self.node = node
        self.events = events
        self.defaults = defaults
        self.validate = validate
        current = Mutex((.object(defaults), 0))
        node.registerControl("june_settings_" + name) { [self] command in
            guard command["name"]?.stringValue == name, let value = command["value"], value.objectValue != nil,
                  let version = command["version"]?.intValue else { return }
            apply(value, version: version)
        }
    }

    var recordKey: String { "june:" + name }
    var historyPrefix: String { "june:\(name)-history:" }

    /// The settings this node runs with.
    public var value: JSONValue { current.withLock { $0.value } }

    public subscript(key: String) -> JSONValue? { value[key] }

    /// Runs now with the current value and after every change applied on this node.
    public func onApply(_ listener: @escaping @Sendable (JSONValue) -> Void) {
        listeners.withLock { $0.append(listener) }
        listener(value)
    }

    /// Takes a value unless this node already runs a newer one.
    private func apply(_ value: JSONValue, version: Int64) {
        let newer = current.withLock { current -> Bool in
            guard version > current.version else { return false }
            current = (value, version)
            return true
        }
        guard newer else { return }
        for listener in listeners.withLock({ $0 }) { listener(value) }
    }

    /// The stored `(value, version)`, nil when there is none (or it is unreadable).
    private static func decode(_ bytes: [UInt8]?) -> (JSONValue, Int64)? {
        guard let bytes, let stored = try? JSONParser.parse(bytes), let value = stored["value"], value.objectValue != nil,
              let version = stored["version"]?.intValue else { return nil }
        return (value, version)
    }

    /// Reads the stored settings (a node starting after changes were made).
    public func load(completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) {
        store.get(recordKey) { [self] result in
            switch result {
            case .failure(let error): completion(.failure(error))
            case .success(let bytes):
                if let (value, version) = Self.decode(bytes) { apply(value, version: version) }
                completion(.success(()))
            }
        }
    }

    /// Checks a change (`null` removes a key) before anything is written; the message is the 400's.
    public func check(_ changes: [(String, JSONValue)]) -> String? {
        guard !changes.isEmpty else { return "config must name at least one key" }
        for (key, value) in changes {
            guard JuneInput.isIdentifier(key) else { return "config keys must be 1-64 letters, digits, _ . @ -" }
            if !value.isNull, let problem = validate(key, value) { return problem }
        }
        return nil
    }

    public enum UpdateError: Error, Sendable { case invalid(String), store(StoreError), busy }

    /// Merges the changes into the stored settings and applies them on every node.
    public func update(_ changes: [(String, JSONValue)], by user: String,
                       completion: @escaping @Sendable (Result<(JSONValue, [Change]), UpdateError>) -> Void) {
        if let problem = check(changes) { completion(.failure(.invalid(problem))); return }
        attempt(changes, by: user, tries: 5, completion: completion)
    }

    private func attempt(_ changes: [(String, JSONValue)], by user: String, tries: Int,
                         completion: @escaping @Sendable (Result<(JSONValue, [Change]), UpdateError>) -> Void) {
        store.get(recordKey) { [self] read in
            guard case .success(let bytes) = read else { completion(.failure(.store(StoreError("settings unreadable")))); return }
            let stored = Self.decode(bytes)
            let base = stored?.0 ?? .object(defaults)
            let version = (stored?.1 ?? 0) + 1
            var members = base.objectValue ?? []
            var applied: [Change] = []
            for (key, value) in changes {
                let index = members.firstIndex { $0.0 == key }
                let old = index.map { members[$0].1 }
                if value.isNull {
                    if let index { members.remove(at: index) }
                } else if let index {
                    members[index].1 = value
                } else {
                    members.append((key, value))
                }
                if old != (value.isNull ? nil : value) { applied.append(Change(key: key, old: old, new: value.isNull ? nil : value)) }
            }
            guard members.count <= Self.maxKeys else { completion(.failure(.invalid("at most \(Self.maxKeys) keys"))); return }
            let next = JSONValue.object(members)
            let encoded = JSONWriter.bytes(["version": .int(version), "value": next])
            guard encoded.count <= Self.maxBytes else { completion(.failure(.invalid("config larger than \(Self.maxBytes) bytes"))); return }
            guard !applied.isEmpty else { completion(.success((next, []))); return }
            let changed = applied
            store.compareAndSet(recordKey, expected: bytes, new: encoded) { [self] swapped in
                switch swapped {
                case .failure(let error): completion(.failure(.store(error)))
                case .success(false):
                    if tries > 1 { attempt(changes, by: user, tries: tries - 1, completion: completion) } else { completion(.failure(.busy)) }
                case .success(true):
                    apply(next, version: version)
                    node.publishControl(["op": .string("june_settings_" + name), "name": .string(name), "value": next, "version": .int(version)])
                    let at = node.clock.now()
                    let millis = String(UInt64(at * 1000))
                    let entry: JSONValue = [
                        "changed_by": .string(user), "changed_at": .string(ISOTime.string(at)),
                        "changes": .array(changed.map { ["key": .string($0.key), "old_value": $0.old ?? .null, "new_value": $0.new ?? .null] }),
                    ]
                    let key = historyPrefix + String(repeating: "0", count: max(0, 13 - millis.count)) + millis + "-" + RandomID.make(length: 8)
                    store.put(key, value: JSONWriter.bytes(entry)) { [self] _ in
                        trimHistory { [self] in
                            events.publish(AdminEvents.config, event: name == "config" ? "config_changed" : "\(name)_config_changed", [
                                ("changed_by", .string(user)), ("config", next),
                                ("changes", entry["changes"]),
                            ])
                            completion(.success((next, changed)))
                        }
                    }
                }
            }
        }
    }

    /// Drops the oldest history entries beyond `historyLimit`; a failed delete is retried by the next edit.
    private func trimHistory(then done: @escaping @Sendable () -> Void) {
        StoreWalk.fold(store, prefix: historyPrefix, into: [String]()) { keys, record in
            keys.append(record.key)
            return true
        } done: { [self] result in
            guard case .success(let keys) = result, keys.count > historyLimit else { done(); return }
            Self.delete(keys.dropLast(historyLimit), from: store, then: done)
        }
    }

    /// Deletes one key after another (keys sort oldest first), so a store sees one request at a time.
    private static func delete(_ keys: ArraySlice<String>, from store: any RecordStore, then done: @escaping @Sendable () -> Void) {
        guard let first = keys.first else { done(); return }
        let rest = Array(keys.dropFirst())
        store.delete(first) { _ in delete(rest[...], from: store, then: done) }
    }

    /// The change history, newest first.
    public func history(limit: Int, offset: Int, completion: @escaping @Sendable (Result<[JSONValue], StoreError>) -> Void) {
        // Keys sort oldest first and at most `historyLimit` are kept, so it is read whole and cut here.
        StoreWalk.fold(store, prefix: historyPrefix, into: [JSONValue]()) { [historyLimit] entries, record in
            if let entry = try? JSONParser.parse(record.value) { entries.append(entry) }
            if entries.count > historyLimit { entries.removeFirst() }
            return true
        } done: { result in
            completion(result.map { Array($0.reversed().dropFirst(offset).prefix(limit)) })
        }
    }
}

/// The keys seed 003's settings give a meaning to, and what each accepts; other keys are kept
/// as given (any JSON value) for the tools that read them.
public enum JuneSettingsRules {
    public static let botDefaults: [(String, JSONValue)] = [
        ("enabled", true), ("max_file_size", 10_485_760), ("supported_languages", ["en"]),
    ]

    public static let system: @Sendable (String, JSONValue) -> String? = { key, value in
        switch key {
        case "maintenance_mode": return value.boolValue == nil ? "maintenance_mode must be a boolean" : nil
        default: return nil
        }
    }

    public static let bot: @Sendable (String, JSONValue) -> String? = { key, value in
        switch key {
        case "enabled":
            return value.boolValue == nil ? "enabled must be a boolean" : nil
        case "max_file_size":
            guard let size = value.intValue, size >= 1024, size <= 1 << 30 else { return "max_file_size must be an integer from 1024 to 1073741824" }
            return nil
        case "supported_languages":
            guard let list = value.arrayValue, !list.isEmpty, list.count <= 200,
                  list.allSatisfy({ $0.stringValue.map(JuneInput.isLanguage) ?? false }) else {
                return "supported_languages must be a non-empty list of two-letter language codes"
            }
            return nil
        default:
            return nil
        }
    }
}
