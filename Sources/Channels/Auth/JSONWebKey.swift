/// One signing key from a JWKS (RFC 7517), kept by its `kid`.
public struct JSONWebKey: Sendable {
    public let kid: String
    public let key: VerificationKey
    /// The JWK's own `alg` when it names one: then that algorithm only is accepted with it.
    public let alg: String?

    /// Whether a token signed with `algorithm` may be checked with this key: the algorithm
    /// must fit the key's type and curve (RS* an RSA key, ES256 P-256, ES384 P-384, EdDSA
    /// Ed25519), and equal the JWK's `alg` if it has one.
    public func accepts(_ algorithm: TokenAlgorithm) -> Bool {
        if let alg, alg != algorithm.rawValue { return false }
        return algorithm.fits(key.kind)
    }

    /// Why a JWK is not taken; the rest of the set still is.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public let kid: String?
        public let reason: String
        public var description: String { "JWKS key \(kid.map { "\"\($0)\"" } ?? "without kid") skipped: \(reason)" }
    }

    /// RSA keys shorter than this are refused: below 2048 bits they are within reach of factoring.
    static let minimumRSABits = 2048
    static let maximumRSABits = 8192

    /// Builds the key a JWK describes, or says why not.
    public static func parse(_ jwk: JSONValue) -> Result<JSONWebKey, Refusal> {
        guard jwk.objectValue != nil else { return .failure(Refusal(kid: nil, reason: "not a JSON object")) }
        guard let kid = jwk["kid"]?.stringValue, !kid.isEmpty, kid.utf8.count <= 256 else {
            return .failure(Refusal(kid: nil, reason: "no kid (tokens pick JWKS keys by kid)"))
        }
        func refuse(_ reason: String) -> Result<JSONWebKey, Refusal> { .failure(Refusal(kid: kid, reason: reason)) }
        if let use = jwk["use"], use.stringValue != "sig" { return refuse("use is not \"sig\"") }
        let kty = jwk["kty"]?.stringValue ?? ""
        if kty == "oct" { return refuse("HMAC keys (kty oct) are never taken from a JWKS") }
        var alg: TokenAlgorithm?
        if let named = jwk["alg"] {
            guard let algorithm = named.stringValue.flatMap(TokenAlgorithm.init(rawValue:)), !algorithm.isHMAC else {
                return refuse("alg \(named.stringValue ?? "?") is not one the hub verifies with a public key")
            }
            alg = algorithm
        }
        func member(_ name: String) -> [UInt8]? { jwk[name]?.stringValue.flatMap { Base64URL.decode($0) } }
        let key: VerificationKey?
        switch kty {
        case "RSA":
            guard var n = member("n"), let e = member("e"), !e.isEmpty, e.count <= 8 else { return refuse("RSA key needs n and e") }
            n = Array(n.drop { $0 == 0 })
            guard (minimumRSABits / 8...maximumRSABits / 8).contains(n.count) else {
                return refuse("RSA modulus must be \(minimumRSABits) to \(maximumRSABits) bits")
            }
            key = VerificationKey(subjectPublicKeyInfo: DER.rsaSubjectPublicKeyInfo(modulus: n, exponent: e))
            if case .rsa(let bits)? = key?.kind, bits < minimumRSABits { return refuse("RSA modulus shorter than \(minimumRSABits) bits") }
        case "EC":
            let crv = jwk["crv"]?.stringValue ?? ""
            guard let curve = DER.Curve(rawValue: crv) else { return refuse("curve \(crv) is not P-256 or P-384") }
            guard let x = member("x"), let y = member("y"), x.count == curve.coordinateBytes, y.count == curve.coordinateBytes else {
                return refuse("\(crv) key needs x and y of \(curve.coordinateBytes) bytes")
            }
            key = VerificationKey(subjectPublicKeyInfo: DER.ecSubjectPublicKeyInfo(curve: curve, x: x, y: y))
        case "OKP":
            guard jwk["crv"]?.stringValue == "Ed25519" else { return refuse("OKP curve must be Ed25519") }
            guard let x = member("x"), x.count == 32 else { return refuse("Ed25519 key needs x of 32 bytes") }
            key = VerificationKey(ed25519: x)
        default:
            return refuse("kty \(kty.isEmpty ? "missing" : kty) is not RSA, EC or OKP")
        }
        guard let key else { return refuse("the key material does not load (not a valid \(kty) public key)") }
        if let alg, !alg.fits(key.kind) { return refuse("alg \(alg.rawValue) does not fit a \(kty) key of this kind") }
        return .success(JSONWebKey(kid: kid, key: key, alg: alg?.rawValue))
    }
}

/// Just enough DER to give OpenSSL public keys that arrive as JWK members, and ECDSA
/// signatures that JWTs carry as raw `r || s` (RFC 7518 section 3.4).
enum DER {
    enum Curve: String {
        case p256 = "P-256"
        case p384 = "P-384"

        var coordinateBytes: Int { self == .p256 ? 32 : 48 }
        /// The curve's object identifier, encoded.
        var oid: [UInt8] {
            self == .p256 ? [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07] : [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22]
        }
    }

    static let rsaEncryption: [UInt8] = [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01]
    static let ecPublicKey: [UInt8] = [0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01]

    static func length(_ count: Int) -> [UInt8] {
        if count < 0x80 { return [UInt8(count)] }
        if count < 0x100 { return [0x81, UInt8(count)] }
        return [0x82, UInt8(count >> 8), UInt8(count & 0xFF)]
    }

    static func element(_ tag: UInt8, _ content: [UInt8]) -> [UInt8] { [tag] + length(content.count) + content }

    static func sequence(_ parts: [UInt8]...) -> [UInt8] { element(0x30, parts.flatMap { $0 }) }

    /// A non-negative INTEGER from big-endian magnitude bytes.
    static func integer(_ magnitude: [UInt8]) -> [UInt8] {
        var bytes = Array(magnitude.drop { $0 == 0 })
        if bytes.isEmpty { bytes = [0] }
        if bytes[0] & 0x80 != 0 { bytes.insert(0, at: 0) }
        return element(0x02, bytes)
    }

    static func rsaSubjectPublicKeyInfo(modulus: [UInt8], exponent: [UInt8]) -> [UInt8] {
        let publicKey = sequence(integer(modulus), integer(exponent))
        return sequence(sequence(rsaEncryption, [0x05, 0x00]), element(0x03, [0x00] + publicKey))
    }

    static func ecSubjectPublicKeyInfo(curve: Curve, x: [UInt8], y: [UInt8]) -> [UInt8] {
        sequence(sequence(ecPublicKey, curve.oid), element(0x03, [0x00, 0x04] + x + y))
    }

    /// ECDSA-Sig-Value from the JWS form: `r` and `s` as two big-endian halves.
    static func ecdsaSignature(raw: [UInt8]) -> [UInt8] {
        let half = raw.count / 2
        return sequence(integer(Array(raw[..<half])), integer(Array(raw[half...])))
    }
}
