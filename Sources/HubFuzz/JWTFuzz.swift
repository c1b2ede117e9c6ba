import Channels

/// JWT parsing and verification (HS256/384/512 under a known secret, audience and issuer set).
///
/// Properties: a token is accepted only with a correct HMAC under an accepted algorithm and
/// only when its time, audience and issuer claims allow it; any claims object signed
/// correctly comes back unchanged or is refused for one of those claims and nothing else; the
/// same claims under `alg: none`, or with the payload changed, are refused; base64url
/// round-trips any bytes.
enum JWTFuzz {
    static let secret = "fuzz-secret"
    static let now = 1_700_000_000.0
    static let verifier = TokenVerifier(hmacSecret: secret, audience: "hub-clients", issuer: "auth.example")

    static func check(_ input: [UInt8]) {
        invariant(Base64URL.decode(Base64URL.encode(input)) == input, "base64url round trip")
        checkArbitraryToken(String(decoding: input, as: UTF8.self))
        if let claims = try? JSONParser.parse(input), claims.objectValue != nil { checkSigned(claims) }
    }

    static func checkArbitraryToken(_ token: String) {
        guard let claims = try? verifier.verify(token, now: now) else { return }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        invariant(parts.count == 3, "accepted a token of \(parts.count) parts")
        let alg = Base64URL.decode(parts[0]).flatMap { try? JSONParser.parse($0) }?["alg"]?.stringValue ?? ""
        invariant(["HS256", "HS384", "HS512"].contains(alg), "accepted alg \(alg)")
        let input = Array((parts[0] + "." + parts[1]).utf8)
        let expected = Crypto.hmac(input, key: Array(secret.utf8), algorithm: alg)
        invariant(Base64URL.decode(parts[2]) == expected, "accepted a token whose signature is not ours")
        invariant(refusal(for: claims) == nil, "accepted claims \(claims) that should fail with \(refusal(for: claims)!)")
    }

    /// Why these claims must be refused under `now`, audience and issuer, or nil.
    static func refusal(for claims: JSONValue) -> TokenError? {
        if let exp = claims["exp"], !exp.isNull {
            guard let value = exp.doubleValue else { return .malformed("exp") }
            if value > 0, now >= value { return .expired }
        }
        if let nbf = claims["nbf"]?.doubleValue, now < nbf { return .notYetValid }
        let audienceOK: Bool
        switch claims["aud"] {
        case .string(let s)?: audienceOK = s == "hub-clients"
        case .array(let list)?: audienceOK = list.contains(.string("hub-clients"))
        default: audienceOK = false
        }
        if !audienceOK { return .wrongAudience }
        if claims["iss"]?.stringValue != "auth.example" { return .wrongIssuer }
        return nil
    }

    static func checkSigned(_ claims: JSONValue) {
        let token = TokenSigner.hs256(claims: claims, secret: secret)
        let expected = refusal(for: claims)
        do {
            let back = try verifier.verify(token, now: now)
            invariant(expected == nil, "accepted \(claims), expected \(expected!)")
            invariant(back == claims, "claims changed on the way: \(claims) → \(back)")
        } catch {
            switch (error, expected) {
            case (.malformed, .malformed?), (.expired, .expired?), (.notYetValid, .notYetValid?),
                 (.wrongAudience, .wrongAudience?), (.wrongIssuer, .wrongIssuer?):
                break
            default:
                invariant(false, "refused \(claims) with \(error), expected \(String(describing: expected))")
            }
        }
        let parts = token.split(separator: ".")
        let none = Base64URL.encode(Array(#"{"alg":"none","typ":"JWT"}"#.utf8)) + "." + parts[1] + "."
        invariant((try? verifier.verify(none, now: now)) == nil, "accepted alg none")
        invariant((try? verifier.verify(none + String(parts[2]), now: now)) == nil, "accepted alg none with a signature")
        var payload = Array(parts[1].utf8)
        payload[payload.count / 2] = payload[payload.count / 2] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        let tampered = parts[0] + "." + String(decoding: payload, as: UTF8.self) + "." + parts[2]
        invariant((try? verifier.verify(tampered, now: now)) == nil, "accepted a changed payload")
    }
}
