/// What a namespace allows and keeps. Names follow Centrifugo's so its users recognise them.
///
/// Channel `ns:name` takes the options of namespace `ns`; a channel without `:` takes the
/// top-level (default namespace) options.
public struct ChannelOptions: Sendable, Equatable {
    /// Keep presence information (who is subscribed) for the channel.
    public var presence = false
    /// Send `join` / `leave` pushes to subscribers.
    public var joinLeave = false
    /// Publications kept in the stream (0 disables history, offsets and recovery).
    public var historySize = 0
    /// Seconds a publication stays in history.
    public var historyTTL: Double = 0
    /// Seconds the stream position (offset, epoch) outlives its last publication.
    public var historyMetaTTL: Double = 86_400
    /// Clients that come back with their last position get what they missed.
    public var recovery = true
    /// The most publications a recovering subscriber may be sent in its subscribe reply.
    public var recoveryMaxPublications = 1_000
    /// Authenticated clients may subscribe without a subscription token.
    public var allowSubscribeForClient = true
    /// Anonymous clients may subscribe without a subscription token.
    public var allowSubscribeForAnonymous = false
    /// Subscribers may publish into the channel.
    public var allowPublishForSubscriber = false
    /// Any authenticated client may publish into the channel.
    public var allowPublishForClient = false
    /// Anonymous clients may publish (requires one of the two above as well).
    public var allowPublishForAnonymous = false
    /// Subscribers may ask for presence / presence stats.
    public var allowPresenceForSubscriber = true
    /// Any client may ask for presence / presence stats.
    public var allowPresenceForClient = false
    /// Subscribers may read history.
    public var allowHistoryForSubscriber = true
    /// Any client may read history.
    public var allowHistoryForClient = false
    /// `name#alice,bob` channels may be subscribed only by the users listed after `#`.
    public var allowUserLimitedChannels = true
    /// Delta encodings subscribers may ask for with `delta` (only `fossil` exists).
    public var allowedDeltaTypes: [String] = []
    /// Subscribers may send a tags filter (`tf`) and get only the publications it passes.
    public var allowTagsFilter = false
    /// A subscribe without a subscription token is decided by the subscribe proxy.
    public var proxySubscribe = false
    /// A client publish is decided (and may be rewritten) by the publish proxy.
    public var proxyPublish = false
    /// A `sub_refresh` is decided by the sub_refresh proxy instead of a subscription token.
    public var proxySubRefresh = false
    /// The namespace's own endpoints for those proxies (`proxy_subscribe_endpoint`…), used
    /// instead of the global ones, so namespaces can be decided by different backends.
    public var proxyEndpoints: [ProxyKind: String] = [:]

    /// Whether this namespace's channels ask `proxy` for `kind` (subscribe, publish, sub_refresh):
    /// the namespace asks for it and it has an endpoint, its own or the global one.
    public func proxies(_ kind: ProxyKind, through proxy: (any ProxyBackend)?) -> Bool {
        let asks: Bool
        switch kind {
        case .subscribe: asks = proxySubscribe
        case .publish: asks = proxyPublish
        case .subRefresh: asks = proxySubRefresh
        case .connect, .refresh, .rpc: asks = false
        }
        guard asks, let proxy else { return false }
        return proxyEndpoints[kind] != nil || proxy.proxies(kind)
    }
    /// Where every publication, join and leave of the namespace is also sent for a backend to
    /// archive or react to (nil: nowhere).
    public var publicationStream: PublicationStreamTarget?
    /// What a subscriber is sent on subscribe and recovery.
    public var recoveryMode = RecoveryMode.stream

    public enum RecoveryMode: String, Sendable {
        /// Every publication missed since the client's position (within history).
        case stream
        /// Only the newest publication: for state channels where the latest value is all that counts.
        case cache
    }

    public init() {}

    public var historyEnabled: Bool { historySize > 0 && historyTTL > 0 }
    public var recoveryEnabled: Bool { historyEnabled && recovery }
}

/// The namespaces a hub knows, and how a channel name maps onto one.
public struct ChannelNamespaces: Sendable {
    public var defaultOptions: ChannelOptions
    public var namespaces: [String: ChannelOptions]

    public static let namespaceSeparator = UInt8(ascii: ":")
    public static let userSeparator = UInt8(ascii: "#")
    public static let maxChannelLength = 255

    public init(defaultOptions: ChannelOptions = ChannelOptions(), namespaces: [String: ChannelOptions] = [:]) {
        self.defaultOptions = defaultOptions
        self.namespaces = namespaces
    }

    /// The options for a channel, or nil when it names a namespace that does not exist.
    public func options(for channel: String) -> ChannelOptions? {
        // Searched as bytes, as Centrifugo does: a Character search breaks graphemes all along the
        // name (~2,400 instructions per lookup, several lookups per publication).
        guard let separator = channel.utf8.firstIndex(of: Self.namespaceSeparator) else { return defaultOptions }
        return namespaces[String(channel[..<separator])]
    }

    /// Users allowed in a user-limited channel (`chat:room#alice,bob` → alice, bob), or nil.
    public static func allowedUsers(in channel: String) -> [Substring]? {
        guard let hash = channel.utf8.lastIndex(of: userSeparator) else { return nil }
        return channel[channel.index(after: hash)...].split(separator: ",", omittingEmptySubsequences: true)
    }

    /// Why a channel name is unusable, or nil when it is fine.
    public static func validate(_ channel: String) -> String? {
        if channel.isEmpty { return "channel required" }
        if channel.utf8.count > maxChannelLength { return "channel name longer than \(maxChannelLength) bytes" }
        for byte in channel.utf8 where byte < 0x20 || byte == 0x7F { return "channel name contains control characters" }
        return nil
    }
}
