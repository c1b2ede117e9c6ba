import Channels
import Store

/// Issues seed 003's tokens. Access tokens are the hub's own HS256 connection JWTs (`sub`,
/// `role`, `exp`), so one login serves REST and the WebSocket endpoints. Refresh tokens are
/// JWTs signed with a key derived from the secret: no access-token check accepts them, and
/// no refresh check accepts an access token. Revoked refresh tokens are recorded in the
/// store (`june:revoked:<jti>`), so a revocation holds on every node.
public final class AuthTokens: Sendable {
    let secret: String?
    let verifier: TokenVerifier
    let refreshVerifier: TokenVerifier
    let store: any RecordStore
    let clock: any Clock
    public let accessTTL: Double
    public let refreshTTL: Double
    let audience: String?
    let issuer: String?

    public init(secret: String?, accessVerifier: TokenVerifier, store: any RecordStore, clock: any Clock = SystemClock(),
                accessTTL: Double = 3600, refreshTTL: Double = 30 * 86_400, audience: String? = nil, issuer: String? = nil) {
        self.secret = secret.flatMap { $0.isEmpty ? nil : $0 }
        verifier = accessVerifier
        let refreshKey = self.secret.map { Self.refreshKey($0) }
        refreshVerifier = TokenVerifier(hmacSecret: refreshKey)
        self.store = store
        self.clock = clock
        self.accessTTL = accessTTL
        self.refreshTTL = refreshTTL
        self.audience = audience
        self.issuer = issuer
    }

    static func refreshKey(_ secret: String) -> String {
        SHA256.hex(Array(("june-refresh-token|" + secret).utf8))
    }

    public var canIssue: Bool { secret != nil }

    public func access(user: String, role: String) -> String? {
        guard let secret else { return nil }
        let now = clock.now()
        return TokenSigner.hs256(claims: .compact([
            ("sub", .string(user)), ("role", .string(role)), ("typ", "access"),
            ("iat", .int(Int64(now))), ("exp", .int(Int64(now + accessTTL))),
            ("aud", audience.map { .string($0) }), ("iss", issuer.map { .string($0) }),
        ]), secret: secret)
    }

    /// A subscription token for one channel (the `admin` namespace admits no one without one).
    public func subscription(user: String, channel: String) -> String? {
        guard let secret else { return nil }
        let now = clock.now()
        return TokenSigner.hs256(claims: .compact([
            ("sub", .string(user)), ("channel", .string(channel)), ("typ", "subscription"),
            ("iat", .int(Int64(now))), ("exp", .int(Int64(now + accessTTL))),
            ("aud", audience.map { .string($0) }), ("iss", issuer.map { .string($0) }),
        ]), secret: secret)
    }

    public func refresh(user: String) -> String? {
        guard let secret else { return nil }
        let now = clock.now()
        return TokenSigner.hs256(claims: [
            "sub": .string(user), "typ": "refresh", "jti": .string(RandomID.uuid()),
            "iat": .int(Int64(now)), "exp": .int(Int64(now + refreshTTL)),
        ], secret: Self.refreshKey(secret))
    }

    /// The seed's login answer.
    public func loginBody(user: String, role: String) -> JSONValue? {
        guard let access = access(user: user, role: role), let refresh = refresh(user: user) else { return nil }
        return ["access_token": .string(access), "refresh_token": .string(refresh), "token_type": "bearer",
                "expires_in": .int(Int64(accessTTL))]
    }

    /// Claims of a valid refresh token (signature, expiry, type), or nil.
    public func refreshClaims(_ token: String) -> JSONValue? {
        guard let claims = try? refreshVerifier.verify(token, now: clock.now()), claims["typ"]?.stringValue == "refresh",
              let sub = claims["sub"]?.stringValue, !sub.isEmpty, claims["jti"]?.stringValue != nil
        else { return nil }
        return claims
    }

    static func revokedKey(_ jti: String) -> String { "june:revoked:" + jti }

    public func isRevoked(jti: String, completion: @escaping @Sendable (Result<Bool, StoreError>) -> Void) {
        store.get(Self.revokedKey(jti)) { completion($0.map { $0 != nil }) }
    }

    public func revoke(jti: String, expiresAt: Double, completion: @escaping @Sendable (Result<Void, StoreError>) -> Void) {
        store.put(Self.revokedKey(jti), value: JSONWriter.bytes(["exp": .double(expiresAt)]), completion: completion)
    }

    /// Forgets revocations of tokens that have expired anyway; keeps the store bounded.
    public func sweep() {
        RecordSweep.run(store: store, prefix: "june:revoked:", now: clock.now()) { $0["exp"]?.doubleValue ?? 0 }
    }
}
