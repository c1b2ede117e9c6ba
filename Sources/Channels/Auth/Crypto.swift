import COpenSSL

/// The digests, MACs and ciphers the hub's own features need beyond JWTs (Telegram login and
/// Passport checks, signed download links), over libcrypto. Pointers stay in this file.
public enum Crypto {
    public static func sha256(_ data: [UInt8]) -> [UInt8] { digest(data, EVP_sha256()) }
    public static func sha512(_ data: [UInt8]) -> [UInt8] { digest(data, EVP_sha512()) }

    public static func hmacSHA256(_ message: [UInt8], key: [UInt8]) -> [UInt8] {
        HMAC.sign(message, key: key, algorithm: "HS256")
    }

    /// HMAC with the hash a JWT `HS256`/`HS384`/`HS512` names (checks that re-derive a signature).
    package static func hmac(_ message: [UInt8], key: [UInt8], algorithm: String) -> [UInt8] {
        HMAC.sign(message, key: key, algorithm: algorithm)
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Cryptographically random bytes (keys, nonces).
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        precondition(RAND_bytes(&bytes, Int32(count)) == 1, "the system random source failed")
        return bytes
    }

    private static func digest(_ data: [UInt8], _ md: OpaquePointer?) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        data.withUnsafeBytes { raw in _ = EVP_Digest(raw.baseAddress, raw.count, &out, &length, md, nil) }
        return Array(out.prefix(Int(length)))
    }

    /// Whether a PEM private key loads (checked at startup so a bad key fails early).
    public static func isUsablePrivateKey(pem: String) -> Bool {
        guard let key = loadPrivateKey(pem) else { return false }
        EVP_PKEY_free(key)
        return true
    }

    /// RSA-OAEP (SHA-1, MGF1-SHA-1, as Telegram Passport uses) decryption with a PEM private key.
    public static func rsaOAEPDecrypt(_ ciphertext: [UInt8], privateKeyPEM: String) -> [UInt8]? {
        guard !ciphertext.isEmpty, let key = loadPrivateKey(privateKeyPEM) else { return nil }
        defer { EVP_PKEY_free(key) }
        guard let context = EVP_PKEY_CTX_new(key, nil) else { return nil }
        defer { EVP_PKEY_CTX_free(context) }
        guard EVP_PKEY_decrypt_init(context) == 1,
              EVP_PKEY_CTX_set_rsa_padding(context, RSA_PKCS1_OAEP_PADDING) == 1,
              EVP_PKEY_CTX_set_rsa_oaep_md(context, EVP_sha1()) == 1
        else { return nil }
        var length = 0
        guard EVP_PKEY_decrypt(context, nil, &length, ciphertext, ciphertext.count) == 1 else { return nil }
        var out = [UInt8](repeating: 0, count: length)
        guard EVP_PKEY_decrypt(context, &out, &length, ciphertext, ciphertext.count) == 1 else { return nil }
        return Array(out.prefix(length))
    }

    /// AES-256-CBC without padding removal (Telegram Passport pads its own way).
    public static func aes256CBCDecrypt(_ data: [UInt8], key: [UInt8], iv: [UInt8]) -> [UInt8]? {
        guard key.count == 32, iv.count == 16, !data.isEmpty, data.count % 16 == 0 else { return nil }
        guard let context = EVP_CIPHER_CTX_new() else { return nil }
        defer { EVP_CIPHER_CTX_free(context) }
        guard EVP_DecryptInit_ex(context, EVP_aes_256_cbc(), nil, key, iv) == 1,
              EVP_CIPHER_CTX_set_padding(context, 0) == 1
        else { return nil }
        var out = [UInt8](repeating: 0, count: data.count + 16)
        var written: Int32 = 0
        var final: Int32 = 0
        guard EVP_DecryptUpdate(context, &out, &written, data, Int32(data.count)) == 1 else { return nil }
        let ok = out.withUnsafeMutableBufferPointer { buffer in
            EVP_DecryptFinal_ex(context, buffer.baseAddress! + Int(written), &final) == 1
        }
        guard ok else { return nil }
        return Array(out.prefix(Int(written + final)))
    }

    private static func loadPrivateKey(_ pem: String) -> OpaquePointer? {
        guard let bio = pem.withCString({ BIO_new_mem_buf($0, Int32(strlen($0))) }) else { return nil }
        defer { BIO_free(bio) }
        return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
    }
}
