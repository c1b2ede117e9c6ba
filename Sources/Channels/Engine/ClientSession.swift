import Synchronization

/// One connection's protocol state machine: connect, subscriptions, pings, deadlines.
///
/// Frames arrive on the connection's service thread; broker completions and server API
/// calls may arrive on others, so all state sits behind one lock. The lock is never held
/// while calling into the subscriber registry or the broker.
public final class ClientSession: Sendable {
    public let id = RandomID.uuid()
    let transport: any ClientTransport
    /// The protocol flavour and framing chosen when the connection opened; fixed for its life.
    public let wire: Wire
    public var codec: ProtocolCodec { wire.codec }
    /// A live read's session: it may subscribe to any channel it names (the route checked
    /// the caller already), never sends a ping deadline.
    private let trusted: Bool
    /// For the bidirectional HTTP emulation (SSE, HTTP streaming): the secret half of the
    /// `session` the connect result names, which every `/emulation` request must present.
    private let emulationSecret: String?
    private unowned let node: Node
    /// The upgrade request's headers the proxy allow-list names, forwarded on every proxy call.
    private let forwardedHeaders: [(String, String)]

    enum Phase { case awaitingConnect, connecting, connected, closed }

    struct Subscription {
        var active = false
        var chanInfo: JSONValue?
        var expiresAt: Double?
        var delivery = Delivery.whole
        /// A sub_refresh proxy call for this subscription is under way.
        var refreshing = false
    }

    struct State {
        var phase = Phase.awaitingConnect
        var user = ""
        var connInfo: JSONValue?
        /// The connect proxy's `meta`: never sent to clients, passed back on later proxy calls.
        var meta: JSONValue?
        var expiresAt: Double?
        /// The session's expiry is extended by the refresh proxy, not by the client's `refresh`.
        var refreshedByProxy = false
        /// A refresh proxy call is under way (at most one per session).
        var refreshing = false
        var subscriptions: [String: Subscription] = [:]
        var connectDeadline: Double
        var nextPing: Double = .infinity
        var pongDeadline: Double?
    }

    private let state: Mutex<State>

    init(node: Node, transport: any ClientTransport, wire: Wire = .webSocketJSON, trusted: Bool = false,
         forwardedHeaders: [(String, String)] = []) {
        self.node = node
        self.forwardedHeaders = forwardedHeaders
        self.transport = transport
        self.wire = wire
        self.trusted = trusted
        emulationSecret = wire.isEmulated ? RandomID.make(length: 32) : nil
        state = Mutex(State(connectDeadline: node.clock.now() + node.config.connectTimeout))
    }

    public var user: String { state.withLock { $0.user } }
    public var isConnected: Bool { state.withLock { $0.phase == .connected } }
    var subscriptionCount: Int { state.withLock { $0.subscriptions.count } }
    var clientInfo: ClientInfo { state.withLock { ClientInfo(user: $0.user, client: id, connInfo: $0.connInfo) } }

    // MARK: Input

    /// Handles one WebSocket message: one or more commands (newline-separated JSON, or
    /// length-delimited Protobuf).
    public func handle(message: [UInt8]) {
        // A unidirectional client says one thing, its connect request; anything after is ignored.
        if codec.isUnidirectional, state.withLock({ $0.phase != .awaitingConnect }) { return }
        for line in codec.commands(in: message) {
            switch line {
            case .command(let command): handle(command)
            case .pong: state.withLock { $0.pongDeadline = nil }
            case .invalid(let id, let error): fail(id: id, error)
            }
        }
    }

    private func handle(_ command: ClientCommand) {
        let (id, method, body) = (command.id, command.method, command.body)
        let phase = state.withLock { $0.phase }
        if method == "connect" {
            connect(id: id, body)
            return
        }
        guard phase == .connected else {
            fail(id: id, ProtocolError.unauthorized.with(message: "send connect first"))
            return
        }
        switch method {
        case "subscribe": subscribe(id: id, body)
        case "unsubscribe": unsubscribe(id: id, body)
        case "publish": publish(id: id, body)
        case "presence": presence(id: id, body, stats: false)
        case "presence_stats": presence(id: id, body, stats: true)
        case "history": history(id: id, body)
        case "rpc": rpc(id: id, body)
        case "send": send(body)
        case "refresh": refresh(id: id, body)
        case "sub_refresh": subRefresh(id: id, body)
        case "ping": reply(id: id, method: "ping", [:])
        default: fail(id: id, ProtocolError.methodNotFound.with(message: "unknown method \(method)"))
        }
    }

    /// Whether an `/emulation` request's session secret is this session's.
    func acceptsEmulation(secret: String) -> Bool {
        guard let emulationSecret else { return false }
        return ConstantTime.equal(emulationSecret, secret)
    }

    // MARK: Output

    func send(_ payload: [UInt8], eventID: String? = nil) {
        if !transport.enqueue(wire.frame(payload, with: node.encoder, eventID: eventID)) {
            node.counters.slowDisconnects.add(1, ordering: .relaxed)
            disconnect(.slow)
        }
    }

    private func reply(id: Int64?, method: String, _ result: JSONValue) {
        // Commands sent without an id expect no reply (the protocol's fire-and-forget form).
        guard let id else { return }
        send(codec.reply(id: id, method: method, result: result))
    }

    private func fail(id: Int64?, _ error: ProtocolError) {
        node.counters.commandErrors.add(1, ordering: .relaxed)
        guard !codec.isUnidirectional else {
            // A unidirectional client reads no replies: what would be an error ends the
            // connection with the matching disconnect code (as Centrifugo does).
            switch error.code {
            case ProtocolError.tokenExpired.code: disconnect(.expired)
            case ProtocolError.unauthorized.code: disconnect(.invalidToken)
            case ProtocolError.permissionDenied.code: disconnect(.permissionDenied)
            default: disconnect(.badRequest)
            }
            return
        }
        send(codec.error(id: id, error))
    }

