import Logging
import Synchronization

/// Settings the engine needs; the hub fills them from flags, environment and config file.
public struct EngineConfig: Sendable {
    public var namespaces = ChannelNamespaces()
    public var tokens = TokenVerifier(hmacSecret: nil)
    /// Clients may connect without a token (as user "").
    public var allowAnonymous = false
    /// Seconds between server pings; clients answer with a pong.
    public var pingInterval: Double = 25
    /// Seconds a client has to answer a ping.
    public var pongTimeout: Double = 10
    /// Seconds a new connection has to send `connect`.
    public var connectTimeout: Double = 10
    public var maxSubscriptionsPerClient = 128
    /// The backend that decides connects without a token, refreshes, RPCs and, where a namespace
    /// asks, subscribes, publishes and subscription refreshes (nil: the hub decides alone).
    public var proxy: (any ProxyBackend)?
    /// Where namespaces with a `publicationStream` target send their events (nil: such
    /// namespaces are refused by the hub's config check, so none has one).
    public var publicationStream: (any ChannelEventSink)?
    public var nodeName = "hub"
    public var version = "0.1.0"

    public init() {}
}

/// What a node knows about itself, for `/api/info` and the `info` RPC.
public struct NodeInfo: Sendable {
    public var uid: String
    public var name: String
    public var version: String
    public var clients: Int
    public var users: Int
    public var channels: Int
    public var subscriptions: Int
    public var uptime: Int

    public init(uid: String, name: String, version: String, clients: Int, users: Int, channels: Int, subscriptions: Int, uptime: Int) {
        self.uid = uid
        self.name = name
        self.version = version
        self.clients = clients
        self.users = users
        self.channels = channels
        self.subscriptions = subscriptions
        self.uptime = uptime
    }

    public init?(json: JSONValue) {
        guard let uid = json["uid"]?.stringValue else { return nil }
        func int(_ key: String) -> Int { Int(json[key]?.intValue ?? 0) }
        self.init(uid: uid, name: json["name"]?.stringValue ?? "", version: json["version"]?.stringValue ?? "",
                  clients: int("num_clients"), users: int("num_users"), channels: int("num_channels"),
                  subscriptions: int("num_subs"), uptime: int("uptime"))
    }

    public var json: JSONValue {
        [
            "uid": .string(uid), "name": .string(name), "version": .string(version),
            "num_clients": .int(Int64(clients)), "num_users": .int(Int64(users)), "num_channels": .int(Int64(channels)),
            "num_subs": .int(Int64(subscriptions)), "uptime": .int(Int64(uptime)),
        ]
    }
}

/// Counters a metrics endpoint reads. Plain atomics: the hot path never takes a lock for them.
public final class EngineCounters: Sendable {
    public let publications = Atomic<Int>(0)
    public let deliveries = Atomic<Int>(0)
    public let slowDisconnects = Atomic<Int>(0)
    public let connects = Atomic<Int>(0)
    public let commandErrors = Atomic<Int>(0)
    public init() {}
}

/// A server-side RPC method a client may call with the `rpc` command.
public typealias RPCHandler = @Sendable (_ caller: ClientInfo, _ data: JSONValue, _ reply: @escaping @Sendable (Result<JSONValue, ProtocolError>) -> Void) -> Void

/// The channel engine of one hub process: owns local subscriptions and clients, routes
/// publications between the broker and the clients, and serves the server API.
public final class Node: BrokerEventHandler, @unchecked Sendable {
    public let config: EngineConfig
    public let broker: any Broker
    public let presence: any PresenceStore
    public let encoder: any FrameEncoder
    public let clock: any Clock
    public let logger: Logger
    public let uid = RandomID.uuid()
    public let counters = EngineCounters()
    let subscribers = SubscriberRegistry()
    private let clients = Mutex<[String: ClientSession]>([:])
    private let users = Mutex<[String: Set<String>]>([:])
    private let rpcHandlers = Mutex<[String: RPCHandler]>([:])
    private let controlHandlers = Mutex<[String: @Sendable (JSONValue) -> Void]>([:])
    let surveys = Surveys()
    /// Numbers this node's stream events that have no stream position (join, leave, and
    /// publications without history), so each still has an id to dedupe on.
    private let eventSequence = Atomic<UInt64>(0)
    private let startedAt: Double

