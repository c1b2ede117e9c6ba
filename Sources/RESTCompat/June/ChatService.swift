import Channels
import Store
import Synchronization

/// One chat message as the seed's `/chat` and `/ws/{user_id}` take it.
public struct ChatInput: Sendable, Equatable {
    public var type: String
    public var content: String
    public var conversationID: String?

    /// Largest `content`: base64 of a few minutes of 16 kHz audio, or a long text.
    public static let maxContent = 8 * 1024 * 1024

    /// Validates a parsed body; the message says what is wrong, in the seed's terms.
    public static func parse(_ body: JSONValue) throws(RouteError) -> ChatInput {
        guard body.objectValue != nil else { throw RouteError(400, "message must be a JSON object") }
        guard let type = try JuneInput.string(body, "type") else { throw RouteError(400, "type is required (text or audio)") }
        guard type == "text" || type == "audio" else { throw RouteError(400, "type must be text or audio") }
        guard let content = try JuneInput.string(body, "content"), !content.isEmpty else { throw RouteError(400, "content is required") }
        guard content.utf8.count <= maxContent else { throw RouteError(400, "content is longer than \(maxContent) bytes") }
        let conversation = try JuneInput.string(body, "conversation_id")
        if let conversation, !JuneInput.isIdentifier(conversation) {
            throw RouteError(400, "conversation_id must be 1-64 letters, digits, _ . @ -")
        }
        return ChatInput(type: type, content: content, conversationID: conversation)
    }
}

/// What the admin's live settings change in chat (applied on every node when they change):
/// `maintenance_mode` (system config) and `enabled` (bot config) refuse messages with 503;
/// the bot config's `max_file_size` caps audio messages (bytes after base64 decoding).
public final class ChatPolicy: Sendable {
    struct Rules: Sendable {
        var maintenance = false
        var botEnabled = true
        var maxFileSize = 10 * 1024 * 1024
    }

    private let rules = Mutex(Rules())
    /// Answers `/<command>` messages without the agent (see `BotCommands`).
    let commands: Mutex<(@Sendable (String, @escaping @Sendable (String?) -> Void) -> Void)?> = Mutex(nil)

    public init() {}

    public func apply(config: JSONValue) {
        rules.withLock { $0.maintenance = config["maintenance_mode"]?.boolValue ?? false }
    }

    public func apply(bot: JSONValue) {
        rules.withLock {
            $0.botEnabled = bot["enabled"]?.boolValue ?? true
            $0.maxFileSize = Int(bot["max_file_size"]?.intValue ?? Int64(10 * 1024 * 1024))
        }
    }

    public func answerCommands(with reply: @escaping @Sendable (String, @escaping @Sendable (String?) -> Void) -> Void) {
        commands.withLock { $0 = reply }
    }

    func refusal(for input: ChatInput) -> RouteError? {
        let rules = rules.withLock { $0 }
        if rules.maintenance { return RouteError(503, "The service is in maintenance mode") }
        if !rules.botEnabled { return RouteError(503, "The bot is disabled") }
        if input.type == "audio", input.content.utf8.count / 4 * 3 > rules.maxFileSize + 2 {
            return RouteError(413, "Audio is larger than max_file_size (\(rules.maxFileSize) bytes)")
        }
        return nil
    }

    func command(_ text: String, completion: @escaping @Sendable (String?) -> Void) {
        guard let reply = commands.withLock({ $0 }) else { completion(nil); return }
        reply(text, completion)
    }
}

/// The agent's answer, in the seed's response shape.
public struct ChatReply: Sendable, Equatable {
    public var type: String
    public var content: String
    public var conversationID: String
    public var timestamp: Double

    public var restJSON: JSONValue { ["type": .string(type), "content": .string(content), "conversation_id": .string(conversationID)] }
}

/// Chat as channel operations. A user's message is published on the user's conversation
/// channel `chat:<user_id>#<user_id>` (only that user may subscribe), handed to an agent
/// worker as a request on `service:agent`, and the reply is published back on the same
/// channel: every tab and every Centrifuge client of the user sees both sides. Audio goes
/// through `service:stt` first and `service:tts` after. Conversations and messages are
/// kept in the store for analytics:
///   `june:conv:<user_id>:<conversation_id>` → {user_id, conversation_id, created_at, updated_at, message_count, recent}
///   `june:msg:<user_id>:<conversation_id>:<ms since epoch, 13 digits>-<seq>` → {message_id, role, type, content, created_at, response_time}
public final class ChatService: Sendable {
    public let node: Node
    let store: any RecordStore
    let services: ServiceDesk
    let cache: ServiceCache
    public let users: UserDirectory
    let limiter: any RateLimiter
    let chatLimits: [RateLimit]
    /// Signs the internal connection token of an anonymous legacy `/ws` session.
    let signer: (@Sendable (String) -> String?)?
    public let allowAnonymous: Bool
    public let policy = ChatPolicy()
    /// Earlier turns sent to the agent with each message.
    static let historyTurns = 20