    /// A publication for this subscriber: on `uni_sse` it carries its event id, so a
    /// reconnecting EventSource resumes from it through `Last-Event-ID`.
    private func sendPublication(channel: String, _ publication: Publication, epoch: String?, forDelta: Bool = false) {
        let eventID = wire.carriesEventIDs && publication.offset > 0
            ? Wire.eventID(channel: channel, offset: publication.offset, epoch: epoch ?? "") : nil
        send(codec.publication(channel: channel, publication, forDelta: forDelta), eventID: eventID)
    }

    private func requireChannel(_ body: JSONValue, id: Int64?) -> (String, ChannelOptions)? {
        guard let channel = body["channel"]?.stringValue else {
            fail(id: id, ProtocolError.badRequest.with(message: "channel required"))
            return nil
        }
        do {
            return (channel, try node.options(for: channel))
        } catch {
            fail(id: id, error)
            return nil
        }
    }

    // MARK: Connect and refresh

    /// A subscribe result and the stream position it told the client about.
    struct SubscribeReply: Sendable {
        var result: JSONValue
        var promised: StreamPosition?
        /// The recovered publications (also in `result`), as this subscriber gets them.
        var recovered: [Publication] = []
    }

    private struct Identity {
        var user: String
        var expiresAt: Double?
        var info: JSONValue?
        var channels: [String]
        /// The connect proxy's `data`, returned in the connect reply.
        var data: JSONValue? = nil
        var meta: JSONValue? = nil
    }

    /// Verifies a connection token and goes on with its identity, or with nil after answering
    /// the client when it is unusable. A token naming a JWKS key the hub does not hold yet waits for the
    /// refetch it starts (bounded by the JWKS timeout and the connect deadline).
    private func verifyConnectionToken(_ token: String, id: Int64?, method: String, then proceed: @escaping @Sendable (Identity?) -> Void) {
        guard node.config.tokens.isConfigured else {
            fail(id: id, ProtocolError.unauthorized.with(message: "this hub accepts no tokens (no token secret configured)"))
            proceed(nil)
            return
        }
        let clock = node.clock
        node.config.tokens.verify(token, now: { clock.now() }) { [self] outcome in
            let claims: JSONValue
            switch outcome {
            case .success(let verified): claims = verified
            case .failure(.expired):
                fail(id: id, .tokenExpired)
                proceed(nil)
                return
            case .failure(let error):
                node.logger.info("refusing connection token", metadata: ["reason": "\(error)", "method": "\(method)"])
                disconnect(.invalidToken)
                proceed(nil)
                return
            }
            guard let sub = claims["sub"]?.stringValue else {
                disconnect(.invalidToken)
                proceed(nil)
                return
            }
            var info = claims["info"]
            if info == nil, let b64 = claims["b64info"]?.stringValue, let bytes = Base64URL.decode(b64), let parsed = try? JSONParser.parse(bytes) {
                info = parsed
            }
            let channels = claims["channels"]?.arrayValue?.compactMap(\.stringValue) ?? []
            proceed(Identity(user: sub, expiresAt: claims["exp"]?.doubleValue.flatMap { $0 > 0 ? $0 : nil }, info: info, channels: channels))
        }
    }

    private func connect(id: Int64?, _ body: JSONValue) {
        let started = state.withLock { state -> Bool in
            guard state.phase == .awaitingConnect else { return false }
            state.phase = .connecting
            return true
        }
        guard started else {
            fail(id: id, ProtocolError.badRequest.with(message: "already connected"))
            return
        }
        let token = body["token"]?.stringValue ?? ""
        if token.isEmpty, let proxy = node.config.proxy, proxy.proxies(.connect) {
            connectThroughProxy(proxy, id: id, body)
            return
        }
        if token.isEmpty {
            guard node.config.allowAnonymous else {
                state.withLock { $0.phase = .awaitingConnect }
                fail(id: id, ProtocolError.unauthorized.with(message: "connection token required"))
                return
            }
            establish(id: id, body, identity: Identity(user: "", expiresAt: nil, info: nil, channels: []))
            return
        }
        verifyConnectionToken(token, id: id, method: "connect") { [self] identity in
            guard let identity else {
                state.withLock { if $0.phase == .connecting { $0.phase = .awaitingConnect } }
                return
            }
            establish(id: id, body, identity: identity)
        }
    }

    /// The members every proxy request starts with (Centrifugo's shape).
    private func proxyRequest(_ members: [(String, JSONValue?)]) -> JSONValue {
        .compact([
            ("client", .string(id)), ("transport", .string(wire.transportName)),
            ("protocol", .string(codec == .protobuf ? "protobuf" : "json")),
            // Payloads are JSON on every codec here (the Protobuf decoder requires it), so they
            // travel as `data`, never `b64data`: the encoding Centrifugo reports for that is json.
            ("encoding", .string("json")),
        ] + members)
    }

    /// A connect without a token, decided by the backend: it names the user, the expiry, the
    /// info and data, and the server-side channels. The session holds the command meanwhile;
    /// the proxy's HTTP client bounds how long.
    private func connectThroughProxy(_ proxy: any ProxyBackend, id: Int64?, _ body: JSONValue) {
        let request = proxyRequest([
            ("name", body["name"]), ("version", body["version"]), ("data", body["data"]),
            ("channels", body["subs"]?.objectValue.map { .array($0.map { .string($0.0) }) }),
        ])
        proxy.call(.connect, channel: nil, endpoint: nil, request: request, headers: forwardedHeaders) { [self] answer in
            switch answer {
            case .result(let result):
                let info = ProxyAnswer.payload(result, "info"), data = ProxyAnswer.payload(result, "data")
                guard let user = result["user"]?.stringValue, info != .invalid, data != .invalid else {
                    node.logger.warning("connect proxy answered a result without a valid user, info or data")
                    connectRefused(id: id, .internal)
                    return
                }
                if user.isEmpty && !node.config.allowAnonymous {
                    connectRefused(id: id, ProtocolError.unauthorized.with(message: "connection token required"))
                    return
                }
                let expireAt = result["expire_at"]?.doubleValue.flatMap { $0 > 0 ? $0 : nil }
                var channels = result["channels"]?.arrayValue?.compactMap(\.stringValue) ?? []
                // `subs` (channel → options) subscribes like `channels`; only the names are used.
                for (channel, _) in result["subs"]?.objectValue ?? [] where !channels.contains(channel) { channels.append(channel) }
                let meta = result["meta"]
                let refreshedByProxy = proxy.proxies(.refresh)
                state.withLock { state in
                    state.meta = meta
                    state.refreshedByProxy = refreshedByProxy
                }
                establish(id: id, body, identity: Identity(user: user, expiresAt: expireAt, info: info.json,
                                                           channels: channels, data: data.json, meta: meta))
            case .error(let error):
                connectRefused(id: id, error)
            case .disconnect(let reason):
                disconnect(reason)
            }
        }
    }

