import Channels
import Synchronization

/// The `cache.jobs` RPC: the newest jobs as `GET /api/v1/cache/jobs/{jobId}` shows them, plus the
/// position of `cache:jobs` read just before, for dashboards. The REST list needs the cache API
/// key, a backend secret a browser must not hold; a signed-in client may already follow every
/// job on the `cache` channels, so it may read the same through its connection.
///
/// Listing reads every job record, so one listing serves every call for a second, and calls that
/// arrive while one runs wait for it: however often clients ask, the store sees at most one
/// listing a second (plus the one running).
public struct CacheJobsSnapshot: Sendable {
    let service: CacheJobService
    static let defaultLimit = 20
    static let maxLimit = 100
    static let reuseSeconds = 1.0

    typealias Reply = @Sendable (Result<Snapshot, ProtocolError>) -> Void

    struct Snapshot: Sendable {
        var at: Double
        var jobs: [JSONValue]
        var offset: UInt64
        var epoch: String
    }

    final class Shared: Sendable {
        struct State {
            var latest: Snapshot?
            var waiting: [Reply]?
        }
        let state = Mutex(State())
    }
    let shared = Shared()

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
            let count = limit
            snapshot(node: node) { result in
                reply(result.map { snapshot in
                    ["jobs": .array(Array(snapshot.jobs.prefix(count))), "offset": .int(Int64(snapshot.offset)), "epoch": .string(snapshot.epoch)]
                })
            }
        }
    }

    /// The newest `maxLimit` jobs and the position of `cache:jobs` read just before them (a
    /// reused snapshot keeps its older position, so a subscriber recovers what followed it).
    func snapshot(node: Node, reply: @escaping Reply) {
        let now = service.clock.now()
        enum Next { case answer(Snapshot), wait, list }
        let next: Next = shared.state.withLock { state in
            if let latest = state.latest, now - latest.at < Self.reuseSeconds { return .answer(latest) }
            if state.waiting != nil { state.waiting!.append(reply); return .wait }
            state.waiting = [reply]
            return .list
        }
        switch next {
        case .answer(let snapshot): reply(.success(snapshot))
        case .wait: return
        case .list: list(node: node, started: now)
        }
    }

    private func list(node: Node, started: Double) {
        let finish: @Sendable (Result<Snapshot, ProtocolError>) -> Void = { [shared] result in
            let waiting = shared.state.withLock { state -> [Reply] in
                if case .success(let snapshot) = result { state.latest = snapshot }
                defer { state.waiting = nil }
                return state.waiting ?? []
            }
            for reply in waiting { reply(result) }
        }
        node.history(channel: CacheChannels.jobs, filter: HistoryFilter(limit: 0)) { [service] position in
            switch position {
            case .failure(let error):
                finish(.failure(error))
            case .success(let history):
                service.list { result in
                    guard case .success(let jobs) = result else { finish(.failure(.internal)); return }
                    let now = service.clock.now()
                    finish(.success(Snapshot(at: started, jobs: jobs.prefix(Self.maxLimit).map { $0.detail(now: now) },
                                             offset: history.position.offset, epoch: history.position.epoch)))
                }
            }
        }
    }
}
