import Channels
import Dispatch
import Store
import Synchronization

/// Why a service request got no answer, and the status the seed's routes give for it.
public enum ServiceFailure: Error, Sendable, Equatable {
    /// No worker connected, or the one asked went away (503).
    case unavailable(String)
    /// The worker did not answer in time (504).
    case timeout(String)
    /// The worker answered with an error (its status, 400–599).
    case failed(Int, String)

    public var routeError: RouteError {
        switch self {
        case .unavailable(let message): return RouteError(503, message)
        case .timeout(let message): return RouteError(504, message)
        case .failed(let status, let message): return RouteError(status, message)
        }
    }
}

/// Request/reply over service channels. Workers subscribe to `service:<name>` (presence
/// tells the hub who is there); a request is a publication on that channel addressed to one
/// worker (round robin); the worker answers with `POST /api/services/reply`, which reaches
/// the waiting node as a control command. No worker → 503 at once; no answer within the
/// timeout → 504; the addressed worker leaving the channel → 503 within a second.
public final class ServiceDesk: Sendable {
    public static let services = ["agent", "llm", "tts", "stt"]
    public static func channel(_ service: String) -> String { "service:" + service }

    struct Pending {
        var service: String
        var worker: String
        var completion: @Sendable (Result<JSONValue, ServiceFailure>) -> Void
    }

    let node: Node
    public let timeout: Double
    let metrics: MetricsRegistry
    private let pending = Mutex<[String: Pending]>([:])
    /// When each service last failed to answer in time on this node (timeout or worker gone).
    private let lastMiss = Mutex<[String: Double]>([:])
    private let turn = Atomic<Int>(0)
    private let timers = DispatchQueue(label: "hub.services.timers")

    public init(node: Node, timeout: Double, metrics: MetricsRegistry) {
        self.node = node
        self.timeout = timeout
        self.metrics = metrics
        metrics.describe("hub_service_requests_total", type: "counter", help: "Service requests (llm, tts, stt, agent) by outcome.")
        node.registerControl("service_reply") { [self] command in deliver(command) }
    }

    public var waiting: Int { pending.withLock { $0.count } }

    public func request(_ service: String, payload: JSONValue, completion: @escaping @Sendable (Result<JSONValue, ServiceFailure>) -> Void) {
        let channel = Self.channel(service)
        node.presence(channel: channel) { [self] present in
            let workers = ((try? present.get()) ?? []).sorted { $0.client < $1.client }
            guard !workers.isEmpty else {
                count(service, "unavailable")
                completion(.failure(.unavailable("The \(service) service is unavailable: no worker is connected")))
                return
            }
            let worker = workers[turn.add(1, ordering: .relaxed).newValue % workers.count].client
            let id = RandomID.uuid()
            pending.withLock { $0[id] = Pending(service: service, worker: worker, completion: completion) }
            let deadline = node.clock.now() + timeout
            node.publish(channel: channel, data: [
                "request_id": .string(id), "service": .string(service), "worker": .string(worker),
                "deadline": .double(deadline), "payload": payload,
            ]) { [self] published in
                if case .failure = published {
                    finish(id, "unavailable", .failure(.unavailable("The \(service) service is unavailable")))
                }
            }
            timers.asyncAfter(deadline: .now() + timeout) { [self] in
                finish(id, "timeout", .failure(.timeout("The \(service) service did not answer within \(Int(timeout)) s")))
            }
            watch(id, worker: worker, channel: channel, service: service)
        }
    }

    /// Checks once a second that the addressed worker is still there.
    private func watch(_ id: String, worker: String, channel: String, service: String) {
        timers.asyncAfter(deadline: .now() + 1) { [self] in
            guard pending.withLock({ $0[id] != nil }) else { return }
            node.presence(channel: channel) { [self] present in
                guard case .success(let clients) = present else { watch(id, worker: worker, channel: channel, service: service); return }
                if clients.contains(where: { $0.client == worker }) {
                    watch(id, worker: worker, channel: channel, service: service)
                } else {
                    finish(id, "worker_gone", .failure(.unavailable("The \(service) worker disconnected before answering")))
                }
            }
        }
    }

    /// Sends a worker's answer to whichever node waits for it.
    public func reply(requestID: String, result: JSONValue?, error: JSONValue?) {
        node.publishControl(.compact([
            ("op", "service_reply"), ("request_id", .string(requestID)), ("result", result), ("error", error),
        ]))
    }

    private func deliver(_ command: JSONValue) {
        guard let id = command["request_id"]?.stringValue else { return }
        if let error = command["error"], !error.isNull {
            var status = Int(error["status"]?.intValue ?? 502)
            if !(400...599).contains(status) { status = 502 }
            let message = error["message"]?.stringValue ?? "The worker failed"
            finish(id, "error", .failure(.failed(status, message)))
        } else {
            finish(id, "ok", .success(command["result"] ?? [:]))
        }
    }

