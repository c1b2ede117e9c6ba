// The hub's client protocol as the benchmark speaks it: Centrifugo JSON or Protobuf over
// WebSocket, optionally with fossil deltas, or unidirectional SSE for the subscribers. Like
// Wire.swift, byte parsing here works on borrowed buffers.
import Glibc

/// How the hub's subscribers talk to it (the publisher always uses a WebSocket of `codec`).
struct HubMode {
    enum Codec: String { case json, protobuf }
    enum Transport: String { case websocket, sse }
    var codec = Codec.json
    var transport = Transport.websocket
    /// Subscribe with `delta: "fossil"`; the generator rebuilds each payload to find its stamp.
    var delta = false

    var label: String {
        var parts = [transport == .sse ? "sse" : codec.rawValue]
        if delta { parts.append("delta") }
        return parts.joined(separator: "+")
    }
}

final class HubWire: Wire {
    let secret: [UInt8]
    let mode: HubMode
    var nextPublishID = 1000
    /// Fossil deltas already rebuilt, by the delta's bytes: every subscriber of the channel gets
    /// the same delta for one publication, so only the first of them pays for applying it.
    private var rebuilt: [DeltaKey: [UInt8]] = [:]
    /// A JSON `data` string after unescaping (reused).
    private var unescaped: [UInt8] = []
    /// Delta mode: bytes of `data` received (deltas, and the whole payloads after a subscribe).
    private(set) var dataBytesReceived = 0

    init(host: Bench, secret: String, mode: HubMode) {
        self.secret = Array(secret.utf8)
        self.mode = mode
        super.init(host: host)
    }

    override var subprotocol: String? { mode.codec == .protobuf ? "centrifuge-protobuf" : nil }
    override func path(channels: [String]) -> String { "/connection/websocket" }
    override func personalChannel(_ user: Int) -> String { "#u\(user)" }

