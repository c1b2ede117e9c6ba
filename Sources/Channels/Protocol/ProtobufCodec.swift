#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SwiftProtobuf

/// The Protobuf flavour of the client protocol (client.proto). Commands are turned into the
/// same `ClientCommand` the JSON flavour yields, so the session has one code path; results and
/// pushes, built by the session as JSON values, are turned into the matching Protobuf messages.
///
/// Payloads (`data`, `info`) are `bytes` on this wire. The hub keeps one representation for
/// every subscriber of a channel, whatever its codec, so payloads must be JSON documents: a
/// Protobuf client sends the JSON bytes and gets the same bytes back.
enum ProtobufCodec {
    /// The largest single Command accepted (a corrupt varint must not make us wait for 2^63 bytes).
    static let maxCommandSize = 64 * 1024 * 1024

    // MARK: Commands in

    static func commands(in message: [UInt8]) -> [ClientCommand.Line] {
        var lines: [ClientCommand.Line] = []
        var position = 0
        while position < message.count {
            guard let (length, start) = readVarint(message, from: position) else {
                lines.append(.invalid(id: nil, ProtocolError.badRequest.with(message: "malformed length prefix")))
                return lines
            }
            guard length <= UInt64(maxCommandSize), start + Int(length) <= message.count else {
                lines.append(.invalid(id: nil, ProtocolError.badRequest.with(message: "command length \(length) exceeds the message")))
                return lines
            }
            let end = start + Int(length)
            position = end
            if length == 0 {
                lines.append(.pong)  // the empty Command answering the server's empty-Reply ping
                continue
            }
            lines.append(decode(Data(message[start..<end])))
        }
        return lines
    }

    static func decode(_ bytes: Data) -> ClientCommand.Line {
        let command: PBCommand
        do {
            command = try PBCommand(serializedBytes: bytes)
        } catch {
            return .invalid(id: nil, ProtocolError.badRequest.with(message: "malformed Protobuf command"))
        }
        // Id 0 is the fire-and-forget form, as an absent id is in JSON.
        let id: Int64? = command.id == 0 ? nil : Int64(command.id)
        do {
            guard let (method, body) = try methodAndBody(command) else {
                if command.id == 0 { return .pong }
                return .invalid(id: id, ProtocolError.badRequest.with(message: "command has no method"))
            }
            return .command(ClientCommand(id: id, method: method, body: body))
        } catch {
            return .invalid(id: id, error)
        }
    }

