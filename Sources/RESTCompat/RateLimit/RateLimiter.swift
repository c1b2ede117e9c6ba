import Channels
import Synchronization

/// `count` requests per `window` seconds.
public struct RateLimit: Sendable, Equatable, CustomStringConvertible {
    public var count: Int
    public var window: Int

    public init(_ count: Int, per window: Int) {
        self.count = count
        self.window = window
    }

    /// Parses `10/minute`, `100/hour`, `5/second`, `1000/day` or `30/60s`.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let count = Int(String(parts[0]).trimmingCharacters(in: " ")), count > 0 else { return nil }
        let unit = String(parts[1]).trimmingCharacters(in: " ").lowercased()
        switch unit {
        case "second", "s": window = 1
        case "minute", "min", "m": window = 60
        case "hour", "h": window = 3600
        case "day", "d": window = 86_400
        default:
            guard unit.hasSuffix("s"), let seconds = Int(unit.dropLast()), seconds > 0 else { return nil }
            window = seconds
        }
        self.count = count
    }

    public var description: String {
        switch window {
        case 1: return "\(count)/second"
        case 60: return "\(count)/minute"
        case 3600: return "\(count)/hour"
        case 86_400: return "\(count)/day"
        default: return "\(count)/\(window)s"
        }
    }
}

/// A named set of limits routes share (`cache-api`, `llm`, `uploads`, …), overridable in config.
public struct RateLimitClass: Sendable, Equatable {
    public var name: String
    public var limits: [RateLimit]

    public init(_ name: String, _ limits: [RateLimit]) {
        self.name = name
        self.limits = limits
    }
}

extension RateLimitClass {
    /// The limits the seed documents state, by class name; config file `rate_limits` overrides.
    public static let seedDefaults: [RateLimitClass] = [
        RateLimitClass("teamcache", [RateLimit(10, per: 60)]),
        RateLimitClass("june-llm", [RateLimit(10, per: 60), RateLimit(100, per: 3600)]),
        RateLimitClass("june-tts", [RateLimit(20, per: 60), RateLimit(200, per: 3600)]),
        RateLimitClass("june-transcribe", [RateLimit(20, per: 60), RateLimit(200, per: 3600)]),
        RateLimitClass("june-chat", [RateLimit(30, per: 60), RateLimit(500, per: 3600)]),
        RateLimitClass("june-default", [RateLimit(60, per: 60), RateLimit(1000, per: 3600)]),
        RateLimitClass("meetings-uploads", [RateLimit(10, per: 3600)]),
        RateLimitClass("meetings-status", [RateLimit(60, per: 60)]),
        RateLimitClass("meetings-downloads", [RateLimit(100, per: 3600)]),
        RateLimitClass("meetings-auth", [RateLimit(20, per: 60)]),
    ]
}

/// The outcome of counting one request, with what the `X-RateLimit-*` headers report: the
/// tightest of the class's limits.
public struct RateDecision: Sendable, Equatable {
    public init(allowed: Bool, limit: Int, remaining: Int, reset: Int, retryAfter: Int) {
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        self.retryAfter = retryAfter
    }

    public var allowed: Bool
    public var limit: Int
    public var remaining: Int
    /// Unix time the tightest window resets.
    public var reset: Int
    public var retryAfter: Int
}

/// Counts requests per client key in fixed windows. The embedded limiter counts in process;
/// the Redis one counts in Redis with one atomic script, so every node shares the count.
public protocol RateLimiter: AnyObject, Sendable {
    func hit(key: String, limits: [RateLimit], now: Double, completion: @escaping @Sendable (RateDecision) -> Void)
}

extension RateDecision {
    /// Decides from the counts already in each window (before this request).
    public static func decide(limits: [RateLimit], counts: [Int], now: Double) -> RateDecision {
        var allowed = true
        var tightest: (remaining: Int, limit: Int, reset: Int)?
        var retryAfter = 0
        for (limit, count) in zip(limits, counts) {
            let windowStart = Int(now) / limit.window * limit.window
            let reset = windowStart + limit.window
            if count + 1 > limit.count {
                allowed = false
                retryAfter = max(retryAfter, max(1, reset - Int(now)))
            }
            let remaining = max(0, limit.count - count - 1)
            if tightest == nil || remaining < tightest!.remaining { tightest = (remaining, limit.count, reset) }
        }
        let t = tightest ?? (0, 0, Int(now))
        return RateDecision(allowed: allowed, limit: t.limit, remaining: allowed ? t.remaining : 0, reset: t.reset, retryAfter: retryAfter)
    }
}

public final class MemoryRateLimiter: RateLimiter {
    private struct Window {
        var start: Int
        var count: Int
    }

    private let windows = Mutex<[String: Window]>([:])
    private let lastSweep = Mutex<Int>(0)

    public init() {}

    public func hit(key: String, limits: [RateLimit], now: Double, completion: @escaping @Sendable (RateDecision) -> Void) {
        let decision = windows.withLock { map -> RateDecision in
            var counts: [Int] = []
            for limit in limits {
                let start = Int(now) / limit.window * limit.window
                let slot = "\(key)|\(limit.window)"
                let window = map[slot]
                counts.append(window?.start == start ? window!.count : 0)
            }
            let decision = RateDecision.decide(limits: limits, counts: counts, now: now)
            if decision.allowed {
                for (limit, count) in zip(limits, counts) {
                    map["\(key)|\(limit.window)"] = Window(start: Int(now) / limit.window * limit.window, count: count + 1)
                }
            }
            return decision
        }
        sweep(now: Int(now))
        completion(decision)
    }

    /// Forgets finished windows once a minute, so idle clients cost nothing.
    private func sweep(now: Int) {
        let due = lastSweep.withLock { last -> Bool in
            guard now - last >= 60 else { return false }
            last = now
            return true
        }
        guard due else { return }
        windows.withLock { map in
            map = map.filter { slot, window in
                let windowLength = Int(slot.split(separator: "|").last ?? "0") ?? 0
                return window.start + windowLength > now
            }
        }
    }

    var trackedWindows: Int { windows.withLock { $0.count } }
}
