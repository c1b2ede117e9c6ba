import Channels

/// Who Telegram vouched for.
package struct TelegramIdentity: Sendable, Equatable {
    package var telegramID: Int64
    package var name: String
    package var method: String
    /// The Passport nonce it signed in with (each is accepted once).
    package var nonce: String? = nil
}

/// Offline checks of what Telegram hands a bot's users: Login Widget data (HMAC-SHA256 under
/// SHA-256 of the bot token, with `auth_date` freshness) and Telegram Passport credentials
/// (RSA-OAEP-wrapped secret, AES-256-CBC data, SHA-256 integrity), as core.telegram.org documents.
package struct TelegramAuth: Sendable {
    let botToken: String?
    let passportKeyPEM: String?
    let maxAge: Double
    /// Signs passport nonces, which bind a Passport request to the Telegram user the bot saw.
    let nonceKey: [UInt8]
    package let nonceTTL: Double = 900

    package init(botToken: String?, passportKeyPEM: String?, maxAge: Double, nonceKey: [UInt8]) {
        self.botToken = botToken
        self.passportKeyPEM = passportKeyPEM
        self.maxAge = maxAge
        self.nonceKey = nonceKey
    }

    // MARK: Login Widget

    /// `fields` are the widget's fields as strings (`id`, `first_name`, …, `auth_date`, `hash`).
    package func verifyLogin(_ fields: [(String, String)], now: Double) throws(RouteError) -> TelegramIdentity {
        guard let botToken else {
            throw RouteError(503, "Telegram login is not configured on this hub", code: "INTERNAL_ERROR")
        }
        guard let hash = fields.first(where: { $0.0 == "hash" })?.1 else {
            throw RouteError(401, "Telegram login data has no hash", code: "UNAUTHORIZED")
        }
        let checkString = fields.filter { $0.0 != "hash" }.sorted { $0.0 < $1.0 }
            .map { "\($0.0)=\($0.1)" }.joined(separator: "\n")
        let expected = Crypto.hex(Crypto.hmacSHA256(Array(checkString.utf8), key: Crypto.sha256(Array(botToken.utf8))))
        guard ConstantTime.equal(expected, hash.lowercased()) else {
            throw RouteError(401, "Telegram login data failed its signature check", code: "UNAUTHORIZED")
        }
        guard let authDate = fields.first(where: { $0.0 == "auth_date" }).flatMap({ Int64($0.1) }).map(Double.init) else {
            throw RouteError(401, "Telegram login data has no auth_date", code: "UNAUTHORIZED")
        }
        let age = now - authDate
        guard age <= maxAge, age >= -60 else {
            throw RouteError(401, "Telegram login data is too old; log in again", code: "UNAUTHORIZED",
                             details: ["auth_date": .int(Int64(authDate)), "max_age_seconds": .int(Int64(maxAge))])
        }
        guard let id = fields.first(where: { $0.0 == "id" }).flatMap({ Int64($0.1) }) else {
            throw RouteError(401, "Telegram login data has no user id", code: "UNAUTHORIZED")
        }
        let first = fields.first { $0.0 == "first_name" }?.1 ?? ""
        let last = fields.first { $0.0 == "last_name" }?.1 ?? ""
        let name = [first, last].filter { !$0.isEmpty }.joined(separator: " ")
        return TelegramIdentity(telegramID: id, name: name, method: "telegram-login")
    }

    // MARK: Passport

    /// A nonce for the bot to put in its Passport request for Telegram user `telegramID`.
    package func nonce(for telegramID: Int64, now: Double) -> (nonce: String, expires: Int64) {
        let expires = Int64(now + nonceTTL)
        let mac = Crypto.hex(Crypto.hmacSHA256(Array("passport-nonce\n\(telegramID)\n\(expires)".utf8), key: nonceKey))
        return ("\(telegramID).\(expires).\(mac)", expires)
    }

    /// The Telegram user a valid, unexpired nonce was issued for.
    package func checkNonce(_ nonce: String, now: Double) throws(RouteError) -> Int64 {
        let parts = nonce.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let id = Int64(parts[0]), let expires = Int64(parts[1]) else {
            throw RouteError(401, "Passport nonce was not issued by this hub", code: "UNAUTHORIZED")
        }
        let mac = Crypto.hex(Crypto.hmacSHA256(Array("passport-nonce\n\(id)\n\(expires)".utf8), key: nonceKey))
        // The whole nonce must be spelt exactly as issued: it is the key that makes it single-use,
        // so `+42.…`, `042.…` or `42..…` (which parse to the same numbers) must not pass.
        guard ConstantTime.equal("\(id).\(expires).\(mac)", nonce) else {
            throw RouteError(401, "Passport nonce was not issued by this hub", code: "UNAUTHORIZED")
        }
        guard Double(expires) > now else { throw RouteError(401, "Passport nonce has expired", code: "UNAUTHORIZED") }
        return id
    }

    /// Decrypts `EncryptedCredentials` (`{data, hash, secret}`, base64) with the bot's private
    /// key and returns the credentials JSON (`secure_data`, `nonce`).
    func decryptCredentials(_ credentials: JSONValue) throws(RouteError) -> JSONValue {
        guard let pem = passportKeyPEM else {
            throw RouteError(503, "Telegram Passport is not configured on this hub", code: "INTERNAL_ERROR")
        }
        guard let data = credentials["data"]?.stringValue.flatMap(Base64URL.decode),
              let hash = credentials["hash"]?.stringValue.flatMap(Base64URL.decode),
              let wrapped = credentials["secret"]?.stringValue.flatMap(Base64URL.decode)
        else { throw RouteError(400, "credentials need base64 data, hash and secret", code: "BAD_REQUEST") }
        guard let secret = Crypto.rsaOAEPDecrypt(wrapped, privateKeyPEM: pem) else {
            throw RouteError(401, "Passport credentials are not encrypted for this bot", code: "UNAUTHORIZED")
        }
        let plain = try Self.decryptPassportData(data, secret: secret, hash: hash)
        guard let json = try? JSONParser.parse(plain), json.objectValue != nil else {
            throw RouteError(401, "Passport credentials do not hold JSON", code: "UNAUTHORIZED")
        }
        return json
    }

    /// Telegram's data decryption: key and IV from SHA-512(secret ‖ hash), AES-256-CBC, then
    /// SHA-256(plaintext) must equal hash and the first byte says how much padding to drop.
    package static func decryptPassportData(_ data: [UInt8], secret: [UInt8], hash: [UInt8]) throws(RouteError) -> [UInt8] {
        let digest = Crypto.sha512(secret + hash)
        guard let decrypted = Crypto.aes256CBCDecrypt(data, key: Array(digest[0..<32]), iv: Array(digest[32..<48])),
              ConstantTime.equal(Crypto.sha256(decrypted), hash)
        else { throw RouteError(401, "Passport data failed its integrity check", code: "UNAUTHORIZED") }
        let padding = Int(decrypted[0])
        guard padding >= 32, padding <= decrypted.count else {
            throw RouteError(401, "Passport data has bad padding", code: "UNAUTHORIZED")
        }
        return Array(decrypted[padding...])
    }

    /// The full Passport check: credentials decrypt, their nonce is ours and fresh, and the
    /// optional `personal_details` element decrypts with the secret the credentials carry.
    func verifyPassport(_ body: JSONValue, now: Double) throws(RouteError) -> TelegramIdentity {
        guard let credentials = body["credentials"], credentials.objectValue != nil else {
            throw RouteError(400, "credentials (EncryptedCredentials) required", code: "BAD_REQUEST")
        }
        let decrypted = try decryptCredentials(credentials)
        guard let nonce = decrypted["nonce"]?.stringValue ?? decrypted["payload"]?.stringValue else {
            throw RouteError(401, "Passport credentials carry no nonce", code: "UNAUTHORIZED")
        }
        let id = try checkNonce(nonce, now: now)
        var name = ""
        if let elements = body["data"]?.arrayValue,
           let details = elements.first(where: { $0["type"]?.stringValue == "personal_details" }),
           let encrypted = details["data"]?.stringValue.flatMap(Base64URL.decode),
           let keys = decrypted["secure_data"]?["personal_details"]?["data"],
           let secret = keys["secret"]?.stringValue.flatMap(Base64URL.decode),
           let hash = keys["data_hash"]?.stringValue.flatMap(Base64URL.decode) {
            let plain = try Self.decryptPassportData(encrypted, secret: secret, hash: hash)
            if let fields = try? JSONParser.parse(plain) {
                name = [fields["first_name"]?.stringValue, fields["last_name"]?.stringValue]
                    .compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: " ")
            }
        }
        return TelegramIdentity(telegramID: id, name: name, method: "telegram-passport", nonce: nonce)
    }
}
