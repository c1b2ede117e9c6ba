import Synchronization
import XCTest
@testable import Channels

/// Messages end with a newline here, so a batch frame (several messages) can be split again.
struct LineEncoder: FrameEncoder {
    func frame(_ payload: [UInt8]) -> WireFrame { WireFrame(bytes: payload + [0x0A]) }
}

/// A transport that writes frames as they are (as a WebSocket connection does), with a limit
/// in messages like --client-queue-max-messages.
final class BatchTransport: ClientTransport, @unchecked Sendable {
    let frames = Mutex<[WireFrame]>([])
    let closedWith = Mutex<DisconnectReason?>(nil)
    let maxMessages: Int
    let remoteAddress = "test"
    var takesBatches: Bool { true }

    init(maxMessages: Int = .max) { self.maxMessages = maxMessages }

    func enqueue(_ frame: WireFrame) -> Bool {
        frames.withLock { list in
            guard list.reduce(0, { $0 + $1.messages }) + frame.messages <= maxMessages else { return false }
            list.append(frame)
            return true
        }
    }

    func close(_ reason: DisconnectReason) { closedWith.withLock { if $0 == nil { $0 = reason } } }

    var messages: [JSONValue] {
        frames.withLock { frames in
            frames.flatMap { $0.bytes.split(separator: 0x0A).map { try! JSONParser.parse(Array($0)) } }
        }
    }
    /// What the client saw, in order: "pub:<i>", "join:<user>", "reply:<id>".
    var seen: [String] {
        messages.map { message in
            if let id = message["id"]?.intValue { return "reply:\(id)" }
            if let i = message["push"]?["pub"]?["data"]?["i"]?.intValue { return "pub:\(i)" }
            if let user = message["push"]?["join"]?["info"]?["user"]?.stringValue { return "join:\(user)" }
            return "other"
        }
    }
}

/// Publications fanned out inside a service loop's turn: each subscriber gets the turn's
/// publications of a channel as one frame when the turn ends, in order, and nothing that
/// happened before it subscribed.
final class TurnTests: XCTestCase {
    let secret = "test-secret"
    let clock = ManualClock()

    override func tearDown() {
        Turn.leave()
        super.tearDown()
    }

    func makeNode() -> Node {
        var config = EngineConfig()
        var chat = ChannelOptions()
        chat.joinLeave = true
        chat.historySize = 100
        chat.historyTTL = 60
        config.namespaces = ChannelNamespaces(defaultOptions: ChannelOptions(), namespaces: ["chat": chat])
        config.tokens = TokenVerifier(hmacSecret: secret)
        return Node(config: config, broker: MemoryBroker(clock: clock), presence: MemoryPresenceStore(),
                    encoder: LineEncoder(), clock: clock)
    }

    /// A session on `transport` that connected as `user` (command 1) and subscribed to `channel` (command 2).
    func subscribedSession(_ node: Node, _ user: String, _ channel: String, transport: any ClientTransport) -> ClientSession {
        let session = node.accept(transport: transport)
        let token = TokenSigner.hs256(claims: .object([("sub", .string(user)), ("exp", .int(Int64(clock.now()) + 3600))]), secret: secret)
        session.handle(message: JSONWriter.bytes(["id": 1, "connect": ["token": .string(token)]]))
        session.handle(message: JSONWriter.bytes(["id": 2, "subscribe": ["channel": .string(channel)]]))
        return session
    }

    func subscriber(_ node: Node, _ user: String, _ channel: String, transport: BatchTransport = BatchTransport()) -> BatchTransport {
        _ = subscribedSession(node, user, channel, transport: transport)
        XCTAssertEqual(Array(transport.seen.prefix(2)), ["reply:1", "reply:2"])
        return transport
    }

    func publish(_ node: Node, _ channel: String, _ i: Int) {
        node.publish(channel: channel, data: ["i": .int(Int64(i))]) { result in
            if case .failure(let error) = result { XCTFail("publish failed: \(error)") }
        }
    }

