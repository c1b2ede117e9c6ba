import Channels
import Glibc
import Logging
import RedisEngine
import RESTCompat

/// Everything the hub is configured with. Each setting comes from a flag, else a `HUB_*`
/// environment variable, else the config file (`--config hub.json`), else its default.
/// docs/configuration.md lists them all.
struct HubConfig: Sendable {
    var host = "0.0.0.0"
    var port = 8000
    var threads = HubConfig.usableCores()
    var dataDir = "./data"
    var logLevel = "info"
    var logFormat = "text"
    var nodeName = "hub"
    var tokenHMACSecret: String?
    var tokenRSAPublicKeyPath: String?
    var tokenECDSAPublicKeyPath: String?
    // JWKS (docs/security.md "Token keys from a JWKS").
    var tokenJWKSURL: String?
    var tokenJWKSTimeout: Double = 5
    var tokenJWKSRefetchInterval: Double = 10
    var tokenJWKSRefreshInterval: Double = 300
    // Backend proxies (docs/protocol.md "Backend proxies"): Centrifugo's key names.
    var proxyEndpoints: [ProxyKind: String] = [:]
    var proxyTimeout: Double = 1
    var proxyTimeouts: [ProxyKind: Double] = [:]
    /// Until configured, the headers a session-cookie or bearer backend needs to know its caller,
    /// so a connect proxy URL alone lets a browser's cookie through; an empty list forwards none.
    var proxyHTTPHeaders = HubConfig.defaultProxyHTTPHeaders
    static let defaultProxyHTTPHeaders = ["Cookie", "Authorization", "X-Real-Ip", "X-Forwarded-For", "User-Agent", "Origin"]
    var proxyStaticHTTPHeaders: [(String, String)] = []
    var proxyMaxInFlight = 256
    // Publication stream (docs/channels.md "Publication stream"): where namespaces send their events.
    var publicationStream = PublicationStream.Settings()
    var tokenAudience: String?
    var tokenIssuer: String?
    var apiKey: String?
    var allowAnonymous = false
    var pingInterval: Double = 25
    var pongTimeout: Double = 10
    var connectTimeout: Double = 10
    var maxMessageSize = 65_536
    var maxBodySize = 10 * 1024 * 1024
    /// Where multipart uploads are streamed; nil means `<data_dir>/uploads`.
    var uploadDir: String?
    var maxUploadSize = 512 * 1024 * 1024
    var maxUploadFileSize = 512 * 1024 * 1024
    var clientQueueMaxBytes = 1024 * 1024
    var clientQueueMaxMessages = 10_000
    var maxSubscriptions = 128
    var corsOrigins = "*"
    // Transport (docs/security.md "Transport"): TLS, compression, timeouts per stage, limits.
    var tlsCert: String?
    var tlsKey: String?
    var websocketCompression = false
    var http2 = false
    var handshakeTimeout = 10
    var headerTimeout = 10
    var idleTimeout = 5
    var bodyTimeout = 60
    var maxHeaderSize = 8192
    var maxConnections = 100_000
    var maxConnectionsPerIP = 0
    var reusePort = false
    var engine = "memory"
    var redisURLs: [String] = []
    /// Seed nodes of a Redis Cluster (`host:port` or `redis://[:password@]host:port`); set, they
    /// replace `redisURLs` for the redis engine.
    var redisCluster: [String] = []
    // Sentinel mode (docs/configuration.md): each master name is one shard found through the sentinels.
    var redisSentinels: [String] = []
    var redisMasterNames: [String] = []
    var redisSentinelPassword: String?
    var redisPassword: String?
    // WAIT after writes: 0 replicas is off.
    var redisMinReplicasAck = 0
    var redisReplicasAckTimeout: Double = 500
    var presenceTTL: Double = 60
    var rateLimits: [String: [RateLimit]] = [:]
    var namespaces = ChannelNamespaces(defaultOptions: HubConfig.defaultChannelOptions)
    // Cache jobs (seed 001); the seed's own variable names are accepted too (docs/configuration.md).
    var cacheRoot: String?
    var cacheAPIKey: String?
    var cacheWorker = true
    var cacheConcurrency = 4
    var cacheMaxReadRate: Double = 0
    var cacheProgressFileThreshold = 10
    var cacheProgressTimeThreshold: Double = 2000
    var cacheJobRetention: Double = 7 * 86_400
    var cachePathPrefixes = CacheRoot.defaultPrefixes
    // Seed 003 (June Agent): first admin, legacy anonymous chat, service requests.
    var adminUser: String?
    var adminPassword: String?
    var chatAllowAnonymous = false
    var serviceTimeout: Double = 30
    var serviceCacheTTL: Double = 3600
    var passwordIterations = 600_000
    /// Entries kept in each admin settings history (`/admin/config/history`), the oldest dropped.
    var configHistorySize = 1000
    // Gateway rooms (seeds 000 and 002).
    var gatewayAllowedToken: String?
    var gatewayAdminToken: String?
    var gatewayAssetsDir: String?
    var gatewayConnectTimeout: Double = 3
    var gatewayTimeout: Double = 10
    var gatewayMonitorInterval: Double = 5
    var gatewayMonitorFailures = 3
    // The live dashboard at `/` (relative paths are from the working directory; run.sh starts
    // the hub in the repository root).
    var dashboardDir = "dashboard"
    var dashboardLibDir = "clients/js"
    // Traces (docs/admin.md, "Traces"): off without an endpoint. The batch settings are
    // OpenTelemetry's OTEL_BSP_* variables, in milliseconds as there.
    var otelEndpoint: String?
    var otelServiceName = "hub"
    var otelScheduleDelayMs: Double = 5000
    var otelMaxQueueSize = 2048
    var otelMaxExportBatchSize = 512
    var otelTimeoutMs: Double = 10_000