    /// Answers a connect with an error and lets the client try again on this connection.
    private func connectRefused(id: Int64?, _ error: ProtocolError) {
        state.withLock { if $0.phase == .connecting { $0.phase = .awaitingConnect } }
        fail(id: id, error)
    }

    /// Starts a live read's session (the REST route authorized the caller already): connected
    /// as `user`, subscribed to `channel`, recovering after `position` when one is given.
    public func startTrusted(user: String, channel: String, recoverFrom position: StreamPosition?) {
        guard trusted, state.withLock({ state -> Bool in
            guard state.phase == .awaitingConnect else { return false }
            state.phase = .connecting
            return true
        }) else { return }
        var sub: JSONValue = [:]
        if let position {
            sub = ["recover": true, "offset": .int(Int64(clamping: position.offset)), "epoch": .string(position.epoch)]
        }
        establish(id: 1, ["subs": .object([(channel, sub)])], identity: Identity(user: user, expiresAt: nil, info: nil, channels: [channel]))
    }

    /// Whether this connection may subscribe to `channel` without a subscription token.
    private func maySubscribe(_ channel: String, options: ChannelOptions, user: String) -> Bool {
        if options.allowUserLimitedChannels, let users = ChannelNamespaces.allowedUsers(in: channel) {
            return !user.isEmpty && users.contains(Substring(user))
        } else if user.isEmpty {
            return options.allowSubscribeForAnonymous
        }
        return options.allowSubscribeForClient
    }

    private func establish(id: Int64?, _ body: JSONValue, identity: Identity) {
        let now = node.clock.now()
        let stillOpen = state.withLock { state -> Bool in
            guard state.phase == .connecting else { return false }
            state.user = identity.user
            state.connInfo = identity.info
            state.expiresAt = identity.expiresAt
            return true
        }
        guard stillOpen else { return }
        node.register(self, user: identity.user)

        // Server-side subscriptions from the token, recovered from the client's `subs`
        // when it reconnects with positions.
        var serverChannels: [(String, ChannelOptions, StreamPosition?)] = []
        var wanted = identity.channels
        if codec.isUnidirectional, let requested = body["subs"]?.objectValue {
            // A unidirectional client cannot subscribe later: the channels of its connect
            // request that it may subscribe to without a token are subscribed now, beside the
            // token's (an extension of Centrifugo's uni protocol, where `subs` only recovers).
            for (channel, _) in requested where !wanted.contains(channel) {
                guard let options = try? node.options(for: channel), maySubscribe(channel, options: options, user: identity.user) else {
                    disconnect(.permissionDenied)
                    return
                }
                wanted.append(channel)
            }
        }
        for channel in wanted.prefix(node.config.maxSubscriptionsPerClient) {
            guard let options = try? node.options(for: channel) else { continue }
            var position: StreamPosition?
            if let sub = body["subs"]?[channel], sub["recover"]?.boolValue == true {
                position = StreamPosition(offset: UInt64(max(0, sub["offset"]?.intValue ?? 0)), epoch: sub["epoch"]?.stringValue ?? "")
            }
            serverChannels.append((channel, options, position))
        }
        let collected = Mutex<[(String, SubscribeReply)]>([])
        let remaining = Atomic<Int>(serverChannels.count)
        let finish: @Sendable () -> Void = { [self] in
            let subs = collected.withLock { $0 }.sorted { $0.0 < $1.0 }
            // A session the refresh proxy extends is not told to refresh itself (as in Centrifugo).
            let ttl = state.withLock { $0.refreshedByProxy } ? nil : identity.expiresAt.map { max(0, Int64(($0 - now).rounded(.up))) }
            // A unidirectional client gets its recovered publications as pushes of their own
            // after the connect push (with event ids on uni_sse), not inside `subs`.
            let separate = codec.isUnidirectional
            let subResults = subs.map { channel, reply -> (String, JSONValue) in
                guard separate, case let .object(members) = reply.result else { return (channel, reply.result) }
                return (channel, .object(members.filter { $0.0 != "publications" }))
            }
            let result = JSONValue.compact([
                ("client", .string(self.id)),
                ("version", .string(node.config.version)),
                ("expires", ttl != nil ? .bool(true) : nil),
                ("ttl", ttl.map { .int($0) }),
                ("data", identity.data),
                ("subs", subResults.isEmpty ? nil : .object(subResults)),
                ("ping", .int(Int64(node.config.pingInterval))),
                ("pong", codec.isUnidirectional ? nil : .bool(true)),
                ("node", .string(node.uid)),
                ("session", emulationSecret.map { .string(self.id + "." + $0) }),
            ])
            state.withLock { state in
                state.phase = .connected
                state.nextPing = now + node.config.pingInterval
            }
            if let id {
                send(codec.reply(id: id, method: "connect", result: result))
            }
            for (channel, reply) in subs {
                if separate {
                    for publication in reply.recovered { sendPublication(channel: channel, publication, epoch: reply.promised?.epoch) }
                }
                activate(channel: channel, after: reply.promised)
            }
        }
        if serverChannels.isEmpty { finish(); return }
        for (channel, options, position) in serverChannels {
            state.withLock { $0.subscriptions[channel] = Subscription() }
            startSubscription(channel: channel, options: options, recoverFrom: position) { outcome in
                if case let .success(result) = outcome {
                    collected.withLock { $0.append((channel, result)) }
                } else {
                    self.state.withLock { _ = $0.subscriptions.removeValue(forKey: channel) }
                }
                if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { finish() }
            }
        }
    }

