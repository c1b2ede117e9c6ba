import COpenSSL

/// Why a token was refused. `expired` is separate because the protocol answers it with a
/// different code (109) that tells SDKs to fetch a new token instead of giving up.
public enum TokenError: Error, Sendable, Equatable {
    case malformed(String)
    case unsupportedAlgorithm(String)
    /// The token's `kid` is not in the JWKS the hub holds (a refetch may bring it).
    case unknownKey(String)
    case badSignature
    case expired
    case notYetValid
    case wrongAudience
    case wrongIssuer
}

/// The JWS algorithms the hub verifies; `none` and every other name are refused.
public enum TokenAlgorithm: String, Sendable, CaseIterable {
    case hs256 = "HS256", hs384 = "HS384", hs512 = "HS512"
    case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512"
    case es256 = "ES256", es384 = "ES384"
    case edDSA = "EdDSA"

    public var isHMAC: Bool { self == .hs256 || self == .hs384 || self == .hs512 }

    var hash: VerificationKey.Hash {
        switch self {
        case .hs256, .rs256, .es256: return .sha256
        case .hs384, .rs384, .es384: return .sha384
        case .hs512, .rs512: return .sha512
        case .edDSA: return .none
        }
    }

    /// Whether a key of `kind` signs with this algorithm (what stops alg confusion).
    func fits(_ kind: VerificationKey.Kind) -> Bool {
        switch (self, kind) {
        case (.rs256, .rsa), (.rs384, .rsa), (.rs512, .rsa): return true
        case (.es256, .ecP256), (.es384, .ecP384), (.edDSA, .ed25519): return true
        default: return false
        }
    }

    /// The length of a JWS signature when the algorithm fixes it (raw `r || s`, Ed25519).
    var signatureLength: Int? {
        switch self {
        case .es256, .edDSA: return 64
        case .es384: return 96
        default: return nil
        }
    }
}

/// How the hub checks JWTs: HS256/384/512 with a shared secret, RS256/384/512 with an RSA
/// public key, ES256/ES384 with an ECDSA public key, and RS*/ES*/EdDSA with the keys of a
/// JWKS, picked by the token's `kid`. The algorithm must fit the key; `alg: none` and every
/// other algorithm are refused.
public struct TokenVerifier: Sendable {
    private let hmacSecret: [UInt8]?
    private let rsaKey: VerificationKey?
    private let ecdsaKey: VerificationKey?
    /// Keys from a JWKS endpoint; a token with a `kid` is checked against these only.
    public let keySet: TokenKeySet?
    public var audience: String?
    public var issuer: String?
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    public var leeway: Double = 0

    public init(hmacSecret: String?, rsaPublicKey: VerificationKey? = nil, ecdsaPublicKey: VerificationKey? = nil,
                keySet: TokenKeySet? = nil, audience: String? = nil, issuer: String? = nil) {
        self.hmacSecret = hmacSecret.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
        rsaKey = rsaPublicKey
        ecdsaKey = ecdsaPublicKey
        self.keySet = keySet
        self.audience = audience
        self.issuer = issuer
    }

    /// With the RSA public key as PEM (a PEM that does not parse verifies nothing).
    public init(hmacSecret: String?, rsaPublicKeyPEM: String?, audience: String? = nil, issuer: String? = nil) {
        self.init(hmacSecret: hmacSecret, rsaPublicKey: rsaPublicKeyPEM.flatMap { VerificationKey(pem: $0) },
                  audience: audience, issuer: issuer)
    }

    public var isConfigured: Bool { hmacSecret != nil || rsaKey != nil || ecdsaKey != nil || keySet != nil }

