import COpenSSL

/// Salted, slow password hashes: PBKDF2-HMAC-SHA256 through OpenSSL, stored as
/// `pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>` so the count can rise without
/// invalidating existing hashes (each hash carries its own).
public enum PasswordHash {
    /// OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
    public static let defaultIterations = 600_000
    static let saltLength = 16
    static let keyLength = 32

    public static func make(_ password: String, iterations: Int = defaultIterations) -> String {
        let salt = RandomBytes.make(saltLength)
        let key = derive(Array(password.utf8), salt: salt, iterations: iterations)
        return "pbkdf2_sha256$\(iterations)$\(Base64URL.encode(salt))$\(Base64URL.encode(key))"
    }

    /// Checks a password against a stored hash in constant time. A malformed hash never matches.
    public static func verify(_ password: String, against stored: String) -> Bool {
        let parts = stored.split(separator: "$")
        guard parts.count == 4, parts[0] == "pbkdf2_sha256", let iterations = Int(parts[1]), (1...10_000_000).contains(iterations),
              let salt = Base64URL.decode(parts[2]), let expected = Base64URL.decode(parts[3]), !expected.isEmpty
        else { return false }
        return ConstantTime.equal(derive(Array(password.utf8), salt: salt, iterations: iterations, length: expected.count), expected)
    }

    /// Burns the same time as a real check, so an unknown user name is not told apart by timing.
    public static func verifyNothing(_ password: String, iterations: Int = defaultIterations) {
        _ = derive(Array(password.utf8), salt: [UInt8](repeating: 0, count: saltLength), iterations: iterations)
    }

    static func derive(_ password: [UInt8], salt: [UInt8], iterations: Int, length: Int = keyLength) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: length)
        password.withUnsafeBufferPointer { p in
            salt.withUnsafeBufferPointer { s in
                p.withMemoryRebound(to: CChar.self) { pc in
                    _ = PKCS5_PBKDF2_HMAC(pc.baseAddress, Int32(password.count), s.baseAddress, Int32(salt.count),
                                          Int32(iterations), EVP_sha256(), Int32(length), &out)
                }
            }
        }
        return out
    }
}

/// Bytes from OpenSSL's CSPRNG (salts, token ids).
public enum RandomBytes {
    public static func make(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        if RAND_bytes(&bytes, Int32(count)) != 1 {
            var generator = SystemRandomNumberGenerator()
            for i in 0..<count { bytes[i] = UInt8.random(in: 0...255, using: &generator) }
        }
        return bytes
    }
}

/// SHA-256 digests, for cache keys (content addressing).
public enum SHA256 {
    public static func hex(_ data: [UInt8]) -> String {
        Digest.hex(data, EVP_sha256())
    }
}
