import Channels

/// Expiring download links: the path, expiry and user signed with HMAC-SHA256 under a key
/// only the hub holds. The signature is checked in constant time.
package struct DownloadLinks: Sendable {
    let key: [UInt8]
    let ttl: Double

    package init(key: [UInt8], ttl: Double) {
        self.key = key
        self.ttl = ttl
    }

    func signature(path: String, expires: Int64, user: String) -> String {
        Crypto.hex(Crypto.hmacSHA256(Array("GET\n\(path)\n\(expires)\n\(user)".utf8), key: key))
    }

    /// The path plus `?expires=…&user=…&signature=…`.
    package func link(path: String, user: String, now: Double) -> (url: String, expires: Int64) {
        let expires = Int64(now + ttl)
        let sig = signature(path: path, expires: expires, user: user)
        return (path + "?expires=\(expires)&user=\(Self.escape(user))&signature=\(sig)", expires)
    }

    package enum Verdict: Equatable { case valid(user: String), expired, invalid }

    package func check(path: String, query: [(String, String)], now: Double) -> Verdict {
        func value(_ name: String) -> String? { query.first { $0.0 == name }?.1 }
        guard let expiresText = value("expires"), let expires = Int64(expiresText), let user = value("user"),
              let presented = value("signature")
        else { return .invalid }
        let expected = signature(path: path, expires: expires, user: user)
        guard ConstantTime.equal(expected, presented) else { return .invalid }
        // Checked after the signature, so an attacker learns nothing from the order.
        return Double(expires) <= now ? .expired : .valid(user: user)
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            let unreserved = (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "~")
            if unreserved {
                out.unicodeScalars.append(Unicode.Scalar(byte))
            } else {
                let hex = Crypto.hex([byte]).uppercased()
                out += "%" + hex
            }
        }
        return out
    }
}

/// One `Range: bytes=…` request, resolved against an object's size.
enum ByteRange: Equatable {
    case whole
    case part(start: Int64, end: Int64)  // inclusive
    case unsatisfiable

    /// Single ranges only; a multi-range or malformed header is ignored (answered whole), as
    /// RFC 9110 allows.
    static func parse(_ header: String?, size: Int64) -> ByteRange {
        guard let header else { return .whole }
        let trimmed = header.trimmingCharacters(in: " ")
        guard trimmed.hasPrefix("bytes=") else { return .whole }
        let spec = trimmed.dropFirst(6)
        if spec.contains(",") { return .whole }
        let pieces = spec.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard pieces.count == 2 else { return .whole }
        let first = String(pieces[0]).trimmingCharacters(in: " ")
        let last = String(pieces[1]).trimmingCharacters(in: " ")
        if first.isEmpty {
            guard let suffix = Int64(last), suffix >= 0 else { return .whole }
            if suffix == 0 || size == 0 { return .unsatisfiable }
            return .part(start: max(0, size - suffix), end: size - 1)
        }
        guard let start = Int64(first), start >= 0 else { return .whole }
        var end = size - 1
        if !last.isEmpty {
            guard let value = Int64(last), value >= start else { return .whole }
            end = min(value, size - 1)
        }
        return start >= size ? .unsatisfiable : .part(start: start, end: end)
    }
}
