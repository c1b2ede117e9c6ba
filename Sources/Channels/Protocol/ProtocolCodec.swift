/// The two flavours of the client protocol. A connection picks one at the WebSocket handshake
/// (subprotocol `centrifuge-protobuf`, otherwise JSON) and keeps it; the engine speaks to every
/// connection through its codec, and the fan-out encodes each publication once per codec.
public enum ProtocolCodec: Int, Sendable, CaseIterable {
    /// Newline-separated JSON documents in text frames.
    case json = 0
    /// Varint-length-delimited Protobuf `Command`s and `Reply`s in binary frames.
    case protobuf = 1

    /// Whether the transport must send this codec's messages as binary frames.
    public var isBinary: Bool { self == .protobuf }

    /// The commands of one incoming message, in order.
    public func commands(in message: [UInt8]) -> [ClientCommand.Line] {
        switch self {
        case .json: return ClientCommand.lines(of: message).map(ClientCommand.decode)
        case .protobuf: return ProtobufCodec.commands(in: message)
        }
    }

    public func reply(id: Int64, method: String, result: JSONValue) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.reply(id: id, method: method, result: result)
        case .protobuf: return ProtobufCodec.reply(id: id, method: method, result: result)
        }
    }

    public func error(id: Int64?, _ error: ProtocolError) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.error(id: id, error)
        case .protobuf: return ProtobufCodec.error(id: id, error)
        }
    }

    /// An asynchronous push (`join`, `leave`, `subscribe`, `unsubscribe`, `message`, …).
    public func push(channel: String?, kind: String, body: JSONValue) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.push(channel: channel, kind: kind, body: body)
        case .protobuf: return ProtobufCodec.push(channel: channel, kind: kind, body: body)
        }
    }

    /// A publication push: built once per publication and codec, shared by every subscriber.
    /// `forDelta`: for a subscriber that negotiated deltas (JSON carries `data` as a string then).
    public func publication(channel: String, _ publication: Publication, forDelta: Bool = false) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.publication(channel: channel, forDelta ? publication.dataAsText : publication)
        case .protobuf: return ProtobufCodec.publication(channel: channel, publication)
        }
    }

    /// A publication push carrying a fossil delta from the previous publication's data; nil when
    /// this codec cannot carry it (JSON strings hold UTF-8 only), and the whole one goes instead.
    public func deltaPublication(channel: String, _ publication: Publication, delta: [UInt8]) -> [UInt8]? {
        switch self {
        case .json:
            guard let text = String(validating: delta, as: UTF8.self) else { return nil }
            var carried = publication
            carried.data = .string(text)
            return PushEncoding.publication(channel: channel, carried, delta: true)
        case .protobuf:
            return ProtobufCodec.publication(channel: channel, publication, delta: delta)
        }
    }

    /// A publication as this codec shows it to a subscriber that asked for deltas.
    public func forDeltaSubscriber(_ publication: Publication) -> Publication {
        self == .json ? publication.dataAsText : publication
    }

    /// The server's ping: an empty JSON object, or an empty Protobuf `Reply`.
    public var ping: [UInt8] {
        switch self {
        case .json: return PushEncoding.ping
        case .protobuf: return ProtobufCodec.ping
        }
    }

    /// A payload of this codec as the transport frames it.
    public func frame(_ payload: [UInt8], with encoder: any FrameEncoder) -> WireFrame {
        isBinary ? encoder.binaryFrame(payload) : encoder.frame(payload)
    }
}
