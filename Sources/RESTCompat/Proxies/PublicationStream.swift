import Channels
import Dispatch
import Logging
import Synchronization

/// Sends each namespace's publications, joins and leaves to its backend target — an HTTP
/// webhook (batches POSTed as `{"events": […]}`) or a Redis stream (`XADD … MAXLEN ~ n`) — in
/// the order this node recorded them, at least once.
///
/// Each target has one lane: a queue in memory, bounded in bytes, with at most one batch in
/// flight. A batch leaves the queue only when the target acknowledged it (2xx, or every XADD
/// answered); a failed batch is sent again, whole, after a backoff that doubles up to a cap,
/// while new events queue behind it. Nothing waits on a thread: sends go through the hub's
/// non-blocking HTTP client or the Redis engine's command path, retries are timers. A full
/// queue drops new events (counted, logged once per episode) rather than grow without bound.
public final class PublicationStream: ChannelEventSink {
    public struct Settings: Sendable {
        /// Bytes of encoded events one target's queue may hold.
        public var queueMaxBytes = 16 * 1024 * 1024
        /// Events per POST (or per pipelined run of XADDs).
        public var batchSize = 100
        /// Seconds one POST may take, connect included.
        public var timeout: Double = 5
        /// The first retry waits this long; each further one twice as long, up to `retryMaxDelay`.
        public var retryMinDelay: Double = 0.25
        public var retryMaxDelay: Double = 10
        /// Headers added to every webhook POST (e.g. a shared secret). Never logged.
        public var headers: [(String, String)] = []
        public init() {}
    }

    /// Sends one Redis command on the engine's connection for `key` and answers whether it succeeded.
    public typealias RedisCommand = @Sendable (_ key: String, _ arguments: [[UInt8]], _ completion: @escaping @Sendable (Bool) -> Void) -> Void

    private struct Lane {
        /// Encoded events; `head` is the first not yet acknowledged (no O(n) removal per batch).
        var events: [[UInt8]] = []
        var head = 0
        var bytes = 0
        /// Events of the batch in flight from `head` (0: none).
        var inFlight = 0
        var failures = 0
        var waitingToRetry = false
        /// Events dropped since the queue last filled up; nil when not dropping.
        var droppedThisEpisode: Int?
        var queued: Int { events.count - head }
    }

    private let settings: Settings
    private let lanes: [PublicationStreamTarget: Guarded<Lane>]
    private let webhooks: [PublicationStreamTarget: (GatewayAddress, String)]
    /// How logs and metrics name each target: `webhook:<host>:<port>` (never the path or query, which
    /// may carry a credential; `#2`, `#3`… for further URLs on one address) or `redis:<key>`.
    private let names: [PublicationStreamTarget: String]
    private let client: GatewayHTTPClient?
    private let redis: RedisCommand?
    private let metrics: MetricsRegistry
    private let logger: Logger
    /// Set at shutdown: a retry timer that fires afterwards sends nothing.
    private let stopped = Atomic<Bool>(false)

