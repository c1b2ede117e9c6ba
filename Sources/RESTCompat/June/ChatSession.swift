import Channels
import Dispatch
import Synchronization

/// One `/ws/{user_id}` connection speaking seed 003's chat format.
///
/// Underneath it is an ordinary engine client: the session drives a `ClientSession` with
/// protocol commands (connect with the user's token, subscribe to the user's conversation
/// channel) through a bridge transport, so presence, disconnect-user (a blocked user is
/// closed live), token expiry and the conversation channel's fan-out all work as for
/// Centrifuge clients. Publications on the conversation channel are rewritten into the
/// seed's `{type, content, conversation_id, timestamp}` (plus `role`); the session's own
/// messages are not echoed back to it, and its replies come straight from `submit`.
///
/// Proof of identity: `Authorization: Bearer <token>` or `?token=` at the upgrade, or a
/// first message `{"type": "auth", "token": "…"}`; the token's `sub` must be `user_id`.
/// Without a token only when anonymous chat is configured.
public final class ChatSession: Sendable {
    enum Phase: Equatable { case awaitingAuth, connecting, ready, closed }

    struct State {
        var phase = Phase.awaitingAuth
        var queued: [[UInt8]] = []
        var inFlight = 0
    }

    public let userID: String
    let chat: ChatService
    let outer: any ClientTransport
    let bridge: ChatBridge
    /// The engine client underneath; the edge ticks it like any other.
    public let clientSession: ClientSession
    private let state = Mutex(State())

    static let maxQueued = 16
    static let maxInFlight = 4

    /// `unframe` gets the JSON payload back out of a frame the engine's encoder made.
    public init(userID: String, chat: ChatService, transport: any ClientTransport, unframe: @escaping @Sendable (WireFrame) -> [UInt8]) {
        self.userID = userID
        self.chat = chat
        outer = transport
        bridge = ChatBridge(outer: transport, encoder: chat.node.encoder, unframe: unframe, channel: ChatService.channel(user: userID))
        clientSession = chat.node.accept(transport: bridge)
        bridge.owner = self
    }

    var node: Node { chat.node }

    /// Starts the session with the token presented at the upgrade, if any.
    public func start(token: String?) {
        guard JuneInput.isIdentifier(userID) else {
            outer.close(DisconnectReason(code: 1008, reason: "user id must be 1-64 letters, digits, _ . @ -"))
            return
        }
        if let token, !token.isEmpty {
            authenticate(token: token)
        } else if chat.allowAnonymous {
            guard let minted = chat.internalToken(user: userID) else {
                outer.close(DisconnectReason(code: 1011, reason: "anonymous chat needs a token HMAC secret"))
                return
            }
            authenticate(token: minted)
        }
        // Otherwise the first message must be {"type":"auth"}; the engine's connect timeout
        // closes the connection if it never comes.
    }

    private func authenticate(token: String) {
        let allowed = state.withLock { state -> Bool in
            guard state.phase == .awaitingAuth else { return false }
            state.phase = .connecting
            return true
        }
        guard allowed else { return }
        let claims: JSONValue
        do {
            claims = try node.config.tokens.verify(token, now: node.clock.now())
        } catch .expired {
            outer.close(DisconnectReason(code: 1008, reason: "token expired"))
            return
        } catch {
            outer.close(DisconnectReason(code: 1008, reason: "invalid token"))
            return
        }
        guard claims["sub"]?.stringValue == userID else {
            outer.close(DisconnectReason(code: 1008, reason: "token is not for this user"))
            return
        }
        chat.users.isActive(userID) { [self] active in
            switch active {
            case .failure:
                outer.close(DisconnectReason(code: 1011, reason: "user store unavailable"))
            case .success(false):
                outer.close(DisconnectReason(code: 1008, reason: "user blocked"))
            case .success(true):
                clientSession.handle(message: JSONWriter.bytes(["id": 1, "connect": ["token": .string(token)]]))
            }
        }
    }

    /// The engine answered a command of ours.
    func engineReply(id: Int64, error: JSONValue?) {
        if let error {
            outer.close(DisconnectReason(code: 1008, reason: error["message"]?.stringValue ?? "refused"))
            return
        }
        if id == 1 {
            clientSession.handle(message: JSONWriter.bytes(["id": 2, "subscribe": ["channel": .string(ChatService.channel(user: userID))]]))
        } else if id == 2 {
            let queued = state.withLock { state -> [[UInt8]] in
                state.phase = .ready
                defer { state.queued = [] }
                return state.queued
            }
            for message in queued { process(message) }
        }
    }

    /// A message from the client.
    public func handle(message: [UInt8]) {
        let phase = state.withLock { $0.phase }
        switch phase {
        case .closed:
            return
        case .awaitingAuth:
            let parsed = try? JSONParser.parse(message)
            guard parsed?["type"]?.stringValue == "auth", let token = parsed?["token"]?.stringValue else {
                outer.close(DisconnectReason(code: 1008, reason: "authentication required: send {\"type\":\"auth\",\"token\":\"…\"} first"))
                return
            }
            authenticate(token: token)
        case .connecting:
            enum Outcome { case queued, full, ready }
            let outcome = state.withLock { state -> Outcome in
                guard state.phase == .connecting else { return .ready }
                guard state.queued.count < Self.maxQueued else { return .full }
                state.queued.append(message)
                return .queued
            }
            switch outcome {
            case .queued: break
            case .full: sendError("Too many messages before the session is ready", conversation: nil)
            case .ready: handle(message: message)
            }
        case .ready:
            process(message)
        }
    }

