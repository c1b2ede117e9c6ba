import Synchronization
import Channels

/// Centrifugo's server HTTP API (`POST /api/<method>`), so backends and workers publish
/// into the hub with existing server SDKs (`cent` and others).
///
/// Protocol errors come back as HTTP 200 with `{"error":{code,message}}`, as Centrifugo
/// does; a body that is not a JSON object is a 400.
public struct ServerAPI: Sendable {
    let node: Node

    public init(node: Node) { self.node = node }

    public static let methods = [
        "publish", "broadcast", "subscribe", "unsubscribe", "disconnect", "presence", "presence_stats",
        "history", "history_remove", "channels", "info", "batch", "send", "refresh", "connections",
    ]

    /// Commands one `batch` may carry: a batch runs in one request, so it is bounded like a body.
    static let batchLimit = 1000

    public var routes: [Route] {
        Self.methods.map { method in
            Route("POST", "/api/\(method)", auth: .serverAPIKey, summary: "Server API: \(method)", tag: "server-api",
                  body: .json(["type": "object"], required: false),
                  responses: [200: "Result (`result`) or protocol error (`error`)", 400: "Body is not a JSON object"]) { context in
                handle(method: method, request: context.request, trace: context.trace, respond: context.respond)
            }
        }
    }

    /// What the dashboard's channel inspector may call: reading, and ending a connection.
    public static let inspectorMethods = ["info", "channels", "presence", "history", "connections", "disconnect"]

    /// The same methods for the dashboard under seed 003's admin JWT, so a browser never holds the API key.
    public var inspectorRoutes: [Route] {
        Self.inspectorMethods.map { method in
            Route("POST", "/admin/inspector/\(method)", auth: .jwt(roles: ["admin"]), errors: .fastAPI,
                  summary: "Channel inspector: server API \(method) (admin only)", tag: "june-admin",
                  body: .json(["type": "object"], required: false),
                  responses: [200: "As POST /api/\(method)", 400: "Body is not a JSON object", 401: "Not authenticated",
                              403: "Insufficient permissions"]) { context in
                handle(method: method, request: context.request, trace: context.trace, respond: context.respond)
            }
        }
    }

    func handle(method: String, request: HTTPRequest, trace: TraceParent? = nil, respond: @escaping Responder) {
        let params: JSONValue
        if request.body.isEmpty {
            params = [:]
        } else {
            guard let parsed = try? JSONParser.parse(request.body), parsed.objectValue != nil else {
                respond(.json(400, ["error": ["code": 107, "message": "bad request: body must be a JSON object"]]))
                return
            }
            params = parsed
        }
        if method == "batch" {
            batch(params: params, trace: trace, respond: respond)
            return
        }
        execute(method: method, params: params, trace: trace) { outcome in
            switch outcome {
            case .success(let result): respond(.json(200, ["result": result]))
            case .failure(let error): respond(.json(200, ["error": error.json]))
            }
        }
    }

