import Channels

/// Seed 003's authentication endpoints, byte-compatible bodies, FastAPI `{"detail": …}` errors.
public struct JuneAuth: Sendable {
    let users: UserDirectory
    let tokens: AuthTokens
    /// Legacy callers may obtain tokens for a bare `user_id` (no password); off unless configured.
    let allowLegacyLogin: Bool

    public init(users: UserDirectory, tokens: AuthTokens, allowLegacyLogin: Bool) {
        self.users = users
        self.tokens = tokens
        self.allowLegacyLogin = allowLegacyLogin
    }

    static let tokenSchema: JSONValue = ["type": "object", "properties": [
        "access_token": ["type": "string"], "refresh_token": ["type": "string"], "token_type": ["type": "string"], "expires_in": ["type": "integer"],
    ]]

    public var routes: [Route] {
        [
            Route("POST", "/auth/login", auth: .none, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Log in with user name and password; returns access and refresh tokens", tag: "june-auth",
                  body: .json(["type": "object", "properties": ["username": ["type": "string"], "password": ["type": "string"], "user_id": ["type": "string"]]]),
                  responses: [200: "Tokens", 400: "Neither credentials nor user_id", 401: "Invalid credentials", 403: "Account blocked or inactive", 429: "Rate limited", 503: "Token signing not configured"]) { ctx in
                login(ctx, adminOnly: false)
            },
            Route("POST", "/admin/auth/login", auth: .none, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Admin login", tag: "june-auth",
                  body: .json(["type": "object", "required": ["username", "password"], "properties": ["username": ["type": "string"], "password": ["type": "string"]]]),
                  responses: [200: "Tokens", 400: "Missing username or password", 401: "Invalid credentials", 403: "Not an admin, or blocked", 429: "Rate limited"]) { ctx in
                login(ctx, adminOnly: true)
            },
            Route("POST", "/auth/refresh", auth: .none, errors: .fastAPI, rateLimit: "june-default",
                  summary: "New access token for a refresh token", tag: "june-auth",
                  body: .json(["type": "object", "required": ["refresh_token"], "properties": ["refresh_token": ["type": "string"]]]),
                  responses: [200: "Access token", 400: "refresh_token missing", 401: "Invalid, expired or revoked refresh token", 403: "Account blocked or inactive"]) { ctx in
                refresh(ctx)
            },
            Route("POST", "/auth/logout", auth: .none, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Revoke a refresh token (on every node)", tag: "june-auth",
                  body: .json(["type": "object", "required": ["refresh_token"], "properties": ["refresh_token": ["type": "string"]]]),
                  responses: [200: "Revoked", 400: "refresh_token missing", 401: "Invalid refresh token"]) { ctx in
                logout(ctx)
            },
            Route("POST", "/auth/token", auth: .optionalJWT, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Access token (backward compatible): for the bearer's own user, any user for admins, or a bare user_id when legacy login is on",
                  tag: "june-auth", query: [QueryParameter("user_id", description: "User the token is for")],
                  responses: [200: "Access token", 400: "Bad user_id", 401: "No valid bearer token and legacy login off", 403: "Token for another user needs admin"]) { ctx in
                token(ctx)
            },
        ]
    }

    private func login(_ ctx: RouteContext, adminOnly: Bool) {
        ctx.guarded { () throws(RouteError) in
            guard tokens.canIssue else { throw RouteError(503, "Token signing is not configured") }
            let body = try JuneInput.object(ctx.request)
            let username = try JuneInput.string(body, "username")
            let password = try JuneInput.string(body, "password")
            let legacyID = try JuneInput.string(body, "user_id")
            if let username, let password, !username.isEmpty {
                users.authenticate(username: username, password: password) { result in
                    switch result {
                    case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                    case .success(nil): ctx.fail(RouteError(401, "Invalid credentials"))
                    case .success(let user?):
                        if user.status != "active" { ctx.fail(RouteError(403, "User account is \(user.status)")); return }
                        if adminOnly && user.role != "admin" { ctx.fail(RouteError(403, "Admin access required")); return }
                        ctx.json(200, tokens.loginBody(user: user.userID, role: user.role)!)
                    }
                }
                return
            }
            if adminOnly { throw RouteError(400, "username and password are required") }
            guard let legacyID, password == nil else { throw RouteError(400, "username and password are required") }
            guard allowLegacyLogin else { throw RouteError(401, "Invalid credentials") }
            guard JuneInput.isIdentifier(legacyID) else { throw RouteError(400, "user_id must be 1-64 letters, digits, _ . @ -") }
            // A bare user_id never stands in for a registered user's password.
            users.user(id: legacyID) { result in
                switch result {
                case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                case .success(.some): ctx.fail(RouteError(401, "Invalid credentials"))
                case .success(nil): ctx.json(200, tokens.loginBody(user: legacyID, role: "user")!)
                }
            }
        }
    }