    private func refresh(id: Int64?, _ body: JSONValue) {
        guard let token = body["token"]?.stringValue, !token.isEmpty else {
            fail(id: id, ProtocolError.badRequest.with(message: "token required"))
            return
        }
        verifyConnectionToken(token, id: id, method: "refresh") { [self] identity in
            guard let identity else { return }
            let sameUser = state.withLock { state -> Bool in
                guard state.user == identity.user else { return false }
                state.expiresAt = identity.expiresAt
                if let info = identity.info { state.connInfo = info }
                return true
            }
            guard sameUser else {
                disconnect(.invalidToken)
                return
            }
            let ttl = identity.expiresAt.map { max(0, Int64(($0 - node.clock.now()).rounded(.up))) }
            reply(id: id, method: "refresh", .compact([
                ("client", .string(self.id)), ("version", .string(node.config.version)),
                ("expires", ttl != nil ? .bool(true) : nil), ("ttl", ttl.map { .int($0) }),
            ]))
        }
    }

    // MARK: Subscriptions

    /// Checks a subscription token for this channel and goes on with its claims, or answers
    /// the client. Like connection tokens, an unknown JWKS `kid` waits for the refetch.
    private func subscriptionClaims(token: String, channel: String, id: Int64?, then proceed: @escaping @Sendable (JSONValue) -> Void) {
        guard node.config.tokens.isConfigured else {
            fail(id: id, .permissionDenied)
            return
        }
        let clock = node.clock
        node.config.tokens.verify(token, now: { clock.now() }) { [self] outcome in
            switch outcome {
            case .success(let claims):
                guard claims["sub"]?.stringValue == user, claims["channel"]?.stringValue == channel else {
                    fail(id: id, ProtocolError.permissionDenied.with(message: "subscription token is for another user or channel"))
                    return
                }
                proceed(claims)
            case .failure(.expired):
                fail(id: id, .tokenExpired)
            case .failure:
                fail(id: id, ProtocolError.permissionDenied.with(message: "invalid subscription token"))
            }
        }
    }

    private func subscribe(id: Int64?, _ body: JSONValue) {
        guard let (channel, options) = requireChannel(body, id: id) else { return }
        if let token = body["token"]?.stringValue, !token.isEmpty {
            subscriptionClaims(token: token, channel: channel, id: id) { [self] claims in
                subscribe(id: id, body, channel: channel, options: options, chanInfo: claims["info"],
                          expiresAt: claims["exp"]?.doubleValue.flatMap { $0 > 0 ? $0 : nil })
            }
        } else if options.proxies(.subscribe, through: node.config.proxy), let proxy = node.config.proxy {
            let (user, meta) = state.withLock { ($0.user, $0.meta) }
            let request = proxyRequest([("user", .string(user)), ("channel", .string(channel)), ("meta", meta), ("data", body["data"])])
            proxy.call(.subscribe, channel: channel, endpoint: options.proxyEndpoints[.subscribe], request: request, headers: forwardedHeaders) { [self] answer in
                switch answer {
                case .result(let result):
                    let info = ProxyAnswer.payload(result, "info"), data = ProxyAnswer.payload(result, "data")
                    guard info != .invalid, data != .invalid else { fail(id: id, .internal); return }
                    subscribe(id: id, body, channel: channel, options: options, chanInfo: info.json,
                              expiresAt: result["expire_at"]?.doubleValue.flatMap { $0 > 0 ? $0 : nil }, data: data.json)
                case .error(let error): fail(id: id, error)
                case .disconnect(let reason): disconnect(reason)
                }
            }
        } else {
            guard maySubscribe(channel, options: options, user: user) else {
                fail(id: id, .permissionDenied)
                return
            }
            subscribe(id: id, body, channel: channel, options: options, chanInfo: nil, expiresAt: nil)
        }
    }

    /// Subscribes once the channel is allowed (by its options or a subscription token).
    private func subscribe(id: Int64?, _ body: JSONValue, channel: String, options: ChannelOptions, chanInfo: JSONValue?, expiresAt: Double?,
                           data: JSONValue? = nil) {
        let delivery: Delivery
        do { delivery = try Self.delivery(body, options: options) } catch { fail(id: id, error); return }
        let problem = state.withLock { state -> ProtocolError? in
            if state.subscriptions[channel] != nil { return .alreadySubscribed }
            if state.subscriptions.count >= node.config.maxSubscriptionsPerClient {
                return ProtocolError.limitExceeded.with(message: "too many subscriptions")
            }
            state.subscriptions[channel] = Subscription(chanInfo: chanInfo, expiresAt: expiresAt, delivery: delivery)
            return nil
        }
        if let problem {
            fail(id: id, problem)
            return
        }
        var position: StreamPosition?
        if body["recover"]?.boolValue == true {
            position = StreamPosition(offset: UInt64(max(0, body["offset"]?.intValue ?? 0)), epoch: body["epoch"]?.stringValue ?? "")
        }
        // A subscription the sub_refresh proxy extends is not told to refresh itself (as in Centrifugo).
        let refreshedByProxy = options.proxies(.subRefresh, through: node.config.proxy)
        let ttl = refreshedByProxy ? nil : expiresAt.map { max(0, Int64(($0 - node.clock.now()).rounded(.up))) }
        startSubscription(channel: channel, options: options, recoverFrom: position, delivery: delivery) { [self] outcome in
            switch outcome {
            case .success(let subscribed):
                var result = subscribed.result
                if let ttl, case var .object(members) = result {
                    members.insert(contentsOf: [("expires", .bool(true)), ("ttl", .int(ttl))], at: 0)
                    result = .object(members)
                }
                if delivery.delta, case var .object(members) = result {
                    members.append(("delta", .bool(true)))
                    result = .object(members)
                }
                if let data, case var .object(members) = result {
                    // The subscribe proxy's `data`, for the client's subscribed event.
                    members.append(("data", data))
                    result = .object(members)
                }
                reply(id: id, method: "subscribe", result)
                activate(channel: channel, after: subscribed.promised)
            case .failure(let error):
                state.withLock { _ = $0.subscriptions.removeValue(forKey: channel) }
                fail(id: id, error)
            }
        }
    }

