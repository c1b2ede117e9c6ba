import Glibc

/// Receives what a broker delivers to this node: publications and join/leave events for
/// channels the node has subscribers in. Implemented by `Node`.
public protocol BrokerEventHandler: AnyObject, Sendable {
    func handlePublication(channel: String, publication: Publication, position: StreamPosition?)
    /// A publication made on this node took its place in the channel's stream: called once per
    /// publication, on the publishing node only, in the channel's offset order.
    func handlePublished(channel: String, publication: Publication, position: StreamPosition?)
    func handleJoin(channel: String, info: ClientInfo)
    func handleLeave(channel: String, info: ClientInfo)
    func handleControl(_ command: JSONValue)
    func hasLocalSubscribers(channel: String) -> Bool
    /// After the broker lost and regained its connection: the current position of each
    /// channel it resubscribed (nil: the stream is gone), read once delivery was guaranteed
    /// again. Subscribers that may have missed publications meanwhile are told to recover.
    func handleStreamPositions(_ positions: [(channel: String, position: StreamPosition?)])
}

extension BrokerEventHandler {
    public func handlePublished(channel: String, publication: Publication, position: StreamPosition?) {}
}

/// Moves publications between publishers and the nodes that have subscribers, and keeps
/// channel history. The memory broker serves one node; the Redis broker many.
///
/// Completion-based so that an implementation backed by a network store never blocks a
/// service thread; the memory broker completes synchronously.
public protocol Broker: AnyObject, Sendable {
    func setEventHandler(_ handler: any BrokerEventHandler)

    /// Appends to history (when the options keep any) and delivers to every node.
    /// Completes with the publication's stream position, nil for channels without history.
    func publish(
        channel: String, publication: Publication, options: ChannelOptions,
        completion: @escaping @Sendable (Result<StreamPosition?, ProtocolError>) -> Void)

    func publishJoin(channel: String, info: ClientInfo)
    func publishLeave(channel: String, info: ClientInfo)

    func history(
        channel: String, filter: HistoryFilter, options: ChannelOptions,
        completion: @escaping @Sendable (Result<HistoryResult, ProtocolError>) -> Void)

    func removeHistory(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void)

    /// This node has local subscribers in the channel: start receiving its publications.
    /// Completes once delivery is guaranteed, so a history read made afterwards cannot miss
    /// a publication that is neither in it nor delivered.
    func subscribe(channel: String, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void)
    /// This node may have no local subscriber left in the channel; the broker checks with
    /// the handler (`hasLocalSubscribers`) before it stops receiving.
    func unsubscribe(channel: String)

    /// Sends a control command to every node (this one included). Completes once it is on
    /// its way to every node, or with the error that kept it from leaving this one.
    func publishControl(_ command: JSONValue, completion: @escaping @Sendable (Result<Void, ProtocolError>) -> Void)

    /// Announces this node and lists every live node.
    func announce(node: NodeInfo)
    func nodes(completion: @escaping @Sendable (Result<[NodeInfo], ProtocolError>) -> Void)

    /// Drops expired streams; called periodically.
    func sweep(now: Double)
}

/// Who is in a channel, across every node sharing the store.
public protocol PresenceStore: AnyObject, Sendable {
    func add(channel: String, info: ClientInfo)
    func remove(channel: String, client: String)
    func presence(channel: String, completion: @escaping @Sendable (Result<[ClientInfo], ProtocolError>) -> Void)
    func stats(channel: String, completion: @escaping @Sendable (Result<PresenceStats, ProtocolError>) -> Void)
}

public struct PresenceStats: Sendable, Equatable {
    public var clients: Int
    public var users: Int
    public init(clients: Int, users: Int) {
        self.clients = clients
        self.users = users
    }
}

/// Wall-clock seconds; the engine passes time into pure types rather than reading it there.
public protocol Clock: Sendable {
    func now() -> Double
}

public struct SystemClock: Clock {
    public init() {}
    public func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Random identifiers (client ids, epochs) from the OS's CSPRNG.
public enum RandomID {
    private static let alphabet: [UInt8] = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)

    public static func make(length: Int) -> String {
        // Eight random bytes per draw (each draw is a getrandom call, which showed in REST
        // profiles when made per character); bytes ≥ 248 are rejected so that every
        // character of the 62 is equally likely.
        var generator = SystemRandomNumberGenerator()
        var bytes: [UInt8] = []
        bytes.reserveCapacity(length)
        while bytes.count < length {
            var word = generator.next()
            for _ in 0..<8 where bytes.count < length {
                let byte = UInt8(truncatingIfNeeded: word)
                word >>= 8
                if byte < 248 { bytes.append(alphabet[Int(byte % 62)]) }
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// An RFC 4122 version 4 UUID string, the shape Centrifugo uses for client ids.
    public static func uuid() -> String {
        var generator = SystemRandomNumberGenerator()
        var bytes = [UInt8](repeating: 0, count: 16)
        for half in 0..<2 {
            var word = generator.next()
            for i in 0..<8 { bytes[half * 8 + i] = UInt8(truncatingIfNeeded: word); word >>= 8 }
        }
        bytes[6] = (bytes[6] & 0x0F) | 0x40
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        let hex = bytes.map { byte -> String in
            let s = String(byte, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
        let h = Array(hex)
        return String(h[0..<8]) + "-" + String(h[8..<12]) + "-" + String(h[12..<16]) + "-" + String(h[16..<20]) + "-" + String(h[20..<32])
    }
}