    /// The `gateways` namespace unless the config defines it: every change kept an hour
    /// (up to 1000), so dashboards recover from a snapshot's position.
    static var gatewayChannelOptions: ChannelOptions {
        var options = ChannelOptions()
        options.historySize = 1000
        options.historyTTL = 3600
        // Records change a field at a time: subscribers may take fossil deltas.
        options.allowedDeltaTypes = ["fossil"]
        return options
    }
    // Meetings pipeline (seed 004).
    var meetingsMaxUploadBytes: Int64 = 500 * 1024 * 1024
    var meetingsLinkTTL: Double = 3600
    var meetingsTokenTTL: Double = 86_400
    var meetingsTaskLease: Double = 120
    var telegramBotToken: String?
    var telegramPassportKeyPath: String?
    var telegramAuthMaxAge: Double = 86_400
    var meetingsAdminTelegramIDs: [Int64] = []

    /// The default namespace keeps a short history so dashboards recover after a blip.
    static var defaultChannelOptions: ChannelOptions {
        var options = ChannelOptions()
        options.presence = true
        options.historySize = 100
        options.historyTTL = 300
        return options
    }

    /// Seed 003's namespaces unless the config defines them: `chat:` conversation channels
    /// (user-limited, short history for recovery) and `service:` worker channels (presence
    /// shows who serves; only workers' tokens subscribe).
    /// Every namespace's own proxy endpoint URL (`proxy_subscribe_endpoint`… in a namespace).
    var namespaceProxyEndpoints: Set<String> {
        let all = [withJuneNamespaces.defaultOptions] + Array(withJuneNamespaces.namespaces.values)
        return Set(all.flatMap { $0.proxyEndpoints.values })
    }

    var withJuneNamespaces: ChannelNamespaces {
        var result = namespaces
        if result.namespaces["chat"] == nil {
            var chat = ChannelOptions()
            chat.historySize = 100
            chat.historyTTL = 3600
            chat.allowSubscribeForClient = false
            result.namespaces["chat"] = chat
        }
        if result.namespaces["admin"] == nil { result.namespaces["admin"] = AdminEvents.channelOptions }
        if result.namespaces["service"] == nil {
            var service = ChannelOptions()
            service.presence = true
            service.allowSubscribeForClient = false
            service.allowPresenceForSubscriber = false
            service.allowHistoryForSubscriber = false
            result.namespaces["service"] = service
        }
        return result
    }

    /// The cores this process may run on: its affinity mask (as `taskset`, `numactl` or a
    /// container's cpuset leave it), not every core of the machine, so a hub pinned to one core
    /// starts one service thread. Read from /proc/self/status (Swift's Glibc leaves out
    /// `sched_getaffinity`); every online core where that is unavailable.
    static func usableCores() -> Int {
        let online = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        guard let status = FileBytes.read("/proc/self/status", limit: 1 << 20),
              let line = String(decoding: status, as: UTF8.self).split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed:") })
        else { return online }
        var count = 0
        for character in line.dropFirst("Cpus_allowed:".count) where character != "," && character != " " && character != "\t" {
            guard let nibble = character.hexDigitValue else { return online }
            count += nibble.nonzeroBitCount
        }
        return max(1, min(count, online))
    }

    /// A token public key from a PEM file, refused at start when unreadable or of the wrong type.
    static func publicKey(at path: String, what: String, fits: (VerificationKey.Kind) -> Bool) throws -> VerificationKey {
        guard let bytes = FileBytes.read(path) else { throw HubError.config("cannot read \(what) public key \(path)") }
        guard let key = VerificationKey(pem: String(decoding: bytes, as: UTF8.self)), fits(key.kind) else {
            throw HubError.config("\(path) is not a PEM \(what) public key (-----BEGIN PUBLIC KEY-----)")
        }
        return key
    }

