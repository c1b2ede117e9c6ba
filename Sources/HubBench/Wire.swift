// What each server speaks on top of WebSocket, reduced to what the benchmark needs: log in,
// subscribe, publish, and find the publisher's timestamp in whatever arrives. Byte parsing on
// borrowed buffers lives here (with EventLoop.swift, the generator's only unsafe code).
import COpenSSL
import Glibc

enum ServerKind: String, CaseIterable {
    case hub, nats, mosquitto, fastapi, lws
}

/// One server's protocol. Subclasses override what differs.
class Wire {
    /// The benchmark (`ready`, `failed`, `delivered`); unmanaged, see EventLoop.delegate.
    private let hostRef: Unmanaged<Bench>
    var host: Bench { hostRef.takeUnretainedValue() }
    /// Reused while building outgoing messages.
    var body: [UInt8] = []

    init(host: Bench) { hostRef = .passUnretained(host); body.reserveCapacity(512) }

    /// The hot path: one delivery, no reference counting.
    @inline(__always) final func deliver(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) {
        hostRef._withUnsafeGuaranteedRef { $0.delivered(connection, p, n) }
    }

    static func make(_ kind: ServerKind, host: Bench, secret: String) -> Wire {
        switch kind {
        case .hub: return HubWire(host: host, secret: secret, mode: host.target.hubMode)
        case .nats: return NATSWire(host: host)
        case .mosquitto: return MQTTWire(host: host)
        case .fastapi: return FastAPIWire(host: host)
        case .lws: return MirrorWire(host: host)
        }
    }

    var subprotocol: String? { nil }
    /// The upgrade request's path for a connection that will subscribe to `channels`.
    func path(channels: [String]) -> String { "/" }
    /// Whether the server has named channels (the lws mirror has at most ten instances).
    var hasChannels: Bool { true }
    var fanOutChannel: String { "bench" }
    func personalChannel(_ user: Int) -> String { "u\(user)" }
    func groupChannel(_ group: Int) -> String { "group\(group)" }

    func opened(_ connection: Connection) {}
    func message(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int, opcode: UInt8) {}
    /// Appends whole WebSocket frames publishing `payload` to `channel`.
    func appendPublish(to out: inout [UInt8], connection: Connection, channel: [UInt8], payload: [UInt8]) {}

    final func sendText(_ connection: Connection, _ text: String) {
        host.loop.send(connection, opcode: WSOpcode.text, Array(text.utf8))
    }

    final func frameBody(to out: inout [UInt8], _ connection: Connection, opcode: UInt8) {
        body.withUnsafeBufferPointer { EventLoop.appendFrame(to: &out, opcode: opcode, payload: $0, mask: connection.mask) }
    }

    /// Splits a byte stream carried in frames (NATS, MQTT) into whole protocol messages; the
    /// parser returns how many bytes it used and the rest waits in `connection.stream`.
    final func streamed(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int,
                        _ parse: (UnsafePointer<UInt8>, Int) -> Int) {
        if connection.stream.isEmpty {
            let used = parse(p, n)
            if used < n && connection.phase != .closed {
                connection.stream.append(contentsOf: UnsafeBufferPointer(start: p + used, count: n - used))
            }
        } else {
            var held = connection.stream
            connection.stream = []
            held.append(contentsOf: UnsafeBufferPointer(start: p, count: n))
            let used = held.withUnsafeBufferPointer { parse($0.baseAddress!, $0.count) }
            if used < held.count && connection.phase != .closed {
                held.removeFirst(used)
                connection.stream = held
            }
        }
    }
}

// MARK: - NATS

final class NATSWire: Wire {
    override func personalChannel(_ user: Int) -> String { "u.\(user)" }
    override func groupChannel(_ group: Int) -> String { "group.\(group)" }

    override func opened(_ connection: Connection) {
        var text = #"CONNECT {"verbose":false,"pedantic":false,"echo":false,"name":"hub-bench"}"# + "\r\n"
        for (k, channel) in connection.channels.enumerated() { text += "SUB \(channel) \(k + 1)\r\n" }
        text += "PING\r\n"
        host.loop.send(connection, opcode: WSOpcode.binary, Array(text.utf8))
    }

    override func message(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int, opcode: UInt8) {
        streamed(connection, p, n) { parse(connection, $0, $1) }
    }

