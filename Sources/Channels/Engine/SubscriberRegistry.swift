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
        /// `sessions[i].transport`, kept beside them: a batch's hand-out then reaches each
        /// subscriber's queue without loading its session (a cold cache line per subscriber).
        var transports: [any ClientTransport] = []
        var slots: [ObjectIdentifier: Int] = [:]
        var pending: [ObjectIdentifier: [Publication]] = [:]
        /// Position of the last publication delivered here, to notice lost ones.
        var last: StreamPosition?
        /// Offsets just-activated subscribers were promised: a publication at or below it
        /// reached them in their subscribe reply (or is older), so it is not sent again. The
        /// broker may hand a publication over after the history read that already counted it.
        var floors: [ObjectIdentifier: UInt64] = [:]
        /// Subscribers that asked for a filter or deltas; everyone else takes the shared frame.
        var deliveries: [ObjectIdentifier: Delivery] = [:]
        /// Delta subscribers holding the channel's previous publication (the delta's base).
        var deltaReady: Set<ObjectIdentifier> = []
        /// The data of the last publication delivered, kept while delta subscribers exist.
        var previous: [UInt8]?
        /// Subscribers that cannot take a turn's batch (another wire, or a transport that
        /// unwraps frames): while there is one, every publication is handed out at once.
        var unbatchable = 0
        /// This turn's publications not handed out yet, as frames of each WebSocket codec (`Turn`).
        var batchJSON: [UInt8] = []
        var batchProtobuf: [UInt8] = []
        var batched = 0
        var protobufSubscribers = 0
    }

    /// Sessions whose queue overflowed while a batch was handed out on the way to a change of
    /// membership, under a lock where they cannot be disconnected: the node takes them next.
    private let overflowed = Guarded<[ClientSession]>([])

    /// A batch goes out once it holds this much, so no single frame outgrows a write.
    static let batchLimit = 32 * 1024

    static func takesBatches(_ session: ClientSession) -> Bool {
        (session.wire == .webSocketJSON || session.wire == .webSocketProtobuf) && session.transport.takesBatches
    }

    private let shards: [Guarded<[String: Members]>]

    init(shardCount: Int = 64) {
        shards = (0..<shardCount).map { _ in Guarded([:]) }
    }

    private func shard(_ channel: String) -> Guarded<[String: Members]> {
        shards[Int(UInt(bitPattern: channel.hashValue) % UInt(shards.count))]
    }

    /// Adds a pending subscriber. Returns true when it is the channel's first on this node.
    func addPending(_ session: ClientSession, to channel: String, delivery: Delivery = .whole) -> Bool {
        shard(channel).withLock { map in
            let id = ObjectIdentifier(session)
            let first = map[channel] == nil
            var members = map.removeValue(forKey: channel) ?? Members()
            handOutLocked(&members)
            if members.slots[id] == nil {
                members.slots[id] = members.sessions.count
                members.sessions.append(session)
                members.transports.append(session.transport)
                if !Self.takesBatches(session) { members.unbatchable += 1 }
                if session.wire == .webSocketProtobuf { members.protobufSubscribers += 1 }
            }
            members.pending[id] = []
            // The first publication after (re)subscribing goes out whole: the client has no base yet.
            members.deltaReady.remove(id)
            if delivery == .whole { members.deliveries.removeValue(forKey: id) } else { members.deliveries[id] = delivery }
            map[channel] = members
            return first
        }
    }

    /// Ends the pending state: publications held back with an offset above the promised
    /// position (all of them for channels without offsets) are handed to `deliver` in order,
    /// under the lock, so nothing published meanwhile can overtake them. Returns false when
    /// the subscriber left in the meantime.
    ///
    /// The promised position becomes the channel's last known one when none was seen yet, so
    /// a stream that moves on without this node noticing (lost publications, a new epoch
    /// after Redis lost its data) is detected even before the next publication arrives.
    func activate(_ session: ClientSession, in channel: String, after promised: StreamPosition?, deliver: ([Publication]) -> Void) -> Bool {
        shard(channel).withLock { map in
            let id = ObjectIdentifier(session)
            guard var members = map.removeValue(forKey: channel) else { return false }
            defer { map[channel] = members }
            handOutLocked(&members)
            guard members.slots[id] != nil, let held = members.pending.removeValue(forKey: id) else { return false }
            let due = promised.map { top in held.filter { $0.offset > top.offset } } ?? held
            if let promised {
                if members.last == nil { members.last = promised }
                if members.last?.epoch == promised.epoch, let last = members.last, last.offset < promised.offset {
                    members.floors[id] = promised.offset
                }
            }
            deliver(due)
            return true
        }
    }

    /// The broker read the stream's current position (after reconnecting to it); nil: the
    /// stream is gone. Returns the live subscribers that may have missed publications (the
    /// stream moved past what was delivered here, or into another epoch), to be told to
    /// resubscribe and recover.
    ///
    /// A stream *behind* what was delivered here, in the same epoch, lost its last entries (a
    /// Redis failover to a replica that had not got them): its next publications reuse offsets
    /// these subscribers hold, and would be dropped as already seen. They resubscribe too, and
    /// their recovery from an offset past the stream's top answers `recovered: false`.
    func check(channel: String, position: StreamPosition?) -> [ClientSession] {
        shard(channel).withLock { map -> [ClientSession] in
            guard var members = map.removeValue(forKey: channel) else { return [] }
            defer { map[channel] = members }
            guard let last = members.last else { return [] }
            if let position, position.epoch == last.epoch, position.offset == last.offset { return [] }
            handOutLocked(&members)
            members.last = position
            return members.sessions.filter { members.pending[ObjectIdentifier($0)] == nil }
        }
    }

    /// Removes a subscriber. Returns true when the channel has no subscriber left here.
    @discardableResult
    func remove(_ session: ClientSession, from channel: String) -> Bool {
        shard(channel).withLock { map in
            let id = ObjectIdentifier(session)
            guard var members = map.removeValue(forKey: channel) else { return false }
            guard let slot = members.slots[id] else {
                map[channel] = members
                return false
            }
            // What the turn batched went out while the session was still subscribed: it goes first.
            handOutLocked(&members)
            members.slots.removeValue(forKey: id)
            if !Self.takesBatches(session) { members.unbatchable -= 1 }
            if session.wire == .webSocketProtobuf { members.protobufSubscribers -= 1 }
            members.pending.removeValue(forKey: id)
            members.floors.removeValue(forKey: id)
            members.deliveries.removeValue(forKey: id)
            members.deltaReady.remove(id)
            let last = members.sessions.count - 1
            if slot != last {
                let moved = members.sessions[last]
                members.sessions[slot] = moved
                members.transports[slot] = moved.transport
                members.slots[ObjectIdentifier(moved)] = slot
            }
            members.sessions.removeLast()
            members.transports.removeLast()
            if members.sessions.isEmpty { return true }
            map[channel] = members
            return false
        }
    }

    /// Delivers one publication to every subscriber of the channel. The frame is built at
    /// most once per codec, and only if a subscriber of that codec is listening. Returns the sessions whose queues
    /// overflowed; the caller disconnects them outside the lock.
    ///
    /// When the publication does not follow the last one delivered here (a broker lost
    /// some, or the stream restarted in a new epoch), it is not delivered: the live
    /// subscribers are returned as `behind`, to be told to resubscribe and recover.
    ///
    /// `makeFrame` builds the frame of one codec and form; a delta it cannot express (nil)
    /// goes out whole instead.
    ///
    /// `batching` (the caller is inside a `Turn`): a publication every subscriber takes whole
    /// joins the channel's batch instead; `startedBatch` tells the caller to schedule the
    /// batch's hand-out at the end of the turn (`handOut`).
    func fanOut(channel: String, publication: Publication?, position: StreamPosition? = nil, batching: Bool = false,
                frame makeFrame: (Wire, PublicationForm) -> WireFrame?)
        -> (delivered: Int, slow: [ClientSession], behind: [ClientSession], startedBatch: Bool) {
        shard(channel).withLock { map -> (Int, [ClientSession], [ClientSession], Bool) in
            // In place: the members are neither copied out nor written back per publication.
            guard map[channel] != nil else { return (0, [], [], false) }
            return Self.fanOutLocked(&map[channel]!, publication: publication, position: position, batching: batching, frame: makeFrame)
        }
    }

    private static func fanOutLocked(_ members: inout Members, publication: Publication?, position: StreamPosition?, batching: Bool,
                                     frame makeFrame: (Wire, PublicationForm) -> WireFrame?)
        -> (Int, [ClientSession], [ClientSession], Bool) {
        var gap = false
        // At or below the last position known here: every live subscriber has it already
        // (delivered, or counted in its subscribe reply); only pending ones may still need it.
        var known = false
        if let position {
            if let last = members.last, last.epoch == position.epoch, position.offset <= last.offset {
                known = true
            } else {
                if let last = members.last {
                    gap = position.epoch != last.epoch || position.offset > last.offset + 1
                }
                members.last = position
            }
        }
        if batching, publication != nil, members.pending.isEmpty, !known, !gap, members.unbatchable == 0,
           members.floors.isEmpty, members.deliveries.isEmpty, members.previous == nil {
            let started = members.batched == 0
            if members.protobufSubscribers < members.sessions.count, let frame = makeFrame(.webSocketJSON, .whole) {
                members.batchJSON.append(contentsOf: frame.bytes)
            }
            if members.protobufSubscribers > 0, let frame = makeFrame(.webSocketProtobuf, .whole) {
                members.batchProtobuf.append(contentsOf: frame.bytes)
            }
            members.batched += 1
            var slow: [ClientSession] = []
            if max(members.batchJSON.count, members.batchProtobuf.count) >= batchLimit { slow = handOut(&members) }
            return (members.sessions.count, slow, [], started)
        }
        // Whatever the turn batched goes out before this.
        var slow = handOut(&members)
        var jsonFrame: WireFrame?
        var protobufFrame: WireFrame?
        // Frames for filtered and delta subscribers and for the HTTP transports, by wire and
        // form, built when first needed.
        var special: [Int: WireFrame?] = [:]
        func specialFrame(_ wire: Wire, _ form: PublicationForm) -> WireFrame? {
            let key = wire.index * 4 + form.index
            if let built = special[key] { return built }
            let built = makeFrame(wire, form)
            special[key] = built
            return built
        }
        let anySpecial = !members.deliveries.isEmpty
        var nowReady: [ObjectIdentifier] = []
        var deltaSubscribers = false
        var behind: [ClientSession] = []
        var delivered = 0
        let anyPending = !members.pending.isEmpty
        for session in members.sessions {
            if anyPending, members.pending[ObjectIdentifier(session)] != nil {
                if let publication { members.pending[ObjectIdentifier(session)]!.append(publication) }
                continue
            }
            if known { continue }
            if gap { behind.append(session); continue }
            if !members.floors.isEmpty, let position, let floor = members.floors[ObjectIdentifier(session)] {
                if position.offset >= floor { members.floors.removeValue(forKey: ObjectIdentifier(session)) }
                if position.offset <= floor { continue }
            }
            var frame: WireFrame?
            if anySpecial, publication != nil, let delivery = members.deliveries[ObjectIdentifier(session)] {
                if let filter = delivery.filter, !filter.matches(publication!.tags) { continue }
                if delivery.delta {
                    deltaSubscribers = true
                    let id = ObjectIdentifier(session)
                    if members.deltaReady.contains(id), let base = members.previous {
                        frame = specialFrame(session.wire, .delta(base: base))
                    }
                    if frame == nil { frame = specialFrame(session.wire, .wholeForDelta) }
                    nowReady.append(id)
                }
            }
            if frame == nil {
                // WebSocket subscribers, nearly all of them, take the two frames kept at hand.
                let wire = session.wire
                if wire == .webSocketJSON {
                    if jsonFrame == nil { jsonFrame = makeFrame(.webSocketJSON, .whole) }
                    frame = jsonFrame
                } else if wire == .webSocketProtobuf {
                    if protobufFrame == nil { protobufFrame = makeFrame(.webSocketProtobuf, .whole) }
                    frame = protobufFrame
                } else {
                    frame = specialFrame(wire, .whole)
                }
            }
            guard let frame else { continue }
            if session.transport.enqueue(frame) { delivered += 1 } else { slow.append(session) }
        }
        if deltaSubscribers, let publication {
            // The base of the next delta, and who holds it now.
            members.previous = JSONWriter.bytes(publication.data)
            members.deltaReady = Set(nowReady)
        } else if members.previous != nil, !members.deliveries.values.contains(where: \.delta) {
            members.previous = nil
        }
        return (delivered, slow, behind, false)
    }

    /// Hands the channel's batch (if this turn started one) to its subscribers. Returns the
    /// sessions whose queues overflowed, and those an earlier hand-out under a change of
    /// membership left behind.
    func handOut(channel: String) -> [ClientSession] {
        var slow = shard(channel).withLock { map -> [ClientSession] in
            guard map[channel] != nil else { return [] }
            return Self.handOut(&map[channel]!)
        }
        slow += overflowed.withLock { list in
            defer { list.removeAll() }
            return list
        }
        return slow
    }

    private static func handOut(_ members: inout Members) -> [ClientSession] {
        guard members.batched > 0 else { return [] }
        let json = members.batchJSON.isEmpty ? nil : WireFrame(bytes: members.batchJSON, messages: members.batched)
        let protobuf = members.batchProtobuf.isEmpty ? nil : WireFrame(bytes: members.batchProtobuf, messages: members.batched)
        members.batchJSON = []
        members.batchProtobuf = []
        members.batched = 0
        var slow: [ClientSession] = []
        let anyProtobuf = members.protobufSubscribers > 0
        for (slot, transport) in members.transports.enumerated() {
            // The session itself is loaded only to tell the codecs apart, or to be cut off.
            let protobufWire = anyProtobuf && members.sessions[slot].wire == .webSocketProtobuf
            guard let frame = protobufWire ? protobuf : json else { continue }
            if !transport.enqueue(frame) { slow.append(members.sessions[slot]) }
        }
        return slow
    }

    /// `handOut` on the way to a change of membership: overflowed sessions wait in `overflowed`.
    private func handOutLocked(_ members: inout Members) {
        let slow = Self.handOut(&members)
        if !slow.isEmpty { overflowed.withLock { $0 += slow } }
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

/// How one subscriber takes a channel's publications: all of them or those its tags filter
/// passes; whole, or as fossil deltas against the previous one.
struct Delivery: Sendable, Equatable {
    var filter: TagFilter?
    var delta = false

    static let whole = Delivery()
}

/// The forms a publication push takes on the wire.
public enum PublicationForm: Sendable {
    /// As every plain subscriber gets it.
    case whole
    /// Whole, for a delta subscriber (JSON: `data` as a string of the JSON text, `delta: false`).
    case wholeForDelta
    /// A fossil delta from `base` (the previous publication's data), `delta: true`.
    case delta(base: [UInt8])

    var index: Int {
        switch self {
        case .whole: return 0
        case .wholeForDelta: return 1
        case .delta: return 2
        }
    }
}
