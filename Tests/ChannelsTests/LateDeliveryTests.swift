import Synchronization
import XCTest
@testable import Channels

/// A memory broker whose deliveries to the node can be held back, the way a publication on a
/// Redis PUB/SUB connection can arrive after the history read (on another connection) that
/// already counted it.
final class LateDeliveryBroker: Broker, BrokerEventHandler, @unchecked Sendable {
    let inner: MemoryBroker
    private let node = Mutex<(any BrokerEventHandler)?>(nil)
    private let held = Mutex<[(String, Publication, StreamPosition?)]?>(nil)

    init(clock: any Clock) {
        inner = MemoryBroker(clock: clock)
        inner.setEventHandler(self)
    }

    func hold() { held.withLock { $0 = [] } }
    func release() {
        let due = held.withLock { list -> [(String, Publication, StreamPosition?)] in defer { list = nil }; return list ?? [] }
        for (channel, publication, position) in due { handler.handlePublication(channel: channel, publication: publication, position: position) }
    }

    private var handler: any BrokerEventHandler { node.withLock { $0! } }

    // Broker
    func setEventHandler(_ handler: any BrokerEventHandler) { node.withLock { $0 = handler } }
    func publish(channel: String, publication: Publication, options: ChannelOptions, completion: @escaping @Sendable (Result<StreamPosition?, ProtocolError>) -> Void) {
        inner.publish(channel: channel, publication: publication, options: options, completion: completion)
    }
    func publishJoin(channel: String, info: ClientInfo) {}
    func publishLeave(channel: String, info: ClientInfo) {}
    func history(channel: String, filter: HistoryFilter, options: ChannelOptions, completion: @escaping @Sendable (Result<HistoryResult, ProtocolError>) -> Void) {
        inner.history(channel: channel, filter: filter, options: options, completion: completion)
    }
    func removeHistory(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) { inner.removeHistory(channel: channel, completion: completion) }
    func subscribe(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) { completion(.success(())) }
    func unsubscribe(channel: String) {}
    func publishControl(_ command: JSONValue, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void) { completion(.success(())) }
    func announce(node: NodeInfo) {}
    func nodes(completion: @escaping @Sendable (Result<[NodeInfo], ProtocolError>) -> Void) { completion(.success([])) }
    func sweep(now: Double) {}

    // BrokerEventHandler: what the memory broker delivers, held or passed on.
    func handlePublication(channel: String, publication: Publication, position: StreamPosition?) {
        let passOn = held.withLock { list -> Bool in
            guard list != nil else { return true }
            list!.append((channel, publication, position))
            return false
        }
        if passOn { handler.handlePublication(channel: channel, publication: publication, position: position) }
    }
    func handleJoin(channel: String, info: ClientInfo) {}
    func handleLeave(channel: String, info: ClientInfo) {}
    func handleControl(_ command: JSONValue) {}
    func hasLocalSubscribers(channel: String) -> Bool { handler.hasLocalSubscribers(channel: channel) }
    func handleStreamPositions(_ positions: [(channel: String, position: StreamPosition?)]) { handler.handleStreamPositions(positions) }
}

final class LateDeliveryTests: XCTestCase {
    let secret = "test-secret"
    let clock = ManualClock()

    func makeNode(broker: (any Broker)? = nil) -> Node {
        var config = EngineConfig()
        var options = ChannelOptions()
        options.historySize = 10
        options.historyTTL = 60
        config.namespaces = ChannelNamespaces(defaultOptions: options)
        config.tokens = TokenVerifier(hmacSecret: secret)
        return Node(config: config, broker: broker ?? MemoryBroker(clock: clock), presence: MemoryPresenceStore(),
                    encoder: PlainEncoder(), clock: clock)
    }

    func connect(_ node: Node, user: String) -> (ClientSession, RecordingTransport) {
        let transport = RecordingTransport()
        let session = node.accept(transport: transport)
        let token = TokenSigner.hs256(claims: ["sub": .string(user), "exp": .int(Int64(clock.now()) + 3600)], secret: secret)
        session.handle(message: JSONWriter.bytes(["id": 1, "connect": ["token": .string(token)]]))
        XCTAssertNotNil(transport.reply(1)?["connect"]?["client"], "connect failed: \(transport.messages)")
        return (session, transport)
    }