    /// Applies a config file (JSON object, keys as in docs/configuration.md).
    mutating func apply(file json: JSONValue) throws {
        guard let members = json.objectValue else { throw HubError.config("config file must hold a JSON object") }
        for (key, value) in members {
            switch key {
            case "host": host = try string(value, key)
            case "port": port = try int(value, key)
            case "threads": threads = try int(value, key)
            case "data_dir": dataDir = try string(value, key)
            case "log_level": logLevel = try string(value, key)
            case "log_format": logFormat = try string(value, key)
            case "node_name": nodeName = try string(value, key)
            case "token_hmac_secret": tokenHMACSecret = try string(value, key)
            case "token_rsa_public_key": tokenRSAPublicKeyPath = try string(value, key)
            case "token_ecdsa_public_key": tokenECDSAPublicKeyPath = try string(value, key)
            case "token_jwks_url": tokenJWKSURL = try string(value, key)
            case "token_jwks_timeout": tokenJWKSTimeout = try double(value, key)
            case "token_jwks_refetch_interval": tokenJWKSRefetchInterval = try double(value, key)
            case "token_jwks_refresh_interval": tokenJWKSRefreshInterval = try double(value, key)
            case "token_audience": tokenAudience = try string(value, key)
            case "proxy_connect_endpoint", "proxy_refresh_endpoint", "proxy_subscribe_endpoint", "proxy_publish_endpoint",
                 "proxy_rpc_endpoint", "proxy_sub_refresh_endpoint":
                let kind = ProxyKind(rawValue: String(key.dropFirst("proxy_".count).dropLast("_endpoint".count)))!
                proxyEndpoints[kind] = try string(value, key)
            case "proxy_timeout": proxyTimeout = try double(value, key)
            case "proxy_connect_timeout", "proxy_refresh_timeout", "proxy_subscribe_timeout", "proxy_publish_timeout",
                 "proxy_rpc_timeout", "proxy_sub_refresh_timeout":
                let kind = ProxyKind(rawValue: String(key.dropFirst("proxy_".count).dropLast("_timeout".count)))!
                proxyTimeouts[kind] = try double(value, key)
            case "proxy_max_in_flight": proxyMaxInFlight = try int(value, key)
            case "proxy_http_headers":
                guard let names = value.arrayValue?.compactMap(\.stringValue), names.count == value.arrayValue?.count else {
                    throw HubError.config("proxy_http_headers must be a list of header names")
                }
                proxyHTTPHeaders = names
            case "proxy_static_http_headers":
                guard let members = value.objectValue, members.allSatisfy({ $0.1.stringValue != nil }) else {
                    throw HubError.config("proxy_static_http_headers must be an object of header names to string values")
                }
                proxyStaticHTTPHeaders = members.map { ($0.0, $0.1.stringValue!) }
            case "publication_stream_queue_max_bytes": publicationStream.queueMaxBytes = try int(value, key)
            case "publication_stream_batch_size": publicationStream.batchSize = try int(value, key)
            case "publication_stream_timeout": publicationStream.timeout = try double(value, key)
            case "publication_stream_retry_max_delay": publicationStream.retryMaxDelay = try double(value, key)
            case "publication_stream_http_headers":
                guard let members = value.objectValue, members.allSatisfy({ $0.1.stringValue != nil }) else {
                    throw HubError.config("publication_stream_http_headers must be an object of header names to string values")
                }
                publicationStream.headers = members.map { ($0.0, $0.1.stringValue!) }
            case "token_issuer": tokenIssuer = try string(value, key)
            case "api_key": apiKey = try string(value, key)
            case "allow_anonymous": allowAnonymous = try bool(value, key)
            case "ping_interval": pingInterval = try double(value, key)
            case "pong_timeout": pongTimeout = try double(value, key)
            case "connect_timeout": connectTimeout = try double(value, key)
            case "max_message_size": maxMessageSize = try int(value, key)
            case "max_body_size": maxBodySize = try int(value, key)
            case "upload_dir": uploadDir = try string(value, key)
            case "max_upload_size": maxUploadSize = try int(value, key)
            case "max_upload_file_size": maxUploadFileSize = try int(value, key)
            case "client_queue_max_bytes": clientQueueMaxBytes = try int(value, key)
            case "client_queue_max_messages": clientQueueMaxMessages = try int(value, key)
            case "max_subscriptions": maxSubscriptions = try int(value, key)
            case "cors_origins": corsOrigins = try string(value, key)
            case "tls_cert": tlsCert = try string(value, key)
            case "tls_key": tlsKey = try string(value, key)
            case "websocket_compression": websocketCompression = try bool(value, key)
            case "http2": http2 = try bool(value, key)
            case "handshake_timeout": handshakeTimeout = try int(value, key)
            case "header_timeout": headerTimeout = try int(value, key)
            case "idle_timeout": idleTimeout = try int(value, key)
            case "body_timeout": bodyTimeout = try int(value, key)
            case "max_header_size": maxHeaderSize = try int(value, key)
            case "max_connections": maxConnections = try int(value, key)
            case "max_connections_per_ip": maxConnectionsPerIP = try int(value, key)
            case "reuse_port": reusePort = try bool(value, key)
            case "engine": engine = try string(value, key)
            case "presence_ttl": presenceTTL = try double(value, key)
            case "admin_user": adminUser = try string(value, key)
            case "admin_password": adminPassword = try string(value, key)
            case "chat_allow_anonymous": chatAllowAnonymous = try bool(value, key)
            case "service_timeout": serviceTimeout = try double(value, key)
            case "service_cache_ttl": serviceCacheTTL = try double(value, key)
            case "password_iterations": passwordIterations = try int(value, key)
            case "config_history_size": configHistorySize = try int(value, key)
            case "gateway_allowed_token": gatewayAllowedToken = try string(value, key)
            case "gateway_admin_token": gatewayAdminToken = try string(value, key)
            case "gateway_assets_dir": gatewayAssetsDir = try string(value, key)
            case "gateway_connect_timeout": gatewayConnectTimeout = try double(value, key)
            case "gateway_timeout": gatewayTimeout = try double(value, key)
            case "gateway_monitor_interval": gatewayMonitorInterval = try double(value, key)
            case "gateway_monitor_failures": gatewayMonitorFailures = try int(value, key)
            case "dashboard_dir": dashboardDir = try string(value, key)
            case "dashboard_lib_dir": dashboardLibDir = try string(value, key)
            case "otel_endpoint": otelEndpoint = try string(value, key)
            case "otel_service_name": otelServiceName = try string(value, key)
            case "meetings_max_upload_bytes": meetingsMaxUploadBytes = Int64(try int(value, key))
            case "meetings_link_ttl": meetingsLinkTTL = try double(value, key)
            case "meetings_token_ttl": meetingsTokenTTL = try double(value, key)
            case "meetings_task_lease": meetingsTaskLease = try double(value, key)
            case "telegram_bot_token": telegramBotToken = try string(value, key)
            case "telegram_passport_key": telegramPassportKeyPath = try string(value, key)
            case "telegram_auth_max_age": telegramAuthMaxAge = try double(value, key)
            case "meetings_admin_telegram_ids":
                guard let ids = value.arrayValue?.compactMap(\.intValue), ids.count == value.arrayValue?.count else {
                    throw HubError.config("meetings_admin_telegram_ids must be an array of integers")
                }
                meetingsAdminTelegramIDs = ids
            case "rate_limits":
                guard let classes = value.objectValue else { throw HubError.config("rate_limits must be an object of class → [\"10/minute\", …]") }
                for (name, list) in classes {
                    guard let entries = list.arrayValue else { throw HubError.config("rate_limits.\(name) must be an array") }
                    rateLimits[name] = try entries.map { entry in
                        guard let text = entry.stringValue, let limit = RateLimit(parsing: text) else {
                            throw HubError.config("rate_limits.\(name): '\(entry)' is not like \"10/minute\"")
                        }
                        return limit
                    }
                }
            case "redis_url":
                if let list = value.arrayValue {
                    redisURLs = try list.map { try string($0, key) }
                } else {
                    redisURLs = try string(value, key).split(separator: ",").map { String($0).trimmingSpaces }
                }
            case "redis_cluster":
                if let list = value.arrayValue {
                    redisCluster = try list.map { try string($0, key) }
                } else {
                    redisCluster = try string(value, key).split(separator: ",").map { String($0).trimmingSpaces }
                }
            case "redis_sentinel":
                if let list = value.arrayValue {
                    redisSentinels = try list.map { try string($0, key) }
                } else {
                    redisSentinels = try string(value, key).split(separator: ",").map { String($0).trimmingSpaces }
                }
            case "redis_master_name":
                if let list = value.arrayValue {
                    redisMasterNames = try list.map { try string($0, key) }
                } else {
                    redisMasterNames = try string(value, key).split(separator: ",").map { String($0).trimmingSpaces }
                }
            case "redis_sentinel_password": redisSentinelPassword = try string(value, key)
            case "redis_password": redisPassword = try string(value, key)
            case "redis_min_replicas_ack": redisMinReplicasAck = try int(value, key)
            case "redis_replicas_ack_timeout": redisReplicasAckTimeout = try double(value, key)
            case "channel":
                namespaces.defaultOptions = try Self.channelOptions(value, base: Self.defaultChannelOptions, context: "channel")
            case "namespaces":
                guard let list = value.arrayValue else { throw HubError.config("namespaces must be an array") }
                for entry in list {
                    guard let name = entry["name"]?.stringValue, !name.isEmpty, !name.contains(":") else {
                        throw HubError.config("every namespace needs a name without ':'")
                    }
                    namespaces.namespaces[name] = try Self.channelOptions(entry, base: ChannelOptions(), context: "namespace \(name)")
                }
            case "cache_root": cacheRoot = try string(value, key)
            case "cache_api_key": cacheAPIKey = try string(value, key)
            case "cache_worker": cacheWorker = try bool(value, key)
            case "cache_concurrency": cacheConcurrency = try int(value, key)
            case "cache_max_read_rate": cacheMaxReadRate = try double(value, key)
            case "cache_progress_file_threshold": cacheProgressFileThreshold = try int(value, key)
            case "cache_progress_time_threshold": cacheProgressTimeThreshold = try double(value, key)
            case "cache_job_retention": cacheJobRetention = try double(value, key)
            case "cache_path_prefixes":
                guard let list = value.arrayValue else { throw HubError.config("cache_path_prefixes must be an array of strings") }
                cachePathPrefixes = try list.map { try string($0, key) }
            default:
                throw HubError.config("unknown config key '\(key)'")
            }
        }
    }

