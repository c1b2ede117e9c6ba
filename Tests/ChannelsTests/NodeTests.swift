import Synchronization
import XCTest
@testable import Channels

/// Frames are the JSON messages themselves here; the WebSocket header is the edge's business.
struct PlainEncoder: FrameEncoder {
    func frame(_ payload: [UInt8]) -> WireFrame { WireFrame(bytes: payload) }
}

/// The engine's view of a socket, recording what the client would receive.
final class RecordingTransport: ClientTransport, @unchecked Sendable {
    let frames = Mutex<[WireFrame]>([])
    let closedWith = Mutex<DisconnectReason?>(nil)
    let capacity: Int
    let remoteAddress = "test"

    init(capacity: Int = .max) { self.capacity = capacity }

    func enqueue(_ frame: WireFrame) -> Bool {
        frames.withLock { list in
            guard list.count < capacity else { return false }
            list.append(frame)
            return true
        }
    }

    func close(_ reason: DisconnectReason) { closedWith.withLock { if $0 == nil { $0 = reason } } }

    var messages: [JSONValue] { frames.withLock { $0.map { try! JSONParser.parse($0.bytes) } } }
    func reply(_ id: Int64) -> JSONValue? { messages.first { $0["id"]?.intValue == id } }
    var pushes: [JSONValue] { messages.compactMap { $0["push"] } }
    var publications: [JSONValue] { pushes.compactMap { $0["pub"] } }
}

final class ManualClock: Clock, @unchecked Sendable {
    let time = Mutex<Double>(1_000_000)
    func now() -> Double { time.withLock { $0 } }
    func advance(_ seconds: Double) { time.withLock { $0 += seconds } }
}

/// A memory broker whose history answers only when the test says so: the window in which
/// a subscriber is pending, made wide open.
final class DeferredHistoryBroker: Broker, @unchecked Sendable {
    let inner: MemoryBroker
    let held = Mutex<[@Sendable () -> Void]>([])
    init(clock: any Clock) { inner = MemoryBroker(clock: clock) }
    func setEventHandler(_ handler: any BrokerEventHandler) { inner.setEventHandler(handler) }
    func publish(channel: String, publication: Publication, options: ChannelOptions, completion: @escaping @Sendable (Result<StreamPosition?, ProtocolError>) -> Void) {
        inner.publish(channel: channel, publication: publication, options: options, completion: completion)
    }
    func publishJoin(channel: String, info: ClientInfo) { inner.publishJoin(channel: channel, info: info) }
    func publishLeave(channel: String, info: ClientInfo) { inner.publishLeave(channel: channel, info: info) }
    func history(channel: String, filter: HistoryFilter, options: ChannelOptions, completion: @escaping @Sendable (Result<HistoryResult, ProtocolError>) -> Void) {
        let inner = self.inner
        // Read now, answer later: publications made meanwhile are not in this answer.
        let answer = Mutex<Result<HistoryResult, ProtocolError>?>(nil)
        inner.history(channel: channel, filter: filter, options: options) { result in answer.withLock { $0 = result } }
        let result = answer.withLock { $0! }
        held.withLock { $0.append { completion(result) } }
    }
    func releaseHistory() { for answer in held.withLock({ list -> [@Sendable () -> Void] in defer { list = [] }; return list }) { answer() } }
    func removeHistory(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) { inner.removeHistory(channel: channel, completion: completion) }
    func subscribe(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) { completion(.success(())) }
    func unsubscribe(channel: String) {}
    func sweep(now: Double) {}
    func publishControl(_ command: JSONValue, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) {
        inner.publishControl(command, completion: completion)
    }
    func announce(node: NodeInfo) {}
    func nodes(completion: @escaping @Sendable (Result<[NodeInfo], ProtocolError>) -> Void) { completion(.success([])) }
}

final class NodeTests: XCTestCase {
    let secret = "test-secret"
    var clock = ManualClock()

    func makeNode(broker: (any Broker)? = nil, configure: (inout EngineConfig) -> Void = { _ in }) -> Node {
        var config = EngineConfig()
        var options = ChannelOptions()
        options.presence = true
        options.historySize = 10
        options.historyTTL = 60
        var chat = ChannelOptions()
        chat.joinLeave = true
        chat.presence = true
        chat.allowPublishForSubscriber = true
        config.namespaces = ChannelNamespaces(defaultOptions: options, namespaces: ["chat": chat])
        config.tokens = TokenVerifier(hmacSecret: secret)
        configure(&config)
        return Node(config: config, broker: broker ?? MemoryBroker(clock: clock), presence: MemoryPresenceStore(),
                    encoder: PlainEncoder(), clock: clock)
    }

