import Channels
import Glibc
import Store

/// Seed 000's gateway mapping, stored under `gateway:{gw_id}` as seven pipe-delimited fields:
/// `<gw_ip>|<state>|<type>|<room>|<start_time>|<media_duration>|<transcript_progress>`,
/// `None` standing for "no room" (and for cleared values), byte for byte as the legacy proxy
/// wrote it, so `redis-cli GET gateway:gw01` reads the same and records written by other
/// tools are understood.
public struct GatewayRecord: Sendable, Equatable {
    public var ip: String
    /// `started` (free), `working` (allocated to a room) or `stopped` (finalising).
    public var state: String
    public var type: String
    public var room: String?
    public var startTime: String
    public var mediaDuration: String
    public var transcriptProgress: String

    public static let keyPrefix = "gateway:"
    /// Secondary index `gateway-room:{room}` → gw_id, so a room lookup is one read, not a scan.
    public static let roomKeyPrefix = "gateway-room:"

    public static func key(_ id: String) -> String { keyPrefix + id }
    public static func roomKey(_ room: String) -> String { roomKeyPrefix + room }

    public init(ip: String, state: String, type: String, room: String?, startTime: String,
                mediaDuration: String = "0", transcriptProgress: String = "0") {
        self.ip = ip
        self.state = state
        self.type = type
        self.room = room
        self.startTime = startTime
        self.mediaDuration = mediaDuration
        self.transcriptProgress = transcriptProgress
    }

    /// Parses the stored bytes; nil when they are not seven fields.
    public init?(bytes: [UInt8]) {
        // Split on the bytes, not on a String: `/status` reads a record per request, and the
        // String split (index validation, grapheme walks) was a tenth of that request's time.
        var fields: [String] = []
        fields.reserveCapacity(7)
        var start = 0
        for index in 0...bytes.count where index == bytes.count || bytes[index] == UInt8(ascii: "|") {
            guard fields.count < 7 else { return nil }
            fields.append(String(decoding: bytes[start..<index], as: UTF8.self))
            start = index + 1
        }
        guard fields.count == 7 else { return nil }
        ip = fields[0]
        state = fields[1]
        type = fields[2]
        room = fields[3] == "None" || fields[3].isEmpty ? nil : fields[3]
        startTime = fields[4]
        mediaDuration = fields[5]
        transcriptProgress = fields[6]
    }

    public var text: String {
        [ip, state, type, room ?? "None", startTime, mediaDuration, transcriptProgress].joined(separator: "|")
    }

    public var bytes: [UInt8] { Array(text.utf8) }

    public var isAvailable: Bool { state == "started" }

    /// The free (`started`) gateways, which `/start` draws from: the record store keeps the set
    /// with every write of a record, so a start reads a few members instead of every record.
    public static let free = MemberSet(name: "gateway-free", prefix: keyPrefix) { bytes in
        GatewayRecord(bytes: bytes)?.isAvailable ?? false
    }

    static func nullable(_ value: String) -> JSONValue {
        value == "None" || value.isEmpty ? .null : .string(value)
    }

    /// One entry of `GET /admin/statuses` (and the payload of every channel publication).
    public var adminStatus: JSONValue {
        [
            "gateway": .string(ip),
            "status": .string(state),
            "room": room.map { .string($0) } ?? .null,
            "media_duration": Self.nullable(mediaDuration),
            "transcript_progress": Self.nullable(transcriptProgress),
        ]
    }

    /// What the channels and the `gateways.snapshot` RPC carry: the `/admin/statuses` fields plus
    /// the gateway's `type` (the seed's REST answer stays as it was; a dashboard wants the type).
    public var liveStatus: JSONValue {
        .object((adminStatus.objectValue ?? []) + [("type", .string(type))])
    }

    /// `data` of `GET /status` and `GET /progress`; the seed's `gw_id` field carries the address.
    public var statusData: JSONValue {
        [
            "gw_id": .string(ip),
            "gw_state": .string(state),
            "room": room.map { .string($0) } ?? .null,
            "media_duration": Self.nullable(mediaDuration),
            "transcript_progress": Self.nullable(transcriptProgress),
        ]
    }

    /// The seed's ISO start time: `2025-01-01T12:00:00` (UTC, whole seconds).
    public static func isoNow() -> String {
        var now = time(nil)
        var parts = tm()
        gmtime_r(&now, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))"
    }

    /// Seconds since the epoch of an ISO start time, or nil when it is not one.
    static func epochSeconds(_ iso: String) -> Int? {
        let numbers = iso.prefix(19).split(whereSeparator: { "-T:".contains($0) }).compactMap { Int32($0) }
        guard numbers.count == 6 else { return nil }
        var parts = tm()
        parts.tm_year = numbers[0] - 1900
        parts.tm_mon = numbers[1] - 1
        parts.tm_mday = numbers[2]
        parts.tm_hour = numbers[3]
        parts.tm_min = numbers[4]
        parts.tm_sec = numbers[5]
        return Int(timegm(&parts))
    }

    /// Why a value cannot go into a record field (or a channel name), or nil when it can.
    /// `|` would split the record, `#` would make the room channel user-limited.
    public static func problem(with value: String, field: String, maxLength: Int = 200) -> String? {
        if value.isEmpty { return "'\(field)' must not be empty" }
        if value.utf8.count > maxLength { return "'\(field)' longer than \(maxLength) bytes" }
        if value == "None" { return "'\(field)' must not be 'None' (reserved for no value)" }
        for byte in value.utf8 where byte < 0x20 || byte == 0x7F || byte == UInt8(ascii: "|") || byte == UInt8(ascii: "#") {
            return "'\(field)' must not contain '|', '#' or control characters"
        }
        return nil
    }
}
