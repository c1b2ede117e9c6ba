import Channels
import Dispatch
import Glibc
import Logging
import Synchronization

/// Where spans go: an OTLP/HTTP endpoint's base URL, `http://host[:port][/base]`, traces
/// posted to `<base>/v1/traces` as OpenTelemetry's `OTEL_EXPORTER_OTLP_ENDPOINT` defines.
/// The host is numeric (or `localhost`), as for gateways: the outbound client never resolves
/// names (that would block its thread); `https` is refused (it speaks plain HTTP — run the
/// collector, or its agent, next to the hub).
public struct OTLPEndpoint: Sendable, Equatable {
    public let address: GatewayAddress
    public let path: String

    public init(url: String) throws(ConfigProblem) {
        guard url.hasPrefix("http://") else {
            throw ConfigProblem(url.hasPrefix("https://") ? "otel endpoint: https is not supported; use http:// to a collector near the hub"
                                                          : "otel endpoint must be an http:// URL, e.g. http://127.0.0.1:4318")
        }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        guard let address = GatewayAddress(String(rest[..<slash])) else {
            throw ConfigProblem("otel endpoint '\(url)': the host must be an IP address or localhost, optionally with :port")
        }
        var base = String(rest[slash...])
        while base.hasSuffix("/") { base.removeLast() }
        guard !base.contains("?"), !base.contains("#"), base.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw ConfigProblem("otel endpoint '\(url)': the path must be plain (no query, fragment or spaces)")
        }
        self.address = address
        path = base + "/v1/traces"
    }
}

/// A configuration value the hub refuses at start, with the reason.
public struct ConfigProblem: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Batches finished spans and posts them as OTLP JSON (`resourceSpans → scopeSpans → spans`).
///
/// A small exporter of our own rather than swift-otel: that package and swift-distributed-
/// tracing bring a dependency tree (swift-nio, gRPC, protobuf models) that every CI build
/// would compile, for the few hundred lines needed here.
///
/// The queue is bounded: a span that finds it full is dropped and counted, never waited for,
/// so a slow or dead collector costs spans, not requests. One export is in flight at a time,
/// over the hub's non-blocking outbound client (a client of its own, so a stalled collector
/// never takes the slots gateway calls need, and it can be drained last at shutdown).
public final class SpanExporter: Sendable {
    public struct Settings: Sendable {
        public var endpoint: OTLPEndpoint
        /// `service.name` and the rest of the resource's attributes.
        public var resource: [(String, JSONValue)]
        /// OpenTelemetry's batch span processor defaults (`OTEL_BSP_*`).
        public var maxQueue = 2048
        public var maxBatch = 512
        public var interval: Double = 5
        /// Seconds for one export, connect included (`OTEL_EXPORTER_OTLP_TIMEOUT`).
        public var timeout: Double = 10

        public init(endpoint: OTLPEndpoint, resource: [(String, JSONValue)]) {
            self.endpoint = endpoint
            self.resource = resource
        }
    }

    private struct State {
        var spans: [FinishedSpan] = []
        var inFlight = false
        var stopped = false
        var failing = false
    }

    public let settings: Settings
    private let state = Mutex(State())
    /// Spans refused by a full queue or lost with a failed export.
    public let dropped = Atomic<UInt64>(0)
    public let exported = Atomic<UInt64>(0)
    private let client: GatewayHTTPClient
    private let queue = DispatchQueue(label: "hub.otel")
    private let logger: Logger

    public init(settings: Settings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        var client = GatewayHTTPClient.Settings(connectTimeout: min(3, settings.timeout), totalTimeout: settings.timeout)
        client.maxQueued = 4
        client.maxIdlePerAddress = 1
        self.client = GatewayHTTPClient(settings: client)
    }

    /// Starts the flush interval.
    public func start() { schedule() }

    private func schedule() {
        queue.asyncAfter(deadline: .now() + settings.interval) { [self] in
            guard !state.withLock({ $0.stopped }) else { return }
            flush(done: nil)
            schedule()
        }
    }

    func record(_ span: FinishedSpan) {
        let (accepted, batchReady) = state.withLock { state -> (Bool, Bool) in
            guard !state.stopped, state.spans.count < settings.maxQueue else { return (false, false) }
            state.spans.append(span)
            return (true, state.spans.count == settings.maxBatch && !state.inFlight)
        }
        if !accepted { dropped.add(1, ordering: .relaxed) }
        // A full batch goes at once rather than waiting for the interval (as OpenTelemetry's
        // batch processor does), so a burst fills batches instead of the queue.
        if batchReady { queue.async { [self] in flush(done: nil) } }
    }

