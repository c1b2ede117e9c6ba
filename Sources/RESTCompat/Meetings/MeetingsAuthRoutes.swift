import Channels

/// Telegram sign-in: the hub checks what Telegram gave the user offline and issues its own
/// HS256 access token (`sub` = `tg:<telegram id>`), which every other meetings route takes.
extension MeetingsPipeline {
    /// Only what is configured is served: without a bot token there is no login route, without
    /// a Passport key no nonce or passport route (404, and absent from /openapi.json).
    var authRoutes: [Route] {
        let all = [
            Route("POST", "/v1/auth/telegram/login", auth: .none, errors: .meetings, rateLimit: "meetings-auth",
                  summary: "Exchange Telegram Login Widget data for an access token", tag: Self.tag,
                  body: .json(["type": "object", "required": ["id", "auth_date", "hash"],
                               "properties": ["id": ["type": "integer"], "first_name": ["type": "string"],
                                              "last_name": ["type": "string"], "username": ["type": "string"],
                                              "photo_url": ["type": "string"], "auth_date": ["type": "integer"],
                                              "hash": ["type": "string"]]]),
                  responses: [200: "`{access_token, token_type, expires_in, user_id, role}`",
                              401: "Signature or freshness check failed", 503: "No token secret to sign with"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let body = try context.jsonObject()
                    var fields: [(String, String)] = []
                    for (key, value) in body.objectValue ?? [] {
                        switch value {
                        case .string(let s): fields.append((key, s))
                        case .int(let i): fields.append((key, String(i)))
                        case .bool(let b): fields.append((key, b ? "true" : "false"))
                        case .null: continue
                        default:
                            throw RouteError(400, "\(key) must be a string or number", code: "BAD_REQUEST", details: ["field": .string(key)])
                        }
                    }
                    return try issueToken(try telegram.verifyLogin(fields, now: now))
                }
            },
            Route("POST", "/v1/auth/telegram/nonce", auth: .serverAPIKey, errors: .meetings,
                  summary: "A Passport nonce bound to a Telegram user (for the bot backend)", tag: Self.tag,
                  body: .json(["type": "object", "required": ["telegram_user_id"],
                               "properties": ["telegram_user_id": ["type": "integer"]]]),
                  responses: [200: "`{nonce, expires_at}`", 400: "Bad telegram_user_id", 401: "Bad API key"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let body = try context.jsonObject()
                    guard let id = body["telegram_user_id"]?.intValue, id > 0 else {
                        throw RouteError(400, "telegram_user_id must be a positive integer", code: "BAD_REQUEST")
                    }
                    let issued = telegram.nonce(for: id, now: now)
                    return .json(200, ["nonce": .string(issued.nonce), "expires_at": .int(issued.expires)])
                }
            },
            Route("POST", "/v1/auth/telegram/passport", auth: .none, errors: .meetings, rateLimit: "meetings-auth",
                  summary: "Exchange Telegram Passport data (EncryptedCredentials) for an access token", tag: Self.tag,
                  body: .json(["type": "object", "required": ["credentials"],
                               "properties": ["credentials": ["type": "object"], "data": ["type": "array"]]]),
                  responses: [200: "`{access_token, token_type, expires_in, user_id, role}`",
                              400: "Malformed credentials", 401: "Decryption, integrity or nonce check failed",
                              503: "No token secret to sign with"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let body = try context.jsonObject()
                    let identity = try telegram.verifyPassport(body, now: now)
                    // Each nonce signs in once: a captured Passport payload cannot be replayed.
                    let nonce = identity.nonce ?? ""
                    let expiry = Array(String(now + telegram.nonceTTL).utf8)
                    let fresh: Bool
                    do { fresh = try await store.swap(MeetingKeys.nonceUsed(nonce), expected: nil, new: expiry) } catch { throw .store(error) }
                    guard fresh else { throw RouteError(401, "Passport nonce was already used", code: "UNAUTHORIZED") }
                    return try issueToken(identity)
                }
            },
        ]
        return all.filter { route in
            route.pattern.hasSuffix("/login") ? settings.telegramBotToken != nil : settings.telegramPassportKeyPEM != nil
        }
    }

    func issueToken(_ identity: TelegramIdentity) throws(RouteError) -> HTTPResponse {
        guard let secret = settings.tokenSecret else {
            throw RouteError(503, "this hub has no token secret to sign access tokens with", code: "INTERNAL_ERROR")
        }
        let now = self.now
        let role = settings.adminTelegramIDs.contains(identity.telegramID) ? "admin" : "user"
        let user = "tg:\(identity.telegramID)"
        let claims: JSONValue = .compact([
            ("sub", .string(user)), ("role", .string(role)), ("iat", .int(Int64(now))),
            ("exp", .int(Int64(now + settings.tokenTTL))), ("auth", .string(identity.method)),
            ("name", identity.name.isEmpty ? nil : .string(identity.name)),
        ])
        return .json(200, ["access_token": .string(TokenSigner.hs256(claims: claims, secret: secret)), "token_type": "bearer",
                           "expires_in": .int(Int64(settings.tokenTTL)), "user_id": .string(user), "role": .string(role)])
    }
}
