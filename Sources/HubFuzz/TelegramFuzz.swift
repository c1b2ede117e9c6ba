import Channels
import RESTCompat

/// Telegram Login Widget data, Passport nonces, Passport data decryption and the meetings'
/// signed download links: every check that stands between outside input and an identity.
///
/// Properties: login data is accepted only with the HMAC Telegram would have made and a fresh
/// `auth_date`; the same fields signed correctly are accepted exactly when fresh and with a
/// numeric id; a nonce is accepted only in the exact form the hub issued; a link verifies for
/// the path and user it was made for, and arbitrary query strings never verify.
enum TelegramFuzz {
    static let botToken = "123456:fuzz-bot-token"
    static let now = 1_700_000_000.0
    static let auth = TelegramAuth(botToken: botToken, passportKeyPEM: nil, maxAge: 86400, nonceKey: Array("fuzz-nonce-key".utf8))
    static let links = DownloadLinks(key: Array("fuzz-link-key".utf8), ttl: 3600)

    static func check(_ input: [UInt8]) {
        let text = String(decoding: input, as: UTF8.self)
        let fields = HTTPRequest.parseQuery(text)
        checkLogin(fields)
        checkNonce(text)
        checkLinks(input, fields: fields)
        checkPassportData(input)
    }

    static func signature(_ fields: [(String, String)]) -> String {
        let checkString = fields.filter { $0.0 != "hash" }.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(separator: "\n")
        return Crypto.hex(Crypto.hmacSHA256(Array(checkString.utf8), key: Crypto.sha256(Array(botToken.utf8))))
    }

    static func fresh(_ fields: [(String, String)]) -> Bool {
        guard let date = fields.first(where: { $0.0 == "auth_date" }).flatMap({ Int64($0.1) }) else { return false }
        let age = now - Double(date)
        return age <= 86400 && age >= -60 && fields.first(where: { $0.0 == "id" }).flatMap({ Int64($0.1) }) != nil
    }

    static func checkLogin(_ fields: [(String, String)]) {
        if let identity = try? auth.verifyLogin(fields, now: now) {
            let hash = fields.first { $0.0 == "hash" }?.1.lowercased()
            invariant(hash == signature(fields), "accepted login data without Telegram's signature")
            invariant(fresh(fields), "accepted stale login data")
            invariant(String(identity.telegramID) == String(Int64(fields.first { $0.0 == "id" }!.1)!), "identity is not the id signed")
        }
        let signed = fields.filter { $0.0 != "hash" } + [("hash", signature(fields))]
        let accepted = (try? auth.verifyLogin(signed, now: now)) != nil
        invariant(accepted == fresh(signed), "correctly signed data: accepted \(accepted), fresh \(fresh(signed))")
    }

    static func checkNonce(_ text: String) {
        guard let id = try? auth.checkNonce(text, now: now) else { return }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        invariant(parts.count == 3, "accepted a nonce of \(parts.count) parts")
        let expires = Int64(parts[1]) ?? 0
        invariant(text == issued(id: id, expires: expires), "accepted \(text), a nonce spelt other than the hub issues it")
        invariant(Double(expires) > now, "accepted an expired nonce")
    }

    /// The nonce exactly as `nonce(for:now:)` spells it for this id and expiry.
    static func issued(id: Int64, expires: Int64) -> String {
        let issued = auth.nonce(for: id, now: Double(expires) - auth.nonceTTL)
        return issued.expires == expires ? issued.nonce : ""
    }

    static func checkLinks(_ input: [UInt8], fields: [(String, String)]) {
        let split = input.firstIndex(of: 0x00) ?? input.count / 2
        let path = "/v1/meetings/m/artifacts/" + String(decoding: input[..<split], as: UTF8.self) + "/download"
        let user = String(decoding: input[split...].dropFirst(), as: UTF8.self)
        let link = links.link(path: path, user: user, now: now)
        let query = HTTPRequest.parseQuery(String(link.url.dropFirst(path.count + 1)))
        invariant(links.check(path: path, query: query, now: now) == .valid(user: user), "a fresh link for \(user) did not verify")
        invariant(links.check(path: path + "x", query: query, now: now) == .invalid, "a link verified for another path")
        invariant(links.check(path: path, query: query, now: now + 7200) == .expired, "an old link did not expire")
        if case .valid = links.check(path: path, query: fields, now: now) {
            invariant(fields.first { $0.0 == "signature" }?.1 == query.first { $0.0 == "signature" }?.1, "a forged link verified")
        }
    }

    static func checkPassportData(_ input: [UInt8]) {
        guard input.count >= 48 else { return }
        let hash = Array(input[0..<32])
        let secret = Array(input[32..<48])
        let data = Array(input[48...])
        if let plain = try? TelegramAuth.decryptPassportData(data, secret: secret, hash: hash) {
            invariant(plain.count <= data.count - 32, "passport padding kept fewer than 32 bytes")
        }
    }
}
