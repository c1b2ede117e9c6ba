import Channels
import Store

/// Seed 003's analytics, conversation management, bot management, monitoring and system
/// configuration (`/conversations/analytics/*`, `/admin/*`), plus its `/status`. The role of
/// each route is in docs/admin.md.
public struct JuneAdminConsole: Sendable {
    let archive: ConversationArchive
    let config: LiveSettings
    let bot: LiveSettings
    let commands: BotCommands
    let monitor: ServiceMonitor
    let tokens: AuthTokens
    let node: Node
    let store: any RecordStore
    let services: ServiceDesk

    public init(archive: ConversationArchive, config: LiveSettings, bot: LiveSettings, commands: BotCommands, monitor: ServiceMonitor,
                tokens: AuthTokens, node: Node, store: any RecordStore, services: ServiceDesk) {
        self.archive = archive
        self.config = config
        self.bot = bot
        self.commands = commands
        self.monitor = monitor
        self.tokens = tokens
        self.node = node
        self.store = store
        self.services = services
    }

    static let admin = AuthScheme.jwt(roles: ["admin"])
    static let readers = AuthScheme.jwt(roles: ["admin", "moderator"])
    static let tag = "june-admin"
    static let refusals: [Int: String] = [401: "Not authenticated", 403: "Insufficient permissions"]
    static let window = [QueryParameter("start_date", description: "ISO 8601 date or date-time (inclusive)"),
                         QueryParameter("end_date", description: "ISO 8601 date or date-time (exclusive; a bare date includes that day)")]

    /// Each conversation's JSON with its messages, read one conversation after another; nil when the store fails.
    static func withMessages(_ rest: ArraySlice<ConversationSummary>, archive: ConversationArchive, into done: [JSONValue],
                             completion: @escaping @Sendable ([JSONValue]?) -> Void) {
        guard let conversation = rest.first else { completion(done); return }
        archive.messages(of: conversation) { result in
            guard case .success(let messages) = result, case .object(var members) = conversation.json else { completion(nil); return }
            members.append(("messages", .array(messages.map(\.json))))
            withMessages(rest.dropFirst(), archive: archive, into: done + [.object(members)], completion: completion)
        }
    }

    static func responses(_ extra: [Int: String]) -> [Int: String] { refusals.merging(extra) { $1 } }

    public var routes: [Route] {
        analyticsRoutes + conversationRoutes + botRoutes + monitoringRoutes + configRoutes
    }

    // MARK: Analytics

