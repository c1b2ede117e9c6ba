/// The flavours of the client protocol. A connection picks one when it opens (WebSocket
/// subprotocol `centrifuge-protobuf`, a unidirectional endpoint, otherwise JSON) and keeps it; the
/// engine speaks to every connection through its codec, and the fan-out encodes each publication
/// once per codec and framing (`Wire`).
public enum ProtocolCodec: Int, Sendable, CaseIterable {
    /// Newline-separated JSON documents in text frames.
    case json = 0
    /// Varint-length-delimited Protobuf `Command`s and `Reply`s in binary frames.
    case protobuf = 1
    /// Centrifugo's unidirectional protocol (`uni_websocket`, `uni_sse`, `uni_http_stream`): the
    /// client sends one connect request and then only listens; the server sends bare `Push`
    /// objects (`{"channel":…,"pub":{…}}`, `{"connect":{…}}`), no replies.
    case uniJSON = 2

    /// The client sends nothing after its connect request (no commands, no pongs).
    public var isUnidirectional: Bool { self == .uniJSON }

    /// Whether the transport must send this codec's messages as binary frames.
    public var isBinary: Bool { self == .protobuf }

    /// The commands of one incoming message, in order.
    public func commands(in message: [UInt8]) -> [ClientCommand.Line] {
        switch self {
        case .json: return ClientCommand.lines(of: message).map(ClientCommand.decode)
        case .protobuf: return ProtobufCodec.commands(in: message)
        case .uniJSON: return [Self.uniConnect(message)]
        }
    }

    public func reply(id: Int64, method: String, result: JSONValue) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.reply(id: id, method: method, result: result)
        case .protobuf: return ProtobufCodec.reply(id: id, method: method, result: result)
        // The one answer a unidirectional client gets is its connect result, as a push.
        case .uniJSON: return JSONWriter.bytes(.object([(method, result)]))
        }
    }

    public func error(id: Int64?, _ error: ProtocolError) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.error(id: id, error)
        case .protobuf: return ProtobufCodec.error(id: id, error)
        case .uniJSON: return PushEncoding.error(id: nil, error)
        }
    }

    /// An asynchronous push (`join`, `leave`, `subscribe`, `unsubscribe`, `message`, …).
    public func push(channel: String?, kind: String, body: JSONValue) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.push(channel: channel, kind: kind, body: body)
        case .protobuf: return ProtobufCodec.push(channel: channel, kind: kind, body: body)
        case .uniJSON: return PushEncoding.push(channel: channel, kind: kind, body: body, wrapped: false)
        }
    }

    /// A publication push: built once per publication and codec, shared by every subscriber.
    /// `forDelta`: for a subscriber that negotiated deltas (JSON carries `data` as a string then).
    public func publication(channel: String, _ publication: Publication, forDelta: Bool = false) -> [UInt8] {
        switch self {
        case .json: return PushEncoding.publication(channel: channel, forDelta ? publication.dataAsText : publication)
        case .protobuf: return ProtobufCodec.publication(channel: channel, publication)
        case .uniJSON: return PushEncoding.publication(channel: channel, publication, wrapped: false)
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
        case .uniJSON:
            return nil  // a unidirectional client cannot ask for deltas
        }
    }

    /// A publication as this codec shows it to a subscriber that asked for deltas.
    public func forDeltaSubscriber(_ publication: Publication) -> Publication {
        self == .json ? publication.dataAsText : publication
    }

    /// The server's ping: an empty JSON object, or an empty Protobuf `Reply`.
    public var ping: [UInt8] {
        switch self {
        case .json, .uniJSON: return PushEncoding.ping
        case .protobuf: return ProtobufCodec.ping
        }
    }

    /// A unidirectional client's one message: its connect request, a JSON object (`token`,
    /// `data`, `subs`, `name`, `version`), taken as the `connect` command.
    static func uniConnect(_ message: [UInt8]) -> ClientCommand.Line {
        let trimmed = message.drop { $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }
        if trimmed.isEmpty { return .command(ClientCommand(id: 1, method: "connect", body: [:])) }
        guard let body = try? JSONParser.parse(Array(trimmed)), body.objectValue != nil else {
            return .invalid(id: nil, ProtocolError.badRequest.with(message: "the connect request must be a JSON object"))
        }
        return .command(ClientCommand(id: 1, method: "connect", body: body))
    }
}

