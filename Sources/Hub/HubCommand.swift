import ArgumentParser
import Channels
import Glibc
import Logging
import RESTCompat

@main
struct HubCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hub",
        abstract: "A WebSocket-first real-time hub: Centrifugo-protocol channels plus the seed systems' REST APIs.",
        discussion: """
            Every option can also be set with an environment variable (HUB_ plus the option name in
            upper case with underscores, e.g. HUB_TOKEN_HMAC_SECRET) or in the JSON config file given
            by --config (the option name with underscores, e.g. "token_hmac_secret"). Flags win over
            the environment, the environment over the file. Prefer the environment or the file for
            secrets: flags are visible in the process list. See docs/configuration.md.
            """,
        version: HubVersion.string
    )

    @Option(help: "JSON config file.") var config: String?
    @Option(help: "Address to listen on (default 0.0.0.0).") var host: String?
    @Option(help: "Port for HTTP and WebSocket (default 8000).") var port: Int?
    @Option(help: "Service threads, one libwebsockets context each (default: number of cores).") var threads: Int?
    @Option(help: "Directory for durable state (default ./data).") var dataDir: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical (default info).") var logLevel: String?
    @Option(help: "text, or json for one JSON object per line (default text).") var logFormat: String?
    @Option(help: "This node's name in /api/info (default hub).") var nodeName: String?
    @Option(help: "HMAC secret for HS256/384/512 connection and subscription tokens.") var tokenHmacSecret: String?
    @Option(help: "PEM file with the RSA public key for RS256/384/512 tokens.") var tokenRsaPublicKey: String?
    @Option(help: "PEM file with the ECDSA public key (P-256 for ES256, P-384 for ES384 tokens).") var tokenEcdsaPublicKey: String?
    @Option(help: "http:// URL of a JWKS: RS256/384/512, ES256/384 and EdDSA tokens are checked with its key named by their kid.") var tokenJwksUrl: String?
    @Option(help: "Seconds a JWKS fetch may take (default 5).") var tokenJwksTimeout: Double?
    @Option(help: "Least seconds between two JWKS fetches, however many tokens name an unknown kid (default 10).") var tokenJwksRefetchInterval: Double?
    @Option(help: "Seconds after which the JWKS is fetched again anyway, so withdrawn keys stop working (default 300).") var tokenJwksRefreshInterval: Double?
    @Option(help: "Required token audience (aud claim).") var tokenAudience: String?
    @Option(help: "Required token issuer (iss claim).") var tokenIssuer: String?
    @Option(help: "Connect proxy: http:// URL the hub POSTs a connect without a token to; the backend's answer decides.") var proxyConnectEndpoint: String?
    @Option(help: "Refresh proxy: http:// URL asked at a proxied session's expiry to extend or end it.") var proxyRefreshEndpoint: String?
    @Option(help: "Subscribe proxy: http:// URL deciding subscriptions in namespaces with proxy_subscribe.") var proxySubscribeEndpoint: String?
    @Option(help: "Publish proxy: http:// URL deciding (and rewriting) client publications in namespaces with proxy_publish.") var proxyPublishEndpoint: String?
    @Option(help: "RPC proxy: http:// URL serving client RPCs the hub does not serve itself.") var proxyRpcEndpoint: String?
    @Option(help: "Sub-refresh proxy: http:// URL extending subscriptions in namespaces with proxy_sub_refresh.") var proxySubRefreshEndpoint: String?
    @Option(help: "Seconds a proxy call may take, connect included (default 1).") var proxyTimeout: Double?
    @Option(help: "Seconds a connect proxy call may take (default --proxy-timeout).") var proxyConnectTimeout: Double?
    @Option(help: "Seconds a refresh proxy call may take (default --proxy-timeout).") var proxyRefreshTimeout: Double?
    @Option(help: "Seconds a subscribe proxy call may take (default --proxy-timeout).") var proxySubscribeTimeout: Double?
    @Option(help: "Seconds a publish proxy call may take (default --proxy-timeout).") var proxyPublishTimeout: Double?
    @Option(help: "Seconds an RPC proxy call may take (default --proxy-timeout).") var proxyRpcTimeout: Double?
    @Option(help: "Seconds a sub-refresh proxy call may take (default --proxy-timeout).") var proxySubRefreshTimeout: Double?
    @Option(help: "Client request headers forwarded to proxies, comma-separated (e.g. Cookie,Authorization).") var proxyHttpHeaders: String?
    @Option(help: "Proxy calls in flight per node (default 256); more are answered with a temporary error.") var proxyMaxInFlight: Int?
    @Option(help: "Bytes of events each publication stream target may have queued (default 16777216); more are dropped and counted.") var publicationStreamQueueMaxBytes: Int?
    @Option(help: "Events per publication stream POST or XADD run (default 100).") var publicationStreamBatchSize: Int?
    @Option(help: "Seconds one publication stream POST may take, connect included (default 5).") var publicationStreamTimeout: Double?
    @Option(help: "Longest wait between publication stream retries, seconds (default 10).") var publicationStreamRetryMaxDelay: Double?
    @Option(help: "Key for the server API (/api/*): X-API-Key or 'Authorization: apikey <key>'.") var apiKey: String?
    @Flag(help: "Let clients connect without a token (as anonymous users).") var allowAnonymous = false
    @Option(help: "Seconds between server pings (default 25).") var pingInterval: Double?
    @Option(help: "Seconds a client has to answer a ping (default 10).") var pongTimeout: Double?
    @Option(help: "Seconds a new connection has to send connect (default 10).") var connectTimeout: Double?
    @Option(help: "Largest WebSocket message accepted, bytes (default 65536); larger closes with 1009.") var maxMessageSize: Int?
    @Option(help: "Largest HTTP request body, bytes (default 10485760); larger gets 413.") var maxBodySize: Int?
    @Option(help: "Directory multipart uploads are streamed into before a route keeps or drops them (default <data-dir>/uploads).") var uploadDir: String?
    @Option(help: "Largest multipart/form-data body, bytes (default 536870912); larger gets 413.") var maxUploadSize: Int?
    @Option(help: "Largest file in a multipart/form-data body, bytes (default 536870912); larger gets 413.") var maxUploadFileSize: Int?
    @Option(help: "Outbound queue limit per connection, bytes (default 1048576); over it the client is disconnected as slow.") var clientQueueMaxBytes: Int?
    @Option(help: "Outbound queue limit per connection, messages (default 10000).") var clientQueueMaxMessages: Int?
    @Option(help: "Subscriptions allowed per connection (default 128).") var maxSubscriptions: Int?
    @Option(help: "Value of Access-Control-Allow-Origin (default *).") var corsOrigins: String?
    @Option(help: "PEM certificate (chain) for TLS: the port then speaks only HTTPS/WSS, with HTTP/2 for REST (needs --tls-key).") var tlsCert: String?
    @Option(help: "PEM private key of --tls-cert.") var tlsKey: String?
    @Flag(help: "Offer HTTP/2 (ALPN h2) on the TLS port; headers lws has no name for (X-API-Key…) do not reach routes over h2.") var http2 = false
    @Option(help: "Offer permessage-deflate to WebSocket clients, true or false (default false: a zlib context per compressing connection).") var websocketCompression: Bool?
    @Option(help: "Seconds for a TLS handshake, and between request body chunks (default 10).") var handshakeTimeout: Int?
    @Option(help: "Seconds a client has to send complete request headers (default 10).") var headerTimeout: Int?
    @Option(help: "Seconds an HTTP keep-alive connection may wait for its next request (default 5).") var idleTimeout: Int?
    @Option(help: "Seconds a client has to send a whole request body (default 60).") var bodyTimeout: Int?
    @Option(help: "Largest request head (request line and headers), bytes (default 8192); larger gets 431.") var maxHeaderSize: Int?
    @Option(help: "Connections open at once, all clients together (default 100000); more get 503 and are closed.") var maxConnections: Int?
    @Option(help: "Connections open at once from one IP address, 0 for no limit (default 0).") var maxConnectionsPerIp: Int?
    @Flag(help: "Let other processes listen on the same port too (SO_REUSEPORT); without it a second hub on the port fails to start.") var reusePort = false
    @Option(help: "memory (one node, the default) or redis (many nodes sharing Redis).") var engine: String?
    @Option(help: "Redis address for the redis engine, redis://[:password@]host[:port][/db]; repeat or comma-separate for shards.")
    var redisUrl: [String] = []
    @Option(help: "Redis Cluster seed nodes for the redis engine, host:port (or redis://[:password@]host:port); repeat or comma-separate.")
    var redisCluster: [String] = []
    @Option(help: "Redis Sentinels for the redis engine, host:port, comma-separated: the primaries are found and followed through them.")
    var redisSentinel: String?
    @Option(help: "With --redis-sentinel: the master name the sentinels monitor; comma-separate several for shards.") var redisMasterName: String?
    @Option(help: "With --redis-sentinel: password of the sentinels (prefer HUB_REDIS_SENTINEL_PASSWORD).") var redisSentinelPassword: String?
    @Option(help: "With --redis-sentinel: password of the primaries the sentinels name (prefer HUB_REDIS_PASSWORD).") var redisPassword: String?
    @Option(help: "Replicas that must have a publication (with history) or record write before it is acknowledged, via WAIT (default 0: off).")
    var redisMinReplicasAck: Int?
    @Option(help: "Milliseconds WAIT waits for those replicas before the write gets a temporary error (default 500).") var redisReplicasAckTimeout: Double?
    @Option(help: "Seconds a crashed node's clients stay in presence with the redis engine (default 60).") var presenceTtl: Double?
    @Option(help: "Cache jobs: the mount point (cache root) files are read from (also CACHE_ROOT).") var cacheRoot: String?
    @Option(help: "Cache jobs: the X-API-Key of /api/v1/cache/* (also API_GATEWAY_KEY).") var cacheApiKey: String?
    @Option(help: "Cache jobs: run the built-in cache worker, true or false (default true).") var cacheWorker: Bool?
    @Option(help: "Cache jobs: files the built-in worker reads at once (default 4).") var cacheConcurrency: Int?
    @Option(help: "Cache jobs: most MB/s the built-in worker reads, 0 for no limit (default 0).") var cacheMaxReadRate: Double?
    @Option(help: "Cache jobs: publish progress after this many files (default 10; also CACHE_PROGRESS_FILE_THRESHOLD).") var cacheProgressFileThreshold: Int?
    @Option(help: "Cache jobs: publish progress after this many ms (default 2000; also CACHE_PROGRESS_TIME_THRESHOLD).") var cacheProgressTimeThreshold: Double?
    @Option(help: "Cache jobs: seconds a finished job is kept before it is deleted, 0 keeps them all (default 604800).") var cacheJobRetention: Double?
    @Option(help: "Cache jobs: client mount prefixes stripped from absolute paths, comma-separated ('*' is one segment).") var cachePathPrefixes: String?

    @Option(help: "User name of the first admin, created at start when missing (password: HUB_ADMIN_PASSWORD or the config file).") var adminUser: String?
    @Flag(help: "Seed 003 legacy access: /ws/{user_id} without a token, /auth/login and /auth/token with a bare user_id.") var chatAllowAnonymous = false
    @Option(help: "Seconds to wait for an LLM/TTS/STT/agent worker's answer before 504 (default 30).") var serviceTimeout: Double?
    @Option(help: "Seconds service answers stay cached in the record store; 0 turns the cache off (default 3600).") var serviceCacheTtl: Double?
    @Option(help: "Admin settings history entries kept, the oldest dropped (default 1000).") var configHistorySize: Int?
    @Option(help: "PBKDF2-HMAC-SHA256 iterations for new password hashes (default 600000).") var passwordIterations: Int?
    @Option(help: "Seed 000's allowedToken: bearer token for the gateway routes.") var gatewayAllowedToken: String?
    @Option(help: "Seed 000's adminToken: bearer token for /admin/statuses (passes everywhere allowedToken does).") var gatewayAdminToken: String?
    @Option(help: "Folder served by GET /assets/{file_name} (default: none, every file is 404).") var gatewayAssetsDir: String?
    @Option(help: "Seconds to connect to a gateway (default 3).") var gatewayConnectTimeout: Double?
    @Option(help: "Seconds for a whole call to a gateway (default 10).") var gatewayTimeout: Double?
    @Option(help: "Seconds between monitor polls of every gateway's /gateway/status (default 5).") var gatewayMonitorInterval: Double?
    @Option(help: "Failed polls in a row before a gateway's mapping is removed (default 3).") var gatewayMonitorFailures: Int?
    @Option(help: "Folder of the dashboard served at / and /ui/{file} (default ./dashboard).") var dashboardDir: String?
    @Option(help: "Folder of the JavaScript client served at /ui/lib/{file} (default ./clients/js).") var dashboardLibDir: String?
    @Option(help: "OTLP/HTTP base URL traces are posted to (<url>/v1/traces), e.g. http://127.0.0.1:4318; unset, no traces (also OTEL_EXPORTER_OTLP_ENDPOINT).")
    var otelEndpoint: String?
    @Option(help: "service.name of the exported spans (default hub; also OTEL_SERVICE_NAME).") var otelServiceName: String?
    @Option(help: "Meetings: largest upload, bytes (default 524288000); larger gets 413 FILE_TOO_LARGE.") var meetingsMaxUploadBytes: Int?
    @Option(help: "Meetings: seconds an artifact download link stays valid (default 3600).") var meetingsLinkTtl: Double?
    @Option(help: "Meetings: lifetime of access tokens issued after a Telegram check, seconds (default 86400).") var meetingsTokenTtl: Double?
    @Option(help: "Meetings: seconds a worker keeps a task without reporting before it is requeued (default 120).") var meetingsTaskLease: Double?
    @Option(help: "Meetings: Telegram bot token for Login Widget checks (prefer HUB_TELEGRAM_BOT_TOKEN).") var telegramBotToken: String?
    @Option(help: "Meetings: PEM file with the bot's RSA private key for Telegram Passport.") var telegramPassportKey: String?
    @Option(help: "Meetings: oldest Login Widget auth_date accepted, seconds (default 86400).") var telegramAuthMaxAge: Double?
    @Option(help: "Meetings: comma-separated Telegram user ids that get the admin role.") var meetingsAdminTelegramIds: String?

    mutating func run() throws {
        let config: HubConfig
        do {
            config = try resolve(environment: Environment.current)
        } catch {
            throw ValidationError("\(error)")
        }
        try HubServer(config: config).run()
    }

    /// Merges defaults, file, environment and flags, in that order of precedence (last wins).
    func resolve(environment env: [String: String]) throws -> HubConfig {
        var c = HubConfig()
        if let path = config ?? env["HUB_CONFIG"] {
            guard let bytes = FileBytes.read(path) else { throw HubError.config("cannot read config file \(path)") }
            let json: JSONValue
            do { json = try JSONParser.parse(bytes) } catch { throw HubError.config("config file \(path): \(error)") }
            try c.apply(file: json)
        }
        func envInt(_ name: String) throws -> Int? {
            guard let raw = env[name] else { return nil }
            guard let value = Int(raw) else { throw HubError.config("\(name) must be an integer") }
            return value
        }
        func envDouble(_ name: String) throws -> Double? {
            guard let raw = env[name] else { return nil }
            guard let value = Double(raw) else { throw HubError.config("\(name) must be a number") }
            return value
        }
        func envBool(_ name: String) throws -> Bool? {
            guard let raw = env[name]?.lowercased() else { return nil }
            switch raw {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off", "": return false
            default: throw HubError.config("\(name) must be true or false")
            }
        }
        c.host = host ?? env["HUB_HOST"] ?? c.host
        c.port = try port ?? envInt("HUB_PORT") ?? c.port
        c.threads = try threads ?? envInt("HUB_THREADS") ?? c.threads
        c.dataDir = dataDir ?? env["HUB_DATA_DIR"] ?? c.dataDir
        c.logLevel = logLevel ?? env["HUB_LOG_LEVEL"] ?? c.logLevel
        c.logFormat = logFormat ?? env["HUB_LOG_FORMAT"] ?? c.logFormat
        c.nodeName = nodeName ?? env["HUB_NODE_NAME"] ?? c.nodeName
        c.tokenHMACSecret = tokenHmacSecret ?? env["HUB_TOKEN_HMAC_SECRET"] ?? c.tokenHMACSecret
        c.tokenRSAPublicKeyPath = tokenRsaPublicKey ?? env["HUB_TOKEN_RSA_PUBLIC_KEY"] ?? c.tokenRSAPublicKeyPath
        c.tokenECDSAPublicKeyPath = tokenEcdsaPublicKey ?? env["HUB_TOKEN_ECDSA_PUBLIC_KEY"] ?? c.tokenECDSAPublicKeyPath
        c.tokenJWKSURL = tokenJwksUrl ?? env["HUB_TOKEN_JWKS_URL"] ?? c.tokenJWKSURL
        c.tokenJWKSTimeout = try tokenJwksTimeout ?? envDouble("HUB_TOKEN_JWKS_TIMEOUT") ?? c.tokenJWKSTimeout
        c.tokenJWKSRefetchInterval = try tokenJwksRefetchInterval ?? envDouble("HUB_TOKEN_JWKS_REFETCH_INTERVAL") ?? c.tokenJWKSRefetchInterval
        c.tokenJWKSRefreshInterval = try tokenJwksRefreshInterval ?? envDouble("HUB_TOKEN_JWKS_REFRESH_INTERVAL") ?? c.tokenJWKSRefreshInterval
        c.tokenAudience = tokenAudience ?? env["HUB_TOKEN_AUDIENCE"] ?? c.tokenAudience
        c.tokenIssuer = tokenIssuer ?? env["HUB_TOKEN_ISSUER"] ?? c.tokenIssuer
        let proxyFlags: [(ProxyKind, String?)] = [
            (.connect, proxyConnectEndpoint), (.refresh, proxyRefreshEndpoint), (.subscribe, proxySubscribeEndpoint),
            (.publish, proxyPublishEndpoint), (.rpc, proxyRpcEndpoint), (.subRefresh, proxySubRefreshEndpoint),
        ]
        for (kind, flag) in proxyFlags {
            if let url = flag ?? env["HUB_PROXY_\(kind.rawValue.uppercased())_ENDPOINT"] { c.proxyEndpoints[kind] = url }
        }
        c.proxyTimeout = try proxyTimeout ?? envDouble("HUB_PROXY_TIMEOUT") ?? c.proxyTimeout
        let timeoutFlags: [(ProxyKind, Double?)] = [
            (.connect, proxyConnectTimeout), (.refresh, proxyRefreshTimeout), (.subscribe, proxySubscribeTimeout),
            (.publish, proxyPublishTimeout), (.rpc, proxyRpcTimeout), (.subRefresh, proxySubRefreshTimeout),
        ]
        for (kind, flag) in timeoutFlags {
            if let timeout = try flag ?? envDouble("HUB_PROXY_\(kind.rawValue.uppercased())_TIMEOUT") { c.proxyTimeouts[kind] = timeout }
        }
        c.proxyMaxInFlight = try proxyMaxInFlight ?? envInt("HUB_PROXY_MAX_IN_FLIGHT") ?? c.proxyMaxInFlight
        c.publicationStream.queueMaxBytes = try publicationStreamQueueMaxBytes ?? envInt("HUB_PUBLICATION_STREAM_QUEUE_MAX_BYTES") ?? c.publicationStream.queueMaxBytes
        c.publicationStream.batchSize = try publicationStreamBatchSize ?? envInt("HUB_PUBLICATION_STREAM_BATCH_SIZE") ?? c.publicationStream.batchSize
        c.publicationStream.timeout = try publicationStreamTimeout ?? envDouble("HUB_PUBLICATION_STREAM_TIMEOUT") ?? c.publicationStream.timeout
        c.publicationStream.retryMaxDelay = try publicationStreamRetryMaxDelay ?? envDouble("HUB_PUBLICATION_STREAM_RETRY_MAX_DELAY") ?? c.publicationStream.retryMaxDelay
        if let names = proxyHttpHeaders ?? env["HUB_PROXY_HTTP_HEADERS"] {
            c.proxyHTTPHeaders = names.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        }
        c.apiKey = apiKey ?? env["HUB_API_KEY"] ?? c.apiKey
        c.allowAnonymous = try allowAnonymous ? true : (envBool("HUB_ALLOW_ANONYMOUS") ?? c.allowAnonymous)
        c.pingInterval = try pingInterval ?? envDouble("HUB_PING_INTERVAL") ?? c.pingInterval
        c.pongTimeout = try pongTimeout ?? envDouble("HUB_PONG_TIMEOUT") ?? c.pongTimeout
        c.connectTimeout = try connectTimeout ?? envDouble("HUB_CONNECT_TIMEOUT") ?? c.connectTimeout
        c.maxMessageSize = try maxMessageSize ?? envInt("HUB_MAX_MESSAGE_SIZE") ?? c.maxMessageSize
        c.maxBodySize = try maxBodySize ?? envInt("HUB_MAX_BODY_SIZE") ?? c.maxBodySize
        c.uploadDir = uploadDir ?? env["HUB_UPLOAD_DIR"] ?? c.uploadDir
        c.maxUploadSize = try maxUploadSize ?? envInt("HUB_MAX_UPLOAD_SIZE") ?? c.maxUploadSize
        c.maxUploadFileSize = try maxUploadFileSize ?? envInt("HUB_MAX_UPLOAD_FILE_SIZE") ?? c.maxUploadFileSize
        c.clientQueueMaxBytes = try clientQueueMaxBytes ?? envInt("HUB_CLIENT_QUEUE_MAX_BYTES") ?? c.clientQueueMaxBytes
        c.clientQueueMaxMessages = try clientQueueMaxMessages ?? envInt("HUB_CLIENT_QUEUE_MAX_MESSAGES") ?? c.clientQueueMaxMessages
        c.maxSubscriptions = try maxSubscriptions ?? envInt("HUB_MAX_SUBSCRIPTIONS") ?? c.maxSubscriptions
        c.corsOrigins = corsOrigins ?? env["HUB_CORS_ORIGINS"] ?? env["CORS_ORIGINS"] ?? c.corsOrigins
        c.tlsCert = tlsCert ?? env["HUB_TLS_CERT"] ?? c.tlsCert
        c.tlsKey = tlsKey ?? env["HUB_TLS_KEY"] ?? c.tlsKey
        c.http2 = try http2 ? true : (envBool("HUB_HTTP2") ?? c.http2)
        c.websocketCompression = try websocketCompression ?? envBool("HUB_WEBSOCKET_COMPRESSION") ?? c.websocketCompression
        c.handshakeTimeout = try handshakeTimeout ?? envInt("HUB_HANDSHAKE_TIMEOUT") ?? c.handshakeTimeout
        c.headerTimeout = try headerTimeout ?? envInt("HUB_HEADER_TIMEOUT") ?? c.headerTimeout
        c.idleTimeout = try idleTimeout ?? envInt("HUB_IDLE_TIMEOUT") ?? c.idleTimeout
        c.bodyTimeout = try bodyTimeout ?? envInt("HUB_BODY_TIMEOUT") ?? c.bodyTimeout
        c.maxHeaderSize = try maxHeaderSize ?? envInt("HUB_MAX_HEADER_SIZE") ?? c.maxHeaderSize
        c.maxConnections = try maxConnections ?? envInt("HUB_MAX_CONNECTIONS") ?? c.maxConnections
        c.maxConnectionsPerIP = try maxConnectionsPerIp ?? envInt("HUB_MAX_CONNECTIONS_PER_IP") ?? c.maxConnectionsPerIP
        c.reusePort = try reusePort ? true : (envBool("HUB_REUSE_PORT") ?? c.reusePort)
        c.engine = engine ?? env["HUB_ENGINE"] ?? c.engine
        let urls = redisUrl.isEmpty ? (env["HUB_REDIS_URL"].map { [$0] } ?? []) : redisUrl
        if !urls.isEmpty { c.redisURLs = urls.flatMap { $0.split(separator: ",").map { String($0).trimmingSpaces } } }
        let seeds = redisCluster.isEmpty ? (env["HUB_REDIS_CLUSTER"].map { [$0] } ?? []) : redisCluster
        if !seeds.isEmpty { c.redisCluster = seeds.flatMap { $0.split(separator: ",").map { String($0).trimmingSpaces } } }
        if let sentinels = redisSentinel ?? env["HUB_REDIS_SENTINEL"] {
            c.redisSentinels = sentinels.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        }
        if let names = redisMasterName ?? env["HUB_REDIS_MASTER_NAME"] {
            c.redisMasterNames = names.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        }
        c.redisSentinelPassword = redisSentinelPassword ?? env["HUB_REDIS_SENTINEL_PASSWORD"] ?? c.redisSentinelPassword
        c.redisPassword = redisPassword ?? env["HUB_REDIS_PASSWORD"] ?? c.redisPassword
        c.redisMinReplicasAck = try redisMinReplicasAck ?? envInt("HUB_REDIS_MIN_REPLICAS_ACK") ?? c.redisMinReplicasAck
        c.redisReplicasAckTimeout = try redisReplicasAckTimeout ?? envDouble("HUB_REDIS_REPLICAS_ACK_TIMEOUT") ?? c.redisReplicasAckTimeout
        c.presenceTTL = try presenceTtl ?? envDouble("HUB_PRESENCE_TTL") ?? c.presenceTTL
        // Seed 001's variables sit below the HUB_ ones: API_GATEWAY_PORT is the port when nothing else sets it.
        if port == nil && env["HUB_PORT"] == nil, let gatewayPort = try envInt("API_GATEWAY_PORT") { c.port = gatewayPort }
        c.cacheRoot = cacheRoot ?? env["HUB_CACHE_ROOT"] ?? env["CACHE_ROOT"] ?? c.cacheRoot
        c.cacheAPIKey = cacheApiKey ?? env["HUB_CACHE_API_KEY"] ?? env["API_GATEWAY_KEY"] ?? c.cacheAPIKey
        c.cacheWorker = try cacheWorker ?? envBool("HUB_CACHE_WORKER") ?? c.cacheWorker
        c.cacheConcurrency = try cacheConcurrency ?? envInt("HUB_CACHE_CONCURRENCY") ?? c.cacheConcurrency
        c.cacheMaxReadRate = try cacheMaxReadRate ?? envDouble("HUB_CACHE_MAX_READ_RATE") ?? c.cacheMaxReadRate
        c.cacheProgressFileThreshold = try cacheProgressFileThreshold ?? envInt("HUB_CACHE_PROGRESS_FILE_THRESHOLD")
            ?? envInt("CACHE_PROGRESS_FILE_THRESHOLD") ?? c.cacheProgressFileThreshold
        c.cacheProgressTimeThreshold = try cacheProgressTimeThreshold ?? envDouble("HUB_CACHE_PROGRESS_TIME_THRESHOLD")
            ?? envDouble("CACHE_PROGRESS_TIME_THRESHOLD") ?? c.cacheProgressTimeThreshold
        c.cacheJobRetention = try cacheJobRetention ?? envDouble("HUB_CACHE_JOB_RETENTION") ?? c.cacheJobRetention
        if let prefixes = cachePathPrefixes ?? env["HUB_CACHE_PATH_PREFIXES"] {
            c.cachePathPrefixes = prefixes.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        }
        c.adminUser = adminUser ?? env["HUB_ADMIN_USER"] ?? c.adminUser
        c.adminPassword = env["HUB_ADMIN_PASSWORD"] ?? c.adminPassword
        c.chatAllowAnonymous = try chatAllowAnonymous ? true : (envBool("HUB_CHAT_ALLOW_ANONYMOUS") ?? c.chatAllowAnonymous)
        c.serviceTimeout = try serviceTimeout ?? envDouble("HUB_SERVICE_TIMEOUT") ?? c.serviceTimeout
        c.serviceCacheTTL = try serviceCacheTtl ?? envDouble("HUB_SERVICE_CACHE_TTL") ?? c.serviceCacheTTL
        c.configHistorySize = try configHistorySize ?? envInt("HUB_CONFIG_HISTORY_SIZE") ?? c.configHistorySize
        c.passwordIterations = try passwordIterations ?? envInt("HUB_PASSWORD_ITERATIONS") ?? c.passwordIterations
        c.gatewayAllowedToken = gatewayAllowedToken ?? env["HUB_GATEWAY_ALLOWED_TOKEN"] ?? c.gatewayAllowedToken
        c.gatewayAdminToken = gatewayAdminToken ?? env["HUB_GATEWAY_ADMIN_TOKEN"] ?? c.gatewayAdminToken
        c.gatewayAssetsDir = gatewayAssetsDir ?? env["HUB_GATEWAY_ASSETS_DIR"] ?? c.gatewayAssetsDir
        c.gatewayConnectTimeout = try gatewayConnectTimeout ?? envDouble("HUB_GATEWAY_CONNECT_TIMEOUT") ?? c.gatewayConnectTimeout
        c.gatewayTimeout = try gatewayTimeout ?? envDouble("HUB_GATEWAY_TIMEOUT") ?? c.gatewayTimeout
        c.gatewayMonitorInterval = try gatewayMonitorInterval ?? envDouble("HUB_GATEWAY_MONITOR_INTERVAL") ?? c.gatewayMonitorInterval
        c.gatewayMonitorFailures = try gatewayMonitorFailures ?? envInt("HUB_GATEWAY_MONITOR_FAILURES") ?? c.gatewayMonitorFailures
        c.dashboardDir = dashboardDir ?? env["HUB_DASHBOARD_DIR"] ?? c.dashboardDir
        c.dashboardLibDir = dashboardLibDir ?? env["HUB_DASHBOARD_LIB_DIR"] ?? c.dashboardLibDir
        // OpenTelemetry's own variable names sit below the HUB_ ones, as seed 001's do.
        c.otelEndpoint = (otelEndpoint ?? env["HUB_OTEL_ENDPOINT"] ?? env["OTEL_EXPORTER_OTLP_ENDPOINT"]).flatMap { $0.isEmpty ? nil : $0 } ?? c.otelEndpoint
        c.otelServiceName = otelServiceName ?? env["HUB_OTEL_SERVICE_NAME"] ?? env["OTEL_SERVICE_NAME"] ?? c.otelServiceName
        c.otelScheduleDelayMs = try envDouble("OTEL_BSP_SCHEDULE_DELAY") ?? c.otelScheduleDelayMs
        c.otelMaxQueueSize = try envInt("OTEL_BSP_MAX_QUEUE_SIZE") ?? c.otelMaxQueueSize
        c.otelMaxExportBatchSize = try envInt("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") ?? c.otelMaxExportBatchSize
        c.otelTimeoutMs = try envDouble("OTEL_EXPORTER_OTLP_TIMEOUT") ?? c.otelTimeoutMs
        c.meetingsMaxUploadBytes = try Int64(meetingsMaxUploadBytes ?? envInt("HUB_MEETINGS_MAX_UPLOAD_BYTES") ?? Int(c.meetingsMaxUploadBytes))
        c.meetingsLinkTTL = try meetingsLinkTtl ?? envDouble("HUB_MEETINGS_LINK_TTL") ?? c.meetingsLinkTTL
        c.meetingsTokenTTL = try meetingsTokenTtl ?? envDouble("HUB_MEETINGS_TOKEN_TTL") ?? c.meetingsTokenTTL
        c.meetingsTaskLease = try meetingsTaskLease ?? envDouble("HUB_MEETINGS_TASK_LEASE") ?? c.meetingsTaskLease
        c.telegramBotToken = telegramBotToken ?? env["HUB_TELEGRAM_BOT_TOKEN"] ?? c.telegramBotToken
        c.telegramPassportKeyPath = telegramPassportKey ?? env["HUB_TELEGRAM_PASSPORT_KEY"] ?? c.telegramPassportKeyPath
        c.telegramAuthMaxAge = try telegramAuthMaxAge ?? envDouble("HUB_TELEGRAM_AUTH_MAX_AGE") ?? c.telegramAuthMaxAge
        if let ids = meetingsAdminTelegramIds ?? env["HUB_MEETINGS_ADMIN_TELEGRAM_IDS"] {
            c.meetingsAdminTelegramIDs = try ids.split(separator: ",").map { part in
                guard let id = Int64(String(part).trimmingSpaces) else { throw HubError.config("meetings admin telegram ids must be integers") }
                return id
            }
        }
        try c.validate()
        return c
    }
}

enum HubVersion {
    static let string = "0.1.0"
}

enum Environment {
    static var current: [String: String] {
        var result: [String: String] = [:]
        var cursor = environ
        while let entry = cursor.pointee {
            let pair = String(cString: entry)
            if let eq = pair.firstIndex(of: "=") {
                result[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
            }
            cursor += 1
        }
        return result
    }
}