    /// Registers as a pending subscriber and reads the stream position (and the missed
    /// publications when recovering). Completes with the subscribe result to send; the
    /// caller sends it and then calls `activate`.
    /// What a subscribe asks of its deliveries (`delta`, `tf`), checked against the namespace.
    static func delivery(_ body: JSONValue, options: ChannelOptions) throws(ProtocolError) -> Delivery {
        var delivery = Delivery.whole
        if let delta = body["delta"]?.stringValue, !delta.isEmpty {
            guard delta == "fossil" else { throw ProtocolError.badRequest.with(message: "unknown delta type '\(delta.prefix(40))'") }
            guard options.allowedDeltaTypes.contains(delta) else {
                throw ProtocolError.badRequest.with(message: "delta '\(delta)' is not allowed in this namespace")
            }
            delivery.delta = true
        }
        if let tf = body["tf"], !tf.isNull {
            guard options.allowTagsFilter else { throw ProtocolError.badRequest.with(message: "tags filters are not allowed in this namespace") }
            guard !delivery.delta else { throw ProtocolError.badRequest.with(message: "delta and a tags filter cannot be combined") }
            delivery.filter = try TagFilter(json: tf)
        }
        return delivery
    }

    /// What of `publications` this subscriber gets, in the form it gets them.
    private func delivered(_ publications: [Publication], _ delivery: Delivery) -> [Publication] {
        var out = publications
        if let filter = delivery.filter { out = out.filter { filter.matches($0.tags) } }
        if delivery.delta { out = out.map(codec.forDeltaSubscriber) }
        return out
    }

    private func startSubscription(channel: String, options: ChannelOptions, recoverFrom position: StreamPosition?,
                                   delivery: Delivery = .whole,
                                   completion: @escaping @Sendable (Result<SubscribeReply, ProtocolError>) -> Void) {
        _ = node.subscribers.addPending(self, to: channel, delivery: delivery)
        let fail: @Sendable (ProtocolError) -> Void = { [self] error in
            if node.subscribers.remove(self, from: channel) { node.broker.unsubscribe(channel: channel) }
            completion(.failure(error))
        }
        // The broker delivers to this node before the position is read: nothing published
        // in between can fall through.
        node.broker.subscribe(channel: channel) { [self] subscribed in
            switch subscribed {
            case .failure(let error): fail(error)
            case .success: readPosition(channel: channel, options: options, recoverFrom: position, delivery: delivery, fail: fail, completion: completion)
            }
        }
    }

    private func readPosition(channel: String, options: ChannelOptions, recoverFrom position: StreamPosition?, delivery: Delivery,
                              fail: @escaping @Sendable (ProtocolError) -> Void,
                              completion: @escaping @Sendable (Result<SubscribeReply, ProtocolError>) -> Void) {
        guard options.historyEnabled else {
            completion(.success(SubscribeReply(result: [:], promised: nil)))
            return
        }
        let recoverable = options.recoveryEnabled
        let result: @Sendable (StreamPosition, Recovery?) -> SubscribeReply = { position, recovery in
            let recovered = self.delivered(recovery?.publications ?? [], delivery)
            return SubscribeReply(result: .compact([
                ("recoverable", recoverable ? .bool(true) : nil),
                ("epoch", .string(position.epoch)),
                ("offset", position.offset > 0 ? .int(Int64(position.offset)) : nil),
                ("positioned", .bool(true)),
                ("publications", recovered.isEmpty ? nil : .array(recovered.map(\.json))),
                ("recovered", recovery?.recovered == true ? .bool(true) : nil),
                ("was_recovering", recovery != nil ? .bool(true) : nil),
            ]), promised: position, recovered: recovered)
        }
        if options.recoveryMode == .cache, options.historyEnabled {
            // Keep-latest channels (state such as a gateway's status): whoever subscribes, first
            // time or coming back, gets the newest publication, not everything in between.
            node.broker.history(channel: channel, filter: HistoryFilter(limit: 1, reverse: true), options: options) { outcome in
                switch outcome {
                case .success(let history):
                    let newer = history.publications.filter { latest in
                        guard let position, position.epoch == history.position.epoch else { return true }
                        return latest.offset > position.offset
                    }
                    completion(.success(result(history.position, Recovery(recovered: true, publications: newer))))
                case .failure(let error): fail(error)
                }
            }
            return
        }
        guard let position, recoverable else {
            node.broker.history(channel: channel, filter: HistoryFilter(limit: 0), options: options) { outcome in
                switch outcome {
                case .success(let history): completion(.success(result(history.position, nil)))
                case .failure(let error): fail(error)
                }
            }
            return
        }
        let limit = options.recoveryMaxPublications
        node.broker.history(channel: channel, filter: HistoryFilter(limit: limit + 1, since: position), options: options) { [node] outcome in
            switch outcome {
            case .success(let history):
                let recovery = Recovery.decide(history: history, clientOffset: position.offset, clientEpoch: position.epoch, maxPublications: limit)
                completion(.success(result(history.position, recovery)))
            case .failure(let error) where error.code == ProtocolError.unrecoverablePosition.code:
                // Too old or another epoch: tell the client where the stream is now.
                node.broker.history(channel: channel, filter: HistoryFilter(limit: 0), options: options) { outcome in
                    switch outcome {
                    case .success(let history): completion(.success(result(history.position, Recovery(recovered: false, publications: []))))
                    case .failure(let error): fail(error)
                    }
                }
            case .failure(let error):
                fail(error)
            }
        }
    }

