#if canImport(Glibc)
import Glibc
#endif

/// ISO 8601 UTC timestamps as the seed systems print them.
public enum ISOTime {
    /// With milliseconds, as seeds 001 and 003 do (`2025-08-23T02:38:17.048Z`).
    public static func string(_ seconds: Double) -> String {
        let whole = time_t(seconds.rounded(.down))
        let millis = min(999, max(0, Int((seconds - Double(whole)) * 1000)))
        return dateTime(whole) + "." + pad(millis, 3) + "Z"
    }

    /// Whole seconds, for seed 004's fields (`2026-01-02T03:04:05Z`).
    public static func format(_ time: Double) -> String {
        dateTime(time_t(time)) + "Z"
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