    func testATurnsPublicationsReachEachSubscriberAsOneSharedFrameWhenTheTurnEnds() {
        let node = makeNode()
        let a = subscriber(node, "a", "news")
        let b = subscriber(node, "b", "news")
        Turn.adopt()
        for i in 0..<5 { publish(node, "news", i) }
        XCTAssertEqual(a.frames.withLock { $0.count }, 2, "nothing goes out before the turn ends")
        Turn.end()
        XCTAssertEqual(a.seen, ["reply:1", "reply:2", "pub:0", "pub:1", "pub:2", "pub:3", "pub:4"])
        XCTAssertEqual(b.seen, a.seen)
        let frames = [a, b].map { $0.frames.withLock { $0.last! } }
        XCTAssertEqual(frames[0].messages, 5)
        let addresses = frames.map { $0.bytes.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) } }
        XCTAssertEqual(addresses[0], addresses[1], "one buffer for every subscriber")
        XCTAssertEqual(node.counters.deliveries.load(ordering: .relaxed), 10)
        // The next turn starts a new batch.
        publish(node, "news", 5)
        Turn.end()
        XCTAssertEqual(a.seen.last, "pub:5")
        XCTAssertEqual(a.frames.withLock { $0.count }, 4)
    }

    func testAJoinAndANewSubscriberHandTheBatchOutFirst() {
        let node = makeNode()
        let a = subscriber(node, "a", "chat:room")
        Turn.adopt()
        publish(node, "chat:room", 0)
        publish(node, "chat:room", 1)
        // Subscribing mid-turn: what was batched before goes to a alone, before the join push.
        let c = subscriber(node, "c", "chat:room")
        publish(node, "chat:room", 2)
        Turn.end()
        XCTAssertEqual(a.seen, ["reply:1", "reply:2", "join:a", "pub:0", "pub:1", "join:c", "pub:2"])
        XCTAssertEqual(c.seen.filter { $0.hasPrefix("pub") }, ["pub:2"], "nothing from before it subscribed")
    }

    func testASubscriberOverItsMessageLimitIsCutOffAtTheEndOfTheTurn() {
        let node = makeNode()
        let slow = subscriber(node, "slow", "news", transport: BatchTransport(maxMessages: 10))
        let fast = subscriber(node, "fast", "news")
        Turn.adopt()
        for i in 0..<20 { publish(node, "news", i) }
        Turn.end()
        XCTAssertEqual(slow.closedWith.withLock { $0 }, .slow)
        XCTAssertEqual(fast.seen.filter { $0.hasPrefix("pub") }.count, 20)
        XCTAssertEqual(node.subscribers.subscriberCount("news"), 1)
    }

    func testAfterSubscribersLeaveTheBatchReachesExactlyThoseLeftAndCutsOffTheRightSlowOne() {
        let node = makeNode()
        let leaving = BatchTransport()
        let leavingSession = subscribedSession(node, "l", "news", transport: leaving)
        let stays = subscriber(node, "b", "news")
        // The last subscriber takes the leaving one's place in the channel's list.
        let slow = subscriber(node, "slow", "news", transport: BatchTransport(maxMessages: 4))
        leavingSession.handle(message: JSONWriter.bytes(["id": 3, "unsubscribe": ["channel": "news"]]))
        XCTAssertEqual(node.subscribers.subscriberCount("news"), 2)
        Turn.adopt()
        for i in 0..<3 { publish(node, "news", i) }
        Turn.end()
        XCTAssertEqual(leaving.seen, ["reply:1", "reply:2", "reply:3"], "nothing after it left")
        XCTAssertEqual(stays.seen.filter { $0.hasPrefix("pub") }, ["pub:0", "pub:1", "pub:2"])
        XCTAssertNil(stays.closedWith.withLock { $0 })
        XCTAssertEqual(slow.closedWith.withLock { $0 }, .slow, "the over-limit subscriber, not the one in its old place")
        XCTAssertEqual(node.subscribers.subscriberCount("news"), 1)
    }

    func testATransportThatUnwrapsFramesGetsOneMessagePerFrameEvenInATurn() {
        let node = makeNode()
        let plain = RecordingTransport()
        _ = subscribedSession(node, "p", "news", transport: plain)
        let batching = subscriber(node, "b", "news")
        Turn.adopt()
        for i in 0..<3 { publish(node, "news", i) }
        XCTAssertEqual(plain.frames.withLock { $0.count }, 5, "delivered at once, one frame each")
        Turn.end()
        XCTAssertEqual(batching.seen.filter { $0.hasPrefix("pub") }, ["pub:0", "pub:1", "pub:2"])
        XCTAssertEqual(batching.frames.withLock { $0.count }, 5, "no batch while one subscriber cannot take it")
    }
}
