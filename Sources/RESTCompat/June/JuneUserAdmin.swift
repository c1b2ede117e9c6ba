import Channels

/// Seed 003's user management (`/admin/users…`). Admins change users; moderators read them.
/// Every change is published on `admin:users` (`user_created`, `user_updated`, `user_blocked`,
/// `user_deleted`).
public struct JuneUserAdmin: Sendable {
    let users: UserDirectory
    let events: AdminEvents

    public init(users: UserDirectory, events: AdminEvents) {
        self.users = users
        self.events = events
    }

    static let readers = AuthScheme.jwt(roles: ["admin", "moderator"])
    static let pageQuery = [QueryParameter("limit", type: "integer", description: "Maximum number of results (1-1000, default 100)"),
                            QueryParameter("offset", type: "integer", description: "Offset for pagination (default 0)")]

    public var routes: [Route] {
        [
            Route("GET", "/admin/users", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "List users (admin, moderator), in user id order", tag: "june-admin", query: Self.pageQuery,
                  responses: [200: "Users", 400: "Bad limit or offset", 401: "Not authenticated", 403: "Not an admin or moderator"]) { ctx in
                ctx.guarded { () throws(RouteError) in
                    let page = try Paging.parse(ctx.request)
                    users.list(limit: page.limit, offset: page.offset) { result in
                        switch result {
                        case .success(let list): ctx.json(200, .array(list.map(\.publicJSON)))
                        case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                        }
                    }
                }
            },
            Route("GET", "/admin/users/stats", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Users by status (admin, moderator)", tag: "june-admin",
                  responses: [200: "Counts", 401: "Not authenticated", 403: "Not an admin or moderator"]) { ctx in
                struct Counts: Sendable { var total = 0; var byStatus: [String: Int] = [:] }
                StoreWalk.fold(users.store, prefix: "june:user:", into: Counts()) { counts, record in
                    if let user = (try? JSONParser.parse(record.value)).flatMap(JuneUser.init(record:)) {
                        counts.total += 1
                        counts.byStatus[user.status, default: 0] += 1
                    }
                    return true
                } done: { result in
                    guard case .success(let counts) = result else { ctx.fail(RouteError(503, "User store unavailable")); return }
                    ctx.json(200, [
                        "total_users": .int(Int64(counts.total)), "active_users": .int(Int64(counts.byStatus["active"] ?? 0)),
                        "blocked_users": .int(Int64(counts.byStatus["blocked"] ?? 0)), "inactive_users": .int(Int64(counts.byStatus["inactive"] ?? 0)),
                    ])
                }
            },
            Route("GET", "/admin/users/{user_id}", auth: Self.readers, errors: .fastAPI, rateLimit: "june-default",
                  summary: "A user's details (admin, moderator)", tag: "june-admin",
                  responses: [200: "The user", 401: "Not authenticated", 403: "Not an admin or moderator", 404: "No such user"]) { ctx in
                users.user(id: ctx.params["user_id"] ?? "") { found in
                    switch found {
                    case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                    case .success(nil): ctx.fail(RouteError(404, "User not found"))
                    case .success(let user?): ctx.json(200, user.publicJSON)
                    }
                }
            },
            Route("DELETE", "/admin/users/{user_id}", auth: .jwt(roles: ["admin"]), errors: .fastAPI, rateLimit: "june-default",
                  summary: "Delete a user (admin only); their live connections close, their conversations stay for analytics",
                  tag: "june-admin",
                  responses: [200: "Deleted", 400: "An admin cannot delete themselves", 401: "Not authenticated", 403: "Not an admin", 404: "No such user"]) { ctx in
                let id = ctx.params["user_id"] ?? ""
                guard id != ctx.caller.user else { ctx.fail(RouteError(400, "You cannot delete your own account")); return }
                users.delete(id: id) { result in
                    switch result {
                    case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                    case .success(nil): ctx.fail(RouteError(404, "User not found"))
                    case .success(let user?):
                        events.publish(AdminEvents.users, event: "user_deleted", [("user", user.publicJSON), ("by", ctx.caller.user.map { .string($0) })])
                        ctx.json(200, ["message": "User deleted", "user_id": .string(user.userID)])
                    }
                }
            },
            Route("POST", "/admin/users", auth: .jwt(roles: ["admin"]), errors: .fastAPI, rateLimit: "june-default",
                  summary: "Create a user (admin only)", tag: "june-admin",
                  body: .json(["type": "object", "required": ["username"], "properties": [
                      "username": ["type": "string"], "email": ["type": "string"], "password": ["type": "string", "minLength": 8],
                      "role": ["type": "string", "enum": ["user", "admin", "moderator"]], "status": ["type": "string", "enum": ["active", "blocked", "inactive"]],
                  ]]),
                  responses: [200: "The user", 400: "Invalid field", 401: "Not authenticated", 403: "Not an admin", 409: "User name taken"]) { ctx in
                create(ctx)
            },
            Route("PUT", "/admin/users/{user_id}", auth: .jwt(roles: ["admin"]), errors: .fastAPI, rateLimit: "june-default",
                  summary: "Update a user (admin only); blocking closes their live connections", tag: "june-admin",
                  body: .json(["type": "object", "properties": [
                      "username": ["type": "string"], "email": ["type": "string"], "password": ["type": "string"],
                      "role": ["type": "string"], "status": ["type": "string"],
                  ]]),
                  responses: [200: "The user", 400: "Invalid field", 401: "Not authenticated", 403: "Not an admin", 404: "No such user"]) { ctx in
                update(ctx)
            },
        ]
    }