    var analyticsRoutes: [Route] {
        [
            Route("GET", "/conversations/analytics/metrics", auth: .jwt(roles: []), errors: .fastAPI, rateLimit: "june-default",
                  summary: "Metrics of one conversation (its user, a moderator or an admin)", tag: "june-analytics",
                  query: [QueryParameter("user_id", required: true), QueryParameter("chat_id", required: true, description: "conversation id")],
                  responses: Self.responses([200: "Metrics", 400: "Missing user_id or chat_id", 404: "No such conversation"])) { ctx in
                ctx.guarded { () throws(RouteError) in
                    guard let user = ctx.request.queryValue("user_id"), JuneInput.isIdentifier(user) else { throw RouteError(400, "user_id is required") }
                    guard let chat = ctx.request.queryValue("chat_id"), JuneInput.isIdentifier(chat) else { throw RouteError(400, "chat_id is required") }
                    let role = ctx.caller.role ?? "user"
                    if role != "admin" && role != "moderator" && ctx.caller.user != user { throw RouteError(403, "Insufficient permissions") }
                    archive.metrics(user: user, conversation: chat) { result in
                        switch result {
                        case .failure: ctx.fail(RouteError(503, "Conversation store unavailable"))
                        case .success(nil): ctx.fail(RouteError(404, "Conversation not found"))
                        case .success(let metrics?): ctx.json(200, metrics.json)
                        }
                    }
                }
            },
            Route("GET", "/conversations/mine", auth: .jwt(roles: []), errors: .fastAPI, rateLimit: "june-default",
                  summary: "The caller's own conversations with their messages, most recently updated first", tag: "june-chat",
                  query: [QueryParameter("limit", type: "integer", description: "conversations per page, 1-50, default 20"),
                          QueryParameter("cursor", description: "next_cursor of the previous page")],
                  responses: Self.responses([200: "{conversations: [{conversation_id, …, messages}], next_cursor}", 400: "Bad limit or cursor"])) { ctx in
                ctx.guarded { () throws(RouteError) in
                    guard let user = ctx.caller.user else { throw RouteError(401, "Not authenticated") }
                    var limit = 20
                    if let text = ctx.request.queryValue("limit") {
                        guard let value = Int(text), (1...50).contains(value) else { throw RouteError(400, "limit must be an integer from 1 to 50") }
                        limit = value
                    }
                    var cursor: ConversationArchive.Cursor?
                    if let text = ctx.request.queryValue("cursor") {
                        guard let parsed = ConversationArchive.Cursor(text) else { throw RouteError(400, "cursor is not a next_cursor this endpoint gave") }
                        cursor = parsed
                    }
                    archive.own(user: user, limit: limit, after: cursor) { [archive] result in
                        guard case .success(let (page, next)) = result else { ctx.fail(RouteError(503, "Conversation store unavailable")); return }
                        Self.withMessages(page[...], archive: archive, into: []) { conversations in
                            guard let conversations else { ctx.fail(RouteError(503, "Conversation store unavailable")); return }
                            ctx.json(200, ["conversations": .array(conversations), "next_cursor": next.map { .string($0.text) } ?? .null])
                        }
                    }
                }
            },
            Route("GET", "/conversations/analytics/dashboard", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Totals over a time window (admin, moderator)", tag: "june-analytics", query: Self.window,
                  responses: Self.responses([200: "Totals", 400: "Bad date"])) { ctx in
                totals(ctx, rows: false) { totals in ctx.json(200, totals.dashboard) }
            },
            Route("GET", "/conversations/analytics/report", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Per-conversation report over a time window, JSON or CSV (admin, moderator)", tag: "june-analytics",
                  query: Self.window + [QueryParameter("format", description: "json (default) or csv")],
                  responses: Self.responses([200: "Report", 400: "Bad date or format"])) { ctx in
                let format = ctx.request.queryValue("format") ?? "json"
                guard format == "json" || format == "csv" else { ctx.fail(RouteError(400, "format must be json or csv")); return }
                totals(ctx, rows: true) { totals in
                    if format == "json" {
                        ctx.json(200, totals.report(generatedAt: node.clock.now()))
                    } else {
                        ctx.respond(HTTPResponse(status: 200, headers: [
                            ("content-type", "text/csv; charset=utf-8"),
                            ("content-disposition", "attachment; filename=\"conversations-report.csv\""),
                        ], body: Array(totals.csv.utf8)))
                    }
                }
            },
        ]
    }

    private func totals(_ ctx: RouteContext, rows: Bool, then answer: @escaping @Sendable (AnalyticsTotals) -> Void) {
        ctx.guarded { () throws(RouteError) in
            let window = try AnalyticsWindow.parse(start: ctx.request.queryValue("start_date"), end: ctx.request.queryValue("end_date"))
            archive.totals(window, rows: rows) { result in
                switch result {
                case .failure: ctx.fail(RouteError(503, "Conversation store unavailable"))
                case .success(let totals): answer(totals)
                }
            }
        }
    }

    // MARK: Conversations

