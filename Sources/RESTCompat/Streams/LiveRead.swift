import Channels
import Synchronization

/// How a REST read streams live: the channel whose publications change its answer, found from
/// the request and the plain GET's answer (nil: this answer does not stream, e.g. seed 003's
/// `/status`). May look things up; answers once.
public struct LiveChannel: Sendable {
    public typealias Resolve = @Sendable (_ request: HTTPRequest, _ params: [String: String], _ caller: Caller, _ answer: JSONValue,
                                          _ done: @escaping @Sendable (String?) -> Void) -> Void
    let resolve: Resolve

    public init(_ resolve: @escaping Resolve) { self.resolve = resolve }

    /// A channel named from the request alone.
    public static func named(_ name: @escaping @Sendable (HTTPRequest, [String: String]) -> String?) -> LiveChannel {
        LiveChannel { request, params, _, _, done in done(name(request, params)) }
    }
}

/// A legacy REST read answered as a server-sent event stream (`Accept: text/event-stream`):
/// the current answer as the first event, then the answer again after every change of its
/// channel, each with the id `<offset>:<epoch>` of the channel position it reflects. A client
/// coming back with `Last-Event-ID` gets nothing until the next change when it missed none
/// (the channel recovered exactly), otherwise the current answer at once.
///
/// Under the hood a trusted unidirectional session on the channel (the route authorized the
/// caller already): the same outbound limits, slow-consumer cut-off and pings as any client.
/// Answers are re-read through the route's own handler, one read in flight at a time: a burst
/// of changes costs one or two reads, not one per change.
final class LiveRead: ResponseStream, @unchecked Sendable {
    static let headers: [(String, String)] = [
        ("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"), ("x-accel-buffering", "no"),
    ]

    typealias Reread = @Sendable (@escaping Responder) -> Void

    private struct State {
        var sink: (any ClientTransport)?
        var session: ClientSession?
        var epoch = ""
        /// The newest offset heard of, and the one the last event sent reflects.
        var offset: UInt64 = 0
        /// The offset the newest read (in flight or done) reflects: publications up to it are in it.
        var reflected: UInt64 = 0
        var reading = false
        var readAgain = false
        var ended = false
    }

    private let node: Node
    private let channel: String
    private let resume: StreamPosition?
    private let reread: Reread
    private let state = Mutex(State())

    init(node: Node, channel: String, lastEventID: String?, reread: @escaping Reread) {
        self.node = node
        self.channel = channel
        self.resume = lastEventID.flatMap(Self.position(fromEventID:))
        self.reread = reread
    }

    /// `<offset>:<epoch>` back to a position; nil for anything else (then the stream starts afresh).
    static func position(fromEventID id: String) -> StreamPosition? {
        let parts = id.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2, let offset = UInt64(parts[0]) else { return nil }
        return StreamPosition(offset: offset, epoch: String(parts[1]))
    }

    var session: ClientSession? { state.withLock { $0.session } }

    func start(sink: any ClientTransport) {
        let session = node.acceptLiveRead(transport: Listener(read: self))
        state.withLock {
            $0.sink = sink
            $0.session = session
        }
        session.startTrusted(user: "", channel: channel, recoverFrom: resume)
    }

    func stopped() {
        let session = state.withLock { state -> ClientSession? in
            state.ended = true
            state.sink = nil
            return state.session
        }
        session?.closed()
    }

    /// What the session says, one uni push per frame (newline-terminated JSON).
    fileprivate func heard(_ frame: WireFrame) {
        guard let push = try? JSONParser.parse(frame.bytes) else { return }
        if let connect = push["connect"] {
            let sub = connect["subs"]?[channel]
            let epoch = sub?["epoch"]?.stringValue ?? ""
            let offset = UInt64(max(0, sub?["offset"]?.intValue ?? 0))
            let upToDate = resume.map { $0.epoch == epoch && $0.offset == offset && !epoch.isEmpty } ?? false
            state.withLock {
                $0.epoch = epoch
                $0.offset = offset
                if upToDate { $0.reflected = offset }
            }
            if !upToDate { read() }
        } else if let publication = push["pub"] {
            let offset = UInt64(max(0, publication["offset"]?.intValue ?? 0))
            // Recovered publications the first read already reflects are not read again.
            let newer = state.withLock { state -> Bool in
                state.offset = max(state.offset, offset)
                return offset > state.reflected
            }
            if newer { read() }
        } else if push["disconnect"] != nil || push["unsubscribe"] != nil {
            end(.insufficientState)
        } else if push.objectValue?.isEmpty == true {
            // The session's ping: an SSE comment keeps proxies from idling the stream out.
            write(Array(": ping\n\n".utf8))
        }
    }

    /// Re-reads the answer through the route; a change heard during a read asks for one more.
    private func read() {
        let go = state.withLock { state -> Bool in
            if state.ended { return false }
            if state.reading {
                state.readAgain = true
                return false
            }
            state.reading = true
            state.reflected = state.offset
            return true
        }
        guard go else { return }
        let reflects = state.withLock { ($0.reflected, $0.epoch) }
        // Off the caller's thread: a publication reaches here from inside the fan-out.
        Task { [self] in reread { [self] response in
            if response.status == 200 {
                write(Self.event(id: "\(reflects.0):\(reflects.1)", data: response.body))
            } else {
                // The thing read is gone or the caller lost access: say so in the route's error
                // shape and end the stream.
                write(Self.event(kind: "error", data: response.body))
                end(.forceNoReconnect)
            }
            let again = state.withLock { state -> Bool in
                state.reading = false
                let again = state.readAgain
                state.readAgain = false
                return again
            }
            if again { read() }
        } }
    }

    static func event(id: String? = nil, kind: String? = nil, data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 32)
        if let kind { out += Array("event: \(kind)\n".utf8) }
        if let id { out += Array("id: \(id)\n".utf8) }
        out += Array("data: ".utf8)
        for byte in data {
            // A line break inside the answer continues the event on another `data:` line.
            if byte == 0x0A { out += Array("\ndata: ".utf8) } else if byte != 0x0D { out.append(byte) }
        }
        out += [0x0A, 0x0A]
        return out
    }

    private func write(_ bytes: [UInt8]) {
        guard let sink = state.withLock({ $0.ended ? nil : $0.sink }) else { return }
        if !sink.enqueue(WireFrame(bytes: bytes)) { end(.slow) }
    }

    private func end(_ reason: DisconnectReason) {
        let (sink, session) = state.withLock { state -> ((any ClientTransport)?, ClientSession?) in
            if state.ended { return (nil, nil) }
            state.ended = true
            return (state.sink, state.session)
        }
        sink?.close(reason)
        session?.closed()
    }

    /// The session's transport: what it would write goes to `heard` instead.
    private final class Listener: ClientTransport, @unchecked Sendable {
        weak var read: LiveRead?
        init(read: LiveRead) { self.read = read }
        func enqueue(_ frame: WireFrame) -> Bool {
            read?.heard(frame)
            return true
        }
        func close(_ reason: DisconnectReason) { read?.end(reason) }
        var remoteAddress: String { "live-read" }
    }
}