    public init(node: Node, store: any RecordStore, services: ServiceDesk, cache: ServiceCache, users: UserDirectory,
                limiter: any RateLimiter, chatLimits: [RateLimit], allowAnonymous: Bool, signer: (@Sendable (String) -> String?)?) {
        self.node = node
        self.store = store
        self.services = services
        self.cache = cache
        self.users = users
        self.limiter = limiter
        self.chatLimits = chatLimits
        self.allowAnonymous = allowAnonymous
        self.signer = signer
    }

    public static func channel(user: String) -> String { "chat:\(user)#\(user)" }

    /// Counts a message against the user's `june-chat` limit, shared with `POST /chat`
    /// (same key as the router uses for a JWT caller).
    func admit(user: String, completion: @escaping @Sendable (RateDecision) -> Void) {
        guard !chatLimits.isEmpty else {
            completion(RateDecision(allowed: true, limit: 0, remaining: 0, reset: 0, retryAfter: 0))
            return
        }
        limiter.hit(key: "june-chat|user:" + user, limits: chatLimits, now: node.clock.now(), completion: completion)
    }

    func internalToken(user: String) -> String? { signer?(user) }

    /// Handles one user message end to end. `origin` names the sending session so it can
    /// skip its own echo on the channel.
    public func submit(user: String, _ input: ChatInput, origin: String, completion: @escaping @Sendable (Result<ChatReply, RouteError>) -> Void) {
        guard JuneInput.isIdentifier(user) else {
            completion(.failure(RouteError(400, "user id must be 1-64 letters, digits, _ . @ -")))
            return
        }
        if let refusal = policy.refusal(for: input) {
            completion(.failure(refusal))
            return
        }
        let conversation = input.conversationID ?? RandomID.uuid()
        let started = node.clock.now()
        let fail: @Sendable (RouteError) -> Void = { completion(.failure($0)) }
        // 1. What the user said, as text (audio is transcribed first).
        userText(input) { [self] heard in
            switch heard {
            case .failure(let error): fail(error)
            case .success(let text):
                let said = ChatRecord(role: "user", type: input.type, content: text, conversationID: conversation, at: started)
                record(user: user, said, origin: origin, replyTo: nil) { [self] conversationRecord in
                    guard let conversationRecord else { fail(RouteError(503, "Conversation store unavailable")); return }
                    // 2. The agent answers, with the conversation so far (a bot command answers itself).
                    let history = conversationRecord["recent"]?.arrayValue ?? []
                    askAgent(text: input.type == "text" ? text : nil, payload: [
                        "user_id": .string(user), "conversation_id": .string(conversation), "type": .string(input.type),
                        "content": .string(text), "history": .array(Array(history.dropLast())),
                    ]) { [self] answered in
                        switch answered {
                        case .failure(let failure): fail(failure.routeError)
                        case .success(let result):
                            guard let answer = result["content"]?.stringValue ?? result["text"]?.stringValue else {
                                fail(RouteError(502, "The agent worker answered without content"))
                                return
                            }
                            // 3. Spoken back when the user spoke.
                            speak(answer, if: input.type == "audio") { [self] spoken in
                                switch spoken {
                                case .failure(let error): fail(error)
                                case .success(let audio):
                                    let now = node.clock.now()
                                    let reply = ChatReply(type: audio == nil ? "text" : "audio", content: audio ?? answer,
                                                          conversationID: conversation, timestamp: now)
                                    var said = ChatRecord(role: "assistant", type: reply.type, content: answer, conversationID: conversation, at: now)
                                    said.responseTime = now - started
                                    said.published = reply.content
                                    record(user: user, said, origin: origin, replyTo: origin) { _ in
                                        completion(.success(reply))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    private func askAgent(text: String?, payload: JSONValue, completion: @escaping @Sendable (Result<JSONValue, ServiceFailure>) -> Void) {
        guard let text else { services.request("agent", payload: payload, completion: completion); return }
        policy.command(text) { [services] answer in
            if let answer { completion(.success(["content": .string(answer)])) } else { services.request("agent", payload: payload, completion: completion) }
        }
    }

    private func userText(_ input: ChatInput, completion: @escaping @Sendable (Result<String, RouteError>) -> Void) {
        guard input.type == "audio" else { completion(.success(input.content)); return }
        guard let audio = Base64.decode(input.content), !audio.isEmpty else {
            completion(.failure(RouteError(400, "audio content must be base64-encoded audio")))
            return
        }
        transcribe(audio: audio, language: nil) { result in
            completion(result.flatMap { value in
                guard let text = value["transcript"]?.stringValue else { return .failure(RouteError(502, "The transcription worker answered without a transcript")) }
                return .success(text)
            })
        }
    }

    /// `service:stt`, cached by audio bytes (and language).
    public func transcribe(audio: [UInt8], language: String?, completion: @escaping @Sendable (Result<JSONValue, RouteError>) -> Void) {
        let key = ServiceCache.key("stt", [audio, Array((language ?? "").utf8)])
        services.cachedRequest("stt", cache: cache, key: key, payload: .compact([
            ("audio_b64", .string(Base64.encode(audio))), ("language", language.map { .string($0) }),
        ]), usable: { $0["transcript"]?.stringValue != nil }) { completion($0.mapError(\.routeError)) }
    }

    /// `service:tts`, cached by text, language and voice.
    public func synthesize(text: String, language: String, voice: String, completion: @escaping @Sendable (Result<JSONValue, RouteError>) -> Void) {
        let key = ServiceCache.key("tts", [Array(text.utf8), Array(language.utf8), Array(voice.utf8)])
        services.cachedRequest("tts", cache: cache, key: key, payload: [
            "text": .string(text), "language": .string(language), "voice_id": .string(voice),
        ], usable: { $0["audio_b64"]?.stringValue != nil }) { completion($0.mapError(\.routeError)) }
    }

    /// `service:llm`, cached by prompt.
    public func generate(prompt: String, completion: @escaping @Sendable (Result<JSONValue, RouteError>) -> Void) {
        let key = ServiceCache.key("llm", [Array(prompt.utf8)])
        services.cachedRequest("llm", cache: cache, key: key, payload: ["prompt": .string(prompt)],
                               usable: { $0["text"]?.stringValue != nil }) { completion($0.mapError(\.routeError)) }
    }

    private func speak(_ text: String, if wanted: Bool, completion: @escaping @Sendable (Result<String?, RouteError>) -> Void) {
        guard wanted else { completion(.success(nil)); return }
        synthesize(text: text, language: "en", voice: "default") { result in
            completion(result.flatMap { value in
                guard let audio = value["audio_b64"]?.stringValue else { return .failure(RouteError(502, "The TTS worker answered without audio")) }
                return .success(audio)
            })
        }
    }

    struct ChatRecord: Sendable {
        var role: String
        var type: String
        var content: String
        var conversationID: String
        var at: Double
        var responseTime: Double?
        /// What goes on the channel when it differs from the stored content (audio).
        var published: String?
    }

    private static let messageSeq = Mutex<UInt64>(0)

    /// Stores the message (and the conversation's summary), then publishes it. Completes
    /// with the conversation record, or nil when the store failed (nothing published then).
    private func record(user: String, _ message: ChatRecord, origin: String, replyTo: String?,
                        completion: @escaping @Sendable (JSONValue?) -> Void) {
        let convKey = "june:conv:\(user):\(message.conversationID)"
        let millis = String(UInt64(message.at * 1000))
        let seq = Self.messageSeq.withLock { value -> UInt64 in value &+= 1; return value }
        let messageID = RandomID.uuid()
        let stored: JSONValue = .compact([
            ("message_id", .string(messageID)), ("user_id", .string(user)), ("conversation_id", .string(message.conversationID)),
            ("role", .string(message.role)), ("type", .string(message.type)), ("content", .string(message.content)),
            ("created_at", .string(ISOTime.string(message.at))), ("response_time", message.responseTime.map { .double($0) }),
        ])
        let messageKey = "june:msg:\(user):\(message.conversationID):" + String(repeating: "0", count: max(0, 13 - millis.count)) + millis + "-\(seq)"
        store.put(messageKey, value: JSONWriter.bytes(stored)) { [self] put in
            guard case .success = put else { completion(nil); return }
            store.get(convKey) { [self] got in
                let existing = (try? got.get())?.flatMap { try? JSONParser.parse($0) }
                var recent = existing?["recent"]?.arrayValue ?? []
                recent.append(["role": .string(message.role), "content": .string(message.content)])
                if recent.count > Self.historyTurns { recent.removeFirst(recent.count - Self.historyTurns) }
                let conversation: JSONValue = [
                    "user_id": .string(user), "conversation_id": .string(message.conversationID),
                    "created_at": existing?["created_at"] ?? .string(ISOTime.string(message.at)),
                    "updated_at": .string(ISOTime.string(message.at)),
                    "message_count": .int((existing?["message_count"]?.intValue ?? 0) + 1),
                    "recent": .array(recent),
                ]
                store.put(convKey, value: JSONWriter.bytes(conversation)) { [self] _ in
                    if existing == nil {
                        AdminEvents(node: node).publish(AdminEvents.conversations, event: "conversation_created", [
                            ("conversation_id", .string(message.conversationID)), ("user_id", .string(user)),
                            ("created_at", conversation["created_at"]),
                        ])
                    }
                    node.publish(channel: Self.channel(user: user), data: .compact([
                        ("type", .string(message.type)), ("content", .string(message.published ?? message.content)),
                        ("conversation_id", .string(message.conversationID)), ("timestamp", .string(ISOTime.string(message.at))),
                        ("role", .string(message.role)), ("message_id", .string(messageID)), ("origin", .string(origin)),
                        ("reply_to", replyTo.map { .string($0) }), ("response_time", message.responseTime.map { .double($0) }),
                    ])) { _ in }
                    completion(conversation)
                }
            }
        }
    }
}