    private func process(_ message: [UInt8]) {
        let input: ChatInput
        do throws(RouteError) {
            guard let parsed = try? JSONParser.parse(message) else { throw RouteError(400, "message must be a JSON object") }
            input = try ChatInput.parse(parsed)
        } catch {
            sendError(error.message, conversation: nil)
            return
        }
        let admitted = state.withLock { state -> Bool in
            guard state.inFlight < Self.maxInFlight else { return false }
            state.inFlight += 1
            return true
        }
        guard admitted else {
            sendError("Too many messages waiting for an answer", conversation: input.conversationID)
            return
        }
        let done: @Sendable () -> Void = { [self] in state.withLock { $0.inFlight -= 1 } }
        chat.admit(user: userID) { [self] decision in
            guard decision.allowed else {
                done()
                sendError("Rate limit exceeded", conversation: input.conversationID, extra: [("retry_after", .int(Int64(decision.retryAfter)))])
                return
            }
            chat.users.isActive(userID) { [self] active in
                guard case .success(true) = active else {
                    done()
                    outer.close(DisconnectReason(code: 1008, reason: "user blocked"))
                    return
                }
                chat.submit(user: userID, input, origin: clientSession.id) { [self] result in
                    done()
                    switch result {
                    case .success(let reply):
                        send(["type": .string(reply.type), "content": .string(reply.content), "conversation_id": .string(reply.conversationID),
                              "timestamp": .string(ISOTime.string(reply.timestamp)), "role": "assistant"])
                    case .failure(let error):
                        sendError(error.message, conversation: input.conversationID, extra: [("status", .int(Int64(error.status)))])
                    }
                }
            }
        }
    }

    func send(_ message: JSONValue) {
        if !outer.enqueue(node.encoder.frame(JSONWriter.bytes(message))) {
            clientSession.disconnect(.slow)
        }
    }

    private func sendError(_ message: String, conversation: String?, extra: [(String, JSONValue?)] = []) {
        send(.compact([
            ("type", "error"), ("content", .string(message)), ("conversation_id", conversation.map { .string($0) } ?? ""),
            ("timestamp", .string(ISOTime.string(node.clock.now()))),
        ] + extra))
    }

    /// The connection closed: the engine forgets the client.
    public func closed() {
        state.withLock { $0.phase = .closed; $0.queued = [] }
        clientSession.closed()
    }
}

/// The transport the engine client writes to: protocol frames in, seed-format frames out.
final class ChatBridge: ClientTransport, @unchecked Sendable {
    let outer: any ClientTransport
    let encoder: any FrameEncoder
    let unframe: @Sendable (WireFrame) -> [UInt8]
    let channel: String
    /// Set once right after init, before the engine can write.
    weak var owner: ChatSession?

    init(outer: any ClientTransport, encoder: any FrameEncoder, unframe: @escaping @Sendable (WireFrame) -> [UInt8], channel: String) {
        self.outer = outer
        self.encoder = encoder
        self.unframe = unframe
        self.channel = channel
    }

    var remoteAddress: String { outer.remoteAddress }

    func close(_ reason: DisconnectReason) { outer.close(reason) }

    /// Called by the engine, possibly under its fan-out lock: only translate and queue here;
    /// anything that calls back into the engine goes to another queue.
    func enqueue(_ frame: WireFrame) -> Bool {
        let payload = unframe(frame)
        var start = 0
        // The engine may batch several messages in one frame, newline-separated.
        while start < payload.count {
            var end = start
            while end < payload.count, payload[end] != 0x0A { end += 1 }
            if end > start, !translate(Array(payload[start..<end])) { return false }
            start = end + 1
        }
        return true
    }

    private func translate(_ bytes: [UInt8]) -> Bool {
        guard let message = try? JSONParser.parse(bytes), let owner else { return true }
        if message.objectValue?.isEmpty == true {
            // The engine's ping: answer for the seed client, which knows nothing of it.
            let session = owner.clientSession
            DispatchQueue.global().async { session.handle(message: Array("{}".utf8)) }
            return true
        }
        if let id = message["id"]?.intValue {
            let error = message["error"]
            DispatchQueue.global().async { owner.engineReply(id: id, error: error) }
            return true
        }
        guard let push = message["push"], push["channel"]?.stringValue == channel, let data = push["pub"]?["data"] else { return true }
        let ownID = owner.clientSession.id
        // Our own side arrives through `submit`, not the channel.
        if data["origin"]?.stringValue == ownID || data["reply_to"]?.stringValue == ownID { return true }
        let seed: JSONValue = .compact([
            ("type", data["type"]), ("content", data["content"]), ("conversation_id", data["conversation_id"]),
            ("timestamp", data["timestamp"]), ("role", data["role"]),
        ])
        return outer.enqueue(encoder.frame(JSONWriter.bytes(seed)))
    }
}