    private func refresh(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            guard tokens.canIssue else { throw RouteError(503, "Token signing is not configured") }
            let body = try JuneInput.object(ctx.request)
            guard let token = try JuneInput.string(body, "refresh_token"), !token.isEmpty else { throw RouteError(400, "refresh_token is required") }
            guard let claims = tokens.refreshClaims(token), let user = claims["sub"]?.stringValue, let jti = claims["jti"]?.stringValue else {
                throw RouteError(401, "Invalid refresh token")
            }
            tokens.isRevoked(jti: jti) { revoked in
                switch revoked {
                case .failure: ctx.fail(RouteError(503, "Token store unavailable"))
                case .success(true): ctx.fail(RouteError(401, "Refresh token has been revoked"))
                case .success(false):
                    users.user(id: user) { found in
                        switch found {
                        case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                        case .success(let record):
                            if let record, record.status != "active" { ctx.fail(RouteError(403, "User account is \(record.status)")); return }
                            let issue: @Sendable () -> Void = {
                                let access = tokens.access(user: user, role: record?.role ?? "user")!
                                ctx.json(200, ["access_token": .string(access), "token_type": "bearer", "expires_in": .int(Int64(tokens.accessTTL))])
                            }
                            guard record == nil else { issue(); return }
                            // Unknown here: another backend's user, or one an admin deleted.
                            users.isActive(user) { active in
                                switch active {
                                case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                                case .success(false): ctx.fail(RouteError(403, "User account is deleted"))
                                case .success(true): issue()
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    private func logout(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            guard tokens.canIssue else { throw RouteError(503, "Token signing is not configured") }
            let body = try JuneInput.object(ctx.request)
            guard let token = try JuneInput.string(body, "refresh_token"), !token.isEmpty else { throw RouteError(400, "refresh_token is required") }
            guard let claims = tokens.refreshClaims(token), let jti = claims["jti"]?.stringValue else { throw RouteError(401, "Invalid refresh token") }
            tokens.revoke(jti: jti, expiresAt: claims["exp"]?.doubleValue ?? 0) { result in
                switch result {
                case .failure: ctx.fail(RouteError(503, "Token store unavailable"))
                case .success: ctx.json(200, ["message": "Logged out successfully"])
                }
            }
        }
    }

    private func token(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            guard tokens.canIssue else { throw RouteError(503, "Token signing is not configured") }
            let requested = ctx.request.queryValue("user_id")
            if let requested, !JuneInput.isIdentifier(requested) { throw RouteError(400, "user_id must be 1-64 letters, digits, _ . @ -") }
            // The route's optional-JWT scheme already refused an invalid bearer.
            if let sub = ctx.caller.user {
                let role = ctx.caller.role ?? "user"
                let target = requested ?? sub
                if target != sub && role != "admin" { throw RouteError(403, "Insufficient permissions") }
                users.user(id: target) { found in
                    switch found {
                    case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                    case .success(let record):
                        if let record, record.status != "active" { ctx.fail(RouteError(403, "User account is \(record.status)")); return }
                        let targetRole = target == sub ? role : (record?.role ?? "user")
                        ctx.json(200, ["access_token": .string(tokens.access(user: target, role: targetRole)!), "token_type": "bearer"])
                    }
                }
                return
            }
            guard allowLegacyLogin else { throw RouteError(401, "Not authenticated") }
            let target = requested ?? "anonymous"
            users.user(id: target) { found in
                switch found {
                case .failure: ctx.fail(RouteError(503, "User store unavailable"))
                case .success(.some): ctx.fail(RouteError(401, "Not authenticated"))
                case .success(nil): ctx.json(200, ["access_token": .string(tokens.access(user: target, role: "user")!), "token_type": "bearer"])
                }
            }
        }
    }
}