    public init(config: EngineConfig, broker: any Broker, presence: any PresenceStore, encoder: any FrameEncoder,
                clock: any Clock = SystemClock(), logger: Logger = Logger(label: "hub.channels")) {
        self.config = config
        self.broker = broker
        self.presence = presence
        self.encoder = encoder
        self.clock = clock
        self.logger = logger
        startedAt = clock.now()
        broker.setEventHandler(self)
        registerRPC("info") { [unowned self] _, _, reply in
            self.nodes { result in reply(result.map { ["nodes": .array($0.map(\.json))] }) }
        }
        registerControl("emulation") { [unowned self] command in
            // Another node took an `/emulation` request for a session of this one.
            guard command["node"]?.stringValue == self.uid, let session = command["session"]?.stringValue,
                  let data = command["data"]?.stringValue.flatMap({ Base64URL.decode($0) }) else { return }
            _ = self.deliverEmulation(session: session, data: data)
        }
        registerSurveyControl()
    }

    /// What became of an `/emulation` request.
    public enum EmulationOutcome: Sendable { case delivered, forwarded, unknownSession }

    /// Hands the commands of an `/emulation` request to their session: here, or through the
    /// broker to the node that holds it (the client may reach any node behind a balancer).
    public func emulate(_ request: EmulationRequest) -> EmulationOutcome {
        guard request.node == uid else {
            publishControl(["op": "emulation", "node": .string(request.node), "session": .string(request.session),
                            "data": .string(Base64URL.encode(request.data))])
            return .forwarded
        }
        return deliverEmulation(session: request.session, data: request.data) ? .delivered : .unknownSession
    }

    private func deliverEmulation(session: String, data: [UInt8]) -> Bool {
        let parts = session.split(separator: ".", maxSplits: 1)
        guard parts.count == 2, let target = clients.withLock({ $0[String(parts[0])] }),
              target.acceptsEmulation(secret: String(parts[1])) else { return false }
        target.handle(message: data)
        return true
    }

    // MARK: Clients

    /// Starts the protocol for a new connection.
    /// `forwardedHeaders` are the request headers the proxy allow-list names, sent on each proxy call.
    public func accept(transport: any ClientTransport, codec: ProtocolCodec = .json, forwardedHeaders: [(String, String)] = []) -> ClientSession {
        ClientSession(node: self, transport: transport, wire: Wire(codec), forwardedHeaders: forwardedHeaders)
    }

    /// Starts the protocol for a connection over another transport (the unidirectional
    /// WebSocket, SSE and HTTP-streaming ones); the session keeps the wire for life.
    public func accept(transport: any ClientTransport, wire: Wire, forwardedHeaders: [(String, String)] = []) -> ClientSession {
        ClientSession(node: self, transport: transport, wire: wire, forwardedHeaders: forwardedHeaders)
    }

    /// A session for a legacy REST read streamed live: unidirectional, newline-delimited JSON
    /// pushes to `transport`; started with `startTrusted` once the route authorized the caller.
    public func acceptLiveRead(transport: any ClientTransport) -> ClientSession {
        ClientSession(node: self, transport: transport, wire: Wire(.uniJSON, .stream), trusted: true)
    }

    func register(_ session: ClientSession, user: String) {
        clients.withLock { $0[session.id] = session }
        users.withLock { _ = $0[user, default: []].insert(session.id) }
        counters.connects.add(1, ordering: .relaxed)
    }

    func unregister(_ session: ClientSession, user: String) {
        clients.withLock { _ = $0.removeValue(forKey: session.id) }
        users.withLock { map in
            map[user]?.remove(session.id)
            if map[user]?.isEmpty == true { map.removeValue(forKey: user) }
        }
    }

    public var clientCount: Int { clients.withLock { $0.count } }

    /// Sessions of a user, or the one session with that client id.
    func sessions(user: String?, client: String?) -> [ClientSession] {
        if let client, !client.isEmpty {
            guard let session = clients.withLock({ $0[client] }) else { return [] }
            if let user, session.user != user { return [] }
            return [session]
        }
        guard let user else { return [] }
        let ids = users.withLock { $0[user] ?? [] }
        return clients.withLock { map in ids.compactMap { map[$0] } }
    }

    /// Every connected session, e.g. to close them all on shutdown.
    public func allSessions() -> [ClientSession] { clients.withLock { Array($0.values) } }

    public func registerRPC(_ method: String, handler: @escaping RPCHandler) {
        rpcHandlers.withLock { $0[method] = handler }
    }

    func rpcHandler(_ method: String) -> RPCHandler? { rpcHandlers.withLock { $0[method] } }

