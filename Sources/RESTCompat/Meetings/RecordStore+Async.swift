import Store

/// The record store's completions as async calls, so multi-step handlers read top to bottom.
/// They run on Swift's cooperative pool, never on an lws service thread.
extension RecordStore {
    func value(_ key: String) async throws(StoreError) -> [UInt8]? {
        try await withCheckedContinuation { continuation in get(key) { continuation.resume(returning: $0) } }.get()
    }

    func store(_ key: String, _ value: [UInt8]) async throws(StoreError) {
        try await withCheckedContinuation { continuation in put(key, value: value) { continuation.resume(returning: $0) } }.get()
    }

    @discardableResult
    func remove(_ key: String) async throws(StoreError) -> Bool {
        try await withCheckedContinuation { continuation in delete(key) { continuation.resume(returning: $0) } }.get()
    }

    func records(prefix: String, after: String?, limit: Int) async throws(StoreError) -> [Record] {
        try await withCheckedContinuation { continuation in
            list(prefix: prefix, after: after, limit: limit) { continuation.resume(returning: $0) }
        }.get()
    }

    func swap(_ key: String, expected: [UInt8]?, new: [UInt8]?) async throws(StoreError) -> Bool {
        try await withCheckedContinuation { continuation in
            compareAndSet(key, expected: expected, new: new) { continuation.resume(returning: $0) }
        }.get()
    }

    /// Every record under a prefix, in key order, up to `cap` (a bound, so a huge prefix
    /// cannot hold the whole table in memory).
    func allRecords(prefix: String, cap: Int) async throws(StoreError) -> [Record] {
        var out: [Record] = []
        var after: String?
        while out.count < cap {
            let wanted = min(500, cap - out.count)
            let batch = try await records(prefix: prefix, after: after, limit: wanted)
            out += batch
            guard batch.count == wanted, let last = batch.last else { break }
            after = last.key
        }
        return out
    }

    /// Read-modify-write with compare-and-set, retried on a concurrent change. `change`
    /// returns nil to leave the record alone. Returns the stored bytes (nil when absent).
    func update(_ key: String, attempts: Int = 16,
                _ change: ([UInt8]) throws(RouteError) -> [UInt8]?) async throws(RouteError) -> [UInt8]? {
        for _ in 0..<attempts {
            let current: [UInt8]?
            do { current = try await value(key) } catch { throw RouteError.store(error) }
            guard let current else { return nil }
            guard let next = try change(current) else { return current }
            let swapped: Bool
            do { swapped = try await swap(key, expected: current, new: next) } catch { throw RouteError.store(error) }
            if swapped { return next }
        }
        throw RouteError(503, "record \(key) is changing too fast; try again", code: "INTERNAL_ERROR")
    }
}

extension RouteError {
    /// A store failure as the 503 callers see; a `RouteError` thrown inside passes through.
    static func store(_ error: any Error) -> RouteError {
        if let routeError = error as? RouteError { return routeError }
        return RouteError(503, "storage unavailable", code: "INTERNAL_ERROR", details: ["reason": .string("\(error)")])
    }
}
