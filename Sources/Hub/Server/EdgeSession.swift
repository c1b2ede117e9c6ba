import CLibWebSockets
import Channels
import RESTCompat
import Synchronization

/// Anything libwebsockets holds in a connection's per-session slot. `wsi` and `gone` are
/// touched only on the owning service thread.
class EdgeSession: @unchecked Sendable {
    unowned let loop: ServiceLoop
    var wsi: OpaquePointer?
    var gone = false

    init(loop: ServiceLoop, wsi: OpaquePointer?) {
        self.loop = loop
        self.wsi = wsi
    }

    /// Asks for a writeable callback from any thread.
    final func wantWrite() { loop.requestWrite(self) }

    /// A WebSocket connection, written at the end of the turn that queued its frames: asked once
    /// per write, where a dynamic cast cost more than the rest of the request.
    var writesAtTurnEnd: Bool { false }
}

/// A connection the engine writes frames to: the outbound queue is bounded in bytes and
/// messages; frames are shared, never copied per subscriber, and written on the service thread
/// only: a WebSocket connection's at the end of the turn that queued them (ServiceLoop.flushTurn),
/// the rest from the writeable callback. The engine's `ClientTransport`, whatever the edge protocol.
class QueuedSession: EdgeSession, ClientTransport, @unchecked Sendable {
    struct Outbound {
        /// The oldest queued frame, held in the connection itself: nearly every write takes a
        /// single frame (a turn's batch), and an array's storage is one more cold cache line per
        /// subscriber per turn (it was `isUniquelyReferenced` in perf's fan-out profile). The
        /// queue is `first` then `frames[head...]`; `first` is nil only when the queue is empty.
        var first: WireFrame?
        var frames: [WireFrame] = []
        var head = 0
        /// `frames[head...]` is not empty: read instead of the array's count, which lives in its storage.
        var spilled = false
        var bytes = 0
        var closeReason: DisconnectReason?
        var wakeRequested = false
        var closing = false
        /// Protocol messages queued (a batch frame holds several): what --client-queue-max-messages counts.
        var messages = 0

        var hasFrames: Bool { first != nil }
    }

    let outbound = Mutex(Outbound())
    let remoteAddress: String
    private let maxQueuedBytes: Int
    private let maxQueuedMessages: Int

    init(loop: ServiceLoop, wsi: OpaquePointer?, remoteAddress: String, maxQueuedBytes: Int, maxQueuedMessages: Int) {
        self.remoteAddress = remoteAddress
        self.maxQueuedBytes = maxQueuedBytes
        self.maxQueuedMessages = maxQueuedMessages
        super.init(loop: loop, wsi: wsi)
    }

    func enqueue(_ frame: WireFrame) -> Bool {
        let (accepted, wake) = outbound.withLock { q -> (Bool, Bool) in
            if q.closing { return (true, false) }  // closing anyway; nothing more goes out
            if q.bytes + frame.bytes.count > maxQueuedBytes || q.messages + frame.messages > maxQueuedMessages {
                return (false, false)
            }
            if q.first == nil {
                q.first = frame
            } else {
                q.frames.append(frame)
                q.spilled = true
            }
            q.bytes += frame.bytes.count
            q.messages += frame.messages
            if q.wakeRequested { return (true, false) }
            q.wakeRequested = true
            return (true, true)
        }
        if wake { wantWrite() }
        return accepted
    }

    /// Frames are written as they are (overridden where they are unwrapped first).
    var takesBatches: Bool { true }

    func close(_ reason: DisconnectReason) {
        let wake = outbound.withLock { q -> Bool in
            if q.closing { return false }
            q.closing = true
            q.closeReason = reason
            if reason == .slow {
                // A slow client would take longest to drain; its backlog is what got it cut off.
                q.first = nil
                q.frames.removeAll()
                q.head = 0
                q.spilled = false
                q.bytes = 0
                q.messages = 0
            }
            q.wakeRequested = true
            return true
        }
        if wake { wantWrite() }
    }

    /// Takes queued frames for one write, at most `budget` bytes (at least one frame).
    func takeFrames(budget: Int) -> (frames: [WireFrame], more: Bool, close: DisconnectReason?) {
        var taken: [WireFrame] = []
        let (more, close) = takeFrames(budget: budget, into: &taken)
        return (taken, more, close)
    }

    /// `takeFrames(budget:)` appended to the caller's array (the loop's, kept between writes so
    /// a write allocates nothing). A queue of one frame is taken without touching its array.
    func takeFrames(budget: Int, into taken: inout [WireFrame]) -> (more: Bool, close: DisconnectReason?) {
        outbound.withLock { q in
            guard let first = q.first else {
                q.wakeRequested = false
                return (false, q.closeReason)
            }
            taken.append(first)
            q.first = nil
            var size = first.bytes.count
            var messages = first.messages
            if q.spilled {
                var end = q.head
                while end < q.frames.count, size + q.frames[end].bytes.count <= budget {
                    size += q.frames[end].bytes.count
                    messages += q.frames[end].messages
                    taken.append(q.frames[end])
                    end += 1
                }
                if end < q.frames.count {
                    q.first = q.frames[end]
                    end += 1
                }
                q.head = end
                if q.head == q.frames.count {
                    // Emptied: a burst's large array goes, a small one stays for the next burst.
                    q.frames.removeAll(keepingCapacity: q.frames.capacity <= 64)
                    q.head = 0
                    q.spilled = false
                } else if q.head > 1024 {
                    q.frames.removeFirst(q.head)
                    q.head = 0
                }
            }
            q.bytes -= size
            q.messages -= messages
            let more = q.first != nil
            if !more { q.wakeRequested = false }
            return (more, more ? nil : q.closeReason)
        }
    }
}

