import Channels

/// `GET /health`: the hub is up and serving; seed 003's fields (`status`, `service`,
/// `version`, `uptime`, `timestamp`) plus the hub's own.
public struct Health: Sendable {
    let node: Node

    public init(node: Node) { self.node = node }

    public var routes: [Route] {
        [
            Route("GET", "/health", auth: .none, summary: "Liveness and basic counters", responses: [200: "The hub is serving"]) { context in
                let info = node.info()
                context.respond(.json(200, [
                    "status": "healthy",
                    "service": "gateway",
                    "node": .string(info.name),
                    "version": .string(info.version),
                    "uptime": .int(Int64(info.uptime)),
                    "connections": .int(Int64(info.clients)),
                    "timestamp": .string(ISOTime.string(node.clock.now())),
                ]))
            },
        ]
    }
}
