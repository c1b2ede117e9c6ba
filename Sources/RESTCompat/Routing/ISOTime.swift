#if canImport(Glibc)
import Glibc
#endif

/// ISO 8601 UTC timestamps as the seed systems print them.
public enum ISOTime {
    /// With milliseconds, as seeds 001 and 003 do (`2025-08-23T02:38:17.048Z`).
    public static func string(_ seconds: Double) -> String {
        // Whole milliseconds first: `.123` is stored as 0.12299…, and cutting that would print `.122`.
        let total = Int64((seconds * 1000).rounded())
        let whole = total >= 0 ? total / 1000 : (total - 999) / 1000
        return dateTime(time_t(whole)) + "." + pad(Int(total - whole * 1000), 3) + "Z"
    }

    /// Whole seconds, for seed 004's fields (`2026-01-02T03:04:05Z`).
    public static func format(_ time: Double) -> String {
        dateTime(time_t(time)) + "Z"
    }

    /// Seconds since the epoch for `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.fff]]` with `Z`,
    /// `±HH:MM` or nothing (UTC), as Python's `datetime.fromisoformat` takes them; nil otherwise.
    public static func parse(_ text: String) -> Double? {
        let bytes = Array(text.utf8)
        func number(_ start: Int, _ count: Int) -> Int? {
            guard start + count <= bytes.count else { return nil }
            var value = 0
            for b in bytes[start..<start + count] {
                guard b >= 0x30 && b <= 0x39 else { return nil }
                value = value * 10 + Int(b - 0x30)
            }
            return value
        }
        guard bytes.count >= 10, let year = number(0, 4), bytes[4] == 0x2D, let month = number(5, 2), bytes[7] == 0x2D,
              let day = number(8, 2), (1...12).contains(month), (1...31).contains(day) else { return nil }
        var hour = 0, minute = 0, second = 0
        var fraction = 0.0
        var index = 10
        if index < bytes.count, bytes[index] == 0x54 || bytes[index] == 0x20 {
            guard let h = number(index + 1, 2), index + 3 < bytes.count, bytes[index + 3] == 0x3A, let m = number(index + 4, 2),
                  h < 24, m < 60 else { return nil }
            hour = h; minute = m
            index += 6
            if index < bytes.count, bytes[index] == 0x3A {
                guard let s = number(index + 1, 2), s < 61 else { return nil }
                second = s
                index += 3
                if index < bytes.count, bytes[index] == 0x2E {
                    index += 1
                    var scale = 0.1
                    let start = index
                    while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                        fraction += Double(bytes[index] - 0x30) * scale
                        scale /= 10
                        index += 1
                    }
                    guard index > start, index - start <= 9 else { return nil }
                }
            }
        }
        var offset = 0
        if index < bytes.count {
            if bytes[index] == 0x5A, index + 1 == bytes.count {
                index += 1
            } else if bytes[index] == 0x2B || bytes[index] == 0x2D, index + 6 == bytes.count, bytes[index + 3] == 0x3A,
                      let h = number(index + 1, 2), let m = number(index + 4, 2), h < 24, m < 60 {
                offset = (h * 3600 + m * 60) * (bytes[index] == 0x2D ? -1 : 1)
                index += 6
            } else {
                return nil
            }
        }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        return Double(timegm(&parts) - offset) + fraction
    }

    /// `YYYY-MM-DDTHH:MM:SS` in UTC.
    private static func dateTime(_ seconds: time_t) -> String {
        var seconds = seconds
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return "\(pad(Int(parts.tm_year) + 1900, 4))-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))T"
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2))"
    }

    private static func pad(_ n: Int, _ width: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
}