/// A WebSocket connection speaking the client protocol (or seed 003's chat).
final class WebSocketConnection: QueuedSession, @unchecked Sendable {
    var session: ClientSession?
    /// Set for `/ws/{user_id}` connections: the seed-format chat session driving `session`.
    var chat: ChatSession?
    /// Frame being assembled from fragments (service thread only).
    var inbound: [UInt8] = []
    /// permessage-deflate was negotiated: frames go out through lws (compressed), not raw.
    var compressed = false
    /// The connection speaks the Protobuf flavour: its messages are binary frames.
    var binary = false
    /// A message went past the size limit: the rest of it is dropped while the close goes out.
    var oversized = false
    /// permessage-deflate and seed 003's chat take each frame apart: one message per frame.
    override var takesBatches: Bool { !compressed && chat == nil }
    override var writesAtTurnEnd: Bool { true }
    /// A write at the end of a turn failed: the writeable callback closes the connection.
    var writeFailed = false
    /// Bytes received in the loop's service call `receivedInService` (service thread only).
    var receivedBytes = 0
    var receivedInService = 0
    /// The plain TCP descriptor frames may be sent to directly (`sendFrames`); -1 where lws must
    /// write them (TLS, permessage-deflate).
    var plainSocket: Int32 = -1
}

/// An HTTP response whose body is a stream of messages (SSE, HTTP streaming): it replaces the
/// request's `HTTPExchange` in the session slot once its headers are out.
final class HTTPStream: QueuedSession, @unchecked Sendable {
    let body: any ResponseStream
    /// Bytes of a frame that did not fit the last write (service thread only).
    var carry: [UInt8] = []
    var carryOffset = 0
    var stopped = false

    init(loop: ServiceLoop, wsi: OpaquePointer?, remoteAddress: String, body: any ResponseStream) {
        self.body = body
        super.init(loop: loop, wsi: wsi, remoteAddress: remoteAddress,
                   maxQueuedBytes: loop.settings.maxQueuedBytes, maxQueuedMessages: loop.settings.maxQueuedMessages)
    }

    /// The client went away (or lws closed the connection): the stream lets go of its session.
    func stop() {
        guard !stopped else { return }
        stopped = true
        outbound.withLock { $0.closing = true }
        body.stopped()
    }
}

/// One HTTP request/response on a connection (keep-alive reuses the connection for the next).
final class HTTPExchange: EdgeSession, @unchecked Sendable {
    var method = "GET"
    var path = "/"
    var query: [(String, String)] = []
    var headers: [String: String] = [:]
    /// The `proxy_http_headers` of a client-protocol request, for its session's proxy calls.
    var forwardedHeaders: [(String, String)] = []
    var body: [UInt8] = []
    var expectedLength = 0
    var tooLarge = false
    /// A chunked request body: answered 411, then the connection closes.
    var lengthRequired = false
    /// The body was refused unread (411, 413 up front): close once the answer is out.
    var closeAfterResponse = false
    /// Why the request's body framing is refused (400, then close): smuggling attempts.
    var badFraming: String?
    /// When the whole body must have arrived (bodies held in memory); past it: 408, close.
    var bodyDeadline: Double?
    var bodyTimedOut = false
    /// Set for a `.multipart` route: the body streams into it instead of `body`.
    var intake: MultipartIntake?
    var remoteAddress = ""
    var dispatched = false
    let startedAt: Double
    /// Set once by the route (any thread); written out by the service thread.
    let response = Mutex<HTTPResponse?>(nil)
    var headersSent = false
    var bodySent = 0

    init(loop: ServiceLoop, wsi: OpaquePointer?, startedAt: Double) {
        self.startedAt = startedAt
        super.init(loop: loop, wsi: wsi)
    }

    func respond(_ value: HTTPResponse) {
        let first = response.withLock { slot -> Bool in
            guard slot == nil else { return false }
            slot = value
            return true
        }
        if first { wantWrite() }
    }
}

/// The WebSocket frame header is added here, once per message: the frame bytes are then
/// written as-is (`LWS_WRITE_RAW`) to every subscriber, so lws never touches shared memory.
struct WebSocketFrameEncoder: FrameEncoder {
    /// The payload of a frame `frame(_:)` made (the chat session reads what the engine sent).
    static func payload(of frame: WireFrame) -> [UInt8] {
        let bytes = frame.bytes
        guard bytes.count >= 2 else { return [] }
        let marker = bytes[1] & 0x7F
        let start = marker < 126 ? 2 : (marker == 126 ? 4 : 10)
        return start <= bytes.count ? Array(bytes[start...]) : []
    }

    func frame(_ payload: [UInt8]) -> WireFrame { frame(payload, opcode: 0x1) }

    func binaryFrame(_ payload: [UInt8]) -> WireFrame { frame(payload, opcode: 0x2) }

    private func frame(_ payload: [UInt8], opcode: UInt8) -> WireFrame {
        var bytes: [UInt8] = []
        let length = payload.count
        bytes.reserveCapacity(length + 10)
        bytes.append(0x80 | opcode)  // FIN + text or binary
        if length < 126 {
            bytes.append(UInt8(length))
        } else if length <= 0xFFFF {
            bytes.append(126)
            bytes.append(UInt8(length >> 8))
            bytes.append(UInt8(length & 0xFF))
        } else {
            bytes.append(127)
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8((UInt64(length) >> UInt64(shift)) & 0xFF)) }
        }
        bytes.append(contentsOf: payload)
        return WireFrame(bytes: bytes)
    }
}