    /// Sends what was published while the subscribe reply was being prepared, then goes live;
    /// then announces the subscriber (presence, join).
    private func activate(channel: String, after promised: StreamPosition?) {
        guard let options = try? node.options(for: channel) else { return }
        // Anything at or below the offset the reply promised was in the reply or is older.
        var gap = false
        let delivery = state.withLock { $0.subscriptions[channel]?.delivery } ?? .whole
        let active = node.subscribers.activate(self, in: channel, after: promised) { due in
            // Held-back publications must continue the promised position exactly.
            if let promised, let first = due.first, first.offset != promised.offset + 1 {
                gap = true
                return
            }
            for publication in due where delivery.filter?.matches(publication.tags) ?? true {
                sendPublication(channel: channel, publication, epoch: promised?.epoch, forDelta: delivery.delta)
            }
        }
        guard active else { return }
        if gap {
            serverUnsubscribe(channel: channel, reason: .insufficientState)
            return
        }
        let info: ClientInfo? = state.withLock { state in
            guard state.subscriptions[channel] != nil else { return nil }
            state.subscriptions[channel]!.active = true
            return ClientInfo(user: state.user, client: id, connInfo: state.connInfo, chanInfo: state.subscriptions[channel]!.chanInfo)
        }
        guard let info else { return }
        if options.presence { node.presence.add(channel: channel, info: info) }
        if options.joinLeave { node.broker.publishJoin(channel: channel, info: info) }
        // Streamed whether or not subscribers get join pushes: the backend keeps its own account.
        node.recordPresenceChange(.join, channel: channel, info: info, options: options)
    }

    private func unsubscribe(id: Int64?, _ body: JSONValue) {
        guard let channel = body["channel"]?.stringValue else {
            fail(id: id, ProtocolError.badRequest.with(message: "channel required"))
            return
        }
        leave(channel: channel)
        reply(id: id, method: "unsubscribe", [:])
    }

    /// Removes the subscription (if any) and announces the departure.
    private func leave(channel: String) {
        let removed = state.withLock { state -> (Subscription, ClientInfo)? in
            guard let sub = state.subscriptions.removeValue(forKey: channel) else { return nil }
            return (sub, ClientInfo(user: state.user, client: id, connInfo: state.connInfo, chanInfo: sub.chanInfo))
        }
        guard let (subscription, info) = removed else { return }
        if node.subscribers.remove(self, from: channel) { node.broker.unsubscribe(channel: channel) }
        guard subscription.active, let options = try? node.options(for: channel) else { return }
        if options.presence { node.presence.remove(channel: channel, client: id) }
        if options.joinLeave { node.broker.publishLeave(channel: channel, info: info) }
        // Streamed whether or not subscribers get leave pushes: the backend keeps its own account.
        node.recordPresenceChange(.leave, channel: channel, info: info, options: options)
    }

    func serverSubscribe(channel: String) {
        guard let options = try? node.options(for: channel) else { return }
        let added = state.withLock { state -> Bool in
            guard state.phase == .connected, state.subscriptions[channel] == nil else { return false }
            state.subscriptions[channel] = Subscription()
            return true
        }
        guard added else { return }
        startSubscription(channel: channel, options: options, recoverFrom: nil) { [self] outcome in
            switch outcome {
            case .success(let subscribed):
                send(codec.push(channel: channel, kind: "subscribe", body: subscribed.result))
                activate(channel: channel, after: subscribed.promised)
            case .failure:
                state.withLock { _ = $0.subscriptions.removeValue(forKey: channel) }
            }
        }
    }

    func serverUnsubscribe(channel: String, reason: UnsubscribeReason) {
        guard state.withLock({ $0.subscriptions[channel] != nil }) else { return }
        if codec.isUnidirectional, reason == .insufficientState {
            // It cannot resubscribe by itself: reconnecting (with its positions) is how it recovers.
            disconnect(.insufficientState)
            return
        }
        leave(channel: channel)
        send(codec.push(channel: channel, kind: "unsubscribe", body: ["code": .int(Int64(reason.code)), "reason": .string(reason.reason)]))
    }

    // MARK: Publish, presence, history, rpc

    private func isSubscribed(_ channel: String) -> Bool {
        state.withLock { $0.subscriptions[channel]?.active == true }
    }

    private func publish(id: Int64?, _ body: JSONValue) {
        guard let (channel, options) = requireChannel(body, id: id) else { return }
        guard let data = body["data"] else {
            fail(id: id, ProtocolError.badRequest.with(message: "data required"))
            return
        }
        let info = clientInfo
        if options.proxies(.publish, through: node.config.proxy), let proxy = node.config.proxy {
            // The backend decides instead of the namespace's publish permissions, and may
            // rewrite the data before it is broadcast and kept in history.
            let meta = state.withLock { $0.meta }
            let request = proxyRequest([("user", .string(info.user)), ("channel", .string(channel)), ("meta", meta), ("data", data)])
            proxy.call(.publish, channel: channel, endpoint: options.proxyEndpoints[.publish], request: request, headers: forwardedHeaders) { [self] answer in
                switch answer {
                case .result(let result):
                    let rewritten = ProxyAnswer.payload(result, "data")
                    guard rewritten != .invalid else { fail(id: id, .internal); return }
                    let published = rewritten.json ?? data
                    let skipHistory = result["skip_history"]?.boolValue ?? false
                    node.publish(channel: channel, data: published, info: info, skipHistory: skipHistory) { [self] outcome in
                        switch outcome {
                        case .success: reply(id: id, method: "publish", [:])
                        case .failure(let error): fail(id: id, error)
                        }
                    }
                case .error(let error): fail(id: id, error)
                case .disconnect(let reason): disconnect(reason)
                }
            }
            return
        }
        var allowed = (options.allowPublishForSubscriber && isSubscribed(channel)) || options.allowPublishForClient
        if info.user.isEmpty && !options.allowPublishForAnonymous { allowed = false }
        guard allowed else {
            fail(id: id, .permissionDenied)
            return
        }
        node.publish(channel: channel, data: data, info: info) { [self] outcome in
            switch outcome {
            case .success: reply(id: id, method: "publish", [:])
            case .failure(let error): fail(id: id, error)
            }
        }
    }

