/// A channel's history: a bounded ring of publications with consecutive offsets, trimmed by
/// size and by age, under one epoch.
///
/// Pure value type — time is passed in — so offsets, trimming and recovery are unit-tested
/// without sockets or clocks.
public struct ChannelStream: Sendable {
    public let epoch: String
    /// Offset of the newest publication ever appended (0 before the first).
    public private(set) var top: UInt64 = 0
    /// When the last publication was appended, in seconds.
    public private(set) var lastAppend: Double
    private var ring: [Publication?]
    private var times: [Double]
    private var head = 0  // index of the oldest kept publication
    private var count = 0

    public let capacity: Int
    public let ttl: Double

    public init(epoch: String, capacity: Int, ttl: Double, now: Double) {
        precondition(capacity > 0)
        self.epoch = epoch
        self.capacity = capacity
        self.ttl = ttl
        self.lastAppend = now
        ring = []
        times = []
    }

    public var position: StreamPosition { StreamPosition(offset: top, epoch: epoch) }
    public var isEmpty: Bool { count == 0 }
    public var kept: Int { count }

    /// Adds a publication, giving it the next offset. Returns it with the offset set.
    public mutating func append(_ publication: Publication, now: Double) -> Publication {
        var publication = publication
        top += 1
        publication.offset = top
        lastAppend = now
        if ring.count < capacity {
            ring.append(publication)
            times.append(now)
            count += 1
        } else if count < capacity {
            let slot = (head + count) % capacity
            ring[slot] = publication
            times[slot] = now
            count += 1
        } else {
            ring[head] = publication
            times[head] = now
            head = (head + 1) % capacity
        }
        return publication
    }

    /// Drops publications older than the TTL.
    public mutating func trim(now: Double) {
        while count > 0, now - times[head] >= ttl {
            ring[head] = nil
            head = (head + 1) % max(ring.count, 1)
            count -= 1
        }
        if count == 0 { head = 0; ring.removeAll(keepingCapacity: false); times.removeAll(keepingCapacity: false) }
    }

    /// Offset of the oldest publication still kept, or top+1 when none is.
    public var firstKeptOffset: UInt64 { top - UInt64(count) + 1 }

    private func publication(at offset: UInt64) -> Publication {
        let distance = Int(offset - firstKeptOffset)
        return ring[(head + distance) % ring.count]!
    }

    /// Reads history the way the protocol's `history` command describes.
    public func history(_ filter: HistoryFilter) throws(ProtocolError) -> HistoryResult {
        let limit = filter.limit.map { $0 < 0 ? Int.max : $0 } ?? Int.max
        if limit == 0 { return HistoryResult(publications: [], position: position) }
        var lower = firstKeptOffset  // inclusive
        var upper = top  // inclusive
        if let since = filter.since {
            guard since.epoch == epoch, since.offset <= top else { throw .unrecoverablePosition }
            if filter.reverse {
                guard since.offset > 0 else { return HistoryResult(publications: [], position: position) }
                upper = min(upper, since.offset - 1)
            } else {
                guard since.offset + 1 >= firstKeptOffset else { throw .unrecoverablePosition }
                lower = max(lower, since.offset + 1)
            }
        }
        guard count > 0, lower <= upper else { return HistoryResult(publications: [], position: position) }
        let available = Int(upper - lower + 1)
        let take = min(available, limit)
        var result: [Publication] = []
        result.reserveCapacity(take)
        if filter.reverse {
            var offset = upper
            for _ in 0..<take { result.append(publication(at: offset)); offset -= 1 }
        } else {
            var offset = lower
            for _ in 0..<take { result.append(publication(at: offset)); offset += 1 }
        }
        return HistoryResult(publications: result, position: position)
    }
}

/// The outcome of a subscriber coming back with the position it last saw.
public struct Recovery: Sendable, Equatable {
    public var recovered: Bool
    public var publications: [Publication]
}

extension Recovery {
    /// Decides recovery from a history read taken *after* the client's position.
    ///
    /// Recovered only when the history is the complete, gap-free run of publications from
    /// the one after the client's offset up to the stream's top, in the client's epoch.
    public static func decide(
        history: HistoryResult, clientOffset: UInt64, clientEpoch: String, maxPublications: Int
    ) -> Recovery {
        let position = history.position
        guard position.epoch == clientEpoch, clientOffset <= position.offset else {
            return Recovery(recovered: false, publications: [])
        }
        let missed = position.offset - clientOffset
        if missed == 0 { return Recovery(recovered: true, publications: []) }
        guard missed <= UInt64(maxPublications),
              let first = history.publications.first, first.offset == clientOffset + 1,
              let last = history.publications.last, last.offset == position.offset,
              history.publications.count == Int(missed)
        else { return Recovery(recovered: false, publications: []) }
        return Recovery(recovered: true, publications: history.publications)
    }
}
