import Channels

/// Seed 000 (`000_d7b38ffa8ab3c966.txt`): the room proxy's REST API, byte for byte, over
/// `GatewayService`. Bearer `allowedToken` for normal calls (the `adminToken` passes too),
/// `adminToken` only for `/admin/statuses`; `/assets/...` is open.
public struct RoomProxy: Sendable {
    public static let tokensName = "gateways"
    let service: GatewayService
    let assets: GatewayAssets

    public init(service: GatewayService, assets: GatewayAssets) {
        self.service = service
        self.assets = assets
    }

    static let normal = AuthScheme.bearerToken(tokensName, admin: false)
    static let admin = AuthScheme.bearerToken(tokensName, admin: true)
    static let tag = "gateways (seed 000)"
    static let statusSchema: JSONValue = ["type": "object", "properties": ["gw_id": [:], "room": [:]]]

    public var routes: [Route] {
        [
            Route("POST", "/start", auth: Self.normal, errors: .fastAPI, summary: "Start a gateway for a room", tag: Self.tag,
                  body: .json(["type": "object", "required": ["room"], "properties": ["room": ["type": "string"]]]),
                  responses: [200: "The gateway's response", 400: "Missing 'room'", 502: "Gateway failed", 503: "No available gateways",
                              504: "Gateway did not answer in time"]) { context in
                guard let body = Self.body(context) else { return }
                guard let room = Self.field(context, body, "room") else { return }
                service.start(room: room, body: body, trace: context.trace, reply: context.respond)
            },
            Route("POST", "/stop", auth: Self.normal, errors: .fastAPI, summary: "Stop a gateway", tag: Self.tag,
                  body: .json(["type": "object", "required": ["gw_id"], "properties": ["gw_id": ["type": "string"]]]),
                  responses: [200: "The gateway's response", 400: "Missing 'gw_id'", 404: "No mapping found for provided gw_id"]) { context in
                guard let body = Self.body(context) else { return }
                guard let id = Self.field(context, body, "gw_id") else { return }
                service.stop(id: id, body: body, trace: context.trace, reply: context.respond)
            },
            Self.statusRoute("/status", summary: "A gateway's stored status, by gw_id or room", service: service),
            Self.statusRoute("/progress", summary: "A gateway's stored progress, by gw_id or room", service: service),
            Route("GET", "/admin/statuses", auth: Self.admin, errors: .fastAPI, summary: "Every gateway's status (admin token)",
                  tag: Self.tag, responses: [200: "gw_id → status", 401: "Not authenticated", 403: "Admin token required"]) { context in
                service.allStatuses(reply: context.respond)
            },
            Self.commandRoute("GET", service: service),
            Self.commandRoute("POST", service: service),
            Route("POST", "/register", auth: Self.normal, errors: .fastAPI, summary: "A gateway registers itself", tag: Self.tag,
                  body: .json(["type": "object", "required": ["gw_ip", "gw_id", "gw_type"], "properties": [
                      "gw_ip": ["type": "string"], "gw_id": ["type": "string"], "gw_type": ["type": "string"],
                  ]]), responses: [200: "Registered", 400: "Missing fields"]) { context in
                guard let body = Self.body(context) else { return }
                let names = ["gw_ip", "gw_id", "gw_type"]
                let missing = names.filter { (body[$0]?.stringValue ?? "").isEmpty }
                guard missing.isEmpty else {
                    context.fail(RouteError(400, "Missing fields: " + missing.joined(separator: ", ")))
                    return
                }
                service.register(id: body["gw_id"]!.stringValue!, ip: body["gw_ip"]!.stringValue!, type: body["gw_type"]!.stringValue!,
                                 reply: context.respond)
            },
            Route("POST", "/unregister", auth: Self.normal, errors: .fastAPI, summary: "Remove a gateway", tag: Self.tag,
                  body: .json(["type": "object", "required": ["gw_id"]]),
                  responses: [200: "Removed", 400: "Missing 'gw_id'", 404: "Gateway not found"]) { context in
                guard let body = Self.body(context) else { return }
                guard let id = Self.field(context, body, "gw_id") else { return }
                service.unregister(id: id, reply: context.respond)
            },
            Route("GET", "/assets/{file_name}", auth: .none, errors: .fastAPI, summary: "Static download from the assets folder",
                  tag: Self.tag, responses: [200: "The file", 400: "Invalid file name", 404: "File not found", 503: "Too many downloads in progress"],
                  produces: "application/octet-stream") { context in
                assets.serve(context.params["file_name"] ?? "", reply: context.respond)
            },
        ]
    }

