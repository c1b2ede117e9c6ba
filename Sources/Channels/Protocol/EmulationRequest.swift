import SwiftProtobuf

/// One `/emulation` request: commands from a client whose stream is an SSE or HTTP-streaming
/// response (Centrifugo's bidirectional emulation). `data` is the commands as the session's
/// codec reads them: newline-delimited JSON, or varint-delimited Protobuf.
public struct EmulationRequest: Sendable, Equatable {
    public var node: String
    public var session: String
    public var data: [UInt8]

    public init(node: String, session: String, data: [UInt8]) {
        self.node = node
        self.session = session
        self.data = data
    }

    /// Reads the request body: Protobuf `EmulationRequest`, or JSON `{node, session, data}` where
    /// `data` is the commands as a string (what centrifuge-js sends) or one command object.
    /// Nil when it is neither.
    public static func decode(_ body: [UInt8], protobuf: Bool) -> EmulationRequest? {
        if protobuf {
            guard let message = try? PBEmulationRequest(serializedBytes: body), !message.session.isEmpty else { return nil }
            return EmulationRequest(node: message.node, session: message.session, data: Array(message.data))
        }
        guard let json = try? JSONParser.parse(body), let session = json["session"]?.stringValue, !session.isEmpty,
              let node = json["node"]?.stringValue, let data = json["data"] else { return nil }
        switch data {
        case .string(let commands): return EmulationRequest(node: node, session: session, data: Array(commands.utf8))
        case .object: return EmulationRequest(node: node, session: session, data: JSONWriter.bytes(data))
        default: return nil
        }
    }
}
