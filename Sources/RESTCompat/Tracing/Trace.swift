import Channels
import Glibc

/// A span's identity as W3C Trace Context carries it (`traceparent`, `tracestate`).
public struct SpanContext: Sendable, Equatable {
    public let traceHigh: UInt64
    public let traceLow: UInt64
    public let spanID: UInt64
    /// The caller's sampled flag: an unsampled trace is propagated but nothing of it is exported.
    public let sampled: Bool
    /// The caller's `tracestate`, passed on unchanged (W3C asks every participant to).
    public let state: String?

    init(traceHigh: UInt64, traceLow: UInt64, spanID: UInt64, sampled: Bool, state: String?) {
        self.traceHigh = traceHigh
        self.traceLow = traceLow
        self.spanID = spanID
        self.sampled = sampled
        self.state = state
    }

    /// Parses `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`); nil for
    /// anything else, an all-zero id or version `ff` — the request then starts a trace of its own.
    /// A later version is read by its version-00 prefix, as the specification asks.
    public init?(traceparent: String, tracestate: String? = nil) {
        let bytes = Array(traceparent.utf8)
        guard bytes.count >= 55, bytes[2] == UInt8(ascii: "-"), bytes[35] == UInt8(ascii: "-"), bytes[52] == UInt8(ascii: "-"),
              let version = Self.hex(bytes[0..<2]), version != 0xFF,
              version != 0 ? (bytes.count == 55 || bytes[55] == UInt8(ascii: "-")) : bytes.count == 55,
              let high = Self.hex(bytes[3..<19]), let low = Self.hex(bytes[19..<35]), high | low != 0,
              let span = Self.hex(bytes[36..<52]), span != 0, let flags = Self.hex(bytes[53..<55])
        else { return nil }
        // The state goes out in a header of ours: printable ASCII only (no CR/LF), and bounded
        // (the specification's 512 characters).
        let state = tracestate.flatMap { state in
            !state.isEmpty && state.utf8.count <= 512 && state.utf8.allSatisfy({ (0x20...0x7E).contains($0) }) ? state : nil
        }
        self.init(traceHigh: high, traceLow: low, spanID: span, sampled: flags & 1 == 1, state: state)
    }

    /// Lower-case hex of a field; nil when a character is not a hex digit (upper case is invalid too).
    private static func hex(_ digits: ArraySlice<UInt8>) -> UInt64? {
        var value: UInt64 = 0
        for digit in digits {
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = value << 4 | UInt64(digit - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = value << 4 | UInt64(digit - UInt8(ascii: "a") + 10)
            default: return nil
            }
        }
        return value
    }

    public var traceID: String { Self.hex16(traceHigh) + Self.hex16(traceLow) }
    public var spanIDHex: String { Self.hex16(spanID) }
    public var traceparent: String { "00-\(traceID)-\(spanIDHex)-\(sampled ? "01" : "00")" }

    static func hex16(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}

/// What a span's children hang from: the tracer and the parent span's context.
///
/// The context is passed explicitly (`RouteContext.trace`, then a `trace:` argument to the
/// services and to `GatewayHTTPClient.send`), not in a task-local: a request here is a chain of
/// callbacks hopping threads (lws service thread → store or Redis thread → the outbound
/// client's thread), and a task-local lives only inside one Swift task, a thread-local only on
/// one thread. nil wherever tracing is off, so off costs an optional check.
public struct TraceParent: Sendable {
    let tracer: Tracer
    public let context: SpanContext

    /// A span under this one (same trace, same sampling decision).
    public func startSpan(_ name: String, kind: Span.Kind, attributes: [(String, JSONValue)] = []) -> Span {
        Span(tracer: tracer, name: name, kind: kind, parent: context, attributes: attributes)
    }
}

/// One operation being timed; `end` hands it to the exporter (once sampled).
public struct Span: Sendable {
    /// OTLP's `SpanKind` numbers.
    public enum Kind: Int64, Sendable {
        case `internal` = 1, server = 2, client = 3
    }

    let tracer: Tracer
    public let context: SpanContext
    let parentSpanID: UInt64?
    let name: String
    let kind: Kind
    let startNanos: UInt64
    let attributes: [(String, JSONValue)]

    /// A span in `parent`'s trace, or the root of a new sampled trace.
    init(tracer: Tracer, name: String, kind: Kind, parent: SpanContext?, attributes: [(String, JSONValue)]) {
        var random = SystemRandomNumberGenerator()
        var spanID: UInt64 = 0
        while spanID == 0 { spanID = random.next() }
        if let parent {
            context = SpanContext(traceHigh: parent.traceHigh, traceLow: parent.traceLow, spanID: spanID,
                                  sampled: parent.sampled, state: parent.state)
        } else {
            var high: UInt64 = 0
            var low: UInt64 = 0
            while high | low == 0 { (high, low) = (random.next(), random.next()) }
            context = SpanContext(traceHigh: high, traceLow: low, spanID: spanID, sampled: true, state: nil)
        }
        self.tracer = tracer
        parentSpanID = parent?.spanID
        self.name = name
        self.kind = kind
        self.attributes = attributes
        startNanos = Tracer.nowNanos()
    }

    /// The parent for this span's children.
    public var asParent: TraceParent { TraceParent(tracer: tracer, context: context) }

    /// Ends the span with more attributes; `error` sets OTLP's error status with that message.
    /// `name` replaces the name given at the start (a server span learns its route after it began).
    public func end(name: String? = nil, attributes more: [(String, JSONValue)] = [], error: String? = nil) {
        guard context.sampled else { return }
        tracer.exporter.record(FinishedSpan(context: context, parentSpanID: parentSpanID, name: name ?? self.name, kind: kind,
                                            startNanos: startNanos, endNanos: Tracer.nowNanos(),
                                            attributes: attributes + more, error: error))
    }
}

/// A span as the exporter queues it.
struct FinishedSpan: Sendable {
    let context: SpanContext
    let parentSpanID: UInt64?
    let name: String
    let kind: Span.Kind
    let startNanos: UInt64
    let endNanos: UInt64
    let attributes: [(String, JSONValue)]
    let error: String?
}

/// Starts spans and gives finished ones to the exporter. Exists only when an OTLP endpoint is
/// configured: everything that traces holds an optional one.
public final class Tracer: Sendable {
    let exporter: SpanExporter

    public init(exporter: SpanExporter) { self.exporter = exporter }

    /// The server span of an incoming request: a child of the caller's span when the request
    /// brought a valid `traceparent`, else the root of a new trace.
    public func startServerSpan(_ name: String, traceparent: String?, tracestate: String?, attributes: [(String, JSONValue)]) -> Span {
        let parent = traceparent.flatMap { SpanContext(traceparent: $0, tracestate: tracestate) }
        return Span(tracer: self, name: name, kind: .server, parent: parent, attributes: attributes)
    }

    static func nowNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
