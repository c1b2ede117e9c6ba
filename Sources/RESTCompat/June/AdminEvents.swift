import Channels

/// Seed 003's admin state, pushed live on the `admin` namespace (docs/channels.md): only
/// holders of a subscription token from `GET /admin/channels/token` subscribe. Every event is
/// `{"event": …, "timestamp": …, …}`.
public struct AdminEvents: Sendable {
    public static let users = "admin:users"
    public static let conversations = "admin:conversations"
    public static let config = "admin:config"
    public static let services = "admin:services"
    public static let all = [users, conversations, config, services]
    /// Moderators read users and conversations, so they may follow those two as well.
    public static let moderatorChannels = [users, conversations]

    /// The namespace: no subscription without a token, history for a dashboard's recovery.
    public static var channelOptions: ChannelOptions {
        var options = ChannelOptions()
        options.historySize = 100
        options.historyTTL = 3600
        options.allowSubscribeForClient = false
        return options
    }

    let node: Node

    public init(node: Node) { self.node = node }

    public func publish(_ channel: String, event: String, _ fields: [(String, JSONValue?)]) {
        node.publish(channel: channel, data: .compact([("event", .string(event)), ("timestamp", .string(ISOTime.string(node.clock.now())))] + fields)) { _ in }
    }
}