    /// Verifies signature and time claims and returns the claims object. A `kid` the JWKS
    /// lacks starts a (rate-limited) refetch in the background and is refused now.
    public func verify(_ token: String, now: Double) throws(TokenError) -> JSONValue {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed("token must have three parts") }
        guard let headerBytes = Base64URL.decode(parts[0]), let header = try? JSONParser.parse(headerBytes) else {
            throw .malformed("bad token header")
        }
        guard let name = header["alg"]?.stringValue else { throw .malformed("token header has no alg") }
        guard let signature = Base64URL.decode(parts[2]) else { throw .malformed("bad token signature encoding") }
        guard let alg = TokenAlgorithm(rawValue: name) else { throw .unsupportedAlgorithm(name) }
        let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        if let keySet, let kid = header["kid"]?.stringValue {
            // A shared secret is never looked up by kid: an HS256 token "signed" with a JWKS
            // public key must not pass.
            guard !alg.isHMAC else { throw .unsupportedAlgorithm(name) }
            guard let jwk = keySet.key(kid) else {
                keySet.refetch(because: "a token names an unknown kid")
                throw .unknownKey(kid)
            }
            guard jwk.accepts(alg) else { throw .unsupportedAlgorithm(name) }
            try Self.check(signature, of: signingInput, alg: alg, key: jwk.key)
        } else if alg.isHMAC {
            guard let secret = hmacSecret else { throw .unsupportedAlgorithm(name) }
            let expected = HMAC.sign(signingInput, key: secret, algorithm: name)
            guard ConstantTime.equal(expected, signature) else { throw .badSignature }
        } else {
            let configured: VerificationKey?
            switch alg {
            case .rs256, .rs384, .rs512: configured = rsaKey
            case .es256, .es384: configured = ecdsaKey
            default: configured = nil
            }
            guard let key = configured, alg.fits(key.kind) else {
                if keySet != nil { throw .malformed("token header has no kid (JWKS keys are picked by kid)") }
                throw .unsupportedAlgorithm(name)
            }
            try Self.check(signature, of: signingInput, alg: alg, key: key)
        }
        guard let payloadBytes = Base64URL.decode(parts[1]), let claims = try? JSONParser.parse(payloadBytes),
              claims.objectValue != nil
        else { throw .malformed("bad token payload") }
        if let exp = claims["exp"], !exp.isNull {
            guard let value = exp.doubleValue else { throw .malformed("exp must be a number") }
            if value > 0, now >= value + leeway { throw .expired }
        }
        if let nbf = claims["nbf"]?.doubleValue, now + leeway < nbf { throw .notYetValid }
        if let audience {
            let matches: Bool
            switch claims["aud"] {
            case .string(let s)?: matches = s == audience
            case .array(let list)?: matches = list.contains(.string(audience))
            default: matches = false
            }
            if !matches { throw .wrongAudience }
        }
        if let issuer, claims["iss"]?.stringValue != issuer { throw .wrongIssuer }
        return claims
    }

    /// Verifies like `verify(_:now:)`, but a token naming a `kid` the JWKS lacks waits for
    /// the refetch it starts (or the one running) and is checked again once it ends. A
    /// refetch refused by the rate limit, or one that fails, answers at once with the keys held.
    public func verify(_ token: String, now: @escaping @Sendable () -> Double,
                       then answer: @escaping @Sendable (Result<JSONValue, TokenError>) -> Void) {
        do {
            answer(.success(try verify(token, now: now())))
        } catch .unknownKey {
            guard let keySet else { answer(.failure(.unknownKey(""))); return }
            keySet.refetch(because: "a token names an unknown kid") { [self] in
                do throws(TokenError) { answer(.success(try verify(token, now: now()))) } catch { answer(.failure(error)) }
            }
        } catch {
            answer(.failure(error))
        }
    }

    private static func check(_ signature: [UInt8], of input: [UInt8], alg: TokenAlgorithm, key: VerificationKey) throws(TokenError) {
        if let length = alg.signatureLength, signature.count != length {
            throw .malformed("\(alg.rawValue) signature must be \(length) bytes")
        }
        let encoded = alg == .es256 || alg == .es384 ? DER.ecdsaSignature(raw: signature) : signature
        guard key.verify(input, signature: encoded, hash: alg.hash) else { throw .badSignature }
    }
}

/// Signs tokens; the hub issues its own access tokens (later issues) and the tests use it.
public enum TokenSigner {
    public static func hs256(claims: JSONValue, secret: String) -> String {
        let header = Base64URL.encode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        let payload = Base64URL.encode(JSONWriter.bytes(claims))
        let input = header + "." + payload
        return input + "." + Base64URL.encode(HMAC.sign(Array(input.utf8), key: Array(secret.utf8), algorithm: "HS256"))
    }
}

public enum ConstantTime {
    /// Compares without an early exit, so timing says nothing about where inputs differ.
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        if a.isEmpty { return true }
        return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in CRYPTO_memcmp(pa.baseAddress, pb.baseAddress, a.count) == 0 } }
    }

    public static func equal(_ a: String, _ b: String) -> Bool { equal(Array(a.utf8), Array(b.utf8)) }
}

enum HMAC {
    static func sign(_ message: [UInt8], key: [UInt8], algorithm: String) -> [UInt8] {
        let md: OpaquePointer?
        switch algorithm {
        case "HS384": md = EVP_sha384()
        case "HS512": md = EVP_sha512()
        default: md = EVP_sha256()
        }
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        key.withUnsafeBytes { k in
            message.withUnsafeBytes { m in
                _ = COpenSSL.HMAC(md, k.baseAddress, Int32(key.count), m.baseAddress?.assumingMemoryBound(to: UInt8.self), m.count, &out, &length)
            }
        }
        return Array(out.prefix(Int(length)))
    }
}

public enum Base64URL {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    private static let reverse: [Int16] = {
        var table = [Int16](repeating: -1, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = Int16(i) }
        table[Int(UInt8(ascii: "+"))] = 62
        table[Int(UInt8(ascii: "/"))] = 63
        return table
    }()

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)])
            out.append(alphabet[Int(n >> 6 & 63)]); out.append(alphabet[Int(n & 63)])
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let n = UInt32(bytes[i]) << 16
            out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)])
        } else if rest == 2 {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out.append(alphabet[Int(n >> 18 & 63)]); out.append(alphabet[Int(n >> 12 & 63)]); out.append(alphabet[Int(n >> 6 & 63)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes base64url (or standard base64), with or without padding.
    public static func decode<S: StringProtocol>(_ text: S) -> [UInt8]? {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for c in text.utf8 {
            if c == UInt8(ascii: "=") { break }
            let v = reverse[Int(c)]
            if v < 0 { return nil }
            buffer = buffer << 6 | UInt32(v)
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: buffer >> UInt32(bits)))
            }
        }
        return out
    }
}

/// SHA-1 digests, for content addressing only (Redis script ids), never for security.
public enum SHA1 {
    public static func hex(_ data: [UInt8]) -> String {
        Digest.hex(data, EVP_sha1())
    }
}

/// One OpenSSL digest of `data`, as lower-case hex (SHA1 and SHA256 share it).
enum Digest {
    static func hex(_ data: [UInt8], _ algorithm: OpaquePointer?) -> String {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        data.withUnsafeBytes { raw in
            _ = EVP_Digest(raw.baseAddress, raw.count, &digest, &length, algorithm, nil)
        }
        return digest.prefix(Int(length)).map { byte in
            let s = String(byte, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined()
    }
}