    /// Handles control commands with this `op` arriving from any node (e.g. a service reply
    /// reaching the node whose caller waits for it).
    public func registerControl(_ op: String, handler: @escaping @Sendable (JSONValue) -> Void) {
        controlHandlers.withLock { $0[op] = handler }
    }

    /// Sends a control command to every node, this one included.
    /// (Fire and forget: a caller that must know it left this node waits on its own reply.)
    public func publishControl(_ command: JSONValue) { broker.publishControl(command) { _ in } }

    // MARK: Broker events

    public func handlePublication(channel: String, publication: Publication, position: StreamPosition?) {
        var delta: [UInt8]?
        let turn = Turn.current
        let (delivered, slow, behind, startedBatch) = subscribers.fanOut(
            channel: channel, publication: publication, position: position, batching: turn != nil
        ) { wire, form in
            let codec = wire.codec
            let eventID = wire.carriesEventIDs && publication.offset > 0
                ? Wire.eventID(channel: channel, offset: publication.offset, epoch: position?.epoch ?? "") : nil
            switch form {
            case .whole:
                return wire.frame(codec.publication(channel: channel, publication), with: encoder, eventID: eventID)
            case .wholeForDelta:
                return wire.frame(codec.publication(channel: channel, publication, forDelta: true), with: encoder, eventID: eventID)
            case .delta(let base):
                // One delta per publication, shared by both codecs' delta subscribers.
                if delta == nil { delta = FossilDelta.delta(from: base, to: JSONWriter.bytes(publication.data)) }
                return codec.deltaPublication(channel: channel, publication, delta: delta!).map { wire.frame($0, with: encoder) }
            }
        }
        counters.deliveries.add(delivered, ordering: .relaxed)
        if startedBatch { turn?.schedule(self, channel) }
        disconnectSlow(slow)
        if !behind.isEmpty {
            logger.notice("publications lost before reaching this node; subscribers resubscribe to recover",
                          metadata: ["channel": "\(channel)", "subscribers": "\(behind.count)"])
            for session in behind { session.serverUnsubscribe(channel: channel, reason: .insufficientState) }
        }
    }

    public func handlePublished(channel: String, publication: Publication, position: StreamPosition?) {
        guard let sink = config.publicationStream, let target = config.namespaces.options(for: channel)?.publicationStream else { return }
        let id = position.map { "\(channel)@\($0.epoch):\($0.offset)" } ?? nextEventID()
        sink.record(ChannelEvent(id: id, kind: .publication, channel: channel, time: publication.time, node: uid,
                                 publication: publication, position: position), to: target)
    }

    /// A client of this node joined or left: the stream event is recorded here, once, however
    /// many nodes deliver the join/leave push.
    func recordPresenceChange(_ kind: ChannelEvent.Kind, channel: String, info: ClientInfo, options: ChannelOptions) {
        guard let sink = config.publicationStream, let target = options.publicationStream else { return }
        sink.record(ChannelEvent(id: nextEventID(), kind: kind, channel: channel, time: Int64(clock.now() * 1000), node: uid,
                                 client: info), to: target)
    }

    private func nextEventID() -> String {
        "\(uid):\(eventSequence.add(1, ordering: .relaxed).newValue)"
    }

    public func handleStreamPositions(_ positions: [(channel: String, position: StreamPosition?)]) {
        var channels = 0
        var told = 0
        for (channel, position) in positions {
            let behind = subscribers.check(channel: channel, position: position)
            guard !behind.isEmpty else { continue }
            channels += 1
            told += behind.count
            for session in behind { session.serverUnsubscribe(channel: channel, reason: .insufficientState) }
        }
        // One line per reconnect, however many channels moved on.
        if told > 0 {
            logger.notice("streams moved on while the broker was away; subscribers resubscribe to recover",
                          metadata: ["channels": "\(channels)", "subscribers": "\(told)"])
        }
    }

    public func hasLocalSubscribers(channel: String) -> Bool {
        subscribers.subscriberCount(channel) > 0
    }

