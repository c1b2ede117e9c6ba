import Dispatch
import Synchronization
import XCTest
@testable import Channels

/// What a backend's publication stream would receive, recorded in the order the engine hands it over.
final class RecordingSink: ChannelEventSink {
    let events = Mutex<[(ChannelEvent, PublicationStreamTarget)]>([])
    func record(_ event: ChannelEvent, to target: PublicationStreamTarget) { events.withLock { $0.append((event, target)) } }
    var recorded: [ChannelEvent] { events.withLock { $0.map(\.0) } }
}

final class PublicationStreamTests: XCTestCase {
    let secret = "test-secret"
    let clock = ManualClock()
    let archive = PublicationStreamTarget.webhook(url: "http://127.0.0.1:3000/events")

    func makeNode(sink: RecordingSink) -> Node {
        var config = EngineConfig()
        var orders = ChannelOptions()
        orders.historySize = 10_000
        orders.historyTTL = 600
        orders.publicationStream = archive
        var quiet = ChannelOptions()
        quiet.historySize = 10
        quiet.historyTTL = 600
        config.namespaces = ChannelNamespaces(defaultOptions: quiet, namespaces: ["orders": orders])
        config.tokens = TokenVerifier(hmacSecret: secret)
        config.publicationStream = sink
        return Node(config: config, broker: MemoryBroker(clock: clock), presence: MemoryPresenceStore(), encoder: PlainEncoder(), clock: clock)
    }

    func testConcurrentPublishersStreamAChannelInOffsetOrderEachOnce() {
        let sink = RecordingSink()
        let node = makeNode(sink: sink)
        DispatchQueue.concurrentPerform(iterations: 4) { publisher in
            for n in 0..<250 { node.publish(channel: "orders:eu", data: ["by": .int(Int64(publisher)), "n": .int(Int64(n))]) { _ in } }
        }
        node.publish(channel: "news", data: ["not": "streamed"]) { _ in }
        let events = sink.recorded
        XCTAssertEqual(events.map(\.position?.offset), (1...1000).map { UInt64($0) }, "offset order, no gap, no repeat")
        let epoch = events[0].position!.epoch
        XCTAssertEqual(events.map(\.id), (1...1000).map { "orders:eu@\(epoch):\($0)" })
        XCTAssertTrue(events.allSatisfy { $0.kind == .publication && $0.channel == "orders:eu" && $0.node == node.uid })
        XCTAssertEqual(events[0].json["offset"], 1)
        XCTAssertEqual(events[0].json["type"], "publication")
    }

    func testJoinAndLeaveOfALocalClientAreStreamedOnceWithItsInfo() {
        let sink = RecordingSink()
        let node = makeNode(sink: sink)
        let transport = RecordingTransport()
        let session = node.accept(transport: transport)
        let token = TokenSigner.hs256(claims: ["sub": "alice", "exp": .int(Int64(clock.now()) + 3600)], secret: secret)
        session.handle(message: JSONWriter.bytes(["id": 1, "connect": ["token": .string(token)]]))
        session.handle(message: JSONWriter.bytes(["id": 2, "subscribe": ["channel": "orders:eu"]]))
        session.handle(message: JSONWriter.bytes(["id": 3, "subscribe": ["channel": "news"]]))
        node.publish(channel: "orders:eu", data: ["total": 12]) { _ in }
        session.handle(message: JSONWriter.bytes(["id": 4, "unsubscribe": ["channel": "orders:eu"]]))
        let events = sink.recorded
        XCTAssertEqual(events.map(\.kind), [.join, .publication, .leave])
        XCTAssertEqual(events[0].client?.user, "alice")
        XCTAssertEqual(events[0].client?.client, session.id)
        XCTAssertEqual(events[2].json["info"]?["user"], "alice")
        XCTAssertNotEqual(events[0].id, events[2].id)
        XCTAssertTrue(events[0].id.hasPrefix(node.uid + ":"))
    }

    func testAPublicationSkippingHistoryIsBroadcastAndStreamedWithoutAnOffset() {
        let sink = RecordingSink()
        let node = makeNode(sink: sink)
        node.publish(channel: "orders:eu", data: ["kept": true]) { _ in }
        node.publish(channel: "orders:eu", data: ["typing": true], skipHistory: true) { result in
            XCTAssertEqual(try? result.get(), .some(nil), "no stream position")
        }
        let history = Mutex<[Publication]>([])
        node.history(channel: "orders:eu", filter: HistoryFilter(limit: 10)) { result in history.withLock { $0 = (try? result.get())?.publications ?? [] } }
        XCTAssertEqual(history.withLock { $0.map(\.data) }, [.raw(JSONWriter.bytes(["kept": true]))])
        let skipped = sink.recorded[1]
        XCTAssertNil(skipped.position)
        XCTAssertNil(skipped.json["offset"])
        XCTAssertTrue(skipped.id.hasPrefix(node.uid + ":"))
    }
}
