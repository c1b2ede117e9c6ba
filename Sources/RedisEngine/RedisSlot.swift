/// Redis Cluster's key → slot function: CRC16 (XMODEM) of the key, or of its hash tag, modulo 16384.
///
/// A hash tag is the part between the first `{` and the first `}` after it, when not empty:
/// every key with the same tag lands in the same slot, which is how a channel's stream,
/// offset/epoch hash, presence and PUB/SUB channel stay together for one Lua script.
public enum RedisSlot {
    public static let count = 16384

    public static func of(_ key: String) -> Int { of(Array(key.utf8)) }

    public static func of(_ key: [UInt8]) -> Int {
        var hashed = key[...]
        if let open = key.firstIndex(of: UInt8(ascii: "{")),
           let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1 {
            hashed = key[(open + 1)..<close]
        }
        return Int(crc16(hashed) & 0x3FFF)
    }

    /// CRC-16/XMODEM (polynomial 0x1021, initial 0), as in the Redis Cluster specification.
    static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    /// The key of a thing (channel, rate-limit subject) under `prefix`, hash-tagged so every key
    /// built from the same name shares one slot. A name holding `}` would end the tag early
    /// (or leave it empty, i.e. no tag): its tag is then the name with `}` as `)`, followed by
    /// the name itself so keys stay distinct (`hub:stream:{a)b}a}b` for channel `a}b`).
    public static func taggedKey(_ prefix: String, _ name: String) -> String {
        guard name.contains("}") else { return prefix + "{" + name + "}" }
        return prefix + "{" + String(name.map { $0 == "}" ? ")" : $0 }) + "}" + name
    }

    /// The name inside a key built by `taggedKey(prefix, name)`, or nil when it is not one.
    public static func name(inTaggedKey key: String, prefix: String) -> String? {
        guard key.hasPrefix(prefix + "{") else { return nil }
        let body = key.dropFirst(prefix.count + 1)
        guard let close = body.firstIndex(of: "}") else { return nil }
        let rest = body[body.index(after: close)...]
        return rest.isEmpty ? String(body[..<close]) : String(rest)
    }
}

/// A cluster redirection in an error reply: `MOVED <slot> <host>:<port>` (the slot lives there
/// now: update the map) or `ASK <slot> <host>:<port>` (this one command goes there, after
/// ASKING, while the slot migrates).
public struct RedisRedirect: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case moved, ask }
    public var kind: Kind
    public var slot: Int
    public var host: String
    public var port: Int

    public init(kind: Kind, slot: Int, host: String, port: Int) {
        self.kind = kind
        self.slot = slot
        self.host = host
        self.port = port
    }

    public init?(error message: String) {
        let parts = message.split(separator: " ")
        guard parts.count == 3, let slot = Int(parts[1]), (0..<RedisSlot.count).contains(slot) else { return nil }
        switch parts[0] {
        case "MOVED": kind = .moved
        case "ASK": kind = .ask
        default: return nil
        }
        // IPv6 endpoints hold colons themselves: the port is after the last one.
        guard let colon = parts[2].lastIndex(of: ":"), let port = Int(parts[2][parts[2].index(after: colon)...]),
              (1...65535).contains(port) else { return nil }
        var host = String(parts[2][..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.slot = slot
        self.port = port
        self.host = host
    }

    public init?(_ reply: RedisValue) {
        guard case .error(let message) = reply else { return nil }
        self.init(error: message)
    }
}
