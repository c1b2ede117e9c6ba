import Channels

/// The `cache.jobs` RPC: the newest jobs as `GET /api/v1/cache/jobs/{jobId}` shows them, plus the
/// position of `cache:jobs` read just before, for dashboards. The REST list needs the cache API
/// key, a backend secret a browser must not hold; a signed-in client may already follow every
/// job on the `cache` channels, so it may read the same through its connection.
public struct CacheJobsSnapshot: Sendable {
    let service: CacheJobService
    static let defaultLimit = 20
    static let maxLimit = 100

    public init(service: CacheJobService) {
        self.service = service
    }

    public func register(on node: Node) {
        node.registerRPC("cache.jobs") { caller, data, reply in
            guard !caller.user.isEmpty else {
                reply(.failure(.permissionDenied.with(message: "cache.jobs needs a signed-in client")))
                return
            }
            var limit = Self.defaultLimit
            if let value = data["limit"] {
                guard let requested = value.intValue, requested >= 1, requested <= Int64(Self.maxLimit) else {
                    reply(.failure(.badRequest.with(message: "limit must be an integer from 1 to \(Self.maxLimit)")))
                    return
                }
                limit = Int(requested)
            }
            snapshot(node: node, limit: limit, reply: reply)
        }
    }

    func snapshot(node: Node, limit: Int, reply: @escaping @Sendable (Result<JSONValue, ProtocolError>) -> Void) {
        node.history(channel: CacheChannels.jobs, filter: HistoryFilter(limit: 0)) { [service] position in
            guard case .success(let history) = position else {
                if case .failure(let error) = position { reply(.failure(error)) }
                return
            }
            service.list { result in
                guard case .success(let jobs) = result else { reply(.failure(.internal)); return }
                let now = service.clock.now()
                reply(.success([
                    "jobs": .array(jobs.prefix(limit).map { $0.detail(now: now) }),
                    "offset": .int(Int64(history.position.offset)), "epoch": .string(history.position.epoch),
                ]))
            }
        }
    }
}
