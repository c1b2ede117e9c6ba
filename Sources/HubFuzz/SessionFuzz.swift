import Channels
import Logging
import Synchronization

/// A whole client connection: a real `ClientSession` on a `Node` with the memory broker and
/// presence, connected with a valid token, then fed the input as one WebSocket message.
///
/// Properties: every frame the hub sends is one JSON object; a reply only ever carries an id a
/// command of the message (or the connect) had; once the connection closes the node holds no
/// session for it; streams expire as time moves on, so memory stays bounded over a long run.
enum SessionFuzz {
    static let secret = "fuzz-secret"

    final class FuzzClock: Clock {
        let time = Mutex<Double>(1_700_000_000)
        func now() -> Double { time.withLock { $0 } }
        func advance(_ seconds: Double) { time.withLock { $0 += seconds } }
    }

    final class Transport: ClientTransport {
        let frames = Mutex<[[UInt8]]>([])
        let remoteAddress = "fuzz"
        func enqueue(_ frame: WireFrame) -> Bool {
            frames.withLock { list in
                guard list.count < 10_000 else { return false }  // then the engine disconnects as slow
                list.append(frame.bytes)
                return true
            }
        }
        func close(_ reason: DisconnectReason) {}
    }

    struct PlainFrames: FrameEncoder {
        func frame(_ payload: [UInt8]) -> WireFrame { WireFrame(bytes: payload) }
    }

    static let clock = FuzzClock()
    static let runs = Atomic<Int>(0)
    static let node: Node = {
        var config = EngineConfig()
        var options = ChannelOptions()
        options.presence = true
        options.historySize = 5
        options.historyTTL = 60
        options.historyMetaTTL = 600
        var chat = options
        chat.joinLeave = true
        chat.allowPublishForSubscriber = true
        chat.allowPresenceForSubscriber = true
        chat.allowHistoryForSubscriber = true
        config.namespaces = ChannelNamespaces(defaultOptions: options, namespaces: ["chat": chat])
        config.tokens = TokenVerifier(hmacSecret: secret)
        var quiet = Logger(label: "hub-fuzz")
        quiet.logLevel = .critical  // refused tokens are logged at info: millions of lines otherwise
        return Node(config: config, broker: MemoryBroker(clock: clock), presence: MemoryPresenceStore(), encoder: PlainFrames(),
                    clock: clock, logger: quiet)
    }()

    static func check(_ message: [UInt8]) {
        let transport = Transport()
        let session = node.accept(transport: transport)
        let token = TokenSigner.hs256(claims: ["sub": "fuzzer", "exp": .int(Int64(clock.now()) + 3600)], secret: secret)
        session.handle(message: JSONWriter.bytes(["id": 1, "connect": ["token": .string(token)]]))
        session.handle(message: message)
        var ids: Set<Int64> = [1]
        for line in ClientCommand.lines(of: message) {
            switch ClientCommand.decode(line) {
            case .command(let command): if let id = command.id { ids.insert(id) }
            case .invalid(let id?, _): ids.insert(id)
            default: break
            }
        }
        for frame in transport.frames.withLock({ $0 }) {
            guard let value = try? JSONParser.parse(frame), value.objectValue != nil else {
                invariant(false, "the hub sent a frame that is not a JSON object: \(String(decoding: frame, as: UTF8.self))")
                return
            }
            if let id = value["id"]?.intValue { invariant(ids.contains(id), "reply to id \(id), which no command had") }
        }
        session.closed()
        invariant(node.clientCount == 0, "\(node.clientCount) sessions outlive their connection")
        // Time moves on and old streams go, as the hub's ticker does: memory stays bounded.
        clock.advance(10)
        if runs.add(1, ordering: .relaxed).newValue % 64 == 0 { node.sweepStreams() }
    }
}