    /// Runs one server API method; `batch` commands come here one by one as well. With `trace`,
    /// the call is a span of its own under it (a batch's commands under the batch's).
    func execute(method: String, params: JSONValue, trace: TraceParent? = nil,
                 answer given: @escaping @Sendable (Result<JSONValue, ProtocolError>) -> Void) {
        let answer = Self.traced(method, trace, given)
        func required(_ name: String) throws(ProtocolError) -> String {
            guard let value = params[name]?.stringValue, !value.isEmpty else {
                throw ProtocolError.badRequest.with(message: "\(name) required")
            }
            return value
        }
        do throws(ProtocolError) {
            switch method {
            case "publish":
                let channel = try required("channel")
                guard let data = params["data"] else { throw ProtocolError.badRequest.with(message: "data required") }
                node.publish(channel: channel, data: data, tags: tags(params)) { outcome in
                    answer(outcome.map { position in position.map { $0.json } ?? [:] })
                }
            case "broadcast":
                guard let channels = params["channels"]?.arrayValue?.compactMap(\.stringValue), !channels.isEmpty else {
                    throw ProtocolError.badRequest.with(message: "channels required")
                }
                guard let data = params["data"] else { throw ProtocolError.badRequest.with(message: "data required") }
                broadcast(channels: channels, data: data, tags: tags(params), answer: answer)
            case "subscribe":
                try node.serverSubscribe(user: try required("user"), client: params["client"]?.stringValue, channel: try required("channel")) { sent in
                    answer(sent.map { [:] })
                }
            case "unsubscribe":
                try node.serverUnsubscribe(user: try required("user"), client: params["client"]?.stringValue, channel: try required("channel")) { sent in
                    answer(sent.map { [:] })
                }
            case "disconnect":
                var reason = DisconnectReason.forceNoReconnect
                if let custom = params["disconnect"], let code = custom["code"]?.intValue {
                    guard (3000...4999).contains(code) else { throw ProtocolError.badRequest.with(message: "disconnect code must be 3000-4999") }
                    reason = DisconnectReason(code: UInt16(code), reason: custom["reason"]?.stringValue ?? "")
                }
                node.disconnect(user: try required("user"), client: params["client"]?.stringValue, reason: reason) { sent in
                    answer(sent.map { [:] })
                }
            case "send":
                let user = try required("user")
                guard let data = params["data"] else { throw ProtocolError.badRequest.with(message: "data required") }
                node.send(user: user, client: params["client"]?.stringValue, data: data) { sent in answer(sent.map { [:] }) }
            case "refresh":
                let user = try required("user")
                guard params["session"] == nil else { throw ProtocolError.badRequest.with(message: "session is not supported; use client") }
                var expireAt: Int64?
                if let value = params["expire_at"], !value.isNull {
                    guard let seconds = value.intValue, seconds > 0 else { throw ProtocolError.badRequest.with(message: "expire_at must be a positive integer") }
                    expireAt = seconds
                }
                if let value = params["expired"], !value.isNull, value.boolValue == nil {
                    throw ProtocolError.badRequest.with(message: "expired must be a boolean")
                }
                node.refresh(user: user, client: params["client"]?.stringValue, expired: params["expired"]?.boolValue == true,
                             expireAt: expireAt) { sent in answer(sent.map { [:] }) }
            case "presence":
                node.presence(channel: try required("channel")) { outcome in
                    answer(outcome.map { clients in ["presence": .object(clients.map { ($0.client, $0.json) })] })
                }
            case "presence_stats":
                node.presenceStats(channel: try required("channel")) { outcome in
                    answer(outcome.map { ["num_clients": .int(Int64($0.clients)), "num_users": .int(Int64($0.users))] })
                }
            case "history":
                let filter = try HistoryFilter(apiParams: params)
                node.history(channel: try required("channel"), filter: filter) { outcome in answer(outcome.map(\.json)) }
            case "history_remove":
                node.removeHistory(channel: try required("channel")) { outcome in answer(outcome.map { [:] }) }
            case "channels":
                if let pattern = params["pattern"], !pattern.isNull, pattern.stringValue == nil {
                    throw ProtocolError.badRequest.with(message: "pattern must be a string")
                }
                let pattern = params["pattern"]?.stringValue ?? ""
                // Every node's subscribers, summed per channel.
                node.survey("channels", params: ["pattern": .string(pattern)]) { outcome in
                    answer(outcome.map { answers in
                        var counts: [String: Int64] = [:]
                        for nodeAnswer in answers {
                            for (channel, count) in nodeAnswer.objectValue ?? [] { counts[channel, default: 0] += count.intValue ?? 0 }
                        }
                        return ["channels": .object(counts.sorted { $0.key < $1.key }.map { ($0.key, ["num_clients": .int($0.value)]) })]
                    })
                }
            case "connections":
                if let user = params["user"], !user.isNull, user.stringValue == nil { throw ProtocolError.badRequest.with(message: "user must be a string") }
                let user = params["user"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
                node.survey("connections", params: user.map { ["user": .string($0)] } ?? [:]) { outcome in
                    answer(outcome.map { answers in
                        let all = answers.flatMap { $0.objectValue ?? [] }.sorted { $0.0 < $1.0 }
                        return ["connections": .object(all)]
                    })
                }
            case "info":
                node.nodes { result in answer(result.map { ["nodes": .array($0.map(\.json))] }) }
            default:
                throw ProtocolError.methodNotFound
            }
        } catch {
            answer(.failure(error))
        }
    }

    /// Centrifugo's `batch`: `{"commands":[{"<method>":{params}},…],"parallel":bool}` answered with
    /// `{"replies":[{"<method>":{result}} or {"error":{…}}]}` in request order. A malformed body runs nothing.
    private func batch(params: JSONValue, trace: TraceParent?, respond: @escaping Responder) {
        let span = trace?.startSpan(Self.spanName("batch"), kind: .internal, attributes: Self.spanAttributes("batch"))
        var parsed: [(method: String, params: JSONValue)] = []
        let problem: String? = {
            guard let list = params["commands"]?.arrayValue else { return "commands must be an array" }
            guard list.count <= Self.batchLimit else { return "at most \(Self.batchLimit) commands" }
            for command in list {
                guard let fields = command.objectValue, fields.count == 1, fields[0].1.objectValue != nil else {
                    return "each command must be an object with one method and its params object"
                }
                parsed.append((fields[0].0, fields[0].1))
            }
            if let parallel = params["parallel"], !parallel.isNull, parallel.boolValue == nil { return "parallel must be a boolean" }
            return nil
        }()
        if let problem {
            let error = ProtocolError.badRequest.with(message: problem)
            if let span { Self.end(span, .failure(error)) }
            respond(.json(200, ["error": error.json]))
            return
        }
        let commands = parsed
        let replies = Mutex<[JSONValue?]>(Array(repeating: nil, count: commands.count))
        let finish: @Sendable () -> Void = {
            span?.end(attributes: [("hub.server_api.commands", .int(Int64(commands.count)))])
            respond(.json(200, ["replies": .array(replies.withLock { $0.map { $0 ?? .null } })]))
        }
        guard !commands.isEmpty else { finish(); return }
        let run: @Sendable (Int, @escaping @Sendable () -> Void) -> Void = { index, done in
            let (method, params) = commands[index]
            guard method != "batch", Self.methods.contains(method) else {
                replies.withLock { $0[index] = ["error": ProtocolError.methodNotFound.json] }
                done()
                return
            }
            execute(method: method, params: params, trace: span?.asParent) { outcome in
                let reply: JSONValue
                switch outcome {
                case .success(let result): reply = .object([(method, result)])
                case .failure(let error): reply = ["error": error.json]
                }
                replies.withLock { $0[index] = reply }
                done()
            }
        }
        if params["parallel"]?.boolValue == true {
            let remaining = Atomic<Int>(commands.count)
            for index in commands.indices {
                run(index) { if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { finish() } }
            }
        } else {
            BatchSequence(count: commands.count, run: run, finish: finish).next(0)
        }
    }

    /// `answer`, ending a span of the method under `trace` first; `answer` itself without a trace.
    static func traced(_ method: String, _ trace: TraceParent?,
                       _ answer: @escaping @Sendable (Result<JSONValue, ProtocolError>) -> Void) -> @Sendable (Result<JSONValue, ProtocolError>) -> Void {
        guard let trace else { return answer }
        let span = trace.startSpan(spanName(method), kind: .internal, attributes: spanAttributes(method))
        return { outcome in
            end(span, outcome.map { _ in () })
            answer(outcome)
        }
    }

    static func spanName(_ method: String) -> String { "server-api " + method }

    static func spanAttributes(_ method: String) -> [(String, JSONValue)] {
        [("rpc.system", "hub-server-api"), ("rpc.method", .string(method))]
    }

    /// A protocol error is the span's error, with its code (Centrifugo's numbers) as an attribute.
    static func end(_ span: Span, _ outcome: Result<Void, ProtocolError>) {
        if case .failure(let error) = outcome {
            span.end(attributes: [("hub.error.code", .int(Int64(error.code)))], error: error.message)
        } else {
            span.end()
        }
    }

    private func tags(_ params: JSONValue) -> [(String, String)] {
        params["tags"]?.objectValue?.compactMap { key, value in value.stringValue.map { (key, $0) } } ?? []
    }

    private func broadcast(channels: [String], data: JSONValue, tags: [(String, String)],
                           answer: @escaping @Sendable (Result<JSONValue, ProtocolError>) -> Void) {
        let results = Mutex<[Int: JSONValue]>([:])
        let remaining = Atomic<Int>(channels.count)
        let payload: JSONValue = .raw(JSONWriter.bytes(data))  // encoded once for every channel
        for (index, channel) in channels.enumerated() {
            node.publish(channel: channel, data: payload, tags: tags) { outcome in
                let entry: JSONValue
                switch outcome {
                case .success(let position): entry = ["result": position.map { $0.json } ?? [:]]
                case .failure(let error): entry = ["error": error.json]
                }
                results.withLock { $0[index] = entry }
                if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
                    let all = results.withLock { map in (0..<channels.count).map { map[$0] ?? .null } }
                    answer(.success(["responses": .array(all)]))
                }
            }
        }
    }
}

