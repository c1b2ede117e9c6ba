import Channels
import Synchronization

/// Centrifugo's HTTP transports.
///
/// Unidirectional: `uni_sse` (EventSource) and `uni_http_stream`. The client sends its connect
/// request once — in the URL (`cf_connect`) or the body — and then only listens: a
/// `{"connect":{…}}` push, then publications and pings, one message per SSE event or per line.
///
/// Bidirectional emulation (centrifuge-js's fallbacks when WebSocket is blocked): `sse` and
/// `http_stream` carry the connect command up and every reply and push down; the client's
/// later commands come as `POST /emulation` requests naming the `session` and `node` of the
/// connect result, on whichever node the balancer picks. The WebSocket ones live at the edge.
public struct ClientStreams: Sendable {
    let node: Node
    /// The WebSocket message limit, which the commands of one `/emulation` request keep too.
    let maxMessageSize: Int

    public init(node: Node, maxMessageSize: Int) {
        self.node = node
        self.maxMessageSize = maxMessageSize
    }

    static let eventStreamHeaders: [(String, String)] = [
        ("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
        // Proxies such as nginx must pass each event on at once, not buffer the body.
        ("x-accel-buffering", "no"),
    ]
    static let streamHeaders: [(String, String)] = [
        ("content-type", "application/json"), ("cache-control", "no-cache"), ("x-accel-buffering", "no"),
    ]

    public var routes: [Route] {
        let connectSchema: JSONValue = [
            "type": "object",
            "description": "Centrifugo's connect request: token, data, subs (channel → {recover, offset, epoch}), name, version",
        ]
        let sse: @Sendable (RouteContext) -> Void = { context in
            // GET: the connect request in `cf_connect` (EventSource cannot send a body); POST: the body.
            let raw: [UInt8] = context.request.method == "POST"
                ? context.request.body : Array((context.request.queryValue("cf_connect") ?? "").utf8)
            start(context, raw: raw, wire: Wire(.uniJSON, .eventStream), headers: Self.eventStreamHeaders,
                  lastEventID: context.request.header("last-event-id"))
        }
        let emulatedSSE: @Sendable (RouteContext) -> Void = { context in
            let raw: [UInt8] = context.request.method == "POST"
                ? context.request.body : Array((context.request.queryValue("cf_connect") ?? "").utf8)
            startEmulated(context, raw: raw, wire: Wire(.json, .eventStream), headers: Self.eventStreamHeaders)
        }
        let commandSchema: JSONValue = ["type": "object", "description": "The connect command, e.g. {\"id\":1,\"connect\":{\"token\":…}}"]
        return [
            Route("GET", "/connection/sse", auth: .clientProtocol, summary: "Bidirectional emulation over SSE: the stream down",
                  tag: "client protocol",
                  query: [QueryParameter("cf_connect", type: "string", description: "the connect command, URL-encoded JSON")],
                  responses: [200: "An event stream of replies and pushes", 400: "No connect command"],
                  produces: "text/event-stream", handler: emulatedSSE),
            Route("POST", "/connection/sse", auth: .clientProtocol, summary: "Bidirectional emulation over SSE, connect command in the body",
                  tag: "client protocol", body: .json(commandSchema, required: false),
                  responses: [200: "An event stream of replies and pushes", 400: "No connect command"],
                  produces: "text/event-stream", handler: emulatedSSE),
            Route("POST", "/connection/http_stream", auth: .clientProtocol, summary: "Bidirectional emulation over HTTP streaming: the stream down",
                  tag: "client protocol", body: .json(commandSchema, required: false),
                  responses: [200: "Replies and pushes: JSON lines, or varint-delimited Protobuf for an application/octet-stream body",
                              400: "No connect command"],
                  produces: "application/json") { context in
                let protobuf = context.request.header("content-type")?.hasPrefix("application/octet-stream") == true
                startEmulated(context, raw: context.request.body, wire: Wire(protobuf ? .protobuf : .json, .stream),
                              headers: protobuf ? [("content-type", "application/octet-stream"), ("cache-control", "no-cache"), ("x-accel-buffering", "no")]
                                                : Self.streamHeaders)
            },
            Route("POST", "/emulation", auth: .clientProtocol, summary: "Bidirectional emulation: the client's commands up",
                  tag: "client protocol",
                  body: .json(["type": "object", "required": ["session", "node", "data"],
                               "properties": ["session": ["type": "string"], "node": ["type": "string"],
                                              "data": ["type": "string", "description": "the commands, newline-delimited JSON"]]]),
                  responses: [204: "Handed to the session (its replies come down its stream)", 400: "Not an emulation request",
                              404: "No such session on this node", 413: "Commands larger than the message limit"]) { context in
                let protobuf = context.request.header("content-type")?.hasPrefix("application/octet-stream") == true
                guard let request = EmulationRequest.decode(context.request.body, protobuf: protobuf) else {
                    context.fail(RouteError(400, "an emulation request is {session, node, data}", code: "BAD_REQUEST"))
                    return
                }
                guard request.data.count <= maxMessageSize else {
                    context.fail(RouteError(413, "commands larger than \(maxMessageSize) bytes", code: "TOO_LARGE"))
                    return
                }
                switch node.emulate(request) {
                case .delivered, .forwarded: context.respond(HTTPResponse(status: 204))
                case .unknownSession: context.fail(RouteError(404, "no such session", code: "NOT_FOUND"))
                }
            },
            Route("GET", "/connection/uni_sse", auth: .clientProtocol, summary: "Unidirectional SSE transport (EventSource)",
                  tag: "client protocol",
                  query: [QueryParameter("cf_connect", type: "string", description: "the connect request, URL-encoded JSON")],
                  responses: [200: "An event stream: the connect push, then publications", 400: "The connect request is not a JSON object"],
                  produces: "text/event-stream", handler: sse),
            Route("POST", "/connection/uni_sse", auth: .clientProtocol, summary: "Unidirectional SSE transport, connect request in the body",
                  tag: "client protocol", body: .json(connectSchema, required: false),
                  responses: [200: "An event stream: the connect push, then publications", 400: "The connect request is not a JSON object"],
                  produces: "text/event-stream", handler: sse),
            Route("POST", "/connection/uni_http_stream", auth: .clientProtocol, summary: "Unidirectional HTTP-streaming transport",
                  tag: "client protocol", body: .json(connectSchema, required: false),
                  responses: [200: "Newline-delimited JSON pushes: the connect push, then publications",
                              400: "The connect request is not a JSON object"],
                  produces: "application/json") { context in
                start(context, raw: context.request.body, wire: Wire(.uniJSON, .stream), headers: Self.streamHeaders, lastEventID: nil)
            },
        ]
    }

    /// Checks the connect request, folds a `Last-Event-ID` into its `subs` (the channel of the
    /// last event the client saw, recovering after it), and answers with the stream.
    private func start(_ context: RouteContext, raw: [UInt8], wire: Wire, headers: [(String, String)], lastEventID: String?) {
        var request: JSONValue = [:]
        if raw.contains(where: { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 }) {
            guard let parsed = try? JSONParser.parse(raw), parsed.objectValue != nil else {
                context.fail(RouteError(400, "the connect request must be a JSON object", code: "BAD_REQUEST"))
                return
            }
            request = parsed
        }
        if let lastEventID, let (channel, position) = Wire.position(fromEventID: lastEventID) {
            var subs = request["subs"]?.objectValue ?? []
            subs.removeAll { $0.0 == channel }
            subs.append((channel, ["recover": true, "offset": .int(Int64(clamping: position.offset)), "epoch": .string(position.epoch)]))
            var members = request.objectValue ?? []
            members.removeAll { $0.0 == "subs" }
            members.append(("subs", .object(subs)))
            request = .object(members)
        }
        context.respond(HTTPResponse(status: 200, headers: headers,
                                     stream: ClientStream(node: node, wire: wire, connect: JSONWriter.bytes(request),
                                                          forwardedHeaders: context.request.forwardedHeaders)))
    }
}

extension ClientStreams {
    /// The emulated transports need the connect command in the opening request.
    fileprivate func startEmulated(_ context: RouteContext, raw: [UInt8], wire: Wire, headers: [(String, String)]) {
        guard raw.contains(where: { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 }) else {
            context.fail(RouteError(400, "the connect command is required", code: "BAD_REQUEST"))
            return
        }
        context.respond(HTTPResponse(status: 200, headers: headers, stream: ClientStream(node: node, wire: wire, connect: raw,
                                                                                          forwardedHeaders: context.request.forwardedHeaders)))
    }
}

/// One client over an HTTP stream: its protocol session, started when the
/// edge hands over the connection.
final class ClientStream: ResponseStream, @unchecked Sendable {
    private let node: Node
    private let wire: Wire
    private let connect: [UInt8]
    private let current = Mutex<ClientSession?>(nil)
    private let forwardedHeaders: [(String, String)]

    init(node: Node, wire: Wire, connect: [UInt8], forwardedHeaders: [(String, String)] = []) {
        self.node = node
        self.wire = wire
        self.connect = connect
        self.forwardedHeaders = forwardedHeaders
    }

    var session: ClientSession? { current.withLock { $0 } }

    func start(sink: any ClientTransport) {
        let session = node.accept(transport: sink, wire: wire, forwardedHeaders: forwardedHeaders)
        current.withLock { $0 = session }
        session.handle(message: connect)
    }

    func stopped() {
        current.withLock { $0 }?.closed()
    }
}