    private static func methodAndBody(_ c: PBCommand) throws(ProtocolError) -> (String, JSONValue)? {
        if c.hasConnect {
            let r = c.connect
            var subs: [(String, JSONValue)] = []
            for (channel, sub) in r.subs.sorted(by: { $0.key < $1.key }) { subs.append((channel, try subscribeBody(sub))) }
            return ("connect", .compact([
                ("token", nonEmpty(r.token)), ("data", try payload(r.data)),
                ("subs", when(!subs.isEmpty, .object(subs))),
                ("name", nonEmpty(r.name)), ("version", nonEmpty(r.version)),
                ("headers", when(!r.headers.isEmpty, .object(r.headers.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) }))),
                ("flag", when(r.flag != 0, .int(r.flag))),
            ]))
        }
        if c.hasSubscribe { return ("subscribe", try subscribeBody(c.subscribe)) }
        if c.hasUnsubscribe { return ("unsubscribe", ["channel": .string(c.unsubscribe.channel)]) }
        if c.hasPublish {
            // Empty bytes leave `data` out, so the session answers "data required" as for JSON.
            return ("publish", .compact([("channel", .string(c.publish.channel)), ("data", try payload(c.publish.data))]))
        }
        if c.hasPresence { return ("presence", ["channel": .string(c.presence.channel)]) }
        if c.hasPresenceStats { return ("presence_stats", ["channel": .string(c.presenceStats.channel)]) }
        if c.hasHistory {
            let r = c.history
            return ("history", .compact([
                ("channel", .string(r.channel)),
                ("limit", when(r.limit != 0, .int(Int64(r.limit)))),
                ("since", when(r.hasSince, ["offset": .int(Int64(clamping: r.since.offset)), "epoch": .string(r.since.epoch)])),
                ("reverse", when(r.reverse, .bool(true))),
            ]))
        }
        if c.hasPing { return ("ping", [:]) }
        if c.hasSend { return ("send", .compact([("data", try payload(c.send.data))])) }
        if c.hasRpc { return ("rpc", .compact([("method", nonEmpty(c.rpc.method)), ("data", try payload(c.rpc.data))])) }
        if c.hasRefresh { return ("refresh", .compact([("token", nonEmpty(c.refresh.token))])) }
        if c.hasSubRefresh {
            return ("sub_refresh", .compact([("channel", .string(c.subRefresh.channel)), ("token", nonEmpty(c.subRefresh.token))]))
        }
        return nil
    }

    private static func subscribeBody(_ r: PBSubscribeRequest) throws(ProtocolError) -> JSONValue {
        .compact([
            ("channel", .string(r.channel)), ("token", nonEmpty(r.token)),
            ("recover", when(r.recover, .bool(true))), ("epoch", nonEmpty(r.epoch)),
            ("offset", when(r.offset != 0, .int(Int64(clamping: r.offset)))),
            ("data", try payload(r.data)),
            ("positioned", when(r.positioned, .bool(true))), ("recoverable", when(r.recoverable, .bool(true))),
            ("join_leave", when(r.joinLeave, .bool(true))), ("delta", nonEmpty(r.delta)),
            ("tf", when(r.hasTf, filter(r.tf))),
            ("flag", when(r.flag != 0, .int(r.flag))),
        ])
    }

    private static func filter(_ node: PBFilterNode) -> JSONValue {
        .compact([
            ("op", nonEmpty(node.op)), ("key", nonEmpty(node.key)), ("cmp", nonEmpty(node.cmp)), ("val", nonEmpty(node.val)),
            ("vals", when(!node.vals.isEmpty, .array(node.vals.map { .string($0) }))),
            ("nodes", when(!node.nodes.isEmpty, .array(node.nodes.map(filter)))),
        ])
    }

    /// A payload from the wire: absent when empty, otherwise it must be one JSON document.
    private static func payload(_ data: Data) throws(ProtocolError) -> JSONValue? {
        guard !data.isEmpty else { return nil }
        let bytes = [UInt8](data)
        do {
            _ = try JSONParser.parse(bytes)
        } catch {
            throw ProtocolError.badRequest.with(message: "data must be a JSON document (this hub relays JSON payloads to every codec)")
        }
        return .raw(bytes)
    }

    private static func nonEmpty(_ string: String) -> JSONValue? { when(!string.isEmpty, .string(string)) }

    /// A member present only when `condition` holds (proto3 leaves defaults out, as JSON clients
    /// do). A plain `c ? v : nil` would turn nil into JSON `null`: JSONValue is nil-literal expressible.
    private static func when(_ condition: Bool, _ value: @autoclosure () -> JSONValue) -> JSONValue? {
        condition ? .some(value()) : .none
    }

    // MARK: Replies and pushes out

    static let ping: [UInt8] = [0]

    static func reply(id: Int64, method: String, result: JSONValue) -> [UInt8] {
        var reply = PBReply()
        reply.id = UInt32(clamping: id)
        let r = result.parsed
        switch method {
        case "connect": reply.connect = connectResult(r)
        case "subscribe": reply.subscribe = subscribeResult(r)
        case "unsubscribe": reply.unsubscribe = PBUnsubscribeResult()
        case "publish": reply.publish = PBPublishResult()
        case "presence":
            var p = PBPresenceResult()
            for (client, info) in r["presence"]?.parsed.objectValue ?? [] { p.presence[client] = clientInfo(info) }
            reply.presence = p
        case "presence_stats":
            var s = PBPresenceStatsResult()
            s.numClients = u32(r["num_clients"])
            s.numUsers = u32(r["num_users"])
            reply.presenceStats = s
        case "history":
            var h = PBHistoryResult()
            h.publications = (r["publications"]?.parsed.arrayValue ?? []).map(publication)
            h.epoch = r["epoch"]?.stringValue ?? ""
            h.offset = u64(r["offset"])
            reply.history = h
        case "ping": reply.ping = PBPingResult()
        case "rpc":
            var rpc = PBRPCResult()
            rpc.data = bytes(r["data"])
            reply.rpc = rpc
        case "refresh":
            var refresh = PBRefreshResult()
            refresh.client = r["client"]?.stringValue ?? ""
            refresh.version = r["version"]?.stringValue ?? ""
            refresh.expires = r["expires"]?.boolValue ?? false
            refresh.ttl = u32(r["ttl"])
            reply.refresh = refresh
        case "sub_refresh":
            var refresh = PBSubRefreshResult()
            refresh.expires = r["expires"]?.boolValue ?? false
            refresh.ttl = u32(r["ttl"])
            reply.subRefresh = refresh
        default:
            // Every method the session answers is listed above; anything else is our bug.
            return error(id: id, ProtocolError.internal.with(message: "no Protobuf form for \(method) replies"))
        }
        return delimited(reply)
    }

    static func error(id: Int64?, _ error: ProtocolError) -> [UInt8] {
        var reply = PBReply()
        reply.id = UInt32(clamping: id ?? 0)
        var e = PBError()
        e.code = UInt32(clamping: error.code)
        e.message = error.message
        e.temporary = error.temporary
        reply.error = e
        return delimited(reply)
    }

    static func push(channel: String?, kind: String, body: JSONValue) -> [UInt8] {
        var push = PBPush()
        push.channel = channel ?? ""
        let b = body.parsed
        switch kind {
        case "pub": push.pub = publication(b)
        case "join":
            var join = PBJoin()
            join.info = clientInfo(b["info"] ?? [:])
            push.join = join
        case "leave":
            var leave = PBLeave()
            leave.info = clientInfo(b["info"] ?? [:])
            push.leave = leave
        case "unsubscribe":
            var u = PBUnsubscribe()
            u.code = u32(b["code"])
            u.reason = b["reason"]?.stringValue ?? ""
            push.unsubscribe = u
        case "message":
            var m = PBMessage()
            m.data = bytes(b["data"])
            push.message = m
        case "subscribe":
            var s = PBSubscribe()
            s.recoverable = b["recoverable"]?.boolValue ?? false
            s.epoch = b["epoch"]?.stringValue ?? ""
            s.offset = u64(b["offset"])
            s.positioned = b["positioned"]?.boolValue ?? false
            s.data = bytes(b["data"])
            push.subscribe = s
        case "connect":
            let r = connectResult(b)
            var c = PBConnect()
            c.client = r.client
            c.version = r.version
            c.data = r.data
            c.subs = r.subs
            c.expires = r.expires
            c.ttl = r.ttl
            c.ping = r.ping
            c.pong = r.pong
            c.session = r.session
            c.node = r.node
            c.time = r.time
            push.connect = c
        case "disconnect":
            var d = PBDisconnect()
            d.code = u32(b["code"])
            d.reason = b["reason"]?.stringValue ?? ""
            d.reconnect = b["reconnect"]?.boolValue ?? false
            push.disconnect = d
        case "refresh":
            var r = PBRefresh()
            r.expires = b["expires"]?.boolValue ?? false
            r.ttl = u32(b["ttl"])
            push.refresh = r
        default:
            break  // an unknown push kind travels as an empty push for its channel
        }
        var reply = PBReply()
        reply.push = push
        return delimited(reply)
    }

    /// The fan-out's publication push, built straight from the publication.
    static func publication(channel: String, _ publication: Publication, delta: [UInt8]? = nil) -> [UInt8] {
        var push = PBPush()
        push.channel = channel
        push.pub = pbPublication(publication)
        if let delta {
            push.pub.data = Data(delta)
            push.pub.delta = true
        }
        var reply = PBReply()
        reply.push = push
        return delimited(reply)
    }

    private static func pbPublication(_ p: Publication) -> PBPublication {
        var pub = PBPublication()
        pub.data = Data(JSONWriter.bytes(p.data))
        if let info = p.info { pub.info = clientInfo(info.json) }
        pub.offset = p.offset
        for (key, value) in p.tags { pub.tags[key] = value }
        pub.time = p.time
        return pub
    }

    private static func publication(_ json: JSONValue) -> PBPublication {
        let j = json.parsed
        if let parsed = Publication(json: j) {
            var pub = pbPublication(parsed)
            pub.delta = j["delta"]?.boolValue ?? false
            return pub
        }
        return PBPublication()
    }

    private static func connectResult(_ r: JSONValue) -> PBConnectResult {
        var c = PBConnectResult()
        c.client = r["client"]?.stringValue ?? ""
        c.version = r["version"]?.stringValue ?? ""
        c.expires = r["expires"]?.boolValue ?? false
        c.ttl = u32(r["ttl"])
        c.data = bytes(r["data"])
        for (channel, sub) in r["subs"]?.parsed.objectValue ?? [] { c.subs[channel] = subscribeResult(sub.parsed) }
        c.ping = u32(r["ping"])
        c.pong = r["pong"]?.boolValue ?? false
        c.session = r["session"]?.stringValue ?? ""
        c.node = r["node"]?.stringValue ?? ""
        c.time = r["time"]?.intValue ?? 0
        return c
    }

    private static func subscribeResult(_ r: JSONValue) -> PBSubscribeResult {
        var s = PBSubscribeResult()
        s.expires = r["expires"]?.boolValue ?? false
        s.ttl = u32(r["ttl"])
        s.recoverable = r["recoverable"]?.boolValue ?? false
        s.epoch = r["epoch"]?.stringValue ?? ""
        s.publications = (r["publications"]?.parsed.arrayValue ?? []).map(publication)
        s.recovered = r["recovered"]?.boolValue ?? false
        s.offset = u64(r["offset"])
        s.positioned = r["positioned"]?.boolValue ?? false
        s.data = bytes(r["data"])
        s.wasRecovering = r["was_recovering"]?.boolValue ?? false
        s.delta = r["delta"]?.boolValue ?? false
        return s
    }

    private static func clientInfo(_ json: JSONValue) -> PBClientInfo {
        var info = PBClientInfo()
        info.user = json["user"]?.stringValue ?? ""
        info.client = json["client"]?.stringValue ?? ""
        info.connInfo = bytes(json["conn_info"])
        info.chanInfo = bytes(json["chan_info"])
        return info
    }

    private static func bytes(_ value: JSONValue?) -> Data {
        guard let value else { return Data() }
        return Data(JSONWriter.bytes(value))
    }

    private static func u32(_ value: JSONValue?) -> UInt32 { UInt32(clamping: value?.intValue ?? 0) }
    private static func u64(_ value: JSONValue?) -> UInt64 { UInt64(clamping: value?.intValue ?? 0) }

    // MARK: Framing

    /// One message with its varint length in front.
    static func delimited(_ reply: PBReply) -> [UInt8] {
        // Encoding a message built here cannot fail (no required fields, no Any).
        let body: [UInt8] = (try? reply.serializedBytes()) ?? []
        var out: [UInt8] = []
        out.reserveCapacity(body.count + 5)
        var length = UInt64(body.count)
        while length >= 0x80 {
            out.append(UInt8(length & 0x7F) | 0x80)
            length >>= 7
        }
        out.append(UInt8(length))
        out.append(contentsOf: body)
        return out
    }

    /// A varint at `position`: its value and where the bytes after it start (nil: truncated or
    /// longer than ten bytes).
    static func readVarint(_ bytes: [UInt8], from position: Int) -> (UInt64, Int)? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        var index = position
        while index < bytes.count, shift < 64 {
            let byte = bytes[index]
            index += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return (value, index) }
            shift += 7
        }
        return nil
    }
}
