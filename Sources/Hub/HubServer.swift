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
        let json = config.logFormat == "json"
        LoggingSystem.bootstrap { label in
            if json { return JSONLineLogHandler(label: label, logLevel: level) }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        logger = Logger(label: "hub")
        LWSLog.install(logger: Logger(label: "hub.lws"), verbose: level <= .debug)
    }

    /// Every connection is a file descriptor: take the hard limit (capped at 2^20, since
    /// libwebsockets sizes each service thread's descriptor table from it when the thread's
    /// context starts), so the soft default of 1024 does not cap the connections.
    private func raiseOpenFileLimit() {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        let wanted = min(limit.rlim_max, 1 << 20)
        let current = limit.rlim_cur
        guard current < wanted else { return }
        limit.rlim_cur = wanted
        if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) != 0 {
            logger.warning("could not raise the open file limit to \(wanted): connections are capped near \(current)")
        }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        raiseOpenFileLimit()
        // SIGINT and SIGTERM are blocked before any thread exists, so every thread inherits the
        // block and a signal stays pending until the one thread waiting for it takes it. (With
        // SIG_IGN and a dispatch signal source, a signal that reached a thread where it was
        // ignored was dropped, and the hub never stopped: about one stop in 25 early on.)
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGINT)
        sigaddset(&stopSignals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        let stop = DispatchSemaphore(value: 0)
        DispatchQueue(label: "hub.signals").async { [stopSignals] in
            var stopSignals = stopSignals
            var received: Int32 = 0
            sigwait(&stopSignals, &received)
            stop.signal()
        }
        if mkdir(config.dataDir, 0o755) != 0 && errno != EEXIST {
            throw HubError.startup("cannot create data directory \(config.dataDir)")
        }
        let uploads = config.uploads
        try UploadDirectory.prepare(uploads.directory)
        var engine = EngineConfig()
        engine.namespaces = config.withJuneNamespaces
        if engine.namespaces.namespaces[GatewayService.namespace] == nil {
            engine.namespaces.namespaces[GatewayService.namespace] = HubConfig.gatewayChannelOptions
        }
        let rsaKey = try config.tokenRSAPublicKeyPath.map { path in
            try HubConfig.publicKey(at: path, what: "RSA") { if case .rsa = $0 { return true } else { return false } }
        }
        let ecdsaKey = try config.tokenECDSAPublicKeyPath.map { path in
            try HubConfig.publicKey(at: path, what: "ECDSA (P-256 or P-384)") { $0 == .ecP256 || $0 == .ecP384 }
        }
        var jwks: (endpoint: JWKSEndpoint, keys: TokenKeySet)?
        if let url = config.tokenJWKSURL {
            var limits = TokenKeySet.Limits()
            limits.minRefetchInterval = config.tokenJWKSRefetchInterval
            let endpoint: JWKSEndpoint
            do { endpoint = try JWKSEndpoint(url: url, timeout: config.tokenJWKSTimeout, maxBodyBytes: limits.maxBodyBytes) } catch {
                throw HubError.config(error.description)
            }
            var jwksLogger = Logger(label: "hub.jwks")
            jwksLogger[metadataKey: "jwks"] = "\(endpoint.shownAddress)"
            let keys = TokenKeySet(limits: limits, logger: jwksLogger, fetch: endpoint.fetch)
            jwks = (endpoint, keys)
        }
        engine.tokens = TokenVerifier(hmacSecret: config.tokenHMACSecret, rsaPublicKey: rsaKey, ecdsaPublicKey: ecdsaKey,
                                      keySet: jwks?.keys, audience: config.tokenAudience, issuer: config.tokenIssuer)
        // Fetched before the hub listens but not waited for: a JWKS that is down leaves the
        // hub up, refusing the tokens whose keys it lacks until a refetch brings them.
        jwks?.keys.refetch(because: "start")
        engine.allowAnonymous = config.allowAnonymous
        // Made before the node: the proxy backend counts its calls from the first connection.
        let metrics = MetricsRegistry()
        var proxy: HTTPProxyBackend?
        let namespaceProxyEndpoints = config.namespaceProxyEndpoints
        if !config.proxyEndpoints.isEmpty || !namespaceProxyEndpoints.isEmpty {
            var settings = HTTPProxyBackend.Settings()
            settings.endpoints = config.proxyEndpoints
            settings.namespaceEndpoints = namespaceProxyEndpoints
            settings.timeout = config.proxyTimeout
            settings.timeouts = config.proxyTimeouts
            settings.staticHeaders = config.proxyStaticHTTPHeaders
            settings.maxInFlight = config.proxyMaxInFlight
            do { proxy = try HTTPProxyBackend(settings: settings, metrics: metrics, logger: Logger(label: "hub.proxy")) } catch {
                throw HubError.config(error.description)
            }
            engine.proxy = proxy
        }
        engine.pingInterval = config.pingInterval
        engine.pongTimeout = config.pongTimeout
        engine.connectTimeout = config.connectTimeout
        engine.maxSubscriptionsPerClient = config.maxSubscriptions
        engine.nodeName = config.nodeName
        if engine.namespaces.namespaces["meetings"] == nil {
            engine.namespaces.namespaces["meetings"] = MeetingsPipeline.channelOptions
        }
        engine.version = HubVersion.string

        let broker: any Broker
        let presence: any PresenceStore
        var redis: (RedisBroker, RedisPresenceStore)?
        // A node announces itself every few seconds and drops out of /api/info after three
        // missed announcements: with a short presence TTL a crashed node vanishes as fast.
        let announceEvery = max(1, min(5, Int(config.presenceTTL / 3)))
        if config.engine == "redis" {
            let redisLogger = Logger(label: "hub.redis")
            let redisBroker = config.redisCluster.isEmpty
                ? RedisBroker(shards: config.redisShards(logger: redisLogger), nodeTTL: 3 * announceEvery, logger: redisLogger)
                : RedisBroker(cluster: config.redisCluster.compactMap(HubConfig.clusterSeed), nodeTTL: 3 * announceEvery, logger: redisLogger)
            let redisPresence = RedisPresenceStore(broker: redisBroker, ttl: config.presenceTTL)
            redis = (redisBroker, redisPresence)
            broker = redisBroker
            presence = redisPresence
        } else {
            broker = MemoryBroker()
            presence = MemoryPresenceStore()
        }
        // The record store behind RESTCompat: SQLite under --data-dir, or Redis with the redis engine.
        var publicationStream: PublicationStream?
        let streamTargets = config.publicationStreamTargets
        if !streamTargets.isEmpty {
            var command: PublicationStream.RedisCommand?
            if let broker = redis?.0 {
                command = { key, arguments, completion in
                    broker.send(key: key, arguments) { reply in completion(!reply.isError) }
                }
            }
            do {
                publicationStream = try PublicationStream(targets: streamTargets, settings: config.publicationStream, redis: command,
                                                          metrics: metrics, logger: Logger(label: "hub.publication-stream"))
            } catch { throw HubError.config(error.description) }
            engine.publicationStream = publicationStream
        }
        let store: any RecordStore
        if let redis {
            store = RedisRecordStore(broker: redis.0, messageIndex: ConversationArchive.messageIndex, wordIndex: ConversationArchive.textIndex,
                                     memberSets: [GatewayRecord.free])
        } else {
            do {
                store = try SQLiteRecordStore(path: config.dataDir + "/hub.db", textIndex: ConversationArchive.textIndex,
                                              memberSets: [GatewayRecord.free])
            } catch {
                throw HubError.startup("\(error)")
            }
        }
        if engine.namespaces.namespaces["cache"] == nil { engine.namespaces.namespaces["cache"] = CacheChannels.defaultOptions }
        let node = Node(config: engine, broker: broker, presence: presence,
                        encoder: WebSocketFrameEncoder(), logger: Logger(label: "hub.channels"))
        redis?.0.start()
        // Analytics and search walk the messages until this has counted those written before;
        // tried every second (from the first tick, once Redis is connected) until it succeeds.
        let indexLogger = Logger(label: "hub.store")
        let prepareIndex: @Sendable () -> Void = {
            // The free-gateway set, rebuilt from the records once Redis answers (records from
            // before the set existed, or written by other tools while no hub ran).
            (store as? RedisRecordStore)?.prepareMemberSets { result in
                switch result {
                case .success(let members): indexLogger.notice("member sets rebuilt from the records (\(members) free gateways)")
                case .failure(let error): indexLogger.warning("member sets not rebuilt yet: \(error)")
                }
            }
            (store as? RedisRecordStore)?.prepareMessageIndex { result in
                switch result {
                case .success(let added): indexLogger.notice("analytics counters and word index ready (\(added) earlier messages counted now)")
                case .failure(let error): indexLogger.warning("analytics counters not ready yet, analytics walk every message: \(error)")
                }
            }
        }
        let routerBox = RouterBox()
        let cache = CacheJobService(node: node, store: store, settings: config.cacheSettings, logger: Logger(label: "hub.cache"))
        CacheWorkerRPC(service: cache, serverAPIKey: config.apiKey).register(on: node)
        CacheJobsSnapshot(service: cache).register(on: node)
        let gateways = GatewayRooms(config: config, store: store, node: node, redisStore: store as? RedisRecordStore)
        let limiter: any RateLimiter = redis.map { RedisRateLimiter(broker: $0.0, logger: Logger(label: "hub.ratelimit")) } ?? MemoryRateLimiter()
        let meetings = try makeMeetings(node: node, store: store, limiter: limiter)
        let june = makeJune(node: node, store: store, limiter: limiter, metrics: metrics, tokens: engine.tokens)
        let gatewayRoutes = gateways.routes.map { route in
            route.method == "GET" && route.pattern == "/status" ? RoomProxy.sharedStatus(route, otherwise: june.status) : route
        }
        let serverAPI = ServerAPI(node: node)
        let routes = Health(node: node).routes + ClientStreams(node: node, maxMessageSize: config.maxMessageSize).routes + serverAPI.routes + serverAPI.inspectorRoutes + gatewayRoutes
            + APIDocs(version: HubVersion.string, router: { routerBox.router }).routes
            + TeamCacheAPI(service: cache).routes
            + june.routes
            + meetings.routes
            + DashboardFiles(root: config.dashboardDir, libraryRoot: config.dashboardLibDir).routes
        // Traces only with an endpoint: otherwise no exporter thread, no tracer, no spans.
        let exporter = config.spanExporterSettings.map { SpanExporter(settings: $0, logger: Logger(label: "hub.otel")) }
        let router = Router(routes: routes, credentials: Credentials(serverAPIKey: config.apiKey, apiKeys: ["teamcache": config.cacheAPIKey ?? ""],
                                                                     bearerTokens: gateways.tokens, tokens: engine.tokens),
                            limiter: limiter, limitClasses: config.rateLimitClasses, metrics: metrics, corsOrigins: config.corsOrigins,
                            uploads: uploads, tracer: exporter.map(Tracer.init(exporter:)), node: node)
        routerBox.router = router
        if let exporter {
            metrics.gauge("hub_trace_spans_exported_total", type: "counter", help: "Spans the OTLP collector accepted.") {
                Double(exporter.exported.load(ordering: .relaxed))
            }
            metrics.gauge("hub_trace_spans_dropped_total", type: "counter", help: "Spans dropped: export queue full or export failed.") {
                Double(exporter.dropped.load(ordering: .relaxed))
            }
            exporter.start()
            logger.notice("exporting traces to http://\(exporter.settings.endpoint.address)\(exporter.settings.endpoint.path) as \(config.otelServiceName)")
        }
        let counters = node.counters
        metrics.gauge("hub_connections", help: "Client connections on this node.") { Double(node.clientCount) }
        metrics.gauge("hub_subscriptions", help: "Channel subscriptions on this node.") { Double(node.info().subscriptions) }
        metrics.gauge("hub_publications_total", type: "counter", help: "Publications accepted by this node.") { Double(counters.publications.load(ordering: .relaxed)) }
        metrics.gauge("hub_deliveries_total", type: "counter", help: "Publications queued to subscribers on this node.") { Double(counters.deliveries.load(ordering: .relaxed)) }
        metrics.gauge("hub_slow_disconnects_total", type: "counter", help: "Clients disconnected for not keeping up.") { Double(counters.slowDisconnects.load(ordering: .relaxed)) }
        metrics.gauge("hub_client_connects_total", type: "counter", help: "Successful client connects.") { Double(counters.connects.load(ordering: .relaxed)) }
        metrics.gauge("hub_command_errors_total", type: "counter", help: "Client commands answered with an error.") { Double(counters.commandErrors.load(ordering: .relaxed)) }
        // Live heap next to what malloc holds from the system: resident memory alone cannot tell
        // a leak (in use grows) from fragmentation (held grows, in use does not).
        metrics.gauge("hub_heap_in_use_bytes", help: "Heap bytes allocated and not yet freed, all malloc arenas (glibc mallinfo2: uordblks + hblkhd).") {
            let info = mallinfo2()
            return Double(info.uordblks + info.hblkhd)
        }
        metrics.gauge("hub_heap_held_bytes", help: "Heap bytes malloc holds from the system, in use or free, all arenas (glibc mallinfo2: arena + hblkhd).") {
            let info = mallinfo2()
            return Double(info.arena + info.hblkhd)
        }
        let settings = EdgeSettings(
            host: config.host, port: config.port, maxMessageSize: config.maxMessageSize, maxBodySize: config.maxBodySize,
            maxQueuedBytes: config.clientQueueMaxBytes, maxQueuedMessages: config.clientQueueMaxMessages,
            corsOrigins: config.corsOrigins, chat: june.chat,
            transport: TransportSettings(config: config), structuredAccessLog: config.logFormat == "json",
            proxyHeaderNames: proxy == nil ? [] : config.proxyHTTPHeaders)

        let loops = (0..<config.threads).map { ServiceLoop(index: $0, node: node, router: router, settings: settings, logger: logger) }
        for loop in loops { try loop.start() }
        // From now on the Redis connections are served on the loops' threads (RedisHost).
        redis?.0.attach(hosts: loops)
        cache.start()
        gateways.start()
        meetings.start(interval: max(0.5, min(5, config.meetingsTaskLease / 2)))

        if !engine.tokens.isConfigured && !config.allowAnonymous && config.proxyEndpoints[.connect] == nil {
            logger.warning("no token secret or key configured and anonymous access is off: clients cannot connect (set HUB_TOKEN_HMAC_SECRET)")
        }
        if config.cacheAPIKey?.isEmpty ?? true {
            logger.warning("no cache API key configured: /api/v1/cache/* refuses every call (set API_GATEWAY_KEY)")
        }
        if config.apiKey == nil {
            logger.warning("no API key configured: the server API (/api/*) refuses every call (set HUB_API_KEY)")
        }
        if access(config.dashboardDir + "/index.html", R_OK) != 0 {
            logger.warning("no dashboard at \(config.dashboardDir)/index.html: / answers 404 (set --dashboard-dir to the repository's dashboard folder)")
        }
        let redisShardCount = config.redisSentinels.isEmpty ? config.redisURLs.count : config.redisMasterNames.count
        let engineDescription = config.engine != "redis" ? "memory"
            : !config.redisCluster.isEmpty ? "redis(cluster)"
            : "redis(\(redisShardCount) shard\(redisShardCount == 1 ? "" : "s")\(config.redisSentinels.isEmpty ? "" : " via sentinel"))"
        let shownHost = config.host == "0.0.0.0" ? "localhost" : config.host
        let (http, ws) = config.tlsCert == nil ? ("http", "ws") : ("https", "wss")
        logger.notice("hub serving \(http)://\(shownHost):\(config.port) (\(ws)://\(shownHost):\(config.port)/connection/websocket) engine=\(engineDescription) threads=\(config.threads) version=\(HubVersion.string)")

        // Visible to the other nodes' `info` and surveys from the start, not only after the first tick.
        node.announce()
        // Housekeeping: once a second each loop checks its connections' deadlines.
        let ticker = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "hub.ticker"))
        var ticks = 0
        let presenceRefreshEvery = max(1, Int(config.presenceTTL / 3))
        let jwksRefreshInterval = config.tokenJWKSRefreshInterval
        ticker.schedule(deadline: .now() + 1, repeating: 1)
        ticker.setEventHandler {
            for loop in loops { loop.requestTick() }
            ticks += 1
            if ticks % 60 == 0 { node.sweepStreams() }
            if (ticks - 1) % announceEvery == 0 { node.announce() }
            if let presence = redis?.1, ticks % presenceRefreshEvery == 0 { presence.refresh() }
            if ticks % 300 == 0 { june.sweep() }
            jwks?.keys.refreshIfOlder(than: jwksRefreshInterval)
            june.tick()
            prepareIndex()
        }
        ticker.resume()

        stop.wait()
        logger.notice("shutting down: closing \(node.clientCount) connections")
        cache.shutdown()
        for loop in loops { loop.requestStop() }
        for loop in loops { loop.join() }
        gateways.stop()
        jwks?.endpoint.shutdown()
        proxy?.shutdown()
        publicationStream?.shutdown()
        // Last, so the spans of requests answered while stopping go out too.
        exporter?.shutdown()
        ticker.cancel()
        meetings.stop()
        redis?.0.stop()
        (store as? SQLiteRecordStore)?.close()
        logger.notice("stopped")
    }
}