    func token(_ user: String, _ extra: [(String, JSONValue)] = []) -> String {
        TokenSigner.hs256(claims: .object([("sub", .string(user)), ("exp", .int(Int64(clock.now()) + 3600))] + extra), secret: secret)
    }

    func connect(_ node: Node, user: String, transport: RecordingTransport = RecordingTransport(), extra: [(String, JSONValue)] = []) -> (ClientSession, RecordingTransport) {
        let session = node.accept(transport: transport)
        session.handle(message: JSONWriter.bytes(["id": 1, "connect": ["token": .string(token(user, extra))]]))
        XCTAssertNotNil(transport.reply(1)?["connect"]?["client"], "connect failed: \(transport.messages)")
        return (session, transport)
    }

    func send(_ session: ClientSession, _ command: JSONValue) { session.handle(message: JSONWriter.bytes(command)) }

    func publish(_ node: Node, _ channel: String, _ data: JSONValue) {
        node.publish(channel: channel, data: data) { result in
            if case .failure(let error) = result { XCTFail("publish failed: \(error)") }
        }
    }

    func testOnePublicationIsEncodedOnceAndSharedByEverySubscriber() {
        let node = makeNode()
        let clients = (0..<3).map { connect(node, user: "u\($0)") }
        for (session, transport) in clients {
            send(session, ["id": 2, "subscribe": ["channel": "news"]])
            XCTAssertEqual(transport.reply(2)?["subscribe"]?["epoch"]?.stringValue?.isEmpty, false)
        }
        publish(node, "news", ["text": "hello"])
        let frames = clients.map { $0.1.frames.withLock { $0.last! } }
        let addresses = frames.map { $0.bytes.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) } }
        XCTAssertEqual(Set(addresses).count, 1, "every subscriber got the same buffer")
        XCTAssertEqual(clients[0].1.publications.first?["data"], ["text": "hello"])
        XCTAssertEqual(clients[0].1.publications.first?["offset"], 1)
    }

    func testReconnectingClientRecoversExactlyWhatItMissed() {
        let node = makeNode()
        let (first, firstTransport) = connect(node, user: "alice")
        send(first, ["id": 2, "subscribe": ["channel": "news"]])
        publish(node, "news", ["n": 1])
        let epoch = firstTransport.reply(2)!["subscribe"]!["epoch"]!
        first.disconnect(.connectionClosed)
        publish(node, "news", ["n": 2])
        publish(node, "news", ["n": 3])

        let (second, transport) = connect(node, user: "alice")
        send(second, ["id": 2, "subscribe": ["channel": "news", "recover": true, "offset": 1, "epoch": epoch]])
        let result = transport.reply(2)!["subscribe"]!
        XCTAssertEqual(result["recovered"], true)
        XCTAssertEqual(result["publications"]?.arrayValue?.map { $0["offset"]! }, [2, 3])
        XCTAssertEqual(result["offset"], 3)

        let (third, other) = connect(node, user: "alice")
        send(third, ["id": 2, "subscribe": ["channel": "news", "recover": true, "offset": 1, "epoch": "stale"]])
        XCTAssertNil(other.reply(2)!["subscribe"]!["recovered"], "another epoch is never reported recovered")
        XCTAssertNil(other.reply(2)!["subscribe"]!["publications"])
    }

    func testPublicationsDuringASlowSubscribeFollowTheReplyWithoutGapOrDuplicate() {
        let broker = DeferredHistoryBroker(clock: clock)
        let node = makeNode(broker: broker)
        publish(node, "news", ["n": 1])
        let epoch = Mutex<String>("")
        broker.inner.history(channel: "news", filter: HistoryFilter(limit: 0), options: node.config.namespaces.defaultOptions) { result in
            epoch.withLock { $0 = (try? result.get().position.epoch) ?? "" }
        }
        let (session, transport) = connect(node, user: "bob")
        send(session, ["id": 2, "subscribe": ["channel": "news", "recover": true, "offset": 0, "epoch": .string(epoch.withLock { $0 })]])
        send(session, ["id": 3, "subscribe": ["channel": "fresh"]])
        // History was read at offset 1; these land while the subscriber is pending.
        publish(node, "news", ["n": 2])
        publish(node, "fresh", ["n": 1])
        XCTAssertNil(transport.reply(2))
        XCTAssertTrue(transport.publications.isEmpty, "nothing overtakes the subscribe reply")
        broker.releaseHistory()
        let messages = transport.messages
        let replyIndex = messages.firstIndex { $0["id"]?.intValue == 2 }!
        let pushIndex = messages.firstIndex { $0["push"]?["channel"] == "news" }!
        XCTAssertLessThan(replyIndex, pushIndex)
        XCTAssertEqual(messages[replyIndex]["subscribe"]?["offset"], 1)
        XCTAssertEqual(messages[replyIndex]["subscribe"]?["recovered"], true)
        XCTAssertEqual(messages[replyIndex]["subscribe"]?["publications"]?.arrayValue?.map { $0["offset"]! }, [1])
        XCTAssertEqual(transport.pushes.filter { $0["channel"] == "news" }.map { $0["pub"]!["offset"]! }, [2])
        XCTAssertEqual(transport.pushes.filter { $0["channel"] == "fresh" }.count, 1)
        publish(node, "news", ["n": 3])
        XCTAssertEqual(transport.pushes.filter { $0["channel"] == "news" }.map { $0["pub"]!["offset"]! }, [2, 3])
    }

    func testUserLimitedChannelsAdmitOnlyTheirUsers() {
        let node = makeNode()
        let (alice, a) = connect(node, user: "alice")
        let (eve, e) = connect(node, user: "eve")
        send(alice, ["id": 2, "subscribe": ["channel": "chat:room#alice,bob"]])
        send(eve, ["id": 2, "subscribe": ["channel": "chat:room#alice,bob"]])
        XCTAssertNotNil(a.reply(2)?["subscribe"])
        XCTAssertEqual(e.reply(2)?["error"]?["code"], 103)
    }

    func testSubscriptionTokenGrantsPrivateChannelAndCarriesChannelInfo() {
        let node = makeNode { config in
            var secret = ChannelOptions()
            secret.allowSubscribeForClient = false
            secret.presence = true
            config.namespaces.namespaces["private"] = secret
        }
        let (session, transport) = connect(node, user: "alice")
        send(session, ["id": 2, "subscribe": ["channel": "private:x"]])
        XCTAssertEqual(transport.reply(2)?["error"]?["code"], 103)
        let wrongUser = TokenSigner.hs256(claims: ["sub": "bob", "channel": "private:x"], secret: secret)
        send(session, ["id": 3, "subscribe": ["channel": "private:x", "token": .string(wrongUser)]])
        XCTAssertEqual(transport.reply(3)?["error"]?["code"], 103)
        let good = TokenSigner.hs256(claims: ["sub": "alice", "channel": "private:x", "info": ["role": "lead"]], secret: secret)
        send(session, ["id": 4, "subscribe": ["channel": "private:x", "token": .string(good)]])
        XCTAssertNotNil(transport.reply(4)?["subscribe"])
        send(session, ["id": 5, "presence": ["channel": "private:x"]])
        let entry = transport.reply(5)?["presence"]?["presence"]?.objectValue?.first?.1
        XCTAssertEqual(entry?["chan_info"], ["role": "lead"])
    }

    func testJoinLeaveAndPresenceFollowSubscriptions() {
        let node = makeNode()
        let (alice, a) = connect(node, user: "alice")
        let (bob, _) = connect(node, user: "bob")
        send(alice, ["id": 2, "subscribe": ["channel": "chat:lobby"]])
        send(bob, ["id": 2, "subscribe": ["channel": "chat:lobby"]])
        XCTAssertEqual(a.pushes.last?["join"]?["info"]?["user"], "bob")
        send(alice, ["id": 3, "presence_stats": ["channel": "chat:lobby"]])
        XCTAssertEqual(a.reply(3)?["presence_stats"]?["num_clients"], 2)
        bob.closed()
        XCTAssertEqual(a.pushes.last?["leave"]?["info"]?["user"], "bob")
        send(alice, ["id": 4, "presence_stats": ["channel": "chat:lobby"]])
        XCTAssertEqual(a.reply(4)?["presence_stats"]?["num_clients"], 1)
    }

    func testPublishPermissionsFollowTheNamespace() {
        let node = makeNode()
        let (session, transport) = connect(node, user: "alice")
        send(session, ["id": 2, "publish": ["channel": "news", "data": ["x": 1]]])
        XCTAssertEqual(transport.reply(2)?["error"]?["code"], 103, "default namespace: clients do not publish")
        send(session, ["id": 3, "publish": ["channel": "chat:lobby", "data": ["x": 1]]])
        XCTAssertEqual(transport.reply(3)?["error"]?["code"], 103, "chat: subscribers only")
        send(session, ["id": 4, "subscribe": ["channel": "chat:lobby"]])
        send(session, ["id": 5, "publish": ["channel": "chat:lobby", "data": ["x": 1]]])
        XCTAssertNotNil(transport.reply(5)?["publish"])
        XCTAssertEqual(transport.publications.last?["info"]?["user"], "alice")
        send(session, ["id": 6, "subscribe": ["channel": "nowhere:x"]])
        XCTAssertEqual(transport.reply(6)?["error"]?["code"], 102)
    }

    func testBadCommandsGetErrorsAndTheSessionKeepsWorking() {
        let node = makeNode()
        let session = node.accept(transport: RecordingTransport())
        let transport = session.transport as! RecordingTransport
        session.handle(message: Array("{nope".utf8))
        XCTAssertEqual(transport.messages.last?["error"]?["code"], 107)
        send(session, ["id": 1, "subscribe": ["channel": "news"]])
        XCTAssertEqual(transport.reply(1)?["error"]?["code"], 101, "connect comes first")
        session.handle(message: JSONWriter.bytes(["id": 2, "connect": ["token": .string(token("a"))]]) + [0x0A] + JSONWriter.bytes(["id": 3, "frobnicate": [:]]))
        XCTAssertNotNil(transport.reply(2)?["connect"])
        XCTAssertEqual(transport.reply(3)?["error"]?["code"], 104)
        send(session, ["id": 4, "subscribe": [:]])
        XCTAssertEqual(transport.reply(4)?["error"]?["code"], 107)
        send(session, ["id": 5, "subscribe": ["channel": "news"]])
        send(session, ["id": 6, "subscribe": ["channel": "news"]])
        XCTAssertEqual(transport.reply(6)?["error"]?["code"], 105)
    }

    func testTokensAreCheckedOnConnect() {
        let node = makeNode()
        let expired = node.accept(transport: RecordingTransport())
        send(expired, ["id": 1, "connect": ["token": .string(TokenSigner.hs256(claims: ["sub": "a", "exp": 10], secret: secret))]])
        XCTAssertEqual((expired.transport as! RecordingTransport).reply(1)?["error"]?["code"], 109)
        let forged = node.accept(transport: RecordingTransport())
        send(forged, ["id": 1, "connect": ["token": .string(TokenSigner.hs256(claims: ["sub": "a"], secret: "wrong"))]])
        XCTAssertEqual((forged.transport as! RecordingTransport).closedWith.withLock { $0 }, .invalidToken)
        let anonymous = node.accept(transport: RecordingTransport())
        send(anonymous, ["id": 1, "connect": [:]])
        XCTAssertEqual((anonymous.transport as! RecordingTransport).reply(1)?["error"]?["code"], 101)
    }

    func testSlowSubscriberIsCutOffWhileOthersKeepReceiving() {
        let node = makeNode()
        let (slow, slowTransport) = connect(node, user: "slow", transport: RecordingTransport(capacity: 5))
        let (_, fast) = connect(node, user: "fast")
        send(slow, ["id": 2, "subscribe": ["channel": "news"]])
        send(node.sessions(user: "fast", client: nil)[0], ["id": 2, "subscribe": ["channel": "news"]])
        for i in 0..<20 { publish(node, "news", ["i": .int(Int64(i))]) }
        XCTAssertEqual(slowTransport.closedWith.withLock { $0 }, .slow)
        XCTAssertEqual(fast.publications.count, 20)
        XCTAssertEqual(node.subscribers.subscriberCount("news"), 1)
        XCTAssertEqual(node.counters.slowDisconnects.load(ordering: .relaxed), 1)
    }

    func testPingsPongsAndDeadlines() {
        let node = makeNode { $0.pingInterval = 10; $0.pongTimeout = 5; $0.connectTimeout = 3 }
        let idle = node.accept(transport: RecordingTransport())
        let (session, transport) = connect(node, user: "p")
        clock.advance(4)
        node.tick(sessions: [idle, session])
        XCTAssertEqual((idle.transport as! RecordingTransport).closedWith.withLock { $0 }, .stale)
        clock.advance(7)
        node.tick(sessions: [session])
        XCTAssertEqual(transport.messages.last, [:], "server ping is an empty object")
        session.handle(message: Array("{}".utf8))  // pong
        clock.advance(10)
        node.tick(sessions: [session])
        XCTAssertNil(transport.closedWith.withLock { $0 })
        clock.advance(6)  // no pong for the second ping
        node.tick(sessions: [session])
        XCTAssertEqual(transport.closedWith.withLock { $0 }, .noPong)
    }

    func testExpiredConnectionIsClosedUnlessRefreshed() {
        let node = makeNode()
        let session = node.accept(transport: RecordingTransport())
        let transport = session.transport as! RecordingTransport
        send(session, ["id": 1, "connect": ["token": .string(TokenSigner.hs256(claims: ["sub": "r", "exp": .int(Int64(clock.now()) + 5)], secret: secret))]])
        XCTAssertEqual(transport.reply(1)?["connect"]?["ttl"], 5)
        send(session, ["id": 2, "refresh": ["token": .string(TokenSigner.hs256(claims: ["sub": "r", "exp": .int(Int64(clock.now()) + 60)], secret: secret))]])
        XCTAssertEqual(transport.reply(2)?["refresh"]?["ttl"], 60)
        clock.advance(10)
        node.tick(sessions: [session])
        XCTAssertNil(transport.closedWith.withLock { $0 })
        clock.advance(60)
        node.tick(sessions: [session])
        XCTAssertEqual(transport.closedWith.withLock { $0 }, .expired)
    }

    func testServerSideSubscriptionsFromTokenRecoverThroughConnect() {
        let node = makeNode()
        let (first, t1) = connect(node, user: "w", extra: [("channels", ["news"])])
        let epoch = t1.reply(1)!["connect"]!["subs"]!["news"]!["epoch"]!
        publish(node, "news", ["n": 1])
        XCTAssertEqual(t1.publications.count, 1)
        first.disconnect(.connectionClosed)
        publish(node, "news", ["n": 2])
        let transport = RecordingTransport()
        let second = node.accept(transport: transport)
        send(second, ["id": 1, "connect": ["token": .string(token("w", [("channels", ["news"])])),
                                           "subs": ["news": ["recover": true, "offset": 1, "epoch": epoch]]]])
        let sub = transport.reply(1)!["connect"]!["subs"]!["news"]!
        XCTAssertEqual(sub["recovered"], true)
        XCTAssertEqual(sub["publications"]?.arrayValue?.map { $0["data"]! }, [["n": 2]])
    }

    func testServerAPIStyleOperationsReachLiveSessions() throws {
        let node = makeNode()
        let (_, transport) = connect(node, user: "target")
        XCTAssertNoThrow(try node.serverSubscribe(user: "target", client: nil, channel: "news"))
        XCTAssertEqual(transport.pushes.last?["subscribe"]?["positioned"], true)
        publish(node, "news", ["x": 1])
        XCTAssertEqual(transport.publications.count, 1)
        XCTAssertNoThrow(try node.serverUnsubscribe(user: "target", client: nil, channel: "news"))
        XCTAssertEqual(transport.pushes.last?["unsubscribe"]?["code"], 2000)
        XCTAssertEqual(node.channels(matching: "n*").count, 0)
        node.disconnect(user: "target", client: nil, reason: .forceNoReconnect)
        XCTAssertEqual(transport.closedWith.withLock { $0 }, .forceNoReconnect)
        XCTAssertEqual(node.clientCount, 0)
    }

    func testLostPublicationsMakeLiveSubscribersResubscribe() {
        let node = makeNode()
        let (session, transport) = connect(node, user: "g")
        send(session, ["id": 2, "subscribe": ["channel": "news"]])
        let epoch = transport.reply(2)!["subscribe"]!["epoch"]!.stringValue!
        node.handlePublication(channel: "news", publication: Publication(offset: 1, data: 1), position: StreamPosition(offset: 1, epoch: epoch))
        // Offset 2 never arrives (a broker lost it): 3 must not be delivered as if nothing happened.
        node.handlePublication(channel: "news", publication: Publication(offset: 3, data: 3), position: StreamPosition(offset: 3, epoch: epoch))
        XCTAssertEqual(transport.publications.map { $0["offset"]! }, [1])
        XCTAssertEqual(transport.pushes.last?["unsubscribe"]?["code"], 2500, "insufficient state: the SDK resubscribes and recovers")
        XCTAssertEqual(node.subscribers.subscriberCount("news"), 0)
    }

    func testGlob() {
        XCTAssertTrue(Glob.matches("chat:room", pattern: "chat:*"))
        XCTAssertTrue(Glob.matches("abc", pattern: "*"))
        XCTAssertFalse(Glob.matches("news", pattern: "chat:*"))
        XCTAssertTrue(Glob.matches("a-b-c", pattern: "a*c"))
    }
}