    var conversationRoutes: [Route] {
        [
            Route("GET", "/admin/conversations", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "List conversations (admin, moderator), by user then conversation id", tag: Self.tag,
                  query: [QueryParameter("user_id", description: "Only this user's")] + JuneUserAdmin.pageQuery,
                  responses: Self.responses([200: "Conversations", 400: "Bad user_id, limit or offset"])) { ctx in
                ctx.guarded { () throws(RouteError) in
                    let page = try Paging.parse(ctx.request)
                    let user = ctx.request.queryValue("user_id")
                    if let user, !JuneInput.isIdentifier(user) { throw RouteError(400, "user_id must be 1-64 letters, digits, _ . @ -") }
                    archive.list(user: user, limit: page.limit, offset: page.offset) { result in
                        switch result {
                        case .failure: ctx.fail(RouteError(503, "Conversation store unavailable"))
                        case .success(let list): ctx.json(200, .array(list.map(\.json)))
                        }
                    }
                }
            },
            Route("GET", "/admin/conversations/search", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Ranked word search over message content (admin, moderator)", tag: Self.tag,
                  query: [QueryParameter("query", required: true), QueryParameter("limit", type: "integer", description: "1-100, default 20")],
                  responses: Self.responses([200: "Matching conversations, best first", 400: "Missing query or bad limit"])) { ctx in
                ctx.guarded { () throws(RouteError) in
                    let query = ctx.request.queryValue("query") ?? ""
                    guard !TextSearch(query: query).isEmpty else { throw RouteError(400, "query must contain at least one word") }
                    guard query.utf8.count <= 500 else { throw RouteError(400, "query is longer than 500 bytes") }
                    var limit = 20
                    if let text = ctx.request.queryValue("limit") {
                        guard let value = Int(text), (1...100).contains(value) else { throw RouteError(400, "limit must be an integer from 1 to 100") }
                        limit = value
                    }
                    archive.search(query, limit: limit) { result in
                        switch result {
                        case .failure: ctx.fail(RouteError(503, "Conversation store unavailable"))
                        case .success(let hits): ctx.json(200, ["query": .string(query), "results": .array(hits.map(\.json))])
                        }
                    }
                }
            },
            Route("GET", "/admin/conversations/{conversation_id}", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "A conversation with its messages and metrics (admin, moderator)", tag: Self.tag,
                  query: [QueryParameter("user_id", description: "The conversation's user, when several users used the same id")],
                  responses: Self.responses([200: "The conversation", 404: "No such conversation", 409: "Several users have a conversation with this id"])) { ctx in
                find(ctx) { conversation in
                    archive.messages(of: conversation) { result in
                        guard case .success(let messages) = result else { ctx.fail(RouteError(503, "Conversation store unavailable")); return }
                        var metrics = ConversationMetrics(userID: conversation.userID, conversationID: conversation.conversationID)
                        for message in messages { metrics.add(message) }
                        var json = conversation.json
                        if case .object(var members) = json {
                            members.append(("metrics", metrics.json))
                            members.append(("messages", .array(messages.map(\.json))))
                            json = .object(members)
                        }
                        ctx.json(200, json)
                    }
                }
            },
            Route("DELETE", "/admin/conversations/{conversation_id}", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Delete a conversation and its messages (admin only)", tag: Self.tag,
                  query: [QueryParameter("user_id", description: "The conversation's user, when several users used the same id")],
                  responses: Self.responses([200: "Deleted", 404: "No such conversation", 409: "Several users have a conversation with this id"])) { ctx in
                find(ctx) { conversation in
                    archive.delete(conversation, by: ctx.caller.user) { result in
                        switch result {
                        case .failure: ctx.fail(RouteError(503, "Conversation store unavailable"))
                        case .success(let count):
                            ctx.json(200, ["message": "Conversation deleted", "conversation_id": .string(conversation.conversationID),
                                           "user_id": .string(conversation.userID), "deleted_messages": .int(Int64(count))])
                        }
                    }
                }
            },
        ]
    }

    private func find(_ ctx: RouteContext, then use: @escaping @Sendable (ConversationSummary) -> Void) {
        let id = ctx.params["conversation_id"] ?? ""
        let user = ctx.request.queryValue("user_id")
        guard JuneInput.isIdentifier(id), user.map(JuneInput.isIdentifier) ?? true else {
            ctx.fail(RouteError(404, "Conversation not found"))
            return
        }
        archive.find(id, user: user) { result in
            switch result {
            case .success(let conversation): use(conversation)
            case .failure(.notFound): ctx.fail(RouteError(404, "Conversation not found"))
            case .failure(.ambiguous(let users)):
                ctx.fail(RouteError(409, "Several users have a conversation \(id) (\(users.joined(separator: ", "))): add ?user_id="))
            case .failure(.store): ctx.fail(RouteError(503, "Conversation store unavailable"))
            }
        }
    }

    // MARK: Bot