/// How a transport delimits the messages of a stream. With the codec it makes a `Wire`: the
/// fan-out builds one frame per wire in use and shares it among that wire's subscribers.
public enum Framing: Int, Sendable, CaseIterable {
    /// WebSocket frames (text for JSON, binary for Protobuf), headers added by the edge's encoder.
    case webSocket = 0
    /// Server-sent events: `data: <message>\n\n` (Centrifugo's SSE emulation and `uni_sse`).
    case eventStream = 1
    /// An HTTP streaming body: JSON messages one per line; Protobuf ones varint-length-delimited
    /// as they already are (`http_stream`, `uni_http_stream`).
    case stream = 2
}

/// A codec and its framing: what one connection's bytes look like on the wire.
public struct Wire: Sendable, Equatable {
    public var codec: ProtocolCodec
    public var framing: Framing

    public init(_ codec: ProtocolCodec, _ framing: Framing = .webSocket) {
        self.codec = codec
        self.framing = framing
    }

    public static let webSocketJSON = Wire(.json)
    public static let webSocketProtobuf = Wire(.protobuf)

    /// A dense number per wire, for the fan-out's frame cache.
    public var index: Int { codec.rawValue * Framing.allCases.count + framing.rawValue }
    public static let count = ProtocolCodec.allCases.count * Framing.allCases.count

    /// The transport's name as Centrifugo reports it (the server API's `connections`).
    public var transportName: String {
        switch (codec.isUnidirectional, framing) {
        case (false, .webSocket): return "websocket"
        case (false, .eventStream): return "sse"
        case (false, .stream): return "http_stream"
        case (true, .webSocket): return "uni_websocket"
        case (true, .eventStream): return "uni_sse"
        case (true, .stream): return "uni_http_stream"
        }
    }

    /// Centrifugo's bidirectional emulation: a stream down, `/emulation` requests up.
    public var isEmulated: Bool { framing != .webSocket && !codec.isUnidirectional }

    /// Whether this wire's events carry an SSE `id:` (`uni_sse`, so `Last-Event-ID` can resume).
    public var carriesEventIDs: Bool { codec.isUnidirectional && framing == .eventStream }

    /// A payload of this wire's codec framed for its transport. `eventID`: the SSE event id of a
    /// publication (only on wires that carry ids).
    public func frame(_ payload: [UInt8], with encoder: any FrameEncoder, eventID: String? = nil) -> WireFrame {
        switch framing {
        case .webSocket:
            return codec.isBinary ? encoder.binaryFrame(payload) : encoder.frame(payload)
        case .eventStream:
            var bytes: [UInt8] = []
            bytes.reserveCapacity(payload.count + 16 + (eventID?.utf8.count ?? 0))
            if let eventID, carriesEventIDs {
                bytes.append(contentsOf: "id: ".utf8)
                bytes.append(contentsOf: eventID.utf8)
                bytes.append(0x0A)
            }
            bytes.append(contentsOf: "data: ".utf8)
            bytes.append(contentsOf: payload)  // JSON written by the hub holds no raw newline
            bytes.append(contentsOf: [0x0A, 0x0A])
            return WireFrame(bytes: bytes)
        case .stream:
            if codec.isBinary { return WireFrame(bytes: payload) }
            var bytes = payload
            bytes.append(0x0A)
            return WireFrame(bytes: bytes)
        }
    }

    /// The SSE event id of a publication: `<offset>:<epoch>:<channel>`, what a reconnecting
    /// EventSource sends back as `Last-Event-ID`.
    public static func eventID(channel: String, offset: UInt64, epoch: String) -> String {
        "\(offset):\(epoch):\(channel)"
    }

    /// Reads `Last-Event-ID` back: the channel and the position after which to recover.
    public static func position(fromEventID id: String) -> (channel: String, position: StreamPosition)? {
        let parts = id.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let offset = UInt64(parts[0]), !parts[2].isEmpty else { return nil }
        return (String(parts[2]), StreamPosition(offset: offset, epoch: String(parts[1])))
    }
}