    /// The uni_sse request of a subscriber: the token's `channels` claim subscribes it.
    func ssePath(user: String, channels: [String]) -> String {
        let token = JWT.hs256(subject: user, secret: secret, channels: channels)
        return "/connection/uni_sse?cf_connect=" + percentEncoded(#"{"token":""# + token + #""}"#)
    }

    override func opened(_ connection: Connection) {
        if connection.isHTTPStream { return }  // the connect request was in the URL
        let token = JWT.hs256(subject: connection.user, secret: secret)
        if mode.codec == .protobuf {
            var connect = ProtoWriter()
            connect.string(1, token)
            connect.string(4, "hub-bench")
            var command = ProtoWriter()
            command.varint(1, 1)
            command.message(4, connect.bytes)
            sendBinary(connection, [command.bytes])
        } else {
            sendText(connection, #"{"id":1,"connect":{"token":""# + token + #"","name":"hub-bench"}}"#)
        }
    }

    private func sendBinary(_ connection: Connection, _ messages: [[UInt8]]) {
        var frame: [UInt8] = []
        for m in messages {
            ProtoWriter.appendVarint(&frame, UInt64(m.count))
            frame.append(contentsOf: m)
        }
        host.loop.send(connection, opcode: WSOpcode.binary, frame)
    }

    // MARK: Receiving

    override func message(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int, opcode: UInt8) {
        if mode.codec == .protobuf {
            replies(connection, p, n)
            return
        }
        // A frame may carry several messages, one per line.
        var start = 0
        while start < n {
            let end = memchr(p + start, 0x0A, n - start).map { UnsafeRawPointer($0) - UnsafeRawPointer(p) } ?? n
            line(connection, p + start, end - start)
            if connection.phase == .closed { return }
            start = end + 1
        }
    }

    private func line(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) {
        guard n >= 2 else { return }
        if n == 2 && p[0] == UInt8(ascii: "{") && p[1] == UInt8(ascii: "}") {
            sendText(connection, "{}")  // answer the server's ping
            return
        }
        // {"push":...
        if n > 8 && p[2] == UInt8(ascii: "p") {
            if mode.delta { jsonDeltaPush(connection, p, n) } else { deliver(connection, p, n) }
            return
        }
        // {"id":N,...
        guard n > 6 && p[2] == UInt8(ascii: "i") && p[3] == UInt8(ascii: "d") else { return }
        var id = 0
        var i = 6
        while i < n && p[i] >= 48 && p[i] <= 57 { id = id * 10 + Int(p[i] - 48); i += 1 }
        if EventLoop.find(p, n, Array(#""error""#.utf8)) != nil {
            host.failed(connection, "reply \(id): " + String(decoding: UnsafeBufferPointer(start: p, count: min(n, 200)), as: UTF8.self))
            return
        }
        replied(connection, id: id)
    }

    private func replied(_ connection: Connection, id: Int) {
        if id == 1 {
            if connection.channels.isEmpty {
                host.ready(connection)
            } else {
                connection.pendingReplies = connection.channels.count
                subscribe(connection)
            }
        } else if id >= 2 && id < 1000 {
            connection.pendingReplies -= 1
            if connection.pendingReplies == 0 { host.ready(connection) }
        }
    }

    private func subscribe(_ connection: Connection) {
        if mode.codec == .protobuf {
            let commands = connection.channels.enumerated().map { k, channel -> [UInt8] in
                var subscribe = ProtoWriter()
                subscribe.string(1, channel)
                if mode.delta { subscribe.string(12, "fossil") }
                var command = ProtoWriter()
                command.varint(1, UInt64(k + 2))
                command.message(5, subscribe.bytes)
                return command.bytes
            }
            sendBinary(connection, commands)
            return
        }
        let delta = mode.delta ? #","delta":"fossil""# : ""
        let commands = connection.channels.enumerated().map { k, channel in
            #"{"id":\#(k + 2),"subscribe":{"channel":"\#(channel)"\#(delta)}}"#
        }
        sendText(connection, commands.joined(separator: "\n"))
    }

    /// Protobuf: varint-delimited `Reply` messages; an empty one is the server's ping.
    private func replies(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) {
        var at = 0
        while at < n {
            guard let length = ProtoReader.varint(p, n, &at), at + Int(length) <= n else {
                host.failed(connection, "malformed Protobuf frame")
                return
            }
            let end = at + Int(length)
            if length == 0 {
                host.loop.send(connection, opcode: WSOpcode.binary, [0])  // pong: an empty Command
            } else {
                reply(connection, p + at, Int(length))
                if connection.phase == .closed { return }
            }
            at = end
        }
    }

    private func reply(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) {
        var id = 0
        var reader = ProtoReader(p, n)
        while let field = reader.next() {
            switch field.number {
            case 1: id = Int(field.value)
            case 2: host.failed(connection, "reply \(id): error"); return
            case 4:
                // Push → pub (4) → data (4), delta (8)
                var push = ProtoReader(p + field.offset, field.length)
                while let f = push.next() {
                    guard f.number == 4 else { continue }
                    var pub = ProtoReader(p + field.offset + f.offset, f.length)
                    var data: (Int, Int)?
                    var isDelta = false
                    while let g = pub.next() {
                        if g.number == 4 { data = (field.offset + f.offset + g.offset, g.length) }
                        if g.number == 8 { isDelta = g.value != 0 }
                    }
                    guard let (at, length) = data else { return }
                    if mode.delta {
                        payload(connection, p + at, length, isDelta: isDelta)
                    } else {
                        deliver(connection, p + at, length)
                    }
                }
                return
            default: break
            }
        }
        replied(connection, id: id)
    }

    /// SSE: events end with a blank line; publications carry `"pub"`, and the connect event
    /// (with the token's subscriptions already made) makes the subscriber ready.
    func streamed(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var used = 0
        while used < n, let end = EventLoop.find(p + used, n - used, [10, 10]) {
            let event = p + used
            if EventLoop.find(event, end, Array(#""pub""#.utf8)) != nil {
                deliver(connection, event, end)
            } else if !connection.ready, EventLoop.find(event, end, Array(#""connect""#.utf8)) != nil {
                host.ready(connection)
            }
            used += end + 2
        }
        if n - used > 1 << 20 { host.failed(connection, "SSE event over 1 MiB") }
        return used
    }

    // MARK: Delta mode

    /// JSON delta subscribers get `data` as a string (the JSON text, or the fossil delta) and
    /// `"delta":true` on deltas.
    private func jsonDeltaPush(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) {
        guard let start = EventLoop.find(p, n, Array(#""data":""#.utf8)).map({ $0 + 8 }) else { return }
        unescaped.removeAll(keepingCapacity: true)
        var i = start
        while i < n && p[i] != UInt8(ascii: "\"") {
            if p[i] == UInt8(ascii: "\\") && i + 1 < n {
                i += 1
                switch p[i] {
                case UInt8(ascii: "n"): unescaped.append(10)
                case UInt8(ascii: "t"): unescaped.append(9)
                case UInt8(ascii: "r"): unescaped.append(13)
                default: unescaped.append(p[i])  // \" \\ \/
                }
            } else {
                unescaped.append(p[i])
            }
            i += 1
        }
        let isDelta = EventLoop.find(p + i, n - i, Array(#""delta":true"#.utf8)) != nil
        let data = unescaped
        data.withUnsafeBufferPointer { payload(connection, $0.baseAddress!, $0.count, isDelta: isDelta) }
    }

    private func payload(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int, isDelta: Bool) {
        dataBytesReceived &+= n
        guard isDelta else {
            connection.deltaBase = Array(UnsafeBufferPointer(start: p, count: n))
            deliver(connection, p, n)
            return
        }
        let key = DeltaKey(p, n)
        let whole: [UInt8]
        if let known = rebuilt[key] {
            whole = known
        } else {
            guard let applied = FossilApply.apply(delta: p, n, to: connection.deltaBase) else {
                host.failed(connection, "a fossil delta that does not apply")
                return
            }
            if rebuilt.count >= 4096 { rebuilt.removeAll(keepingCapacity: true) }
            rebuilt[key] = applied
            whole = applied
        }
        connection.deltaBase = whole
        whole.withUnsafeBufferPointer { deliver(connection, $0.baseAddress!, $0.count) }
    }

    // MARK: Publishing

    override func appendPublish(to out: inout [UInt8], connection: Connection, channel: [UInt8], payload: [UInt8]) {
        body.removeAll(keepingCapacity: true)
        if mode.codec == .protobuf {
            var publish = ProtoWriter()
            publish.bytes(1, channel)
            publish.bytes(2, payload)
            var command = ProtoWriter()
            command.varint(1, UInt64(nextPublishID))
            command.message(7, publish.bytes)
            ProtoWriter.appendVarint(&body, UInt64(command.bytes.count))
            body.append(contentsOf: command.bytes)
            nextPublishID += 1
            frameBody(to: &out, connection, opcode: WSOpcode.binary)
            return
        }
        body.append(contentsOf: #"{"id":"#.utf8)
        appendDecimal(&body, nextPublishID)
        nextPublishID += 1
        body.append(contentsOf: #","publish":{"channel":""#.utf8)
        body.append(contentsOf: channel)
        body.append(contentsOf: #"","data":"#.utf8)
        body.append(contentsOf: payload)
        body.append(contentsOf: "}}".utf8)
        frameBody(to: &out, connection, opcode: WSOpcode.text)
    }
}

private func percentEncoded(_ text: String) -> String {
    let hex = Array("0123456789ABCDEF".utf8)
    var out: [UInt8] = []
    for b in text.utf8 {
        switch b {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
            out.append(b)
        default:
            out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 15)]]
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// A delta's bytes as a dictionary key (deltas are tens of bytes).
struct DeltaKey: Hashable {
    let bytes: [UInt8]
    init(_ p: UnsafePointer<UInt8>, _ n: Int) { bytes = Array(UnsafeBufferPointer(start: p, count: n)) }
}

// MARK: - Protobuf wire format, the few field kinds the client protocol's envelopes use

struct ProtoWriter {
    private(set) var bytes: [UInt8] = []

    static func appendVarint(_ out: inout [UInt8], _ value: UInt64) {
        var v = value
        while v >= 0x80 { out.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        out.append(UInt8(v))
    }

    mutating func varint(_ field: Int, _ value: UInt64) {
        Self.appendVarint(&bytes, UInt64(field << 3))
        Self.appendVarint(&bytes, value)
    }

    mutating func bytes(_ field: Int, _ value: [UInt8]) {
        Self.appendVarint(&bytes, UInt64(field << 3 | 2))
        Self.appendVarint(&bytes, UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    mutating func string(_ field: Int, _ value: String) { bytes(field, Array(value.utf8)) }
    mutating func message(_ field: Int, _ value: [UInt8]) { bytes(field, value) }
}

struct ProtoReader {
    struct Field {
        var number: Int
        /// Varint fields: the value; length-delimited: where the bytes start and how many.
        var value: UInt64 = 0
        var offset = 0
        var length = 0
    }

    private let p: UnsafePointer<UInt8>
    private let n: Int
    private var at = 0

    init(_ p: UnsafePointer<UInt8>, _ n: Int) { self.p = p; self.n = n }

    static func varint(_ p: UnsafePointer<UInt8>, _ n: Int, _ at: inout Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while at < n && shift < 64 {
            let b = p[at]
            at += 1
            value |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    /// The next field, or nil at the end (or on bytes that are not Protobuf).
    mutating func next() -> Field? {
        guard at < n, let key = Self.varint(p, n, &at) else { return nil }
        var field = Field(number: Int(key >> 3))
        switch key & 7 {
        case 0:
            guard let v = Self.varint(p, n, &at) else { return nil }
            field.value = v
        case 2:
            guard let length = Self.varint(p, n, &at), at + Int(length) <= n else { return nil }
            field.offset = at
            field.length = Int(length)
            at += Int(length)
        case 1: at += 8
        case 5: at += 4
        default: return nil
        }
        return at <= n ? field : nil
    }
}

// MARK: - Fossil delta, applying side (the format of fossil-scm's delta.c)

enum FossilApply {
    private static let digitValues: [Int8] = {
        var table = [Int8](repeating: -1, count: 256)
        for (i, c) in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~".utf8.enumerated() {
            table[Int(c)] = Int8(i)
        }
        return table
    }()

    private static func number(_ p: UnsafePointer<UInt8>, _ n: Int, _ at: inout Int) -> Int? {
        var value = 0
        let start = at
        while at < n, case let d = digitValues[Int(p[at])], d >= 0 {
            value = value << 6 + Int(d)
            at += 1
        }
        return at > start ? value : nil
    }

    /// The target `delta` rebuilds from `base`, or nil when the delta is malformed.
    static func apply(delta p: UnsafePointer<UInt8>, _ n: Int, to base: [UInt8]) -> [UInt8]? {
        var at = 0
        guard let size = number(p, n, &at), at < n, p[at] == 10 else { return nil }
        at += 1
        var out: [UInt8] = []
        out.reserveCapacity(size)
        while at < n {
            guard let count = number(p, n, &at), at < n else { return nil }
            let op = p[at]
            at += 1
            switch op {
            case UInt8(ascii: "@"):
                guard let offset = number(p, n, &at), at < n, p[at] == UInt8(ascii: ","),
                      offset + count <= base.count else { return nil }
                at += 1
                out.append(contentsOf: base[offset..<offset + count])
            case UInt8(ascii: ":"):
                guard at + count <= n else { return nil }
                out.append(contentsOf: UnsafeBufferPointer(start: p + at, count: count))
                at += count
            case UInt8(ascii: ";"):
                return out.count == size ? out : nil
            default:
                return nil
            }
        }
        return nil
    }
}