    static func statusRoute(_ path: String, summary: String, service: GatewayService) -> Route {
        Route("GET", path, auth: normal, errors: .fastAPI, summary: summary, tag: tag,
              query: [QueryParameter("gw_id", description: "gateway id (preferred)"), QueryParameter("room", description: "room name")],
              responses: [200: "success", 400: "Missing parameters", 404: "Gateway or room not found"]) { context in
            service.status(id: context.request.queryValue("gw_id"), room: context.request.queryValue("room"), reply: context.respond)
        }.streaming(.named { request, _ in
            // The channel the gateway's record changes are published on, as the read finds it.
            if let id = request.queryValue("gw_id"), !id.isEmpty { return GatewayService.channel(gateway: id) }
            if let room = request.queryValue("room"), !room.isEmpty { return GatewayService.channel(room: room) }
            return nil
        })
    }

    /// `GET /status` belongs to seed 000 (a gateway's status, by `gw_id` or `room`, bearer
    /// gateway token) and to seed 003 (the AI services' status, open). One route serves both:
    /// a caller with a gateway token, or asking for a `gw_id` or `room`, gets seed 000 (401
    /// without a valid gateway token, 400 without parameters, as before); anyone else gets
    /// seed 003's answer.
    public static func sharedStatus(_ gateway: Route, otherwise services: @escaping @Sendable (RouteContext) -> Void) -> Route {
        var route = gateway
        route.auth = .optional(gateway.auth)
        route.summary = "With a gateway token or gw_id/room: a gateway's stored status (seed 000); otherwise the AI services' status (seed 003)"
        route.responses[200] = "Seed 000: {status, data}; seed 003: {status, services, uptime, timestamp}"
        route.responses[401] = "gw_id or room without a valid gateway token"
        let serveGateway = gateway.handler
        route.handler = { context in
            let asksGateway = context.request.queryValue("gw_id") != nil || context.request.queryValue("room") != nil
            if context.caller.role != nil {
                serveGateway(context)
            } else if asksGateway {
                var refusal = context.errors.response(401, context.errors.unauthorizedMessage, code: "UNAUTHORIZED")
                refusal.headers.append(("www-authenticate", "Bearer"))
                context.respond(refusal)
            } else {
                services(context)
            }
        }
        return route
    }

    static func commandRoute(_ method: String, service: GatewayService) -> Route {
        Route(method, "/command", auth: normal, errors: .fastAPI, summary: "Forward a command to a working gateway", tag: tag,
              query: [QueryParameter("gw_id", required: true)],
              responses: [200: "The gateway's response", 400: "Missing 'gw_id'", 403: "Gateway is not working",
                          404: "No mapping found for provided gw_id"]) { context in
            guard let id = context.request.queryValue("gw_id"), !id.isEmpty else {
                context.fail(RouteError(400, "Missing 'gw_id'"))
                return
            }
            service.command(id: id, body: context.request.body, contentType: context.request.header("content-type"), trace: context.trace,
                            reply: context.respond)
        }
    }

    /// The JSON object body (`{}` when empty), or nil after answering 400.
    static func body(_ context: RouteContext) -> JSONValue? {
        if context.request.body.isEmpty { return [:] }
        guard let value = try? JSONParser.parse(context.request.body), value.objectValue != nil else {
            context.fail(RouteError(400, "Request body must be a JSON object"))
            return nil
        }
        return value
    }

    /// A required string member, or nil after answering the seed's `Missing '<name>'`.
    static func field(_ context: RouteContext, _ body: JSONValue, _ name: String) -> String? {
        guard let value = body[name], !value.isNull else {
            context.fail(RouteError(400, "Missing '\(name)'"))
            return nil
        }
        guard let text = value.stringValue, !text.isEmpty else {
            context.fail(RouteError(400, text(for: value, name)))
            return nil
        }
        return text
    }

    private static func text(for value: JSONValue, _ name: String) -> String {
        value.stringValue == "" ? "Missing '\(name)'" : "'\(name)' must be a string"
    }
}