    /// A cluster seed: `host:port`, or a redis:// URL when a password is needed.
    static func clusterSeed(_ text: String) -> RedisShard.Address? {
        RedisShard.Address(url: text.hasPrefix("redis://") ? text : "redis://" + text)
    }

    static func channelOptions(_ json: JSONValue, base: ChannelOptions, context: String) throws -> ChannelOptions {
        guard let members = json.objectValue else { throw HubError.config("\(context): options must be an object") }
        var o = base
        func flag(_ v: JSONValue, _ k: String) throws -> Bool {
            guard let b = v.boolValue else { throw HubError.config("\(context): \(k) must be true or false") }
            return b
        }
        func number(_ v: JSONValue, _ k: String) throws -> Double {
            guard let d = v.doubleValue, d >= 0 else { throw HubError.config("\(context): \(k) must be a non-negative number") }
            return d
        }
        for (key, value) in members {
            switch key {
            case "name": continue
            case "presence": o.presence = try flag(value, key)
            case "join_leave": o.joinLeave = try flag(value, key)
            case "history_size": o.historySize = Int(try number(value, key))
            case "history_ttl": o.historyTTL = try number(value, key)
            case "history_meta_ttl": o.historyMetaTTL = try number(value, key)
            case "recovery": o.recovery = try flag(value, key)
            case "recovery_max_publications": o.recoveryMaxPublications = Int(try number(value, key))
            case "allow_subscribe_for_client": o.allowSubscribeForClient = try flag(value, key)
            case "allow_subscribe_for_anonymous": o.allowSubscribeForAnonymous = try flag(value, key)
            case "allow_publish_for_subscriber": o.allowPublishForSubscriber = try flag(value, key)
            case "allow_publish_for_client": o.allowPublishForClient = try flag(value, key)
            case "allow_publish_for_anonymous": o.allowPublishForAnonymous = try flag(value, key)
            case "allow_presence_for_subscriber": o.allowPresenceForSubscriber = try flag(value, key)
            case "allow_presence_for_client": o.allowPresenceForClient = try flag(value, key)
            case "allow_history_for_subscriber": o.allowHistoryForSubscriber = try flag(value, key)
            case "allow_history_for_client": o.allowHistoryForClient = try flag(value, key)
            case "allow_user_limited_channels": o.allowUserLimitedChannels = try flag(value, key)
            case "allowed_delta_types":
                guard let types = value.arrayValue?.compactMap(\.stringValue), types.count == value.arrayValue?.count,
                      types.allSatisfy({ $0 == "fossil" })
                else { throw HubError.config("\(context): allowed_delta_types must be a list of delta types (only \"fossil\" exists)") }
                o.allowedDeltaTypes = types
            case "allow_tags_filter": o.allowTagsFilter = try flag(value, key)
            case "proxy_subscribe": o.proxySubscribe = try flag(value, key)
            case "proxy_publish": o.proxyPublish = try flag(value, key)
            case "proxy_sub_refresh": o.proxySubRefresh = try flag(value, key)
            case "proxy_subscribe_endpoint", "proxy_publish_endpoint", "proxy_sub_refresh_endpoint":
                // The namespace's own backend for that proxy; naming one turns the proxy on.
                let kind = ProxyKind(rawValue: String(key.dropFirst("proxy_".count).dropLast("_endpoint".count)))!
                guard let url = value.stringValue, !url.isEmpty else { throw HubError.config("\(context): \(key) must be an http:// URL") }
                do { _ = try HTTPProxyBackend.parse(url: url, key: "\(context): \(key)") } catch { throw HubError.config(error.description) }
                o.proxyEndpoints[kind] = url
                switch kind {
                case .subscribe: o.proxySubscribe = true
                case .publish: o.proxyPublish = true
                default: o.proxySubRefresh = true
                }
            case "publication_stream_url":
                guard let url = value.stringValue, !url.isEmpty else { throw HubError.config("\(context): publication_stream_url must be an http:// URL") }
                do { _ = try HTTPProxyBackend.parse(url: url, key: "\(context): publication_stream_url") } catch { throw HubError.config(error.description) }
                o.publicationStream = .webhook(url: url)
            case "publication_stream_redis_key", "publication_stream_redis_maxlen": continue
            case "recovery_mode":
                guard let mode = value.stringValue.flatMap(ChannelOptions.RecoveryMode.init(rawValue:)) else {
                    throw HubError.config("\(context): recovery_mode must be \"stream\" or \"cache\"")
                }
                o.recoveryMode = mode
            default: throw HubError.config("\(context): unknown option '\(key)'")
            }
        }
        if let key = members.first(where: { $0.0 == "publication_stream_redis_key" })?.1 {
            guard let key = key.stringValue, !key.isEmpty else { throw HubError.config("\(context): publication_stream_redis_key must be a non-empty string") }
            guard o.publicationStream == nil else { throw HubError.config("\(context): publication_stream_url and publication_stream_redis_key exclude each other") }
            var maxLength = 100_000
            if let cap = members.first(where: { $0.0 == "publication_stream_redis_maxlen" })?.1 {
                guard let n = cap.intValue, (1...100_000_000).contains(n) else { throw HubError.config("\(context): publication_stream_redis_maxlen must be an integer 1-100000000") }
                maxLength = Int(n)
            }
            o.publicationStream = .redisStream(key: key, maxLength: maxLength)
        } else if members.contains(where: { $0.0 == "publication_stream_redis_maxlen" }) {
            throw HubError.config("\(context): publication_stream_redis_maxlen needs publication_stream_redis_key")
        }
        if o.historySize > 0 && o.historyTTL <= 0 { throw HubError.config("\(context): history_size needs history_ttl") }
        if o.historySize > 100_000 { throw HubError.config("\(context): history_size is at most 100000") }
        return o
    }