    private static func validated(_ body: JSONValue) throws(RouteError) -> (email: String?, password: String?, role: String?, status: String?) {
        let email = try JuneInput.string(body, "email")
        let password = try JuneInput.string(body, "password")
        let role = try JuneInput.string(body, "role")
        let status = try JuneInput.string(body, "status")
        if let password, JuneInput.characters(password) < 8 { throw RouteError(400, "password must be at least 8 characters") }
        if let password, password.utf8.count > 1024 { throw RouteError(400, "password must be at most 1024 bytes") }
        if let role, !JuneUser.roles.contains(role) { throw RouteError(400, "role must be one of user, admin, moderator") }
        if let status, !JuneUser.statuses.contains(status) { throw RouteError(400, "status must be one of active, blocked, inactive") }
        if let email, email.utf8.count > 254 || !email.contains("@") { throw RouteError(400, "email is not an email address") }
        return (email, password, role, status)
    }

    private func create(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let body = try JuneInput.object(ctx.request)
            guard let username = try JuneInput.string(body, "username"), JuneInput.isIdentifier(username) else {
                throw RouteError(400, "username must be 1-64 letters, digits, _ . @ -")
            }
            let fields = try Self.validated(body)
            users.create(username: username, email: fields.email, password: fields.password, role: fields.role ?? "user",
                         status: fields.status ?? "active") { result in
                switch result {
                case .success(let user):
                    events.publish(AdminEvents.users, event: "user_created", [("user", user.publicJSON), ("by", ctx.caller.user.map { .string($0) })])
                    ctx.json(200, user.publicJSON)
                case .failure(.exists): ctx.fail(RouteError(409, "User already exists"))
                case .failure(.store): ctx.fail(RouteError(503, "User store unavailable"))
                }
            }
        }
    }

    private func update(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let body = try JuneInput.object(ctx.request)
            let fields = try Self.validated(body)
            if let username = try JuneInput.string(body, "username"), username != ctx.params["user_id"] {
                throw RouteError(400, "username cannot be changed (it is the user id)")
            }
            let id = ctx.params["user_id"] ?? ""
            users.user(id: id) { found in
                switch found {
                case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                case .success(nil): ctx.fail(RouteError(404, "User not found"))
                case .success(var user?):
                    let before = user
                    if let email = fields.email { user.email = email }
                    if let role = fields.role { user.role = role }
                    if let status = fields.status { user.status = status }
                    users.save(user, newPassword: fields.password) { saved in
                        switch saved {
                        case .success(let user):
                            let event = user.status == "blocked" && before.status != "blocked" ? "user_blocked" : "user_updated"
                            events.publish(AdminEvents.users, event: event, [
                                ("user", user.publicJSON), ("previous", before.publicJSON), ("by", ctx.caller.user.map { .string($0) }),
                            ])
                            ctx.json(200, user.publicJSON)
                        case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                        }
                    }
                }
            }
        }
    }
}

/// `limit` / `offset` query parameters as the seed's admin lists take them.
enum Paging {
    static let maxLimit = 1000

    static func parse(_ request: HTTPRequest, defaultLimit: Int = 100) throws(RouteError) -> (limit: Int, offset: Int) {
        var limit = defaultLimit
        var offset = 0
        if let text = request.queryValue("limit") {
            guard let value = Int(text), (1...maxLimit).contains(value) else {
                throw RouteError(400, "limit must be an integer from 1 to \(maxLimit)")
            }
            limit = value
        }
        if let text = request.queryValue("offset") {
            guard let value = Int(text), value >= 0 else { throw RouteError(400, "offset must be a non-negative integer") }
            offset = value
        }
        return (limit, offset)
    }
}