    private func presence(id: Int64?, _ body: JSONValue, stats: Bool) {
        guard let (channel, options) = requireChannel(body, id: id) else { return }
        guard options.allowPresenceForClient || (options.allowPresenceForSubscriber && isSubscribed(channel)) else {
            fail(id: id, .permissionDenied)
            return
        }
        if stats {
            node.presenceStats(channel: channel) { [self] outcome in
                switch outcome {
                case .success(let s): reply(id: id, method: "presence_stats", ["num_clients": .int(Int64(s.clients)), "num_users": .int(Int64(s.users))])
                case .failure(let error): fail(id: id, error)
                }
            }
        } else {
            node.presence(channel: channel) { [self] outcome in
                switch outcome {
                case .success(let clients):
                    reply(id: id, method: "presence", ["presence": .object(clients.map { ($0.client, $0.json) })])
                case .failure(let error): fail(id: id, error)
                }
            }
        }
    }

    private func history(id: Int64?, _ body: JSONValue) {
        guard let (channel, options) = requireChannel(body, id: id) else { return }
        guard options.allowHistoryForClient || (options.allowHistoryForSubscriber && isSubscribed(channel)) else {
            fail(id: id, .permissionDenied)
            return
        }
        let filter: HistoryFilter
        do { filter = try HistoryFilter(json: body) } catch { fail(id: id, error); return }
        node.history(channel: channel, filter: filter) { [self] outcome in
            switch outcome {
            case .success(let h): reply(id: id, method: "history", h.json)
            case .failure(let error): fail(id: id, error)
            }
        }
    }

    private func rpc(id: Int64?, _ body: JSONValue) {
        let method = body["method"]?.stringValue ?? ""
        if node.rpcHandler(method) == nil, let proxy = node.config.proxy, proxy.proxies(.rpc) {
            // RPCs the hub does not serve itself go to the backend.
            let (user, meta) = state.withLock { ($0.user, $0.meta) }
            let request = proxyRequest([("user", .string(user)), ("method", .string(method)), ("data", body["data"]), ("meta", meta)])
            proxy.call(.rpc, channel: nil, endpoint: nil, request: request, headers: forwardedHeaders) { [self] answer in
                switch answer {
                case .result(let result):
                    let data = ProxyAnswer.payload(result, "data")
                    guard data != .invalid else { fail(id: id, .internal); return }
                    reply(id: id, method: "rpc", .compact([("data", data.json)]))
                case .error(let error): fail(id: id, error)
                case .disconnect(let reason): disconnect(reason)
                }
            }
            return
        }
        guard let handler = node.rpcHandler(method) else {
            fail(id: id, ProtocolError.methodNotFound.with(message: method.isEmpty ? "rpc method required" : "unknown rpc method \(method)"))
            return
        }
        handler(clientInfo, body["data"] ?? .null) { [self] outcome in
            switch outcome {
            case .success(let data): reply(id: id, method: "rpc", ["data": data])
            case .failure(let error): fail(id: id, error)
            }
        }
    }

    private func send(_ body: JSONValue) {
        // Asynchronous message to the server: routed to the `send` RPC handler when a
        // module registers one, dropped otherwise (the protocol expects no reply).
        if let handler = node.rpcHandler("$send") { handler(clientInfo, body["data"] ?? .null) { _ in } }
    }

    private func subRefresh(id: Int64?, _ body: JSONValue) {
        guard let channel = body["channel"]?.stringValue, let token = body["token"]?.stringValue else {
            fail(id: id, ProtocolError.badRequest.with(message: "channel and token required"))
            return
        }
        guard state.withLock({ $0.subscriptions[channel] != nil }) else {
            fail(id: id, ProtocolError.badRequest.with(message: "not subscribed to \(channel)"))
            return
        }
        subscriptionClaims(token: token, channel: channel, id: id) { [self] claims in
            let expiresAt = claims["exp"]?.doubleValue.flatMap { $0 > 0 ? $0 : nil }
            state.withLock { $0.subscriptions[channel]?.expiresAt = expiresAt }
            let ttl = expiresAt.map { max(0, Int64(($0 - node.clock.now()).rounded(.up))) }
            reply(id: id, method: "sub_refresh", .compact([("expires", ttl != nil ? .bool(true) : nil), ("ttl", ttl.map { .int($0) })]))
        }
    }

    // MARK: Lifecycle

    /// Periodic check: connect and pong deadlines, token expiry, the next ping.
    func tick(now: Double) {
        enum Action { case none, ping, disconnect(DisconnectReason), refresh, refreshSubscription(String) }
        let proxy = node.config.proxy
        let action = state.withLock { state -> Action in
            switch state.phase {
            case .closed, .connecting: return .none
            case .awaitingConnect: return now > state.connectDeadline ? .disconnect(.stale) : .none
            case .connected:
                if let exp = state.expiresAt, now >= exp {
                    guard state.refreshedByProxy else { return .disconnect(.expired) }
                    if state.refreshing { return .none }
                    state.refreshing = true
                    return .refresh
                }
                if let deadline = state.pongDeadline, now > deadline { return .disconnect(.noPong) }
                for (channel, sub) in state.subscriptions {
                    guard let exp = sub.expiresAt, now >= exp else { continue }
                    guard (try? node.options(for: channel))?.proxies(.subRefresh, through: proxy) == true else { return .disconnect(.subscriptionExpired) }
                    if sub.refreshing { continue }
                    state.subscriptions[channel]?.refreshing = true
                    return .refreshSubscription(channel)
                }
                // Half a tick of slack: the 1 s housekeeping tick must not stretch the interval.
                if now + 0.5 >= state.nextPing {
                    state.nextPing = max(state.nextPing + node.config.pingInterval, now + node.config.pingInterval - 0.5)
                    // Unidirectional clients never answer a ping: it only keeps proxies from idling out.
                    if state.pongDeadline == nil, !codec.isUnidirectional { state.pongDeadline = now + node.config.pongTimeout }
                    return .ping
                }
                return .none
            }
        }
        switch action {
        case .none: break
        case .ping: send(codec.ping)
        case .disconnect(let reason): disconnect(reason)
        case .refresh: refreshThroughProxy()
        case .refreshSubscription(let channel): refreshSubscriptionThroughProxy(channel)
        }
    }

