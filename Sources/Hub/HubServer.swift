import CLibWebSockets
import Channels
import Dispatch
import Glibc
import Logging
import RESTCompat
import RedisEngine
import Store

/// Wires the engine, the routes and the service loops together and runs until a signal.
final class HubServer {
    let config: HubConfig
    let logger: Logger

    init(config: HubConfig) {
        self.config = config
        let level = Logger.Level(rawValue: config.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        logger = Logger(label: "hub")
        LWSLog.install(logger: Logger(label: "hub.lws"), verbose: level <= .debug)
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        if mkdir(config.dataDir, 0o755) != 0 && errno != EEXIST {
            throw HubError.startup("cannot create data directory \(config.dataDir)")
        }
        var engine = EngineConfig()
        engine.namespaces = config.namespaces
        var rsaKey: String?
        if let path = config.tokenRSAPublicKeyPath {
            guard let bytes = FileBytes.read(path) else { throw HubError.config("cannot read RSA public key \(path)") }
            rsaKey = String(decoding: bytes, as: UTF8.self)
        }
        engine.tokens = TokenVerifier(hmacSecret: config.tokenHMACSecret, rsaPublicKeyPEM: rsaKey,
                                      audience: config.tokenAudience, issuer: config.tokenIssuer)
        engine.allowAnonymous = config.allowAnonymous
        engine.pingInterval = config.pingInterval
        engine.pongTimeout = config.pongTimeout
        engine.connectTimeout = config.connectTimeout
        engine.maxSubscriptionsPerClient = config.maxSubscriptions
        engine.nodeName = config.nodeName
        engine.version = HubVersion.string

        let broker: any Broker
        let presence: any PresenceStore
        var redis: (RedisBroker, RedisPresenceStore)?
        // A node announces itself every few seconds and drops out of /api/info after three
        // missed announcements: with a short presence TTL a crashed node vanishes as fast.
        let announceEvery = max(1, min(5, Int(config.presenceTTL / 3)))
        if config.engine == "redis" {
            let redisBroker = RedisBroker(addresses: config.redisURLs.compactMap(RedisShard.Address.init(url:)),
                                          nodeTTL: 3 * announceEvery, logger: Logger(label: "hub.redis"))
            let redisPresence = RedisPresenceStore(broker: redisBroker, ttl: config.presenceTTL)
            redis = (redisBroker, redisPresence)
            broker = redisBroker
            presence = redisPresence
        } else {
            broker = MemoryBroker()
            presence = MemoryPresenceStore()
        }
        // The record store behind RESTCompat: SQLite under --data-dir, or Redis with the redis engine.
        let store: any RecordStore
        if let redis {
            store = RedisRecordStore(broker: redis.0)
        } else {
            do {
                store = try SQLiteRecordStore(path: config.dataDir + "/hub.db")
            } catch {
                throw HubError.startup("\(error)")
            }
        }
        let node = Node(config: engine, broker: broker, presence: presence,
                        encoder: WebSocketFrameEncoder(), logger: Logger(label: "hub.channels"))
        redis?.0.start()
        let routerBox = RouterBox()
        let routes = Health(node: node).routes + ServerAPI(node: node).routes
            + APIDocs(version: HubVersion.string, router: { routerBox.router }).routes
        let limiter: any RateLimiter = redis.map { RedisRateLimiter(broker: $0.0, logger: Logger(label: "hub.ratelimit")) } ?? MemoryRateLimiter()
        let metrics = MetricsRegistry()
        let router = Router(routes: routes, credentials: Credentials(serverAPIKey: config.apiKey, tokens: engine.tokens),
                            limiter: limiter, limitClasses: config.rateLimitClasses, metrics: metrics, corsOrigins: config.corsOrigins)
        routerBox.router = router
        let counters = node.counters
        metrics.gauge("hub_connections", help: "Client connections on this node.") { Double(node.clientCount) }
        metrics.gauge("hub_subscriptions", help: "Channel subscriptions on this node.") { Double(node.info().subscriptions) }
        metrics.gauge("hub_publications_total", type: "counter", help: "Publications accepted by this node.") { Double(counters.publications.load(ordering: .relaxed)) }
        metrics.gauge("hub_deliveries_total", type: "counter", help: "Publications queued to subscribers on this node.") { Double(counters.deliveries.load(ordering: .relaxed)) }
        metrics.gauge("hub_slow_disconnects_total", type: "counter", help: "Clients disconnected for not keeping up.") { Double(counters.slowDisconnects.load(ordering: .relaxed)) }
        metrics.gauge("hub_client_connects_total", type: "counter", help: "Successful client connects.") { Double(counters.connects.load(ordering: .relaxed)) }
        metrics.gauge("hub_command_errors_total", type: "counter", help: "Client commands answered with an error.") { Double(counters.commandErrors.load(ordering: .relaxed)) }
        let settings = EdgeSettings(
            host: config.host, port: config.port, maxMessageSize: config.maxMessageSize, maxBodySize: config.maxBodySize,
            maxQueuedBytes: config.clientQueueMaxBytes, maxQueuedMessages: config.clientQueueMaxMessages,
            corsOrigins: config.corsOrigins)

        let loops = (0..<config.threads).map { ServiceLoop(index: $0, node: node, router: router, settings: settings, logger: logger) }
        for loop in loops { try loop.start() }

        if !engine.tokens.isConfigured && !config.allowAnonymous {
            logger.warning("no token secret or key configured and anonymous access is off: clients cannot connect (set HUB_TOKEN_HMAC_SECRET)")
        }
        if config.apiKey == nil {
            logger.warning("no API key configured: the server API (/api/*) refuses every call (set HUB_API_KEY)")
        }
        let engineDescription = config.engine == "redis" ? "redis(\(config.redisURLs.count) shard\(config.redisURLs.count == 1 ? "" : "s"))" : "memory"
        let shownHost = config.host == "0.0.0.0" ? "localhost" : config.host
        logger.notice("hub serving http://\(shownHost):\(config.port) (ws://\(shownHost):\(config.port)/connection/websocket) engine=\(engineDescription) threads=\(config.threads) version=\(HubVersion.string)")

        // Housekeeping: once a second each loop checks its connections' deadlines.
        let ticker = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "hub.ticker"))
        var ticks = 0
        let presenceRefreshEvery = max(1, Int(config.presenceTTL / 3))
        ticker.schedule(deadline: .now() + 1, repeating: 1)
        ticker.setEventHandler {
            for loop in loops { loop.requestTick() }
            ticks += 1
            if ticks % 60 == 0 { node.sweepStreams() }
            if (ticks - 1) % announceEvery == 0 { node.announce() }
            if let presence = redis?.1, ticks % presenceRefreshEvery == 0 { presence.refresh() }
        }
        ticker.resume()

