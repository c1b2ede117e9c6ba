import CSQLite
import Glibc
import Logging
import Synchronization

/// The embedded store: one SQLite file under `--data-dir`, WAL journal, `synchronous=FULL`.
///
/// All SQLite calls run on one thread of the store's own; callers queue operations and are
/// called back. Writes that queue up while a commit is in progress are committed together
/// (one fsync for the batch), and every completion of the batch runs only after its commit.
///
/// With a `TextIndex`, an FTS5 table (`text_index`, its rows mapped to keys by `text_index_docs`)
/// follows the indexed records through triggers, inside the same transactions as the writes.
///
/// Each `MemberSet` is rows of `member_sets` (set name, key), written in the same savepoint as
/// the record write they follow, and rebuilt from the records when the store opens (so a file
/// from before a set existed, or one another tool wrote, starts right).
public final class SQLiteRecordStore: RecordStore, TextSearchable, @unchecked Sendable {
    private enum Operation {
        case get(String, @Sendable (Result<[UInt8]?, StoreError>) -> Void)
        case put(String, [UInt8], @Sendable (Result<Void, StoreError>) -> Void)
        case delete(String, @Sendable (Result<Bool, StoreError>) -> Void)
        case list(String, String?, Int, @Sendable (Result<[Record], StoreError>) -> Void)
        case compareAndSet(String, [UInt8]?, [UInt8]?, @Sendable (Result<Bool, StoreError>) -> Void)
        case search([String], Int, @Sendable (Result<[(Record, Double)], StoreError>) -> Void)
        case members(String, Int, @Sendable (Result<[Record], StoreError>) -> Void)
        case stop

        var isWrite: Bool {
            switch self {
            case .put, .delete, .compareAndSet: return true
            default: return false
            }
        }
    }

    private struct Queue {
        var operations: [Operation] = []
        var stopped = false
    }

    private let queue = Mutex(Queue())
    /// Committed values by key (nil: known absent), so a `get` is answered on the caller's
    /// thread without a hop to the store thread: legacy REST reads (`GET /status`) are mostly
    /// repeated reads of a few records. Only the store thread fills it — after a read, or after
    /// the commit of a write and before its completion runs, so an acknowledged write is always
    /// what a later `get` sees. Bounded: cleared when it reaches `cacheCapacity` keys.
    private let cache = Mutex<[String: [UInt8]?]>([:])
    private let cacheCapacity = 65_536
    private var signal = pthread_cond_t()
    private var signalLock = pthread_mutex_t()
    private var thread: pthread_t?
    private var db: OpaquePointer?
    public let path: String
    public let textIndex: TextIndex?
    let memberSets: [MemberSet]
    private let logger: Logger
    /// Store thread only: whether the last commit failed, so a failing disk is logged once
    /// when writes start failing and once when they work again, not once per request.
    private var writesFailing = false