    /// At a subscription's expiry, in a namespace with `proxy_sub_refresh`, the backend extends it
    /// (new `expire_at`) or ends it (`expired`: disconnect 3006, as a lapsed subscription token does).
    /// A backend that cannot be asked is asked again on the next tick.
    private func refreshSubscriptionThroughProxy(_ channel: String) {
        guard let proxy = node.config.proxy else { return }
        let (user, meta) = state.withLock { ($0.user, $0.meta) }
        let request = proxyRequest([("user", .string(user)), ("channel", .string(channel)), ("meta", meta)])
        proxy.call(.subRefresh, channel: channel, endpoint: (try? node.options(for: channel))?.proxyEndpoints[.subRefresh], request: request, headers: forwardedHeaders) { [self] answer in
            switch answer {
            case .result(let result):
                if result["expired"]?.boolValue == true {
                    disconnect(.subscriptionExpired)
                    return
                }
                let expiresAt = result["expire_at"]?.doubleValue.flatMap { $0 > 0 ? $0 : nil }
                state.withLock { state in
                    state.subscriptions[channel]?.expiresAt = expiresAt
                    state.subscriptions[channel]?.refreshing = false
                }
            case .error:
                state.withLock { $0.subscriptions[channel]?.refreshing = false }
            case .disconnect(let reason):
                disconnect(reason)
            }
        }
    }

    /// At expiry the refresh proxy extends the session (new `expire_at`, maybe new `info`) or
    /// ends it (`expired`). A backend that cannot be asked is retried on the next tick, as the
    /// client did nothing wrong; a session whose backend stays down is kept, not dropped.
    private func refreshThroughProxy() {
        guard let proxy = node.config.proxy else { return }
        let (user, meta) = state.withLock { ($0.user, $0.meta) }
        let request = proxyRequest([("user", .string(user)), ("meta", meta)])
        proxy.call(.refresh, channel: nil, endpoint: nil, request: request, headers: forwardedHeaders) { [self] answer in
            switch answer {
            case .result(let result):
                if result["expired"]?.boolValue == true {
                    disconnect(.expired)
                    return
                }
                let expireAt = result["expire_at"]?.doubleValue.flatMap { $0 > 0 ? $0 : nil }
                let info = ProxyAnswer.payload(result, "info").json
                state.withLock { state in
                    state.refreshing = false
                    state.expiresAt = expireAt
                    if let info { state.connInfo = info }
                }
            case .error:
                state.withLock { $0.refreshing = false }
            case .disconnect(let reason):
                disconnect(reason)
            }
        }
    }

    /// The server API's `connections` entry, in the shape of Centrifugo's ConnectionInfo.
    var connectionJSON: JSONValue {
        state.withLock { state in
            .compact([("user", .string(state.user)), ("transport", .string(wire.transportName)),
                      ("protocol", .string(codec == .protobuf ? "protobuf" : "json")),
                      ("state", .compact([("channels", .object(state.subscriptions.keys.sorted().map { ($0, [:]) })),
                                          ("conn_info", state.connInfo)]))])
        }
    }

    /// The server API's `send`: an asynchronous `message` push outside any channel.
    func serverMessage(_ data: JSONValue) {
        send(codec.push(channel: nil, kind: "message", body: ["data": data]))
    }

    /// The server API's `refresh`: a new expiry (nil: none) replaces the token's; the tick enforces it.
    func serverRefresh(expiresAt: Double?) {
        state.withLock { $0.expiresAt = expiresAt }
    }

    /// Closes the connection with a protocol disconnect code and forgets the session.
    public func disconnect(_ reason: DisconnectReason) {
        if wire.framing != .webSocket, state.withLock({ $0.phase != .closed }) {
            // An HTTP stream has no close frame: the reason goes out as a disconnect push.
            let push = codec.push(channel: nil, kind: "disconnect", body: ["code": .int(Int64(reason.code)), "reason": .string(reason.reason)])
            _ = transport.enqueue(wire.frame(push, with: node.encoder))
        }
        transport.close(reason)
        closed()
    }

    /// The transport is gone: leave every channel and unregister. Safe to call twice.
    public func closed() {
        let (wasRegistered, user, channels) = state.withLock { state -> (Bool, String, [String]) in
            let registered = state.phase == .connected || state.phase == .connecting
            if state.phase == .closed { return (false, state.user, []) }
            state.phase = .closed
            return (registered, state.user, Array(state.subscriptions.keys))
        }
        for channel in channels { leave(channel: channel) }
        if wasRegistered { node.unregister(self, user: user) }
    }
}

extension HistoryFilter {
    /// Reads `limit`, `since` and `reverse` as both the client protocol and server API send them.
    init(json body: JSONValue) throws(ProtocolError) {
        var filter = HistoryFilter()
        if let limit = body["limit"] {
            guard let value = limit.intValue else { throw ProtocolError.badRequest.with(message: "limit must be an integer") }
            filter.limit = Int(clamping: value)
        } else {
            filter.limit = 0
        }
        if let since = body["since"], !since.isNull {
            guard since.objectValue != nil else { throw ProtocolError.badRequest.with(message: "since must be an object") }
            let offset = since["offset"]?.intValue ?? 0
            guard offset >= 0 else { throw ProtocolError.badRequest.with(message: "since.offset must not be negative") }
            filter.since = StreamPosition(offset: UInt64(offset), epoch: since["epoch"]?.stringValue ?? "")
        }
        filter.reverse = body["reverse"]?.boolValue ?? false
        self = filter
    }
}

extension HistoryResult {
    public var json: JSONValue {
        .compact([
            ("publications", publications.isEmpty ? nil : .array(publications.map(\.json))),
            ("epoch", .string(position.epoch)),
            ("offset", position.offset > 0 ? .int(Int64(position.offset)) : nil),
        ])
    }
}
