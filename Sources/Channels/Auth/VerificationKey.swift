import COpenSSL

/// A public key that checks JWT signatures: RSA (RS256/384/512), ECDSA on P-256 or P-384
/// (ES256/ES384) or Ed25519 (EdDSA), loaded once from PEM or from a JWK and shared by every
/// thread that verifies (an `EVP_PKEY` is read-only once built). Pointers stay in this file.
public final class VerificationKey: @unchecked Sendable {
    public enum Kind: Sendable, Equatable {
        case rsa(bits: Int)
        case ecP256
        case ecP384
        case ed25519
        /// A key type the hub does not verify with (DSA, Ed448, other curves).
        case other(String)
    }

    public let kind: Kind
    private let key: OpaquePointer

    private init?(owning key: OpaquePointer?) {
        guard let key else { return nil }
        self.key = key
        switch EVP_PKEY_get_base_id(key) {
        case EVP_PKEY_RSA: kind = .rsa(bits: Int(EVP_PKEY_get_bits(key)))
        case EVP_PKEY_ED25519: kind = .ed25519
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 64)
            var length = 0
            _ = EVP_PKEY_get_group_name(key, &name, name.count, &length)
            let curve = String(decoding: name.prefix(min(length, name.count - 1)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            switch curve {
            case "prime256v1", "P-256": kind = .ecP256
            case "secp384r1", "P-384": kind = .ecP384
            default: kind = .other("EC \(curve)")
            }
        default: kind = .other("key type \(EVP_PKEY_get_base_id(key))")
        }
    }

    deinit { EVP_PKEY_free(key) }

    /// A `-----BEGIN PUBLIC KEY-----` PEM (SubjectPublicKeyInfo); nil when it does not parse.
    public convenience init?(pem: String) {
        guard let bio = pem.withCString({ BIO_new_mem_buf($0, Int32(strlen($0))) }) else { return nil }
        defer { BIO_free(bio) }
        self.init(owning: PEM_read_bio_PUBKEY(bio, nil, nil, nil))
    }

    /// A DER SubjectPublicKeyInfo (what JWK members are turned into).
    convenience init?(subjectPublicKeyInfo der: [UInt8]) {
        guard !der.isEmpty, der.count < Int(Int32.max) else { return nil }
        let bio = der.withUnsafeBytes { BIO_new_mem_buf($0.baseAddress, Int32(der.count)) }
        guard let bio else { return nil }
        defer { BIO_free(bio) }
        self.init(owning: d2i_PUBKEY_bio(bio, nil))
    }

    /// A raw 32-byte Ed25519 public key (a JWK's `x`).
    convenience init?(ed25519 raw: [UInt8]) {
        guard raw.count == 32 else { return nil }
        self.init(owning: EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, raw, raw.count))
    }

    enum Hash: Sendable { case sha256, sha384, sha512, none }

    /// Whether `signature` (DER for ECDSA, raw for RSA and Ed25519) signs `message`.
    func verify(_ message: [UInt8], signature: [UInt8], hash: Hash) -> Bool {
        guard !signature.isEmpty, let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        let md: OpaquePointer?
        switch hash {
        case .sha256: md = EVP_sha256()
        case .sha384: md = EVP_sha384()
        case .sha512: md = EVP_sha512()
        case .none: md = nil
        }
        guard EVP_DigestVerifyInit(context, nil, md, nil, key) == 1 else { return false }
        let result = signature.withUnsafeBufferPointer { s in
            message.withUnsafeBufferPointer { m in
                EVP_DigestVerify(context, s.baseAddress, s.count, m.baseAddress, m.count)
            }
        }
        return result == 1
    }
}
