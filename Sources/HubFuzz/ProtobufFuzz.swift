import Channels

/// The Protobuf flavour's decoder: one binary WebSocket message of varint-length-delimited
/// Commands.
///
/// Properties: a malformed message is refused with 107 (never another code, never a trap); an
/// accepted command has an id within 1…2³²−1 or none, a known method, and JSON payloads only;
/// and whatever the session answers it with is framed exactly (its length prefix covers the
/// rest of the bytes), whether as a reply, an error or a push.
enum ProtobufFuzz {
    static let methods: Set<String> = [
        "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history",
        "ping", "send", "rpc", "refresh", "sub_refresh",
    ]

    static func check(_ message: [UInt8]) {
        for line in ProtocolCodec.protobuf.commands(in: message) {
            switch line {
            case .command(let command):
                if let id = command.id { invariant(id > 0 && id <= Int64(UInt32.max), "id \(id) accepted") }
                invariant(methods.contains(command.method), "unknown method \(command.method) accepted")
                if let data = command.body["data"] {
                    invariant((try? JSONParser.parse(JSONWriter.bytes(data))) != nil, "non-JSON data accepted")
                }
                framed(ProtocolCodec.protobuf.reply(id: command.id ?? 1, method: command.method, result: command.body))
                framed(ProtocolCodec.protobuf.push(channel: command.body["channel"]?.stringValue, kind: "subscribe", body: command.body))
            case .pong:
                break
            case .invalid(let id, let error):
                invariant(error.code == ProtocolError.badRequest.code, "decoder refused with code \(error.code)")
                framed(ProtocolCodec.protobuf.error(id: id, error))
            }
        }
    }

    /// The varint prefix of an encoded reply announces exactly the bytes that follow it.
    static func framed(_ bytes: [UInt8]) {
        var length: UInt64 = 0
        var shift: UInt64 = 0
        var index = 0
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            length |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { break }
            shift += 7
        }
        invariant(Int(length) == bytes.count - index, "length prefix \(length) for \(bytes.count - index) bytes")
    }
}
