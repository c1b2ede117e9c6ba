import Channels

/// How a route checks its caller. Every route names one; there is no default.
public indirect enum AuthScheme: Sendable, Equatable {
    /// Open to anyone (health checks, static assets, metrics).
    case none
    /// The hub's server API key, as `X-API-Key: <key>` or `Authorization: apikey <key>`.
    case serverAPIKey
    /// A seed system's static API key in `X-API-Key` (seed 001), looked up by name.
    case apiKey(String)
    /// A seed system's static bearer tokens (seed 000's `allowedToken` / `adminToken`), looked
    /// up by name. `admin` routes take only the admin token; the others take either.
    case bearerToken(String, admin: Bool)
    /// A JWT access token (`Authorization: Bearer`) signed with the hub's token key; `roles`
    /// empty means any authenticated user, otherwise the token's role must be one of them.
    case jwt(roles: [String])
    /// A JWT when one is presented (then it must be valid, else 401); without one the caller is
    /// anonymous and the route decides. Only seed 003's backward-compatible `/auth/token`,
    /// whose answer depends on whether a bearer came.
    case optionalJWT
    /// The inner scheme when the caller passes it, otherwise anonymous (never refused here):
    /// for a route that serves two systems on one path and decides in its handler
    /// (`GET /status`: seed 000 with a gateway token, seed 003's open status without).
    case optional(AuthScheme)
    /// The client protocol's own: nothing at the HTTP layer, the connection token travels in
    /// the connect request and the engine verifies it (Centrifugo's HTTP transports).
    case clientProtocol
}

/// Secrets the auth schemes compare against. Never logged.
public struct Credentials: Sendable {
    public struct StaticTokens: Sendable {
        public var allowed: String?
        public var admin: String?
        public init(allowed: String?, admin: String?) {
            self.allowed = allowed.flatMap { $0.isEmpty ? nil : $0 }
            self.admin = admin.flatMap { $0.isEmpty ? nil : $0 }
        }
    }

    public var serverAPIKey: String?
    public var apiKeys: [String: String]
    public var bearerTokens: [String: StaticTokens]
    public var tokens: TokenVerifier

    public init(serverAPIKey: String?, apiKeys: [String: String] = [:], bearerTokens: [String: StaticTokens] = [:],
                tokens: TokenVerifier = TokenVerifier(hmacSecret: nil)) {
        self.serverAPIKey = serverAPIKey.flatMap { $0.isEmpty ? nil : $0 }
        self.apiKeys = apiKeys.filter { !$0.value.isEmpty }
        self.bearerTokens = bearerTokens
        self.tokens = tokens
    }
}

/// Who is calling, once the route's scheme accepted them.
public struct Caller: Sendable {
    /// The key rate limits count against: a hash of the credential, the user, or the address.
    public var rateKey: String
    /// The authenticated user (JWT `sub`), if any.
    public var user: String?
    /// The user's role (JWT `role` claim, or `admin` for an admin static token).
    public var role: String?
    public var claims: JSONValue?
}

enum Authenticator {
    /// Checks the request against the scheme. Returns the caller, or the status (401/403)
    /// and message to refuse with.
    static func check(_ request: HTTPRequest, scheme: AuthScheme, credentials: Credentials, now: Double) -> Result<Caller, RouteError> {
        let anonymous = Caller(rateKey: "ip:" + request.remoteAddress)
        switch scheme {
        case .none, .clientProtocol:
            return .success(anonymous)
        case .optional(let inner):
            return .success((try? check(request, scheme: inner, credentials: credentials, now: now).get()) ?? anonymous)
        case .serverAPIKey:
            var presented = request.header("x-api-key")
            if presented == nil, let auth = request.header("authorization") {
                let parts = auth.split(separator: " ", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == "apikey" { presented = String(parts[1]) }
            }
            guard let expected = credentials.serverAPIKey, let presented, ConstantTime.equal(presented, expected) else {
                return .failure(RouteError(401, "unauthorized"))
            }
            return .success(Caller(rateKey: "key:" + SHA1.hex(Array(presented.utf8)).prefix(16)))
        case .apiKey(let name):
            guard let expected = credentials.apiKeys[name], let presented = request.header("x-api-key"),
                  ConstantTime.equal(presented, expected)
            else { return .failure(RouteError(401, "")) }
            return .success(Caller(rateKey: "key:" + SHA1.hex(Array(presented.utf8)).prefix(16)))
        case .bearerToken(let name, let adminOnly):
            guard let presented = bearer(request), let tokens = credentials.bearerTokens[name] else {
                return .failure(RouteError(401, ""))
            }
            // Both comparisons always run, so timing does not tell which token matched.
            let isAdmin = tokens.admin.map { ConstantTime.equal(presented, $0) } ?? false
            let isAllowed = tokens.allowed.map { ConstantTime.equal(presented, $0) } ?? false
            if isAdmin { return .success(Caller(rateKey: "token:admin", role: "admin")) }
            if isAllowed {
                if adminOnly { return .failure(RouteError(403, "Admin token required")) }
                return .success(Caller(rateKey: "token:allowed", role: "user"))
            }
            return .failure(RouteError(401, ""))
        case .optionalJWT:
            guard bearer(request) != nil else { return .success(anonymous) }
            return check(request, scheme: .jwt(roles: []), credentials: credentials, now: now)
                .mapError { _ in RouteError(401, "Could not validate credentials") }
        case .jwt(let roles):
            guard let token = bearer(request) else { return .failure(RouteError(401, "")) }
            let claims: JSONValue
            do {
                claims = try credentials.tokens.verify(token, now: now)
            } catch .expired {
                return .failure(RouteError(401, "Token has expired"))
            } catch {
                return .failure(RouteError(401, ""))
            }
            guard let user = claims["sub"]?.stringValue, !user.isEmpty else { return .failure(RouteError(401, "")) }
            let role = claims["role"]?.stringValue ?? claims["roles"]?.arrayValue?.first?.stringValue ?? "user"
            if !roles.isEmpty && !roles.contains(role) { return .failure(RouteError(403, "Insufficient permissions")) }
            return .success(Caller(rateKey: "user:" + user, user: user, role: role, claims: claims))
        }
    }

    static func bearer(_ request: HTTPRequest) -> String? {
        guard let auth = request.header("authorization") else { return nil }
        // "Bearer " in any case, compared on the bytes (no lowercased copy per request).
        let bytes = auth.utf8
        guard bytes.count > 7, zip(bytes.prefix(6), "bearer".utf8).allSatisfy({ $0 | 0x20 == $1 }),
              bytes.dropFirst(6).first == UInt8(ascii: " ") else { return nil }
        let token = String(auth.dropFirst(7)).trimmingCharacters(in: " ")
        return token.isEmpty ? nil : token
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}
