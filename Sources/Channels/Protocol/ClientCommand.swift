/// One client command as the Centrifugo JSON protocol frames it: `{"id":N,"<method>":{…}}`,
/// several per WebSocket message separated by newlines.
///
/// Decoding is a pure function of the bytes, apart from the connection's state, so it can be
/// fuzzed and tested without a socket (`hub-fuzz protocol`).
public struct ClientCommand: Sendable, Equatable {
    /// Nil for the fire-and-forget form (no reply expected).
    public var id: Int64?
    public var method: String
    public var body: JSONValue

    public init(id: Int64?, method: String, body: JSONValue) {
        self.id = id
        self.method = method
        self.body = body
    }

    /// What one line of a message is.
    public enum Line: Sendable, Equatable {
        case command(ClientCommand)
        /// `{}`: the pong answering the server's ping.
        case pong
        /// Refused, with the id to answer under when one could be read.
        case invalid(id: Int64?, ProtocolError)
    }

    /// The non-blank lines of a message (blank ones carry nothing and get no answer).
    public static func lines(of message: [UInt8]) -> [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var start = 0
        let count = message.count
        while start < count {
            var end = start
            while end < count, message[end] != 0x0A { end += 1 }
            if end > start {
                let line = message[start..<end]
                if !line.allSatisfy({ $0 == 0x20 || $0 == 0x0D || $0 == 0x09 }) { result.append(line) }
            }
            start = end + 1
        }
        return result
    }

    public static func decode(_ bytes: ArraySlice<UInt8>) -> Line {
        let command: JSONValue
        do {
            // A publication's data reaches subscribers as the publisher wrote it (as in Centrifugo).
            command = try JSONParser.parse(Array(bytes), keepingDataOf: "publish")
        } catch {
            return .invalid(id: nil, ProtocolError.badRequest.with(message: "malformed JSON: \(error)"))
        }
        guard let members = command.objectValue else {
            return .invalid(id: nil, ProtocolError.badRequest.with(message: "command must be a JSON object"))
        }
        if members.isEmpty { return .pong }
        var id: Int64?
        if let rawID = command["id"] {
            guard let value = rawID.intValue, value >= 0, value <= Int64(UInt32.max) else {
                return .invalid(id: nil, ProtocolError.badRequest.with(message: "id must be an unsigned 32-bit integer"))
            }
            id = value
        }
        guard let (method, body) = members.first(where: { $0.0 != "id" }) else {
            return .invalid(id: id, ProtocolError.badRequest.with(message: "command has no method"))
        }
        return .command(ClientCommand(id: id, method: method, body: body))
    }

    /// The command as a client sends it; `decode` gives it back.
    public var encoded: [UInt8] {
        var members: [(String, JSONValue)] = []
        if let id { members.append(("id", .int(id))) }
        members.append((method, body))
        return JSONWriter.bytes(.object(members))
    }
}