    private func finish(_ id: String, _ outcome: String, _ result: Result<JSONValue, ServiceFailure>) {
        guard let entry = pending.withLock({ $0.removeValue(forKey: id) }) else { return }
        count(entry.service, outcome)
        entry.completion(result)
    }

    /// Whether the service's workers answer: no request to it on this node timed out, or lost its
    /// worker, in the last `window` seconds.
    public func isAnswering(_ service: String, window: Double = 60) -> Bool {
        guard let missed = lastMiss.withLock({ $0[service] }) else { return true }
        return node.clock.now() - missed > window
    }

    private func count(_ service: String, _ outcome: String) {
        if outcome == "timeout" || outcome == "worker_gone" {
            let now = node.clock.now()
            lastMiss.withLock { $0[service] = now }
        } else if outcome == "ok" || outcome == "error" {
            lastMiss.withLock { _ = $0.removeValue(forKey: service) }
        }
        metrics.increment("hub_service_requests_total", labels: [("service", service), ("outcome", outcome)])
    }
}

/// Service answers cached by content hash in the record store (`june:cache:<service>:<sha256>`),
/// so every node shares them; entries carry their expiry and are swept periodically.
public final class ServiceCache: Sendable {
    let store: any RecordStore
    let ttl: Double
    let clock: any Clock
    let metrics: MetricsRegistry

    public init(store: any RecordStore, ttl: Double, clock: any Clock = SystemClock(), metrics: MetricsRegistry) {
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.metrics = metrics
        metrics.describe("hub_service_cache_hits_total", type: "counter", help: "Service answers served from the cache.")
        metrics.describe("hub_service_cache_misses_total", type: "counter", help: "Service requests the cache could not answer.")
    }

    /// The key for a service and the parts that determine its answer (length-prefixed, so
    /// parts cannot run into each other).
    public static func key(_ service: String, _ parts: [[UInt8]]) -> String {
        var input: [UInt8] = []
        for part in parts {
            input += Array(String(part.count).utf8) + [0x3A] + part
        }
        return "june:cache:\(service):" + SHA256.hex(input)
    }

    public func lookup(_ key: String, service: String, completion: @escaping @Sendable (JSONValue?) -> Void) {
        guard ttl > 0 else { completion(nil); return }
        store.get(key) { [self] result in
            let entry = (try? result.get())?.flatMap { try? JSONParser.parse($0) }
            if let entry, let expires = entry["expires_at"]?.doubleValue, expires > clock.now(), let value = entry["value"] {
                metrics.increment("hub_service_cache_hits_total", labels: [("service", service)])
                completion(value)
            } else {
                metrics.increment("hub_service_cache_misses_total", labels: [("service", service)])
                completion(nil)
            }
        }
    }

    /// Stores an answer; `then` runs once the store has it (or failed to), so the same request
    /// sent right after the answer went out is a hit.
    public func save(_ key: String, _ value: JSONValue, then: @escaping @Sendable () -> Void = {}) {
        guard ttl > 0 else { then(); return }
        store.put(key, value: JSONWriter.bytes(["expires_at": .double(clock.now() + ttl), "value": value])) { _ in then() }
    }

    /// Deletes expired entries, a page at a time through the whole prefix (every few minutes).
    public func sweep() {
        RecordSweep.run(store: store, prefix: "june:cache:", now: clock.now()) { $0["expires_at"]?.doubleValue ?? 0 }
    }
}

/// Walks every record under a prefix and deletes those whose expiry has passed.
enum RecordSweep {
    static func run(store: any RecordStore, prefix: String, now: Double, after: String? = nil,
                    expiry: @escaping @Sendable (JSONValue) -> Double) {
        store.list(prefix: prefix, after: after, limit: 500) { result in
            guard case .success(let records) = result, let last = records.last else { return }
            for record in records {
                let expires = (try? JSONParser.parse(record.value)).map(expiry) ?? 0
                if expires <= now { store.delete(record.key) { _ in } }
            }
            if records.count == 500 { run(store: store, prefix: prefix, now: now, after: last.key, expiry: expiry) }
        }
    }
}

extension ServiceDesk {
    /// A request answered from the cache when it can be, cached when it succeeds with an
    /// answer the caller can use (`usable`): a worker's garbage is answered 502 once, not
    /// served from the cache for the next hour.
    public func cachedRequest(_ service: String, cache: ServiceCache, key: String, payload: JSONValue,
                              usable: @escaping @Sendable (JSONValue) -> Bool,
                              completion: @escaping @Sendable (Result<JSONValue, ServiceFailure>) -> Void) {
        cache.lookup(key, service: service) { [self] hit in
            if let hit, usable(hit) { completion(.success(hit)); return }
            request(service, payload: payload) { result in
                guard case .success(let value) = result, usable(value) else { completion(result); return }
                // Answer after the save, so an identical request right after is a hit.
                cache.save(key, value) { completion(result) }
            }
        }
    }
}