    private func string(_ v: JSONValue, _ k: String) throws -> String {
        guard let s = v.stringValue else { throw HubError.config("\(k) must be a string") }
        return s
    }
    private func int(_ v: JSONValue, _ k: String) throws -> Int {
        guard let i = v.intValue else { throw HubError.config("\(k) must be an integer") }
        return Int(i)
    }
    private func double(_ v: JSONValue, _ k: String) throws -> Double {
        guard let d = v.doubleValue else { throw HubError.config("\(k) must be a number") }
        return d
    }
    private func bool(_ v: JSONValue, _ k: String) throws -> Bool {
        guard let b = v.boolValue else { throw HubError.config("\(k) must be true or false") }
        return b
    }

    /// Every namespace's publication stream target, once each.
    var publicationStreamTargets: Set<PublicationStreamTarget> {
        let namespaces = withJuneNamespaces
        return Set(([namespaces.defaultOptions] + Array(namespaces.namespaces.values)).compactMap(\.publicationStream))
    }

    /// The seed defaults with the config file's overrides.
    var rateLimitClasses: [RateLimitClass] {
        var classes = RateLimitClass.seedDefaults
        for (name, limits) in rateLimits {
            if let index = classes.firstIndex(where: { $0.name == name }) { classes[index].limits = limits } else { classes.append(RateLimitClass(name, limits)) }
        }
        return classes
    }