    /// Checks every target (a webhook URL must be plain http:// to an IP or localhost; a Redis
    /// target needs the Redis engine) so that a bad one stops the start.
    public init(targets: Set<PublicationStreamTarget>, settings: Settings, redis: RedisCommand?,
                metrics: MetricsRegistry, logger: Logger) throws(ConfigProblem) {
        var webhooks: [PublicationStreamTarget: (GatewayAddress, String)] = [:]
        for target in targets {
            switch target {
            case .webhook(let url):
                webhooks[target] = try HTTPProxyBackend.parse(url: url, key: "publication_stream_url")
            case .redisStream:
                guard redis != nil else { throw ConfigProblem("publication_stream_redis_key needs the redis engine (engine: redis)") }
            }
        }
        for (name, value) in settings.headers where !HTTPProxyBackend.isToken(name) || value.utf8.contains(where: { $0 < 0x20 && $0 != 9 }) {
            throw ConfigProblem("publication_stream_http_headers: '\(name)' is not a valid header name, or its value has control characters")
        }
        var names: [PublicationStreamTarget: String] = [:]
        var seen: [String: Int] = [:]
        // Sorted so that the same config names its targets the same way on every node.
        for target in targets.sorted(by: { $0.sortKey < $1.sortKey }) {
            let base = webhooks[target].map { "webhook:\($0.0)" } ?? target.description
            seen[base, default: 0] += 1
            names[target] = seen[base]! == 1 ? base : "\(base)#\(seen[base]!)"
        }
        self.names = names
        self.settings = settings
        self.webhooks = webhooks
        self.redis = redis
        self.metrics = metrics
        self.logger = logger
        var lanes: [PublicationStreamTarget: Guarded<Lane>] = [:]
        for target in targets { lanes[target] = Guarded(Lane()) }
        self.lanes = lanes
        if webhooks.isEmpty {
            client = nil
        } else {
            var http = GatewayHTTPClient.Settings(connectTimeout: min(settings.timeout, 3), totalTimeout: settings.timeout)
            // One batch in flight per target: the client never holds more than that.
            http.maxActive = max(1, webhooks.count)
            http.maxQueued = max(1, webhooks.count)
            http.maxIdlePerAddress = 2
            http.maxResponseBytes = 64 * 1024
            client = GatewayHTTPClient(settings: http)
        }
        metrics.describe("hub_publication_stream_events_sent_total", type: "counter", help: "Publication stream events the target acknowledged, by target.")
        metrics.describe("hub_publication_stream_events_retried_total", type: "counter", help: "Publication stream events sent again after a failed batch, by target.")
        metrics.describe("hub_publication_stream_events_dropped_total", type: "counter", help: "Publication stream events dropped because the target's queue was full, by target.")
        metrics.gauge("hub_publication_stream_queue_depth", help: "Publication stream events queued (in flight included), by target.") { [lanes, names] in
            lanes.map { target, lane in ([("target", names[target] ?? target.description)], Double(lane.withLock { $0.queued })) }
        }
    }

    public func record(_ event: ChannelEvent, to target: PublicationStreamTarget) {
        guard let lane = lanes[target] else { return }
        let bytes = JSONWriter.bytes(event.json)
        let (accepted, startedDropping) = lane.withLock { lane -> (Bool, Bool) in
            guard lane.bytes + bytes.count <= settings.queueMaxBytes else {
                let first = lane.droppedThisEpisode == nil
                lane.droppedThisEpisode = (lane.droppedThisEpisode ?? 0) + 1
                return (false, first)
            }
            lane.events.append(bytes)
            lane.bytes += bytes.count
            return (true, false)
        }
        guard accepted else {
            metrics.increment("hub_publication_stream_events_dropped_total", labels: [("target", name(target))])
            if startedDropping {
                logger.warning("publication stream queue full: dropping new events until the target catches up", metadata: [
                    "target": "\(name(target))", "queue_max_bytes": "\(settings.queueMaxBytes)"])
            }
            return
        }
        pump(target)
    }

    /// Sends the next batch unless one is in flight or waiting for its retry.
    private func pump(_ target: PublicationStreamTarget) {
        guard let lane = lanes[target], !stopped.load(ordering: .acquiring) else { return }
        let batch = lane.withLock { lane -> [[UInt8]]? in
            guard lane.inFlight == 0, !lane.waitingToRetry, lane.queued > 0 else { return nil }
            let count = min(settings.batchSize, lane.queued)
            lane.inFlight = count
            return Array(lane.events[lane.head..<(lane.head + count)])
        }
        guard let batch else { return }
        switch target {
        case .webhook:
            post(batch, to: target)
        case .redisStream(let key, let maxLength):
            append(batch, to: key, maxLength: maxLength, target: target)
        }
    }