    /// Posts the oldest batch unless an export is in flight; `done` runs when it is answered.
    func flush(done: (@Sendable () -> Void)?) {
        let batch = state.withLock { state -> [FinishedSpan]? in
            guard !state.inFlight, !state.spans.isEmpty else { return nil }
            state.inFlight = true
            let count = min(settings.maxBatch, state.spans.count)
            defer { state.spans.removeFirst(count) }
            return Array(state.spans.prefix(count))
        }
        guard let batch else { done?(); return }
        let body = JSONWriter.bytes(Self.document(batch, resource: settings.resource))
        client.send(to: settings.endpoint.address, method: "POST", path: settings.endpoint.path, body: body) { [self] result in
            var problem: String?
            switch result {
            case .success(let response) where (200..<300).contains(response.status): break
            case .success(let response): problem = "the collector answered \(response.status)"
            case .failure(let error): problem = "\(error)"
            }
            if problem == nil { exported.add(UInt64(batch.count), ordering: .relaxed) } else { dropped.add(UInt64(batch.count), ordering: .relaxed) }
            let changed = state.withLock { state -> Bool in
                state.inFlight = false
                defer { state.failing = problem != nil }
                return state.failing != (problem != nil)
            }
            // Once per change, not per batch: a dead collector must not flood the log.
            if changed, let problem {
                logger.warning("trace export to \(settings.endpoint.address)\(settings.endpoint.path) failing (\(problem)); spans are dropped until it answers")
            } else if changed {
                logger.notice("trace export to \(settings.endpoint.address) succeeds again")
            }
            done?()
        }
    }

    /// Stops taking spans, posts what is queued (for at most `timeout` seconds) and stops the client.
    public func shutdown(timeout: Double = 3) {
        state.withLock { $0.stopped = true }
        let deadline = GatewayHTTPClient.now() + timeout
        while GatewayHTTPClient.now() < deadline {
            let (empty, inFlight) = state.withLock { ($0.spans.isEmpty, $0.inFlight) }
            if empty && !inFlight { break }
            if inFlight {
                usleep(10_000)
                continue
            }
            let answered = DispatchSemaphore(value: 0)
            flush { answered.signal() }
            _ = answered.wait(timeout: .now() + max(0, deadline - GatewayHTTPClient.now()))
        }
        client.shutdown()
    }

    // MARK: OTLP JSON (opentelemetry-proto's JSON mapping: ids in hex, 64-bit integers as strings, enums as numbers)

    static func document(_ spans: [FinishedSpan], resource: [(String, JSONValue)]) -> JSONValue {
        ["resourceSpans": [[
            "resource": ["attributes": .array(resource.map(attribute))],
            "scopeSpans": [[
                "scope": ["name": "hub"],
                "spans": .array(spans.map(json)),
            ]],
        ]]]
    }

    static func json(_ span: FinishedSpan) -> JSONValue {
        var members: [(String, JSONValue)] = [
            ("traceId", .string(span.context.traceID)), ("spanId", .string(span.context.spanIDHex)),
        ]
        if let parent = span.parentSpanID { members.append(("parentSpanId", .string(SpanContext.hex16(parent)))) }
        if let state = span.context.state { members.append(("traceState", .string(state))) }
        members += [
            ("name", .string(span.name)), ("kind", .int(span.kind.rawValue)),
            ("startTimeUnixNano", .string(String(span.startNanos))), ("endTimeUnixNano", .string(String(span.endNanos))),
            ("attributes", .array(span.attributes.map(attribute))),
            // STATUS_CODE_UNSET (0) or STATUS_CODE_ERROR (2); OK is for applications to claim.
            ("status", span.error.map { ["code": 2, "message": .string($0)] } ?? ["code": 0]),
        ]
        return .object(members)
    }

    static func attribute(_ pair: (String, JSONValue)) -> JSONValue {
        let value: JSONValue
        switch pair.1 {
        case .string(let text): value = ["stringValue": .string(text)]
        case .int(let number): value = ["intValue": .string(String(number))]
        case .bool(let flag): value = ["boolValue": .bool(flag)]
        case .double(let number): value = ["doubleValue": .double(number)]
        default: value = ["stringValue": .string(JSONWriter.string(pair.1))]
        }
        return ["key": .string(pair.0), "value": value]
    }
}
