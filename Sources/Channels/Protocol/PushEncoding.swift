/// Builds the server-to-client messages of the protocol (JSON flavour): replies carry the
/// command's `id`, pushes carry none.
public enum PushEncoding {
    /// `{"push":{"channel":…,"pub":{…}}}` — built byte by byte, once per publication.
    /// `wrapped: false`: the bare push of the unidirectional protocol, `{"channel":…,"pub":{…}}`.
    public static func publication(channel: String, _ publication: Publication, delta: Bool = false, wrapped: Bool = true) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256 + channel.utf8.count)
        out.append(contentsOf: (wrapped ? #"{"push":{"channel":"# : #"{"channel":"#).utf8)
        JSONWriter.writeString(channel, into: &out)
        out.append(contentsOf: #","pub":"#.utf8)
        publication.write(into: &out, delta: delta)
        out.append(contentsOf: (wrapped ? "}}" : "}").utf8)
        return out
    }

    public static func push(channel: String?, kind: String, body: JSONValue, wrapped: Bool = true) -> [UInt8] {
        var push: [(String, JSONValue)] = []
        if let channel { push.append(("channel", .string(channel))) }
        push.append((kind, body))
        return JSONWriter.bytes(wrapped ? ["push": .object(push)] : .object(push))
    }

    public static func reply(id: Int64, method: String, result: JSONValue) -> [UInt8] {
        JSONWriter.bytes(.object([("id", .int(id)), (method, result)]))
    }

    public static func error(id: Int64?, _ error: ProtocolError) -> [UInt8] {
        var members: [(String, JSONValue)] = []
        if let id { members.append(("id", .int(id))) }
        members.append(("error", error.json))
        return JSONWriter.bytes(.object(members))
    }

    /// The ping the server sends and the pong clients answer with: an empty object.
    public static let ping: [UInt8] = Array("{}".utf8)
}
