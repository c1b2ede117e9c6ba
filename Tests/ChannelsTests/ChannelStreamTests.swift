import XCTest
@testable import Channels

final class ChannelStreamTests: XCTestCase {
    private func pub(_ n: Int) -> Publication { Publication(data: .int(Int64(n))) }

    func testOffsetsIncreaseByOneAndHistoryKeepsTheNewestUpToSize() throws {
        var stream = ChannelStream(epoch: "e1", capacity: 3, ttl: 60, now: 0)
        for i in 1...5 { XCTAssertEqual(stream.append(pub(i), now: Double(i)).offset, UInt64(i)) }
        let all = try stream.history(HistoryFilter(limit: nil))
        XCTAssertEqual(all.publications.map(\.offset), [3, 4, 5])
        XCTAssertEqual(all.position, StreamPosition(offset: 5, epoch: "e1"))
        XCTAssertEqual(try stream.history(HistoryFilter(limit: 2)).publications.map(\.offset), [3, 4])
        XCTAssertEqual(try stream.history(HistoryFilter(limit: 2, reverse: true)).publications.map(\.offset), [5, 4])
        XCTAssertEqual(try stream.history(HistoryFilter(limit: 0)).publications, [])
    }

    func testHistoryTrimsByAge() throws {
        var stream = ChannelStream(epoch: "e", capacity: 10, ttl: 10, now: 0)
        _ = stream.append(pub(1), now: 0)
        _ = stream.append(pub(2), now: 5)
        _ = stream.append(pub(3), now: 9)
        stream.trim(now: 12)
        XCTAssertEqual(try stream.history(HistoryFilter()).publications.map(\.offset), [2, 3])
        stream.trim(now: 100)
        XCTAssertTrue(stream.isEmpty)
        // Offsets never go back after trimming.
        XCTAssertEqual(stream.append(pub(4), now: 100).offset, 4)
        XCTAssertEqual(try stream.history(HistoryFilter()).publications.map(\.offset), [4])
    }

    func testSinceReturnsOnlyLaterPublicationsAndRefusesLostPositions() throws {
        var stream = ChannelStream(epoch: "e", capacity: 3, ttl: 60, now: 0)
        for i in 1...5 { _ = stream.append(pub(i), now: 0) }
        XCTAssertEqual(try stream.history(HistoryFilter(since: StreamPosition(offset: 3, epoch: "e"))).publications.map(\.offset), [4, 5])
        XCTAssertEqual(try stream.history(HistoryFilter(since: StreamPosition(offset: 2, epoch: "e"))).publications.map(\.offset), [3, 4, 5])
        XCTAssertEqual(try stream.history(HistoryFilter(since: StreamPosition(offset: 5, epoch: "e"))).publications, [])
        XCTAssertEqual(try stream.history(HistoryFilter(since: StreamPosition(offset: 5, epoch: "e"), reverse: true)).publications.map(\.offset), [4, 3])
        XCTAssertThrowsError(try stream.history(HistoryFilter(since: StreamPosition(offset: 1, epoch: "e")))) {
            XCTAssertEqual($0 as? ProtocolError, .unrecoverablePosition)
        }
        XCTAssertThrowsError(try stream.history(HistoryFilter(since: StreamPosition(offset: 4, epoch: "other"))))
        XCTAssertThrowsError(try stream.history(HistoryFilter(since: StreamPosition(offset: 9, epoch: "e"))))
    }

    func testRecoveryIsExactOrRefused() throws {
        var stream = ChannelStream(epoch: "e", capacity: 5, ttl: 60, now: 0)
        for i in 1...7 { _ = stream.append(pub(i), now: 0) }
        func recover(_ offset: UInt64, _ epoch: String, max: Int = 100) -> Recovery {
            let history = (try? stream.history(HistoryFilter(limit: max + 1, since: StreamPosition(offset: offset, epoch: epoch))))
                ?? HistoryResult(publications: [], position: stream.position)
            return Recovery.decide(history: history, clientOffset: offset, clientEpoch: epoch, maxPublications: max)
        }
        XCTAssertEqual(recover(4, "e"), Recovery(recovered: true, publications: try stream.history(HistoryFilter(since: StreamPosition(offset: 4, epoch: "e"))).publications))
        XCTAssertEqual(recover(4, "e").publications.map(\.offset), [5, 6, 7])
        XCTAssertEqual(recover(7, "e"), Recovery(recovered: true, publications: []))
        XCTAssertFalse(recover(1, "e").recovered, "offset 2 was trimmed: a gap")
        XCTAssertFalse(recover(4, "old").recovered, "another epoch")
        XCTAssertFalse(recover(8, "e").recovered, "ahead of the stream")
        XCTAssertFalse(recover(3, "e", max: 2).recovered, "more missed than the recovery limit")
    }
}