    /// The upload directory and limits the router gives `.multipart` routes.
    var uploads: UploadSettings {
        UploadSettings(directory: uploadDir ?? dataDir + "/uploads",
                       limits: MultipartLimits(maxBodyBytes: maxUploadSize, maxFileBytes: maxUploadFileSize))
    }

    /// The span exporter's settings, when traces are on.
    var spanExporterSettings: SpanExporter.Settings? {
        guard let url = otelEndpoint, let endpoint = try? OTLPEndpoint(url: url) else { return nil }
        var settings = SpanExporter.Settings(endpoint: endpoint, resource: [
            ("service.name", .string(otelServiceName)), ("service.version", .string(HubVersion.string)),
            ("service.instance.id", .string(nodeName)),
        ])
        settings.interval = otelScheduleDelayMs / 1000
        settings.timeout = otelTimeoutMs / 1000
        settings.maxQueue = otelMaxQueueSize
        settings.maxBatch = otelMaxExportBatchSize
        return settings
    }

    /// The Redis engine's shards: one per `redis_url`, or one per master name found through
    /// the sentinels.
    func redisShards(logger: Logger) -> [RedisShard] {
        let acknowledgement = redisMinReplicasAck > 0
            ? RedisShard.ReplicaAcknowledgement(replicas: redisMinReplicasAck, timeoutMilliseconds: Int(redisReplicasAckTimeout.rounded()))
            : nil
        guard !redisSentinels.isEmpty else {
            return redisURLs.compactMap(RedisShard.Address.init(url:)).map { RedisShard(address: $0, acknowledgement: acknowledgement, logger: logger) }
        }
        let sentinels = redisSentinels.compactMap(RedisShard.Endpoint.init)
        return redisMasterNames.map { name in
            // The host and port are placeholders until the sentinels name the primary.
            RedisShard(address: RedisShard.Address(host: sentinels[0].host, port: sentinels[0].port, password: redisPassword),
                       sentinel: RedisShard.SentinelSource(sentinels: sentinels, masterName: name, password: redisSentinelPassword),
                       acknowledgement: acknowledgement, logger: logger)
        }
    }