extension HubConfig {
    /// Cache job settings; the worker identity is kept in the data directory so a restarted hub
    /// resumes the jobs it held.
    var cacheSettings: CacheSettings {
        var settings = CacheSettings()
        settings.root = cacheRoot
        settings.pathPrefixes = cachePathPrefixes
        settings.worker = cacheWorker
        settings.concurrency = cacheConcurrency
        settings.maxReadRate = cacheMaxReadRate * 1_048_576
        settings.progressFileThreshold = cacheProgressFileThreshold
        settings.progressTimeThreshold = cacheProgressTimeThreshold
        settings.retention = cacheJobRetention
        let idPath = dataDir + "/cache-worker-id"
        if let bytes = FileBytes.read(idPath), bytes.count == 36 {
            settings.workerID = String(decoding: bytes, as: UTF8.self)
        } else if let file = fopen(idPath, "wb") {
            _ = settings.workerID.withCString { fputs($0, file) }
            fclose(file)
        }
        return settings
    }
}

extension HubServer {
    /// Seed 003 (June Agent): users, tokens, chat and the AI services over channels.
    struct June {
        var routes: [Route]
        var chat: ChatService
        var sweep: @Sendable () -> Void
        /// Once a second: which services have workers.
        var tick: @Sendable () -> Void
        /// Seed 003's `GET /status`, served by the route seed 000 shares.
        var status: @Sendable (RouteContext) -> Void
    }