    /// Server API operations that concern every node arrive here through the broker.
    public func handleControl(_ command: JSONValue) {
        if let op = command["op"]?.stringValue, let handler = controlHandlers.withLock({ $0[op] }) {
            handler(command)
            return
        }
        guard let op = command["op"]?.stringValue, let user = command["user"]?.stringValue else { return }
        let client = command["client"]?.stringValue
        let targets = sessions(user: user, client: client)
        switch op {
        case "subscribe":
            guard let channel = command["channel"]?.stringValue else { return }
            for session in targets { session.serverSubscribe(channel: channel) }
        case "unsubscribe":
            guard let channel = command["channel"]?.stringValue else { return }
            for session in targets { session.serverUnsubscribe(channel: channel, reason: .server) }
        case "disconnect":
            let code = UInt16(clamping: command["code"]?.intValue ?? Int64(DisconnectReason.forceNoReconnect.code))
            let reason = DisconnectReason(code: code, reason: command["reason"]?.stringValue ?? DisconnectReason.forceNoReconnect.reason)
            for session in targets { session.disconnect(reason) }
        case "send":
            guard let data = command["data"] else { return }
            for session in targets { session.serverMessage(data) }
        case "refresh":
            if command["expired"]?.boolValue == true {
                for session in targets { session.disconnect(.expired) }
            } else {
                let expiresAt = command["expire_at"]?.doubleValue
                for session in targets { session.serverRefresh(expiresAt: expiresAt) }
            }
        default:
            break
        }
    }

    public func handleJoin(channel: String, info: ClientInfo) {
        let (_, slow, _, _) = subscribers.fanOut(channel: channel, publication: nil) { wire, _ in
            wire.frame(wire.codec.push(channel: channel, kind: "join", body: ["info": info.json]), with: encoder)
        }
        disconnectSlow(slow)
    }

    public func handleLeave(channel: String, info: ClientInfo) {
        let (_, slow, _, _) = subscribers.fanOut(channel: channel, publication: nil) { wire, _ in
            wire.frame(wire.codec.push(channel: channel, kind: "leave", body: ["info": info.json]), with: encoder)
        }
        disconnectSlow(slow)
    }

    /// The end of a turn that batched publications into this channel (`Turn`).
    func handOutBatch(channel: String) {
        disconnectSlow(subscribers.handOut(channel: channel))
    }

    private func disconnectSlow(_ sessions: [ClientSession]) {
        for session in sessions {
            counters.slowDisconnects.add(1, ordering: .relaxed)
            logger.info("disconnecting slow client", metadata: ["client": "\(session.id)", "user": "\(session.user)"])
            session.disconnect(.slow)
        }
    }

    // MARK: Operations shared by the client protocol and the server API

    public func options(for channel: String) throws(ProtocolError) -> ChannelOptions {
        if let problem = ChannelNamespaces.validate(channel) { throw ProtocolError.badRequest.with(message: problem) }
        guard let options = config.namespaces.options(for: channel) else { throw ProtocolError.unknownChannel }
        return options
    }

    /// Publishes into a channel. `skipHistory` (the publish proxy's `skip_history`) broadcasts
    /// without keeping the publication in history: it gets no offset.
    public func publish(channel: String, data: JSONValue, info: ClientInfo? = nil, tags: [(String, String)] = [],
                        skipHistory: Bool = false,
                        completion: @escaping @Sendable (Result<StreamPosition?, ProtocolError>) -> Void) {
        var options: ChannelOptions
        do { options = try self.options(for: channel) } catch { completion(.failure(error)); return }
        if skipHistory { options.historySize = 0 }
        counters.publications.add(1, ordering: .relaxed)
        let stored: JSONValue
        if case .raw = data { stored = data } else { stored = .raw(JSONWriter.bytes(data)) }
        broker.publish(channel: channel, publication: Publication(data: stored, info: info, tags: tags), options: options,
                       completion: completion)
    }

    public func history(channel: String, filter: HistoryFilter,
                        completion: @escaping @Sendable (Result<HistoryResult, ProtocolError>) -> Void) {
        let options: ChannelOptions
        do { options = try self.options(for: channel) } catch { completion(.failure(error)); return }
        broker.history(channel: channel, filter: filter, options: options, completion: completion)
    }

    public func removeHistory(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        do { _ = try options(for: channel) } catch { completion(.failure(error)); return }
        broker.removeHistory(channel: channel, completion: completion)
    }

    public func presence(channel: String, completion: @escaping @Sendable (Result<[ClientInfo], ProtocolError>) -> Void) {
        do throws(ProtocolError) {
            guard try options(for: channel).presence else { throw ProtocolError.notAvailable.with(message: "presence is not enabled for this channel") }
        } catch { completion(.failure(error)); return }
        presence.presence(channel: channel, completion: completion)
    }

    public func presenceStats(channel: String, completion: @escaping @Sendable (Result<PresenceStats, ProtocolError>) -> Void) {
        do throws(ProtocolError) {
            guard try options(for: channel).presence else { throw ProtocolError.notAvailable.with(message: "presence is not enabled for this channel") }
        } catch { completion(.failure(error)); return }
        presence.stats(channel: channel, completion: completion)
    }

