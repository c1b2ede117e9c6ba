import COpenSSL

/// Why a token was refused. `expired` is separate because the protocol answers it with a
/// different code (109) that tells SDKs to fetch a new token instead of giving up.
public enum TokenError: Error, Sendable, Equatable {
    case malformed(String)
    case unsupportedAlgorithm(String)
    case badSignature
    case expired
    case notYetValid
    case wrongAudience
    case wrongIssuer
}

/// How the hub checks JWTs: HS256/384/512 with shared secrets, RS256 with a public key.
/// `alg: none` and every other algorithm are refused.
public struct TokenVerifier: Sendable {
    private let hmacSecret: [UInt8]?
    private let rsaPublicKeyPEM: String?
    public var audience: String?
    public var issuer: String?
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    public var leeway: Double = 0

    public init(hmacSecret: String?, rsaPublicKeyPEM: String? = nil, audience: String? = nil, issuer: String? = nil) {
        self.hmacSecret = hmacSecret.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
        self.rsaPublicKeyPEM = rsaPublicKeyPEM.flatMap { $0.isEmpty ? nil : $0 }
        self.audience = audience
        self.issuer = issuer
    }

    public var isConfigured: Bool { hmacSecret != nil || rsaPublicKeyPEM != nil }

    /// Verifies signature and time claims and returns the claims object.
    public func verify(_ token: String, now: Double) throws(TokenError) -> JSONValue {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { throw .malformed("token must have three parts") }
        guard let headerBytes = Base64URL.decode(parts[0]), let header = try? JSONParser.parse(headerBytes) else {
            throw .malformed("bad token header")
        }
        guard let alg = header["alg"]?.stringValue else { throw .malformed("token header has no alg") }
        guard let signature = Base64URL.decode(parts[2]) else { throw .malformed("bad token signature encoding") }
        let signingInput = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        switch alg {
        case "HS256", "HS384", "HS512":
            guard let secret = hmacSecret else { throw .unsupportedAlgorithm(alg) }
            let expected = HMAC.sign(signingInput, key: secret, algorithm: alg)
            guard ConstantTime.equal(expected, signature) else { throw .badSignature }
        case "RS256":
            guard let pem = rsaPublicKeyPEM else { throw .unsupportedAlgorithm(alg) }
            guard RSAVerifier.verifySHA256(message: signingInput, signature: signature, publicKeyPEM: pem) else {
                throw .badSignature
            }
        default:
            throw .unsupportedAlgorithm(alg)
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

enum RSAVerifier {
    static func verifySHA256(message: [UInt8], signature: [UInt8], publicKeyPEM: String) -> Bool {
        guard let bio = publicKeyPEM.withCString({ BIO_new_mem_buf($0, Int32(strlen($0))) }) else { return false }
        defer { BIO_free(bio) }
        guard let key = PEM_read_bio_PUBKEY(bio, nil, nil, nil) else { return false }
        defer { EVP_PKEY_free(key) }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, key) == 1 else { return false }
        let result = signature.withUnsafeBufferPointer { s in
            message.withUnsafeBufferPointer { m in
                EVP_DigestVerify(context, s.baseAddress, s.count, m.baseAddress, m.count)
            }
        }
        return result == 1
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