    func makeJune(node: Node, store: any RecordStore, limiter: any RateLimiter, metrics: MetricsRegistry, tokens: TokenVerifier) -> June {
        let users = UserDirectory(store: store, node: node, passwordIterations: config.passwordIterations)
        let authTokens = AuthTokens(secret: config.tokenHMACSecret, accessVerifier: tokens, store: store,
                                    audience: config.tokenAudience, issuer: config.tokenIssuer)
        let services = ServiceDesk(node: node, timeout: config.serviceTimeout, metrics: metrics)
        let cache = ServiceCache(store: store, ttl: config.serviceCacheTTL, metrics: metrics)
        let chatLimits = config.rateLimitClasses.first { $0.name == "june-chat" }?.limits ?? []
        // Anonymous legacy sessions connect with a token the hub signs for them.
        let signer: (@Sendable (String) -> String?)? = authTokens.canIssue ? { @Sendable user in authTokens.access(user: user, role: "user") } : nil
        let chat = ChatService(node: node, store: store, services: services, cache: cache, users: users, limiter: limiter,
                               chatLimits: chatLimits, allowAnonymous: config.chatAllowAnonymous, signer: signer)
        if let admin = config.adminUser, let password = config.adminPassword {
            let log = logger
            let done = DispatchSemaphore(value: 0)
            users.ensureAdmin(username: admin, password: password) { result in
                switch result {
                case .success(true): log.notice("created the first admin user '\(admin)'")
                case .success(false): break
                case .failure(let error): log.error("could not create the admin user: \(error)")
                }
                done.signal()
            }
            done.wait()
        }
        let events = AdminEvents(node: node)
        let systemConfig = LiveSettings(name: "config", store: store, node: node, events: events,
                                        defaults: [("maintenance_mode", false)], historyLimit: config.configHistorySize,
                                        validate: JuneSettingsRules.system)
        let botConfig = LiveSettings(name: "bot", store: store, node: node, events: events, defaults: JuneSettingsRules.botDefaults,
                                     historyLimit: config.configHistorySize, validate: JuneSettingsRules.bot)
        for settings in [systemConfig, botConfig] {
            let done = DispatchSemaphore(value: 0)
            let log = logger
            settings.load { result in
                if case .failure(let error) = result { log.error("could not read the \(settings.name) settings: \(error)") }
                done.signal()
            }
            done.wait()
        }
        let policy = chat.policy
        systemConfig.onApply { policy.apply(config: $0) }
        botConfig.onApply { policy.apply(bot: $0) }
        let commands = BotCommands(store: store, node: node)
        policy.answerCommands { text, answer in commands.reply(to: text, completion: answer) }
        let monitor = ServiceMonitor(node: node, store: store, events: events)
        metrics.gauge("hub_service_workers", help: "Workers connected per seed 003 service, as the service monitor last saw them.") {
            monitor.snapshot.sorted { $0.key < $1.key }.map { ([("service", $0.key)], Double($0.value.workers)) }
        }
        metrics.gauge("hub_service_up", help: "1 while a seed 003 service has a worker, else 0.") {
            monitor.snapshot.sorted { $0.key < $1.key }.map { ([("service", $0.key)], $0.value.up ? 1 : 0) }
        }
        let console = JuneAdminConsole(archive: ConversationArchive(store: store, events: events), config: systemConfig, bot: botConfig,
                                       commands: commands, monitor: monitor, tokens: authTokens, node: node, store: store, services: services)
        let routes = JuneAuth(users: users, tokens: authTokens, allowLegacyLogin: config.chatAllowAnonymous).routes
            + JuneUserAdmin(users: users, events: events).routes
            + JuneAI(chat: chat, services: services, tokens: authTokens).routes
            + console.routes
        return June(routes: routes, chat: chat, sweep: { cache.sweep(); authTokens.sweep() }, tick: { monitor.check() },
                    status: { console.status($0) })
    }
}