    /// Checks the values together once everything is merged.
    func validate() throws {
        guard (1...65535).contains(port) else { throw HubError.config("port must be 1-65535") }
        guard (1...64).contains(threads) else { throw HubError.config("threads must be 1-64") }
        guard maxMessageSize >= 1024 else { throw HubError.config("max_message_size must be at least 1024") }
        guard maxBodySize >= 1024 else { throw HubError.config("max_body_size must be at least 1024") }
        guard maxUploadSize >= 1024, maxUploadFileSize >= 1 else { throw HubError.config("max_upload_size must be at least 1024 and max_upload_file_size at least 1") }
        if let uploadDir, uploadDir.isEmpty { throw HubError.config("upload_dir must not be empty") }
        guard clientQueueMaxBytes >= maxMessageSize else { throw HubError.config("client_queue_max_bytes must be at least max_message_size") }
        guard pingInterval >= 1, pongTimeout >= 1, connectTimeout >= 1 else { throw HubError.config("ping_interval, pong_timeout and connect_timeout must be at least 1 second") }
        if (tlsCert == nil) != (tlsKey == nil) { throw HubError.config("tls_cert and tls_key go together") }
        if http2 && tlsCert == nil { throw HubError.config("http2 needs tls_cert and tls_key (HTTP/2 is offered through TLS ALPN)") }
        for (name, path) in [("tls_cert", tlsCert), ("tls_key", tlsKey)] {
            if let path, access(path, R_OK) != 0 { throw HubError.config("\(name): cannot read \(path)") }
        }
        for (name, value) in [("handshake_timeout", handshakeTimeout), ("header_timeout", headerTimeout), ("idle_timeout", idleTimeout),
                              ("body_timeout", bodyTimeout)] where !(1...3600).contains(value) {
            throw HubError.config("\(name) must be 1-3600 seconds")
        }
        guard (1024...65_536).contains(maxHeaderSize) else { throw HubError.config("max_header_size must be 1024-65536 bytes") }
        guard maxConnections >= 1 else { throw HubError.config("max_connections must be at least 1") }
        guard maxConnectionsPerIP >= 0 else { throw HubError.config("max_connections_per_ip must be 0 (no limit) or more") }
        guard ["memory", "redis"].contains(engine) else { throw HubError.config("engine must be memory or redis") }
        if engine == "redis" {
            if !redisCluster.isEmpty {
                guard redisURLs.isEmpty, redisSentinels.isEmpty else {
                    throw HubError.config("give one of redis_url (standalone or shards), redis_sentinel or redis_cluster")
                }
                guard redisMasterNames.isEmpty else { throw HubError.config("redis_master_name needs redis_sentinel") }
                // A cluster's replicas are its own; WAIT per slot owner is not wired (docs/configuration.md).
                guard redisMinReplicasAck == 0 else { throw HubError.config("redis_min_replicas_ack works in standalone and Sentinel mode, not with redis_cluster") }
                for seed in redisCluster {
                    guard let address = Self.clusterSeed(seed) else {
                        throw HubError.config("bad redis cluster node '\(seed)': expected host:port or redis://[:password@]host:port")
                    }
                    guard address.db == 0 else { throw HubError.config("redis cluster node '\(seed)': a cluster has only database 0") }
                }
            } else if redisSentinels.isEmpty {
                guard !redisURLs.isEmpty else { throw HubError.config("the redis engine needs --redis-url redis://host:port/db, --redis-sentinel host:port or --redis-cluster host:port") }
                guard redisMasterNames.isEmpty else { throw HubError.config("redis_master_name needs redis_sentinel") }
                for url in redisURLs where RedisShard.Address(url: url) == nil {
                    throw HubError.config("bad redis url '\(url)': expected redis://[:password@]host[:port][/db]")
                }
            } else {
                guard redisURLs.isEmpty else { throw HubError.config("redis_url and redis_sentinel exclude each other: with Sentinel the sentinels name the primaries") }
                for sentinel in redisSentinels where RedisShard.Endpoint(sentinel) == nil {
                    throw HubError.config("bad redis sentinel '\(sentinel)': expected host:port")
                }
                guard !redisMasterNames.isEmpty, !redisMasterNames.contains(where: \.isEmpty) else {
                    throw HubError.config("redis_sentinel needs redis_master_name (the name the sentinels monitor the primary by)")
                }
                guard Set(redisMasterNames).count == redisMasterNames.count else { throw HubError.config("redis_master_name lists a name twice") }
            }
            guard (0...16).contains(redisMinReplicasAck) else { throw HubError.config("redis_min_replicas_ack must be 0 (off) to 16") }
            // Below the shard's 5 s reply timeout, so a WAIT that runs out never reads as a dead Redis.
            guard (1...3000).contains(redisReplicasAckTimeout) else { throw HubError.config("redis_replicas_ack_timeout must be 1-3000 milliseconds") }
        }
        guard redisCluster.isEmpty || engine == "redis" else { throw HubError.config("redis_cluster needs engine redis") }
        guard (1...64).contains(cacheConcurrency) else { throw HubError.config("cache_concurrency must be 1-64") }
        guard cacheMaxReadRate >= 0 else { throw HubError.config("cache_max_read_rate must not be negative") }
        guard cacheJobRetention >= 0 else { throw HubError.config("cache_job_retention must not be negative") }
        guard cacheProgressFileThreshold >= 1, cacheProgressTimeThreshold >= 1 else {
            throw HubError.config("cache progress thresholds must be at least 1 (file count, milliseconds)")
        }
        guard serviceTimeout >= 0.1 && serviceTimeout <= 3600 else { throw HubError.config("service_timeout must be 0.1-3600 seconds") }
        guard serviceCacheTTL >= 0 else { throw HubError.config("service_cache_ttl must be 0 (off) or more seconds") }
        guard (1...100_000).contains(configHistorySize) else { throw HubError.config("config_history_size must be 1-100000") }
        guard (10_000...10_000_000).contains(passwordIterations) else { throw HubError.config("password_iterations must be 10000-10000000") }
        if (adminUser == nil) != (adminPassword == nil) { throw HubError.config("admin_user and admin_password go together") }
        if let adminPassword, adminPassword.utf8.count < 8 { throw HubError.config("admin_password must be at least 8 characters") }
        guard gatewayConnectTimeout > 0, gatewayTimeout > 0, gatewayConnectTimeout <= gatewayTimeout else {
            throw HubError.config("gateway_connect_timeout and gateway_timeout must be positive, the connect timeout at most the total")
        }
        guard gatewayMonitorInterval >= 0.1 else { throw HubError.config("gateway_monitor_interval must be at least 0.1 seconds") }
        guard gatewayMonitorFailures >= 1 else { throw HubError.config("gateway_monitor_failures must be at least 1") }
        guard meetingsMaxUploadBytes >= 1024 else { throw HubError.config("meetings_max_upload_bytes must be at least 1024") }
        let year: Double = 366 * 86_400
        guard (1...year).contains(meetingsLinkTTL), (60...year).contains(meetingsTokenTTL), (1...86_400).contains(meetingsTaskLease),
              (1...year).contains(telegramAuthMaxAge)
        else {
            throw HubError.config("meetings_link_ttl and telegram_auth_max_age must be 1 second to a year, meetings_token_ttl 60 seconds to a year, meetings_task_lease 1 second to a day")
        }
        guard (0.01...60).contains(proxyTimeout) else { throw HubError.config("proxy_timeout must be 0.01-60 seconds") }
        for (kind, timeout) in proxyTimeouts where !(0.01...60).contains(timeout) {
            throw HubError.config("proxy_\(kind.rawValue)_timeout must be 0.01-60 seconds")
        }
        guard (1...100_000).contains(proxyMaxInFlight) else { throw HubError.config("proxy_max_in_flight must be 1-100000") }
        for name in proxyHTTPHeaders where !HTTPProxyBackend.isToken(name) {
            throw HubError.config("proxy_http_headers: '\(name)' is not a header name")
        }
        for (kind, url) in proxyEndpoints {
            do { _ = try HTTPProxyBackend.parse(url: url, key: "proxy_\(kind.rawValue)_endpoint") } catch { throw HubError.config(error.description) }
        }
        // A namespace asking for a proxy that has no endpoint would silently fall back to the
        // namespace's own permissions: refused instead.
        for (name, options) in [("default namespace", withJuneNamespaces.defaultOptions)] + withJuneNamespaces.namespaces.map({ ("namespace \($0.key)", $0.value) }) {
            for (asks, kind) in [(options.proxySubscribe, ProxyKind.subscribe), (options.proxyPublish, .publish), (options.proxySubRefresh, .subRefresh)]
            where asks && proxyEndpoints[kind] == nil && options.proxyEndpoints[kind] == nil {
                throw HubError.config("\(name): proxy_\(kind.rawValue) needs proxy_\(kind.rawValue)_endpoint (global or the namespace's own)")
            }
        }
        guard (1024...(1 << 34)).contains(publicationStream.queueMaxBytes) else { throw HubError.config("publication_stream_queue_max_bytes must be 1024-17179869184") }
        guard (1...10_000).contains(publicationStream.batchSize) else { throw HubError.config("publication_stream_batch_size must be 1-10000") }
        guard (0.1...600).contains(publicationStream.timeout) else { throw HubError.config("publication_stream_timeout must be 0.1-600 seconds") }
        guard (0.25...3600).contains(publicationStream.retryMaxDelay) else { throw HubError.config("publication_stream_retry_max_delay must be 0.25-3600 seconds") }
        if engine != "redis", publicationStreamTargets.contains(where: { if case .redisStream = $0 { return true } else { return false } }) {
            throw HubError.config("publication_stream_redis_key needs the redis engine (engine: redis)")
        }
        guard (0.1...60).contains(tokenJWKSTimeout) else { throw HubError.config("token_jwks_timeout must be 0.1-60 seconds") }
        guard (0.1...3600).contains(tokenJWKSRefetchInterval), (tokenJWKSRefetchInterval...86_400).contains(tokenJWKSRefreshInterval) else {
            throw HubError.config("token_jwks_refetch_interval must be 0.1-3600 seconds and token_jwks_refresh_interval from it to a day")
        }
        if let tokenJWKSURL {
            do { _ = try JWKSEndpoint.parse(url: tokenJWKSURL) } catch { throw HubError.config(error.description) }
        }
        _ = try tokenRSAPublicKeyPath.map { path in
            try Self.publicKey(at: path, what: "RSA") { if case .rsa = $0 { return true } else { return false } }
        }
        _ = try tokenECDSAPublicKeyPath.map { path in
            try Self.publicKey(at: path, what: "ECDSA (P-256 or P-384)") { $0 == .ecP256 || $0 == .ecP384 }
        }
        guard presenceTTL >= 5 else { throw HubError.config("presence_ttl must be at least 5 seconds") }
        guard ["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(logLevel) else {
            throw HubError.config("log_level must be one of trace, debug, info, notice, warning, error, critical")
        }
        guard ["text", "json"].contains(logFormat) else { throw HubError.config("log_format must be text or json") }
        if let otelEndpoint {
            do { _ = try OTLPEndpoint(url: otelEndpoint) } catch { throw HubError.config(error.description) }
        }
        guard !otelServiceName.isEmpty else { throw HubError.config("otel_service_name must not be empty") }
        guard (10...3_600_000).contains(otelScheduleDelayMs), (100...600_000).contains(otelTimeoutMs) else {
            throw HubError.config("OTEL_BSP_SCHEDULE_DELAY must be 10-3600000 ms and OTEL_EXPORTER_OTLP_TIMEOUT 100-600000 ms")
        }
        guard (1...1_000_000).contains(otelMaxQueueSize), (1...otelMaxQueueSize).contains(otelMaxExportBatchSize) else {
            throw HubError.config("OTEL_BSP_MAX_QUEUE_SIZE must be 1-1000000 and OTEL_BSP_MAX_EXPORT_BATCH_SIZE 1 to the queue size")
        }
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