    private func post(_ batch: [[UInt8]], to target: PublicationStreamTarget) {
        guard let (address, path) = webhooks[target], let client else { return }
        var body = Array(#"{"events":["#.utf8)
        for (index, event) in batch.enumerated() {
            if index > 0 { body.append(UInt8(ascii: ",")) }
            body += event
        }
        body += Array("]}".utf8)
        client.send(to: address, method: "POST", path: path, body: body, headers: settings.headers) { [self] result in
            switch result {
            case .success(let response) where (200..<300).contains(response.status):
                delivered(target)
            case .success(let response):
                failed(target, why: "HTTP \(response.status)")
            case .failure(let error):
                failed(target, why: "\(error)")
            }
        }
    }

    /// One XADD per event, pipelined on the engine's connection (so in order); the batch counts
    /// as delivered only when every one succeeded. A partly appended batch is appended again
    /// whole: the entries' `id` lets a reader skip the repeats.
    private func append(_ batch: [[UInt8]], to key: String, maxLength: Int, target: PublicationStreamTarget) {
        guard let redis else { return }
        let outcome = Mutex<(remaining: Int, ok: Bool)>((batch.count, true))
        let keyBytes = Array(key.utf8), cap = Array(String(maxLength).utf8)
        for event in batch {
            redis(key, [Array("XADD".utf8), keyBytes, Array("MAXLEN".utf8), Array("~".utf8), cap, Array("*".utf8), Array("event".utf8), event]) { [self] ok in
                let done = outcome.withLock { state -> Bool? in
                    state.remaining -= 1
                    state.ok = state.ok && ok
                    return state.remaining == 0 ? state.ok : nil
                }
                guard let done else { return }
                if done { delivered(target) } else { failed(target, why: "XADD failed (Redis unreachable or refused)") }
            }
        }
    }

    private func delivered(_ target: PublicationStreamTarget) {
        guard let lane = lanes[target] else { return }
        let (count, recovered, dropped) = lane.withLock { lane -> (Int, Bool, Int?) in
            let count = lane.inFlight
            lane.head += count
            for index in (lane.head - count)..<lane.head { lane.bytes -= lane.events[index].count }
            lane.inFlight = 0
            // Compacted once the acknowledged prefix is at least half the array: amortised O(1).
            if lane.head * 2 >= lane.events.count {
                lane.events.removeFirst(lane.head)
                lane.head = 0
            }
            let recovered = lane.failures > 0
            lane.failures = 0
            var dropped: Int?
            // The episode ends once there is room for a burst again.
            if lane.droppedThisEpisode != nil, lane.bytes * 2 <= settings.queueMaxBytes {
                dropped = lane.droppedThisEpisode
                lane.droppedThisEpisode = nil
            }
            return (count, recovered, dropped)
        }
        metrics.increment("hub_publication_stream_events_sent_total", labels: [("target", name(target))], by: Double(count))
        if recovered { logger.notice("publication stream target reachable again", metadata: ["target": "\(name(target))"]) }
        if let dropped {
            logger.notice("publication stream queue has room again", metadata: ["target": "\(name(target))", "dropped": "\(dropped)"])
        }
        pump(target)
    }

    private func failed(_ target: PublicationStreamTarget, why: String) {
        guard let lane = lanes[target] else { return }
        let (count, failures) = lane.withLock { lane -> (Int, Int) in
            let count = lane.inFlight
            lane.inFlight = 0
            lane.failures += 1
            lane.waitingToRetry = true
            return (count, lane.failures)
        }
        metrics.increment("hub_publication_stream_events_retried_total", labels: [("target", name(target))], by: Double(count))
        // Once per outage, not once per retry.
        if failures == 1 {
            logger.warning("publication stream target failed; retrying with backoff", metadata: ["target": "\(name(target))", "error": "\(why)"])
        }
        let delay = min(settings.retryMaxDelay, settings.retryMinDelay * Double(1 << min(failures - 1, 30)))
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [self] in
            lanes[target]?.withLock { $0.waitingToRetry = false }
            pump(target)
        }
    }

    private func name(_ target: PublicationStreamTarget) -> String { names[target] ?? target.description }

    /// Stops sending; what is still queued is lost with the process (docs/channels.md says so).
    public func shutdown() {
        stopped.store(true, ordering: .releasing)
        client?.shutdown()
    }
}