extension HubServer {
    /// The meetings pipeline (seed 004): storage under --data-dir/meetings, Telegram keys.
    func makeMeetings(node: Node, store: any RecordStore, limiter: any RateLimiter) throws -> MeetingsPipeline {
        var settings = MeetingsSettings()
        settings.maxUploadBytes = config.meetingsMaxUploadBytes
        settings.linkTTL = config.meetingsLinkTTL
        settings.tokenTTL = config.meetingsTokenTTL
        settings.taskLease = config.meetingsTaskLease
        settings.telegramBotToken = config.telegramBotToken.flatMap { $0.isEmpty ? nil : $0 }
        settings.telegramAuthMaxAge = config.telegramAuthMaxAge
        settings.adminTelegramIDs = Set(config.meetingsAdminTelegramIDs)
        settings.tokenSecret = config.tokenHMACSecret.flatMap { $0.isEmpty ? nil : $0 }
        if let path = config.telegramPassportKeyPath {
            guard let bytes = FileBytes.read(path) else { throw HubError.config("cannot read Telegram Passport key \(path)") }
            let pem = String(decoding: bytes, as: UTF8.self)
            guard Crypto.isUsablePrivateKey(pem: pem) else { throw HubError.config("\(path) holds no usable PEM private key") }
            settings.telegramPassportKeyPEM = pem
        }
        let storage: LocalFolderStorage
        do { storage = try LocalFolderStorage(root: config.dataDir + "/meetings") } catch { throw HubError.startup("\(error)") }
        return MeetingsPipeline(node: node, store: store, storage: storage, settings: settings, limiter: limiter,
                                rateLimitClasses: config.rateLimitClasses, logger: Logger(label: "hub.meetings"))
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

/// The directory multipart uploads stream into.
enum UploadDirectory {
    /// Creates it, and deletes temp files a crashed run left: every upload in it belongs to a
    /// request in flight, and at startup there are none.
    static func prepare(_ path: String) throws {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw HubError.startup("cannot create upload directory \(path): \(String(cString: strerror(errno)))")
        }
        guard let directory = opendir(path) else {
            throw HubError.startup("cannot read upload directory \(path): \(String(cString: strerror(errno)))")
        }
        defer { closedir(directory) }
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasPrefix("upload-") { unlink(path + "/" + name) }
        }
    }
}