    /// Opens (creating if needed) the database file. Throws when it cannot.
    public init(path: String, textIndex: TextIndex? = nil, memberSets: [MemberSet] = [],
                logger: Logger = Logger(label: "hub.store")) throws(StoreError) {
        self.path = path
        self.textIndex = textIndex
        self.memberSets = memberSets
        self.logger = logger
        var handle: OpaquePointer?
        guard sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(handle)
            throw StoreError("cannot open store \(path): \(message)")
        }
        db = handle
        for statement in [
            "PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA busy_timeout=5000",
            "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
            // `id` orders the members so a random pick is an index seek, not a sort of the set.
            "CREATE TABLE IF NOT EXISTS member_sets (id INTEGER PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL, UNIQUE(name, key))",
            "CREATE INDEX IF NOT EXISTS member_sets_by_name ON member_sets(name, id)",
        ] + (textIndex.map(Self.indexStatements) ?? []) {
            guard exec(statement) else {
                let message = String(cString: sqlite3_errmsg(db))
                sqlite3_close(db)
                throw StoreError("cannot prepare store \(path): \(message)")
            }
        }
        if let problem = rebuildMemberSets() {
            // A read-only or full disk at start: the rows kept by the last run stay as they were,
            // and since nothing can be written now they cannot fall behind the records either.
            logger.error("store \(path): could not rebuild the member sets (\(problem)); kept as they were")
        }
        pthread_mutex_init(&signalLock, nil)
        pthread_cond_init(&signal, nil)
        let box = Unmanaged.passRetained(self)
        var handleThread = pthread_t()
        pthread_create(&handleThread, nil, { raw in
            let store = Unmanaged<SQLiteRecordStore>.fromOpaque(raw!).takeRetainedValue()
            store.run()
            return nil
        }, box.toOpaque())
        thread = handleThread
    }

    /// The FTS5 table, its key map, the triggers that keep them in step with `records`, and a
    /// backfill of records written before the index existed (a no-op once they are in).
    static func indexStatements(_ index: TextIndex) -> [String] {
        func literal(_ text: String) -> String { "'" + doubling("'", in: text) + "'" }
        let prefix = literal(index.prefix)
        let length = index.prefix.unicodeScalars.count
        let path = literal("$." + index.field)
        func body(_ row: String) -> String {
            "CASE WHEN json_valid(CAST(\(row).value AS TEXT)) THEN json_extract(CAST(\(row).value AS TEXT), \(path)) END"
        }
        // Clears any leftover entry for the key first, so an insert never trips on one.
        let add = "DELETE FROM text_index WHERE rowid = (SELECT docid FROM text_index_docs WHERE key = new.key); "
            + "DELETE FROM text_index_docs WHERE key = new.key; "
            + "INSERT INTO text_index_docs(key) VALUES (new.key); "
            + "INSERT INTO text_index(rowid, body) VALUES ((SELECT docid FROM text_index_docs WHERE key = new.key), \(body("new")));"
        let remove = "DELETE FROM text_index WHERE rowid = (SELECT docid FROM text_index_docs WHERE key = old.key); "
            + "DELETE FROM text_index_docs WHERE key = old.key;"
        return [
            "CREATE TABLE IF NOT EXISTS text_index_docs (docid INTEGER PRIMARY KEY, key TEXT UNIQUE NOT NULL)",
            "CREATE VIRTUAL TABLE IF NOT EXISTS text_index USING fts5(body, tokenize = 'unicode61 remove_diacritics 0')",
            "DROP TRIGGER IF EXISTS text_index_insert", "DROP TRIGGER IF EXISTS text_index_update", "DROP TRIGGER IF EXISTS text_index_delete",
            "CREATE TRIGGER text_index_insert AFTER INSERT ON records WHEN substr(new.key, 1, \(length)) = \(prefix) BEGIN \(add) END",
            "CREATE TRIGGER text_index_update AFTER UPDATE ON records WHEN substr(old.key, 1, \(length)) = \(prefix) BEGIN \(remove) \(add) END",
            "CREATE TRIGGER text_index_delete AFTER DELETE ON records WHEN substr(old.key, 1, \(length)) = \(prefix) BEGIN \(remove) END",
            "INSERT INTO text_index_docs(key) SELECT key FROM records WHERE substr(key, 1, \(length)) = \(prefix) AND key NOT IN (SELECT key FROM text_index_docs)",
            "INSERT INTO text_index(rowid, body) SELECT d.docid, \(body("r")) FROM text_index_docs d JOIN records r ON r.key = d.key "
                + "WHERE d.docid NOT IN (SELECT rowid FROM text_index)",
        ]
    }

    /// Store thread (or init) only: every set recomputed from the records, in one transaction.
    /// Returns what went wrong, or nil.
    private func rebuildMemberSets() -> String? {
        guard !memberSets.isEmpty else { return nil }
        guard exec("BEGIN IMMEDIATE") else { return String(cString: sqlite3_errmsg(db)) }
        func rebuild(_ set: MemberSet) -> Bool {
            guard let clear = prepare("DELETE FROM member_sets WHERE name = ?1") else { return false }
            bind(clear, 1, set.name)
            let cleared = sqlite3_step(clear) == SQLITE_DONE
            sqlite3_finalize(clear)
            guard cleared else { return false }
            var after = ""
            while true {
                guard case .success(let page) = list(prefix: set.prefix, after: after, limit: 1000) else { return false }
                for record in page where set.contains(record.value) {
                    guard stepMember("INSERT OR IGNORE INTO member_sets(name, key) VALUES(?1, ?2)", set.name, record.key) else { return false }
                }
                guard page.count == 1000, let last = page.last else { return true }
                after = last.key
            }
        }
        if memberSets.allSatisfy(rebuild), exec("COMMIT") { return nil }
        let problem = String(cString: sqlite3_errmsg(db))
        _ = exec("ROLLBACK")
        return problem
    }

    /// SQL and FTS5 quoting: the quote character written twice.
    static func doubling(_ quote: Character, in text: String) -> String {
        var out = ""
        for character in text {
            out.append(character)
            if character == quote { out.append(character) }
        }
        return out
    }

    public func search(words: [String], limit: Int, completion: @escaping @Sendable (Result<[(Record, Double)], StoreError>) -> Void) {
        guard textIndex != nil else { completion(.failure(StoreError("no text index"))); return }
        enqueue(.search(words, limit, completion))
    }

    /// Finishes queued operations and closes the file.
    public func close() {
        enqueue(.stop)
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    public func get(_ key: String, completion: @escaping @Sendable (Result<[UInt8]?, StoreError>) -> Void) {
        if let hit = cache.withLock({ $0[key] }) {
            completion(.success(hit))
            return
        }
        enqueue(.get(key, completion))
    }
    public func put(_ key: String, value: [UInt8], completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) { enqueue(.put(key, value, completion)) }
    public func delete(_ key: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) { enqueue(.delete(key, completion)) }
    public func list(prefix: String, after: String?, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) {
        enqueue(.list(prefix, after, limit, completion))
    }
    public func compareAndSet(_ key: String, expected: [UInt8]?, new: [UInt8]?, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        enqueue(.compareAndSet(key, expected, new, completion))
    }
    public func members(of set: String, limit: Int, completion: @escaping @Sendable (Result<[Record], StoreError>) -> Void) {
        guard memberSets.contains(where: { $0.name == set }) else { completion(.failure(StoreError("no member set '\(set)'"))); return }
        enqueue(.members(set, limit, completion))
    }

    private func enqueue(_ operation: Operation) {
        let accepted = queue.withLock { queue -> Bool in
            guard !queue.stopped else { return false }
            queue.operations.append(operation)
            return true
        }
        guard accepted else {
            fail(operation, StoreError("store is closed"))
            return
        }
        pthread_mutex_lock(&signalLock)
        pthread_cond_signal(&signal)
        pthread_mutex_unlock(&signalLock)
    }

    private func run() {
        while true {
            pthread_mutex_lock(&signalLock)
            while queue.withLock({ $0.operations.isEmpty }) { pthread_cond_wait(&signal, &signalLock) }
            pthread_mutex_unlock(&signalLock)
            let batch = queue.withLock { queue -> [Operation] in
                defer { queue.operations.removeAll(keepingCapacity: true) }
                return queue.operations
            }
            var stop = false
            var writes: [Operation] = []
            for operation in batch {
                if case .stop = operation { stop = true; continue }
                if operation.isWrite { writes.append(operation) } else { perform(operation) }
            }
            commit(writes)
            if stop {
                queue.withLock { $0.stopped = true }
                let late = queue.withLock { queue -> [Operation] in defer { queue.operations = [] }; return queue.operations }
                for operation in late { fail(operation, StoreError("store is closed")) }
                sqlite3_close(db)
                db = nil
                return
            }
        }
    }

    /// Runs the writes in one transaction; completions run after the commit.
    private func commit(_ writes: [Operation]) {
        guard !writes.isEmpty else { return }
        guard exec("BEGIN IMMEDIATE") else {
            let error = StoreError("store write failed: \(String(cString: sqlite3_errmsg(db)))")
            noteWrites(failed: error)
            for operation in writes { fail(operation, error) }
            return
        }
        var outcomes: [() -> Void] = []
        var committed: [(String, [UInt8]?)] = []
        for operation in writes {
            switch operation {
            case .put(let key, let value, let completion):
                let ok = write(key, value).ok
                if ok { committed.append((key, value)) }
                outcomes.append { completion(ok ? .success(()) : .failure(self.lastError())) }
            case .delete(let key, let completion):
                let (ok, existed) = write(key, nil)
                if ok { committed.append((key, nil)) }
                outcomes.append { completion(ok ? .success(existed) : .failure(self.lastError())) }
            case .compareAndSet(let key, let expected, let new, let completion):
                let current = read(key)
                guard case .success(let value) = current else {
                    outcomes.append { completion(.failure(self.lastError())) }
                    continue
                }
                guard value == expected else {
                    outcomes.append { completion(.success(false)) }
                    continue
                }
                let ok = write(key, new).ok
                if ok { committed.append((key, new)) }
                outcomes.append { completion(ok ? .success(true) : .failure(self.lastError())) }
            default:
                break
            }
        }
        if exec("COMMIT") {
            noteWrites(failed: nil)
            remember(committed)
            for outcome in outcomes { outcome() }
        } else {
            let error = lastError()
            noteWrites(failed: error)
            _ = exec("ROLLBACK")
            cache.withLock { cache in for (key, _) in committed { cache[key] = nil } }
            for operation in writes { fail(operation, error) }
        }
    }

    /// Store thread, inside the batch's transaction: writes (nil: deletes) the record and follows it
    /// in its member sets, all or nothing (a savepoint, so a failed set row takes the write back).
    /// `changed`: whether a row was written or deleted.
    private func write(_ key: String, _ value: [UInt8]?) -> (ok: Bool, changed: Bool) {
        func record() -> (Bool, Bool) {
            let ok = value.map { step("INSERT INTO records(key, value) VALUES(?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", key, $0) }
                ?? step("DELETE FROM records WHERE key = ?1", key, nil)
            return (ok, sqlite3_changes(db) > 0)
        }
        let sets = memberSets.filter { key.hasPrefix($0.prefix) }
        guard !sets.isEmpty else { return record() }
        guard exec("SAVEPOINT member_write") else { return (false, false) }
        var (ok, changed) = record()
        for set in sets where ok {
            ok = set.includes(key: key, value: value)
                ? stepMember("INSERT OR IGNORE INTO member_sets(name, key) VALUES(?1, ?2)", set.name, key)
                : stepMember("DELETE FROM member_sets WHERE name = ?1 AND key = ?2", set.name, key)
        }
        if !ok { _ = exec("ROLLBACK TO member_write") }
        _ = exec("RELEASE member_write")
        return (ok, changed)
    }

    private func stepMember(_ sql: String, _ name: String, _ key: String) -> Bool {
        guard let statement = prepare(sql) else { return false }
        defer { sqlite3_finalize(statement) }
        bind(statement, 1, name)
        bind(statement, 2, key)
        return sqlite3_step(statement) == SQLITE_DONE
    }

    /// From a random member on, in `id` order, wrapping around: two index seeks however big the set.
    private func members(of set: String, limit: Int) -> Result<[Record], StoreError> {
        guard limit > 0 else { return .success([]) }
        // Two ORDER BY … LIMIT 1 seeks: `min(id), max(id)` in one SELECT would walk the whole set.
        func end(_ order: String) -> Result<Int64?, StoreError> {
            guard let statement = prepare("SELECT id FROM member_sets WHERE name = ?1 ORDER BY id \(order) LIMIT 1") else { return .failure(lastError()) }
            defer { sqlite3_finalize(statement) }
            bind(statement, 1, set)
            switch sqlite3_step(statement) {
            case SQLITE_ROW: return .success(sqlite3_column_int64(statement, 0))
            case SQLITE_DONE: return .success(nil)
            default: return .failure(lastError())
            }
        }
        let low: Int64, high: Int64
        switch (end("ASC"), end("DESC")) {
        case (.failure(let error), _), (_, .failure(let error)): return .failure(error)
        case (.success(let first?), .success(let last?)): (low, high) = (first, last)
        default: return .success([])
        }
        let start = Int64.random(in: low...high)
        var found: [Record] = []
        for (condition, count) in [("m.id >= ?2", limit), ("m.id < ?2", 0)] {
            let wanted = count > 0 ? count : limit - found.count
            guard wanted > 0 else { break }
            guard let statement = prepare("SELECT m.key, r.value FROM member_sets m JOIN records r ON r.key = m.key "
                                          + "WHERE m.name = ?1 AND \(condition) ORDER BY m.id LIMIT ?3") else { return .failure(lastError()) }
            defer { sqlite3_finalize(statement) }
            bind(statement, 1, set)
            sqlite3_bind_int64(statement, 2, start)
            sqlite3_bind_int64(statement, 3, Int64(wanted))
            while true {
                let code = sqlite3_step(statement)
                if code == SQLITE_DONE { break }
                guard code == SQLITE_ROW else { return .failure(lastError()) }
                found.append(Record(key: String(cString: sqlite3_column_text(statement, 0)), value: column(statement, 1)))
            }
        }
        return .success(found)
    }

    private func perform(_ operation: Operation) {
        switch operation {
        case .get(let key, let completion):
            let result = read(key)
            if case .success(let value) = result { remember([(key, value)]) }
            completion(result)
        case .list(let prefix, let after, let limit, let completion):
            completion(list(prefix: prefix, after: after, limit: limit))
        case .search(let words, let limit, let completion):
            completion(search(words: words, limit: limit))
        case .members(let set, let limit, let completion):
            completion(members(of: set, limit: limit))
        default:
            break
        }
    }

    /// Store thread only: logs the moment commits start failing (a full or read-only disk) and
    /// the moment they work again.
    private func noteWrites(failed error: StoreError?) {
        if let error, !writesFailing {
            logger.error("store \(path): writes failing (\(error)); reads go on")
        } else if error == nil, writesFailing {
            logger.notice("store \(path): writes succeed again")
        }
        writesFailing = error != nil
    }

    /// Store thread only: records committed or read values in the cache.
    private func remember(_ values: [(String, [UInt8]?)]) {
        guard !values.isEmpty else { return }
        cache.withLock { cache in
            if cache.count + values.count > cacheCapacity { cache.removeAll(keepingCapacity: true) }
            for (key, value) in values { cache[key] = .some(value) }
        }
    }

    private func lastError() -> StoreError { StoreError("store error: \(String(cString: sqlite3_errmsg(db)))") }

    private func fail(_ operation: Operation, _ error: StoreError) {
        switch operation {
        case .get(_, let c): c(.failure(error))
        case .put(_, _, let c): c(.failure(error))
        case .delete(_, let c): c(.failure(error))
        case .list(_, _, _, let c): c(.failure(error))
        case .compareAndSet(_, _, _, let c): c(.failure(error))
        case .search(_, _, let c): c(.failure(error))
        case .members(_, _, let c): c(.failure(error))
        case .stop: break
        }
    }

    private func exec(_ sql: String) -> Bool { sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK }

    private func prepare(_ sql: String) -> OpaquePointer? {
        var statement: OpaquePointer?
        return sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK ? statement : nil
    }

    private func bind(_ statement: OpaquePointer, _ index: Int32, _ text: String) {
        var text = text
        text.withUTF8 { utf8 in
            _ = utf8.withMemoryRebound(to: CChar.self) { hub_sqlite_bind_text(statement, index, $0.baseAddress, Int32(utf8.count)) }
        }
    }

    private func step(_ sql: String, _ key: String, _ value: [UInt8]?) -> Bool {
        guard let statement = prepare(sql) else { return false }
        defer { sqlite3_finalize(statement) }
        bind(statement, 1, key)
        if let value { value.withUnsafeBytes { _ = hub_sqlite_bind_blob(statement, 2, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(value.count)) } }
        return sqlite3_step(statement) == SQLITE_DONE
    }

    private func read(_ key: String) -> Result<[UInt8]?, StoreError> {
        guard let statement = prepare("SELECT value FROM records WHERE key = ?1") else { return .failure(lastError()) }
        defer { sqlite3_finalize(statement) }
        bind(statement, 1, key)
        switch sqlite3_step(statement) {
        case SQLITE_ROW: return .success(column(statement, 0))
        case SQLITE_DONE: return .success(nil)
        default: return .failure(lastError())
        }
    }

    private func column(_ statement: OpaquePointer, _ index: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(statement, index))
        guard count > 0, let bytes = sqlite3_column_blob(statement, index) else { return [] }
        return Array(UnsafeRawBufferPointer(start: bytes, count: count))
    }

    /// bm25 over the index; each word quoted, so nothing in it is FTS5 syntax.
    private func search(words: [String], limit: Int) -> Result<[(Record, Double)], StoreError> {
        let query = words.map { "\"" + Self.doubling("\"", in: $0) + "\"" }.joined(separator: " OR ")
        guard !query.isEmpty else { return .success([]) }
        guard let statement = prepare("""
            SELECT d.key, r.value, bm25(text_index) AS rank FROM text_index
            JOIN text_index_docs d ON d.docid = text_index.rowid JOIN records r ON r.key = d.key
            WHERE text_index MATCH ?1 ORDER BY rank LIMIT ?2
            """) else { return .failure(lastError()) }
        defer { sqlite3_finalize(statement) }
        bind(statement, 1, query)
        sqlite3_bind_int64(statement, 2, Int64(max(0, limit)))
        var found: [(Record, Double)] = []
        while true {
            switch sqlite3_step(statement) {
            case SQLITE_ROW:
                let key = String(cString: sqlite3_column_text(statement, 0))
                found.append((Record(key: key, value: column(statement, 1)), -sqlite3_column_double(statement, 2)))
            case SQLITE_DONE:
                return .success(found)
            default:
                return .failure(lastError())
            }
        }
    }

    private func list(prefix: String, after: String?, limit: Int) -> Result<[Record], StoreError> {
        // Keys from max(prefix, after) up to the first key past the prefix, in key (byte) order.
        guard let statement = prepare("SELECT key, value FROM records WHERE key >= ?1 AND key > ?2 AND substr(key, 1, ?3) = ?1 ORDER BY key LIMIT ?4") else {
            return .failure(lastError())
        }
        defer { sqlite3_finalize(statement) }
        bind(statement, 1, prefix)
        bind(statement, 2, after ?? "")
        sqlite3_bind_int64(statement, 3, Int64(prefix.unicodeScalars.count))
        sqlite3_bind_int64(statement, 4, Int64(max(0, limit)))
        var records: [Record] = []
        while sqlite3_step(statement) == SQLITE_ROW {
            let key = String(cString: sqlite3_column_text(statement, 0))
            records.append(Record(key: key, value: column(statement, 1)))
        }
        return .success(records)
    }
}