    private func parse(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var o = 0
        while o < n {
            var e = o
            while e + 1 < n && !(p[e] == 13 && p[e + 1] == 10) { e += 1 }
            guard e + 1 < n else { break }
            let c0 = p[o]
            if c0 == UInt8(ascii: "M") {
                // MSG <subject> <sid> [reply-to] <#bytes>
                var size = 0, k = e - 1, scale = 1
                while k > o && p[k] >= 48 && p[k] <= 57 { size += Int(p[k] - 48) * scale; scale *= 10; k -= 1 }
                guard n - (e + 2) >= size + 2 else { break }
                deliver(connection, p + e + 2, size)
                o = e + 2 + size + 2
                continue
            }
            if c0 == UInt8(ascii: "P") && e - o >= 4 && p[o + 1] == UInt8(ascii: "I") {
                host.loop.send(connection, opcode: WSOpcode.binary, Array("PONG\r\n".utf8))
            } else if c0 == UInt8(ascii: "P") && e - o >= 4 && p[o + 1] == UInt8(ascii: "O") {
                if !connection.ready { host.ready(connection) }
            } else if c0 == UInt8(ascii: "-") {
                host.failed(connection, String(decoding: UnsafeBufferPointer(start: p + o, count: e - o), as: UTF8.self))
                return n
            }
            o = e + 2
        }
        return o
    }

    override func appendPublish(to out: inout [UInt8], connection: Connection, channel: [UInt8], payload: [UInt8]) {
        body.removeAll(keepingCapacity: true)
        body.append(contentsOf: "PUB ".utf8)
        body.append(contentsOf: channel)
        body.append(0x20)
        appendDecimal(&body, payload.count)
        body.append(contentsOf: [13, 10])
        body.append(contentsOf: payload)
        body.append(contentsOf: [13, 10])
        frameBody(to: &out, connection, opcode: WSOpcode.binary)
    }
}

// MARK: - MQTT 3.1.1 over WebSocket (mosquitto), QoS 0

final class MQTTWire: Wire {
    override var subprotocol: String? { "mqtt" }
    override func path(channels: [String]) -> String { "/mqtt" }
    override func personalChannel(_ user: Int) -> String { "u/\(user)" }
    override func groupChannel(_ group: Int) -> String { "group/\(group)" }

    override func opened(_ connection: Connection) {
        let clientID = Array((connection.isPublisher ? "bench-pub-\(connection.index)" : "bench-\(connection.index)").utf8)
        var variable: [UInt8] = [0, 4] + Array("MQTT".utf8) + [4, 0x02, 0, 0]  // level 4, clean session, no keepalive
        variable += [UInt8(clientID.count >> 8), UInt8(clientID.count & 0xFF)] + clientID
        host.loop.send(connection, opcode: WSOpcode.binary, packet(0x10, variable))
    }

    private func packet(_ type: UInt8, _ rest: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [type]
        appendRemainingLength(&out, rest.count)
        return out + rest
    }

    private func appendRemainingLength(_ out: inout [UInt8], _ length: Int) {
        var x = length
        repeat {
            var byte = UInt8(x % 128)
            x /= 128
            if x > 0 { byte |= 0x80 }
            out.append(byte)
        } while x > 0
    }

    override func message(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int, opcode: UInt8) {
        streamed(connection, p, n) { parse(connection, $0, $1) }
    }

    private func parse(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int) -> Int {
        var o = 0
        while n - o >= 2 {
            let type = p[o] & 0xF0
            var length = 0, multiplier = 1, i = o + 1
            var complete = false
            while i < n {
                let b = p[i]
                length += Int(b & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if b & 0x80 == 0 { complete = true; break }
            }
            guard complete, n - i >= length else { break }
            let body = p + i
            switch type {
            case 0x30:  // PUBLISH
                let topicLength = Int(body[0]) << 8 | Int(body[1])
                let skip = 2 + topicLength + (p[o] & 0x06 != 0 ? 2 : 0)
                deliver(connection, body + skip, length - skip)
            case 0x20:  // CONNACK
                if length >= 2 && body[1] != 0 {
                    host.failed(connection, "CONNACK \(body[1])")
                    return n
                }
                if connection.channels.isEmpty { host.ready(connection) } else { subscribe(connection) }
            case 0x90:  // SUBACK
                if connection.phase != .closed && !connection.ready { host.ready(connection) }
            default:
                break
            }
            if connection.phase == .closed { return n }
            o = i + length
        }
        return o
    }

    private func subscribe(_ connection: Connection) {
        var rest: [UInt8] = [0, 1]
        for channel in connection.channels {
            let topic = Array(channel.utf8)
            rest += [UInt8(topic.count >> 8), UInt8(topic.count & 0xFF)] + topic + [0]
        }
        host.loop.send(connection, opcode: WSOpcode.binary, packet(0x82, rest))
    }

    override func appendPublish(to out: inout [UInt8], connection: Connection, channel: [UInt8], payload: [UInt8]) {
        body.removeAll(keepingCapacity: true)
        body.append(0x30)
        appendRemainingLength(&body, 2 + channel.count + payload.count)
        body.append(UInt8(channel.count >> 8)); body.append(UInt8(channel.count & 0xFF))
        body.append(contentsOf: channel)
        body.append(contentsOf: payload)
        frameBody(to: &out, connection, opcode: WSOpcode.binary)
    }
}

// MARK: - libwebsockets test server, lws-mirror-protocol (every message to every client)

final class MirrorWire: Wire {
    override var subprotocol: String? { "lws-mirror-protocol" }
    override var hasChannels: Bool { false }

