import Channels

/// The two user-management calls chat needs to be usable (create a user, block one);
/// the rest of seed 003's admin API is its own issue and builds on `UserDirectory`.
public struct JuneUserAdmin: Sendable {
    let users: UserDirectory

    public init(users: UserDirectory) { self.users = users }

    public var routes: [Route] {
        [
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
                case .success(let user): ctx.json(200, user.publicJSON)
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
                    if let email = fields.email { user.email = email }
                    if let role = fields.role { user.role = role }
                    if let status = fields.status { user.status = status }
                    users.save(user, newPassword: fields.password) { saved in
                        switch saved {
                        case .success(let user): ctx.json(200, user.publicJSON)
                        case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                        }
                    }
                }
            }
        }
    }
}