    func send(_ session: ClientSession, _ command: JSONValue) { session.handle(message: JSONWriter.bytes(command)) }

    func publish(_ node: Node, _ channel: String, _ data: JSONValue) {
        node.publish(channel: channel, data: data) { result in
            if case .failure(let error) = result { XCTFail("publish failed: \(error)") }
        }
    }

    func testPublicationCountedInTheSubscribeReplyIsNotDeliveredAgainWhenItArrivesLate() {
        let broker = LateDeliveryBroker(clock: clock)
        let node = makeNode(broker: broker)
        let (carol, carolSees) = connect(node, user: "carol")
        send(carol, ["id": 2, "subscribe": ["channel": "news"]])
        XCTAssertNotNil(carolSees.reply(2)?["subscribe"])

        broker.hold()
        publish(node, "news", ["n": 1])  // in history now, not yet delivered to this node
        let (alice, aliceSees) = connect(node, user: "alice")
        send(alice, ["id": 2, "subscribe": ["channel": "news"]])
        XCTAssertEqual(aliceSees.reply(2)?["subscribe"]?["offset"], 1, "the reply counts publication 1")
        broker.release()

        XCTAssertEqual(carolSees.publications.map { $0["offset"]! }, [1])
        XCTAssertEqual(aliceSees.publications.map { $0["offset"]! }, [], "alice was told offset 1 already")
        publish(node, "news", ["n": 2])
        XCTAssertEqual(carolSees.publications.map { $0["offset"]! }, [1, 2])
        XCTAssertEqual(aliceSees.publications.map { $0["offset"]! }, [2])
        XCTAssertTrue(aliceSees.pushes.allSatisfy { $0["unsubscribe"] == nil })
    }

    func testStreamThatMovedOnWhileTheBrokerWasAwayMakesSubscribersRecover() {
        let node = makeNode()
        let clients = ["news", "quiet", "lost"].map { channel -> RecordingTransport in
            let (session, transport) = connect(node, user: "u-\(channel)")
            send(session, ["id": 2, "subscribe": ["channel": .string(channel)]])
            return transport
        }
        publish(node, "news", ["n": 1])
        publish(node, "quiet", ["n": 1])
        let epoch = { (client: RecordingTransport) in client.reply(2)!["subscribe"]!["epoch"]!.stringValue! }
        node.handleStreamPositions([
            ("news", StreamPosition(offset: 3, epoch: epoch(clients[0]))),  // two published meanwhile
            ("quiet", StreamPosition(offset: 1, epoch: epoch(clients[1]))),  // nothing missed
            ("lost", nil),  // Redis lost the stream
        ])
        XCTAssertEqual(clients[0].pushes.compactMap { $0["unsubscribe"]?["code"] }, [2500])
        XCTAssertEqual(clients[1].pushes.compactMap { $0["unsubscribe"]?["code"] }, [])
        XCTAssertEqual(clients[2].pushes.compactMap { $0["unsubscribe"]?["code"] }, [2500])
    }

    func testStreamThatLostItsLastEntriesMakesSubscribersResubscribe() {
        let node = makeNode()
        let (carol, carolSees) = connect(node, user: "carol")
        send(carol, ["id": 2, "subscribe": ["channel": "news"]])
        let epoch = carolSees.reply(2)!["subscribe"]!["epoch"]!.stringValue!
        for n in 1...3 { publish(node, "news", ["n": .int(Int64(n))]) }
        XCTAssertEqual(carolSees.publications.map { $0["offset"]! }, [1, 2, 3])

        // The new primary had only offset 1: its next publications are 2 and 3 again.
        node.handleStreamPositions([("news", StreamPosition(offset: 1, epoch: epoch))])
        XCTAssertEqual(carolSees.pushes.compactMap { $0["unsubscribe"]?["code"] }, [2500],
                       "offsets 2 and 3 she holds are gone from the stream: she must resubscribe")
        node.handlePublication(channel: "news", publication: Publication(offset: 2, data: ["n": 20]),
                               position: StreamPosition(offset: 2, epoch: epoch))
        XCTAssertEqual(carolSees.publications.count, 3, "a reused offset never reaches her as if it were new")
    }
}