        let stop = DispatchSemaphore(value: 0)
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: DispatchQueue(label: "hub.signals"))
            source.setEventHandler { stop.signal() }
            source.resume()
            sources.append(source)
        }
        stop.wait()
        logger.notice("shutting down: closing \(node.clientCount) connections")
        for loop in loops { loop.requestStop() }
        for loop in loops { loop.join() }
        ticker.cancel()
        redis?.0.stop()
        (store as? SQLiteRecordStore)?.close()
        logger.notice("stopped")
        _ = sources
    }
}

/// Forwards libwebsockets' own log lines to swift-log.
enum LWSLog {
    nonisolated(unsafe) static var logger = Logger(label: "hub.lws")

    static func install(logger: Logger, verbose: Bool) {
        self.logger = logger
        let levels = Int32(LLL_ERR | LLL_WARN | (verbose ? LLL_NOTICE : 0))
        lws_set_log_level(levels) { level, line in
            guard let line else { return }
            var text = String(cString: line)
            while text.last == "\n" { text.removeLast() }
            if level & Int32(LLL_ERR) != 0 {
                LWSLog.logger.error("\(text)")
            } else {
                LWSLog.logger.debug("\(text)")
            }
        }
    }
}

/// Lets routes that describe the router (OpenAPI, metrics) reach it once it exists.
final class RouterBox: @unchecked Sendable {
    var router: Router?
}
