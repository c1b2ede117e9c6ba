import Synchronization

/// The local subscribers of every channel on this node, and the fan-out over them.
///
/// A subscriber that has just asked to subscribe is *pending*: publications for it are held
/// back until its subscribe reply (with the stream position it was told) has been queued,
/// then flushed in order. That is what makes recovery free of gaps and duplicates even
/// when the broker answers asynchronously.
final class SubscriberRegistry: Sendable {
    struct Members {
        var sessions: [ClientSession] = []
        var slots: [ObjectIdentifier: Int] = [:]
        var pending: [ObjectIdentifier: [Publication]] = [:]
        /// Position of the last publication delivered here, to notice lost ones.
        var last: StreamPosition?
    }

    private let shards: [Guarded<[String: Members]>]

    init(shardCount: Int = 64) {
        shards = (0..<shardCount).map { _ in Guarded([:]) }
    }

    private func shard(_ channel: String) -> Guarded<[String: Members]> {
        shards[Int(UInt(bitPattern: channel.hashValue) % UInt(shards.count))]
    }

    /// Adds a pending subscriber. Returns true when it is the channel's first on this node.
    func addPending(_ session: ClientSession, to channel: String) -> Bool {
        shard(channel).withLock { map in
            let id = ObjectIdentifier(session)
            let first = map[channel] == nil
            var members = map.removeValue(forKey: channel) ?? Members()
            if members.slots[id] == nil {
                members.slots[id] = members.sessions.count
                members.sessions.append(session)
            }
            members.pending[id] = []
            map[channel] = members
            return first
        }
    }

    /// Ends the pending state: publications held back with an offset above `after` (all of
    /// them for channels without offsets) are handed to `deliver` in order, under the lock,
    /// so nothing published meanwhile can overtake them. Returns false when the subscriber
    /// left in the meantime.
    func activate(_ session: ClientSession, in channel: String, after offset: UInt64?, deliver: ([Publication]) -> Void) -> Bool {
        shard(channel).withLock { map in
            let id = ObjectIdentifier(session)
            guard var members = map.removeValue(forKey: channel) else { return false }
            defer { map[channel] = members }
            guard members.slots[id] != nil, let held = members.pending.removeValue(forKey: id) else { return false }
            let due = offset.map { top in held.filter { $0.offset > top } } ?? held
            deliver(due)
            return true
        }
    }

    /// Removes a subscriber. Returns true when the channel has no subscriber left here.
    @discardableResult
    func remove(_ session: ClientSession, from channel: String) -> Bool {
        shard(channel).withLock { map in
            let id = ObjectIdentifier(session)
            guard var members = map.removeValue(forKey: channel), let slot = members.slots.removeValue(forKey: id) else {
                return false
            }
            members.pending.removeValue(forKey: id)
            let last = members.sessions.count - 1
            if slot != last {
                let moved = members.sessions[last]
                members.sessions[slot] = moved
                members.slots[ObjectIdentifier(moved)] = slot
            }
            members.sessions.removeLast()
            if members.sessions.isEmpty { return true }
            map[channel] = members
            return false
        }
    }

    /// Delivers one publication to every subscriber of the channel. The frame is built at
    /// most once, and only if someone is listening. Returns the sessions whose queues
    /// overflowed; the caller disconnects them outside the lock.
    ///
    /// When the publication does not follow the last one delivered here (a broker lost
    /// some, or the stream restarted in a new epoch), it is not delivered: the live
    /// subscribers are returned as `behind`, to be told to resubscribe and recover.
    func fanOut(channel: String, publication: Publication?, position: StreamPosition? = nil,
                frame makeFrame: () -> WireFrame) -> (delivered: Int, slow: [ClientSession], behind: [ClientSession]) {
        shard(channel).withLock { map -> (Int, [ClientSession], [ClientSession]) in
            guard var members = map[channel] else { return (0, [], []) }
            var gap = false
            var changed = !members.pending.isEmpty
            if let position {
                if let last = members.last, last.epoch != position.epoch || position.offset != last.offset + 1 {
                    gap = position.epoch != last.epoch || position.offset > last.offset + 1
                }
                members.last = position
                changed = true
            }
            var frame: WireFrame?
            var slow: [ClientSession] = []
            var behind: [ClientSession] = []
            var delivered = 0
            let anyPending = !members.pending.isEmpty
            for session in members.sessions {
                if anyPending, members.pending[ObjectIdentifier(session)] != nil {
                    if let publication { members.pending[ObjectIdentifier(session)]!.append(publication) }
                    continue
                }
                if gap { behind.append(session); continue }
                if frame == nil { frame = makeFrame() }
                if session.transport.enqueue(frame!) { delivered += 1 } else { slow.append(session) }
            }
            if changed { map[channel] = members }
            return (delivered, slow, behind)
        }
    }

    func subscriberCount(_ channel: String) -> Int {
        shard(channel).withLock { $0[channel]?.sessions.count ?? 0 }
    }

    /// Channels with local subscribers and how many each has.
    func channels() -> [(String, Int)] {
        shards.flatMap { shard in shard.withLock { map in map.map { ($0.key, $0.value.sessions.count) } } }
    }

    var channelCount: Int { shards.reduce(0) { $0 + $1.withLock { $0.count } } }
}