    override func opened(_ connection: Connection) { host.ready(connection) }

    override func message(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int, opcode: UInt8) {
        if !connection.isPublisher { deliver(connection, p, n) }
    }

    override func appendPublish(to out: inout [UInt8], connection: Connection, channel: [UInt8], payload: [UInt8]) {
        payload.withUnsafeBufferPointer { EventLoop.appendFrame(to: &out, opcode: WSOpcode.text, payload: $0, mask: connection.mask) }
    }
}

// MARK: - The FastAPI peer (bench/peers/fastapi_broadcast.py)

final class FastAPIWire: Wire {
    private lazy var fanOutBytes = Array(fanOutChannel.utf8)

    override func path(channels: [String]) -> String {
        "/ws?channels=" + channels.joined(separator: ",")
    }

    override func message(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ n: Int, opcode: UInt8) {
        if n == 2 && p[0] == UInt8(ascii: "o") && p[1] == UInt8(ascii: "k") {
            host.ready(connection)
        } else {
            deliver(connection, p, n)
        }
    }

    override func appendPublish(to out: inout [UInt8], connection: Connection, channel: [UInt8], payload: [UInt8]) {
        body.removeAll(keepingCapacity: true)
        // Plain text goes to everyone; "@name text" to one channel's members.
        if channel != fanOutBytes {
            body.append(UInt8(ascii: "@"))
            body.append(contentsOf: channel)
            body.append(0x20)
        }
        body.append(contentsOf: payload)
        frameBody(to: &out, connection, opcode: WSOpcode.text)
    }
}

// MARK: - Helpers

func appendDecimal(_ out: inout [UInt8], _ value: Int) {
    if value == 0 { out.append(48); return }
    var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                 UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    var n = value, count = 0
    withUnsafeMutableBytes(of: &digits) { d in
        while n > 0 { d[count] = UInt8(48 + n % 10); n /= 10; count += 1 }
        for i in stride(from: count - 1, through: 0, by: -1) { out.append(d[i]) }
    }
}

/// The payload every publisher sends: exactly `size` bytes of JSON whose "t" is the send time
/// (ns since the run's start, 15 digits) — a string, so every server passes it through as is.
/// Or (`gatewayState`) a seed-000 gateway record as the hub publishes it on `gateways:*`, where
/// only the stamp and the media duration move from one publication to the next: the payload
/// fossil deltas are for.
struct StampedPayload {
    private(set) var bytes: [UInt8]
    static let stampDigits = 15
    private static let prefix = Array(#"{"t":""#.utf8)
    /// Where the media-duration counter's 8 digits are (gateway state only).
    private var counterAt: Int?
    private var counter = 0

    init(size: Int, gatewayState: Bool = false) {
        let head = Self.prefix + [UInt8](repeating: 48, count: Self.stampDigits)
        if gatewayState {
            let fields = Array(#"","event":"update","gw_id":"gw01","gateway":"192.168.1.12","status":"working","room":"math101","media_duration":""#.utf8)
            counterAt = head.count + fields.count
            bytes = head + fields + Array(#"00000000","transcript_progress":"45","type":"recorder"}"#.utf8)
            return
        }
        let tail = Array(#""}"#.utf8)
        let fields = Array(#"","p":""#.utf8)
        let pad = max(0, size - head.count - fields.count - tail.count)
        bytes = head + fields + [UInt8](repeating: UInt8(ascii: "x"), count: pad) + tail
    }

    mutating func stamp(_ ns: UInt64) {
        var v = ns
        bytes.withUnsafeMutableBufferPointer { b in
            for i in stride(from: Self.prefix.count + Self.stampDigits - 1, through: Self.prefix.count, by: -1) {
                b[i] = UInt8(48 + v % 10)
                v /= 10
            }
        }
        guard let at = counterAt else { return }
        counter += 1
        var c = counter
        bytes.withUnsafeMutableBufferPointer { b in
            for i in stride(from: at + 7, through: at, by: -1) {
                b[i] = UInt8(48 + c % 10)
                c /= 10
            }
        }
    }

    /// Finds `"t":"` and reads the stamp after it. `hint` is where it was last time (the
    /// envelope of each server has a fixed length per channel), checked first.
    static func read(_ p: UnsafePointer<UInt8>, _ n: Int, hint: inout Int) -> UInt64? {
        let h = hint
        if h + 5 + stampDigits <= n && p[h] == 0x22 && p[h + 1] == 0x74 && p[h + 2] == 0x22 && p[h + 3] == 0x3A && p[h + 4] == 0x22 {
            return digits(p + h + 5)
        }
        guard let (at, value) = search(p, n) else { return nil }
        hint = at
        return value
    }

    @inline(__always) private static func digits(_ p: UnsafePointer<UInt8>) -> UInt64? {
        var v: UInt64 = 0
        for k in 0..<stampDigits {
            let c = p[k]
            guard c >= 48 && c <= 57 else { return nil }
            v = v &* 10 &+ UInt64(c - 48)
        }
        return v
    }

    private static func search(_ p: UnsafePointer<UInt8>, _ n: Int) -> (Int, UInt64)? {
        var i = 1
        let limit = n - (prefix.count - 1) - stampDigits
        while i < limit {
            // Jump from 't' to 't' (memchr is vectorised); the stamp is the one in "t":".
            guard let hit = memchr(p + i, 0x74, limit - i) else { return nil }
            i = UnsafeRawPointer(hit) - UnsafeRawPointer(p)
            if i >= limit { return nil }
            if p[i - 1] == 0x22 && p[i + 1] == 0x22 && p[i + 2] == 0x3A && p[i + 3] == 0x22 {
                guard let v = digits(p + i + 4) else { return nil }
                return (i - 1, v)
            }
            i += 1
        }
        return nil
    }
}

/// HS256 connection tokens for the hub.
enum JWT {
    /// `channels`: the server-side subscriptions of the token (what uni_sse subscribers use).
    static func hs256(subject: String, secret: [UInt8], channels: [String] = []) -> String {
        let list = channels.isEmpty ? "" : #","channels":["# + channels.map { #""\#($0)""# }.joined(separator: ",") + "]"
        return hs256(claims: #"{"sub":"\#(subject)","exp":\#(time(nil) + 86_400)\#(list)}"#, secret: secret)
    }

    /// A subscription token: the hub lets `subject` into `channel` without asking anyone.
    static func hs256(subject: String, channel: String, secret: [UInt8]) -> String {
        hs256(claims: #"{"sub":"\#(subject)","channel":"\#(channel)","exp":\#(time(nil) + 86_400)}"#, secret: secret)
    }

    static func hs256(claims json: String, secret: [UInt8]) -> String {
        let header = base64URL(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let claims = base64URL(Array(json.utf8))
        let input = Array((header + "." + claims).utf8)
        var mac = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        secret.withUnsafeBufferPointer { k in
            input.withUnsafeBufferPointer { m in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), m.baseAddress, m.count, &mac, &length)
            }
        }
        return header + "." + claims + "." + base64URL(Array(mac[0..<Int(length)]))
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var out: [UInt8] = []
        var i = 0
        while i + 2 < bytes.count {
            let v = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
            out += [alphabet[v >> 18], alphabet[(v >> 12) & 63], alphabet[(v >> 6) & 63], alphabet[v & 63]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let v = Int(bytes[i]) << 16
            out += [alphabet[v >> 18], alphabet[(v >> 12) & 63]]
        } else if rest == 2 {
            let v = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8
            out += [alphabet[v >> 18], alphabet[(v >> 12) & 63], alphabet[(v >> 6) & 63]]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
