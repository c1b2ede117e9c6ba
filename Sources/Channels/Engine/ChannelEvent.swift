/// Where a namespace's publication stream goes: a backend's HTTP webhook, or a Redis stream.
/// Set per namespace (`publication_stream_url`, `publication_stream_redis_key`).
public enum PublicationStreamTarget: Sendable, Hashable, CustomStringConvertible {
    case webhook(url: String)
    /// `XADD key MAXLEN ~ maxLength`: Redis trims the oldest entries beyond about that many.
    case redisStream(key: String, maxLength: Int)

    /// A webhook as "webhook" only: its path or query may carry a credential.
    public var description: String {
        switch self {
        case .webhook: return "webhook"
        case .redisStream(let key, _): return "redis:" + key
        }
    }

    /// A stable order for naming targets (the URL stays out of every name).
    public var sortKey: String {
        switch self {
        case .webhook(let url): return "w" + url
        case .redisStream(let key, _): return "r" + key
        }
    }
}

/// One event of a namespace's publication stream: a publication, a join or a leave, as it
/// happened on the node where it originated.
public struct ChannelEvent: Sendable, Equatable {
    public enum Kind: String, Sendable { case publication, join, leave }

    /// What a backend dedupes on: `<channel>@<epoch>:<offset>` for a publication kept in
    /// history; otherwise `<node uid>:<sequence>`, unique for the life of the node.
    public var id: String
    public var kind: Kind
    public var channel: String
    /// Milliseconds since the epoch.
    public var time: Int64
    public var node: String
    public var publication: Publication?
    public var position: StreamPosition?
    /// The client that joined or left.
    public var client: ClientInfo?

    public init(id: String, kind: Kind, channel: String, time: Int64, node: String,
                publication: Publication? = nil, position: StreamPosition? = nil, client: ClientInfo? = nil) {
        self.id = id
        self.kind = kind
        self.channel = channel
        self.time = time
        self.node = node
        self.publication = publication
        self.position = position
        self.client = client
    }

    /// The shape backends receive (docs/channels.md, "Publication stream").
    public var json: JSONValue {
        var members: [(String, JSONValue?)] = [
            ("id", .string(id)), ("type", .string(kind.rawValue)), ("channel", .string(channel)),
            ("time", .int(time)), ("node", .string(node)),
        ]
        if let publication {
            members.append(("data", publication.data))
            members.append(("info", publication.info?.json))
            if !publication.tags.isEmpty { members.append(("tags", .object(publication.tags.map { ($0.0, .string($0.1)) }))) }
            if let position {
                members.append(("offset", .int(Int64(position.offset))))
                members.append(("epoch", .string(position.epoch)))
            }
        }
        if let client { members.append(("info", client.json)) }
        return .compact(members)
    }
}

/// Receives every event of the namespaces that have a publication stream, on the node where
/// it originated. `record` is called at the engine's ordering point (under a channel's stream
/// lock with the memory engine, on the Redis reply thread with the Redis engine), so it must
/// only queue: never block, never call back into the engine.
public protocol ChannelEventSink: Sendable {
    func record(_ event: ChannelEvent, to target: PublicationStreamTarget)
}