/// Runs batch commands one after another: the next starts when the previous one has answered.
/// Commands that answer at once are looped over, not recursed into, so a long batch cannot
/// exhaust the stack.
private struct BatchSequence: Sendable {
    let count: Int
    let run: @Sendable (Int, @escaping @Sendable () -> Void) -> Void
    let finish: @Sendable () -> Void

    private enum Step { case running, answeredInline, answersLater }

    func next(_ start: Int) {
        var index = start
        while index < count {
            let step = Mutex(Step.running)
            let current = index
            run(current) {
                let later = step.withLock { step -> Bool in
                    if step == .running { step = .answeredInline; return false }
                    return true
                }
                if later { self.next(current + 1) }
            }
            let inline = step.withLock { step -> Bool in
                if step == .answeredInline { return true }
                step = .answersLater
                return false
            }
            guard inline else { return }
            index += 1
        }
        finish()
    }
}

extension HistoryFilter {
    /// Server API history: `limit` absent means position only, as in Centrifugo.
    init(apiParams params: JSONValue) throws(ProtocolError) {
        var filter = HistoryFilter(limit: 0)
        if let limit = params["limit"] {
            guard let value = limit.intValue else { throw ProtocolError.badRequest.with(message: "limit must be an integer") }
            filter.limit = Int(clamping: value)
        }
        if let since = params["since"], !since.isNull {
            let offset = since["offset"]?.intValue ?? 0
            guard offset >= 0 else { throw ProtocolError.badRequest.with(message: "since.offset must not be negative") }
            filter.since = StreamPosition(offset: UInt64(offset), epoch: since["epoch"]?.stringValue ?? "")
        }
        filter.reverse = params["reverse"]?.boolValue ?? false
        self = filter
    }
}