    var botRoutes: [Route] {
        [
            Route("GET", "/admin/bot/config", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Bot configuration (admin only)", tag: Self.tag, responses: Self.responses([200: "{\"config\": {…}}"])) { ctx in
                ctx.json(200, ["config": bot.value])
            },
            Route("PUT", "/admin/bot/config", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Change bot configuration keys (admin only); applied on every node at once", tag: Self.tag,
                  body: .json(["type": "object", "required": ["config"], "properties": ["config": ["type": "object"]]]),
                  responses: Self.responses([200: "The new configuration", 400: "Invalid key or value", 409: "Concurrent edits, retry"])) { ctx in
                update(bot, ctx)
            },
            Route("GET", "/admin/bot/status", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Whether the bot can answer: enabled, and agent workers connected (admin only)", tag: Self.tag,
                  responses: Self.responses([200: "Status"])) { ctx in
                workers { counts in
                    let enabled = bot["enabled"]?.boolValue ?? true
                    let agent = monitor.snapshot["agent"]
                    let online = enabled && (counts["agent"] ?? 0) > 0
                    ctx.json(200, [
                        "status": .string(!enabled ? "disabled" : online ? "online" : "offline"), "enabled": .bool(enabled),
                        "workers": .object(ServiceMonitor.monitored.map { ($0, .int(Int64(counts[$0] ?? 0))) }),
                        "uptime": .int(Int64(online ? max(0, node.clock.now() - (agent?.since ?? node.clock.now())) : 0)),
                        "pending_requests": .int(Int64(services.waiting)),
                    ])
                }
            },
            Route("GET", "/admin/bot/stats", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "What the bot has done, from the stored conversations (admin only)", tag: Self.tag,
                  responses: Self.responses([200: "Statistics"])) { ctx in
                archive.totals(AnalyticsWindow(), rows: false) { result in
                    guard case .success(let totals) = result else { ctx.fail(RouteError(503, "Conversation store unavailable")); return }
                    commands.list { listed in
                        ctx.json(200, [
                            "total_conversations": .int(Int64(totals.conversationCount)), "total_messages": .int(Int64(totals.messages)),
                            "user_messages": .int(Int64(totals.userMessages)), "bot_messages": .int(Int64(totals.assistantMessages)),
                            "users": .int(Int64(totals.userCount)), "average_response_time": .double(totals.averageResponseTime),
                            "commands": .int(Int64((try? listed.get())?.count ?? 0)),
                        ])
                    }
                }
            },
        ] + commands.routes(auth: Self.admin, responses: Self.responses)
    }

    // MARK: Monitoring

    /// Connected workers per service, from presence now.
    private func workers(_ completion: @escaping @Sendable ([String: Int]) -> Void) {
        let counts = WorkerCount()
        counts.collect(node: node, services: ServiceMonitor.monitored[...], into: [:], completion: completion)
    }

    var monitoringRoutes: [Route] {
        [
            Route("GET", "/admin/monitoring/services", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Per service: healthy (a worker is connected) and uptime in seconds (admin only)", tag: Self.tag,
                  responses: Self.responses([200: "Services"])) { ctx in
                servicesStatus { ctx.json(200, $0) }
            },
            Route("GET", "/admin/monitoring/metrics", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "This node's counters (admin only); Prometheus text is at /metrics", tag: Self.tag,
                  responses: Self.responses([200: "Metrics"])) { ctx in
                let info = node.info()
                let counters = node.counters
                ctx.json(200, [
                    "node": .string(info.name), "uptime": .int(Int64(info.uptime)), "connections": .int(Int64(info.clients)),
                    "users_online": .int(Int64(info.users)), "channels": .int(Int64(info.channels)), "subscriptions": .int(Int64(info.subscriptions)),
                    "publications_total": .int(Int64(counters.publications.load(ordering: .relaxed))),
                    "deliveries_total": .int(Int64(counters.deliveries.load(ordering: .relaxed))),
                    "service_requests_waiting": .int(Int64(services.waiting)),
                    "timestamp": .string(ISOTime.string(node.clock.now())),
                ])
            },
            Route("GET", "/admin/monitoring/health", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Overall health: store reachable, services with workers (admin only)", tag: Self.tag,
                  responses: Self.responses([200: "healthy, degraded (a service has no worker) or unhealthy (store down)"])) { ctx in
                store.get("june:config") { read in
                    servicesStatus { services in
                        let storeOK = if case .success = read { true } else { false }
                        let allUp = ServiceMonitor.monitored.allSatisfy { services[$0]?["healthy"]?.boolValue ?? true }
                        ctx.json(200, [
                            "status": .string(!storeOK ? "unhealthy" : allUp ? "healthy" : "degraded"),
                            "components": ["store": .string(storeOK ? "ok" : "unavailable"), "services": services],
                            "timestamp": .string(ISOTime.string(node.clock.now())),
                        ])
                    }
                }
            },
        ]
    }

    /// Seed 003's services object: the gateway (this hub) and each worker service.
    func servicesStatus(_ completion: @escaping @Sendable (JSONValue) -> Void) {
        workers { [node, monitor, services] counts in
            let now = node.clock.now()
            let known = monitor.snapshot
            var members: [(String, JSONValue)] = [("gateway", [
                "healthy": true, "uptime": .int(Int64(node.info().uptime)), "workers": 1, "answering": true,
            ])]
            for service in ServiceMonitor.monitored {
                let workers = counts[service] ?? 0
                let answering = services.isAnswering(service)
                let since = known[service].flatMap { $0.up ? $0.since : nil } ?? now
                members.append((service, [
                    "healthy": .bool(workers > 0 && answering), "uptime": .int(Int64(workers > 0 ? max(0, now - since) : 0)),
                    "workers": .int(Int64(workers)), "answering": .bool(answering),
                ]))
            }
            completion(.object(members))
        }
    }

    /// Seed 003's `GET /status` (served by the `/status` route without `gw_id` or `room`).
    public func status(_ ctx: RouteContext) {
        workers { [node, config] counts in
            let maintenance = config["maintenance_mode"]?.boolValue ?? false
            let all = ["stt", "tts", "llm"].allSatisfy { (counts[$0] ?? 0) > 0 }
            ctx.json(200, [
                "status": .string(maintenance ? "maintenance" : all ? "operational" : "degraded"),
                "services": .object(["stt", "tts", "llm"].map { ($0, .string((counts[$0] ?? 0) > 0 ? "online" : "offline")) }),
                "uptime": .int(Int64(node.info().uptime)), "timestamp": .string(ISOTime.string(node.clock.now())),
            ])
        }
    }

    // MARK: Configuration

    var configRoutes: [Route] {
        [
            Route("GET", "/admin/config", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "The system configuration this node runs with (admin only)", tag: Self.tag,
                  responses: Self.responses([200: "{\"config\": {…}}"])) { ctx in
                ctx.json(200, ["config": config.value])
            },
            Route("PUT", "/admin/config", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Change configuration keys (null removes one; admin only); applied on every node at once", tag: Self.tag,
                  body: .json(["type": "object", "required": ["config"], "properties": ["config": ["type": "object"]]]),
                  responses: Self.responses([200: "The new configuration and what changed", 400: "Invalid key or value", 409: "Concurrent edits, retry"])) { ctx in
                update(config, ctx)
            },
            Route("GET", "/admin/config/history", auth: Self.admin, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Who changed which key when, old and new values, newest first (admin only)", tag: Self.tag,
                  query: JuneUserAdmin.pageQuery, responses: Self.responses([200: "History", 400: "Bad limit or offset"])) { ctx in
                ctx.guarded { () throws(RouteError) in
                    let page = try Paging.parse(ctx.request)
                    config.history(limit: page.limit, offset: page.offset) { result in
                        switch result {
                        case .failure: ctx.fail(RouteError(503, "Configuration store unavailable"))
                        case .success(let entries): ctx.json(200, .array(entries))
                        }
                    }
                }
            },
            Route("GET", "/admin/channels/token", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "A subscription token for an admin channel (admin: all four; moderator: admin:users, admin:conversations)",
                  tag: Self.tag, query: [QueryParameter("channel", required: true, description: AdminEvents.all.joined(separator: ", "))],
                  responses: Self.responses([200: "{channel, token, expires_in}", 400: "Not an admin channel", 503: "Token signing not configured"])) { ctx in
                let channel = ctx.request.queryValue("channel") ?? ""
                guard AdminEvents.all.contains(channel) else {
                    ctx.fail(RouteError(400, "channel must be one of " + AdminEvents.all.joined(separator: ", ")))
                    return
                }
                guard ctx.caller.role == "admin" || AdminEvents.moderatorChannels.contains(channel) else {
                    ctx.fail(RouteError(403, "Insufficient permissions"))
                    return
                }
                guard let user = ctx.caller.user, let token = tokens.subscription(user: user, channel: channel) else {
                    ctx.fail(RouteError(503, "Token signing is not configured"))
                    return
                }
                ctx.json(200, ["channel": .string(channel), "token": .string(token), "expires_in": .int(Int64(tokens.accessTTL))])
            },
        ]
    }

    private func update(_ settings: LiveSettings, _ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let body = try JuneInput.object(ctx.request)
            guard let changes = body["config"]?.objectValue else { throw RouteError(400, "config must be an object") }
            settings.update(changes, by: ctx.caller.user ?? "") { result in
                switch result {
                case .success(let (value, changes)):
                    ctx.json(200, ["config": value, "changes": .array(changes.map {
                        ["key": .string($0.key), "old_value": $0.old ?? .null, "new_value": $0.new ?? .null]
                    })])
                case .failure(.invalid(let message)): ctx.fail(RouteError(400, message))
                case .failure(.busy): ctx.fail(RouteError(409, "The configuration changed meanwhile; retry"))
                case .failure(.store): ctx.fail(RouteError(503, "Configuration store unavailable"))
                }
            }
        }
    }
}

/// Presence counts of several service channels, one after the other.
struct WorkerCount: Sendable {
    func collect(node: Node, services: ArraySlice<String>, into counts: [String: Int], completion: @escaping @Sendable ([String: Int]) -> Void) {
        guard let service = services.first else { completion(counts); return }
        node.presence(channel: ServiceDesk.channel(service)) { result in
            var counts = counts
            counts[service] = (try? result.get())?.count ?? 0
            collect(node: node, services: services.dropFirst(), into: counts, completion: completion)
        }
    }
}