    /// Subscribes a user's connections (or one client) on every node to a channel. The
    /// completion reports whether the command reached the broker (the server API answers
    /// with it: nothing is acknowledged that never left this node).
    public func serverSubscribe(user: String, client: String?, channel: String,
                                completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void = { _ in }) throws(ProtocolError) {
        _ = try options(for: channel)
        broker.publishControl(.compact([("op", "subscribe"), ("user", .string(user)), ("client", client.map { .string($0) }), ("channel", .string(channel))]),
                              completion: completion)
    }

    public func serverUnsubscribe(user: String, client: String?, channel: String,
                                  completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void = { _ in }) throws(ProtocolError) {
        _ = try options(for: channel)
        broker.publishControl(.compact([("op", "unsubscribe"), ("user", .string(user)), ("client", client.map { .string($0) }), ("channel", .string(channel))]),
                              completion: completion)
    }

    public func disconnect(user: String, client: String?, reason: DisconnectReason,
                           completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void = { _ in }) {
        broker.publishControl(.compact([("op", "disconnect"), ("user", .string(user)), ("client", client.map { .string($0) }),
                                        ("code", .int(Int64(reason.code))), ("reason", .string(reason.reason))]),
                              completion: completion)
    }

    /// Sends `data` as a `message` push to a user's connections (or one client) on every node.
    public func send(user: String, client: String?, data: JSONValue,
                     completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void = { _ in }) {
        broker.publishControl(.compact([("op", "send"), ("user", .string(user)), ("client", client.map { .string($0) }), ("data", data)]),
                              completion: completion)
    }

    /// Gives a user's connections (or one client) on every node a new expiry (`expireAt` nil:
    /// none), or ends them as expired.
    public func refresh(user: String, client: String?, expired: Bool, expireAt: Int64?,
                        completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void = { _ in }) {
        broker.publishControl(.compact([("op", "refresh"), ("user", .string(user)), ("client", client.map { .string($0) }),
                                        ("expired", expired ? .bool(true) : nil), ("expire_at", expireAt.map { .int($0) })]),
                              completion: completion)
    }

    /// This node's connected clients, all or one user's, keyed by client id.
    public func connections(user: String?) -> [(String, JSONValue)] {
        let listed = user.map { self.sessions(user: $0, client: nil) } ?? allSessions()
        return listed.filter { $0.isConnected }.map { ($0.id, $0.connectionJSON) }.sorted { $0.0 < $1.0 }
    }

    /// Channels with subscribers on this node matching a `*`-glob pattern (empty: all).
    public func channels(matching pattern: String) -> [(String, Int)] {
        subscribers.channels().filter { pattern.isEmpty || Glob.matches($0.0, pattern: pattern) }.sorted { $0.0 < $1.0 }
    }

    public func info() -> NodeInfo {
        let sessions = allSessions()
        let users = Set(sessions.map(\.user)).count
        let subs = sessions.reduce(0) { $0 + $1.subscriptionCount }
        return NodeInfo(uid: uid, name: config.nodeName, version: config.version, clients: sessions.count, users: users,
                        channels: subscribers.channelCount, subscriptions: subs, uptime: Int(clock.now() - startedAt))
    }

    /// Every live node (this one with fresh numbers), as the broker knows them.
    public func nodes(completion: @escaping @Sendable (Result<[NodeInfo], ProtocolError>) -> Void) {
        let own = info()
        broker.nodes { result in
            completion(result.map { others in [own] + others.filter { $0.uid != own.uid } })
        }
    }

    /// Tells the other nodes this one is alive; called every few seconds.
    public func announce() { broker.announce(node: info()) }

    /// Periodic work: pings, pong and token deadlines, expired streams.
    public func tick(sessions: some Collection<ClientSession>) {
        let now = clock.now()
        for session in sessions { session.tick(now: now) }
    }

    public func sweepStreams() { broker.sweep(now: clock.now()) }
}

/// `*` matches any run of characters; everything else matches itself.
enum Glob {
    static func matches(_ text: String, pattern: String) -> Bool {
        let t = Array(text.utf8), p = Array(pattern.utf8)
        var ti = 0, pi = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count, p[pi] == t[ti] { ti += 1; pi += 1 }
            else if pi < p.count, p[pi] == UInt8(ascii: "*") { star = pi; mark = ti; pi += 1 }
            else if star >= 0 { pi = star + 1; mark += 1; ti = mark }
            else { return false }
        }
        while pi < p.count, p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}
