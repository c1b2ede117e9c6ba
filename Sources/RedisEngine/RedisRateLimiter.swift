import Channels
import Logging
import RESTCompat
import Synchronization

/// Rate limits counted in Redis, so every node enforces one shared count. One Lua script
/// reads every window, decides, and increments only when the request is allowed: no
/// read-then-write race between nodes. If Redis cannot be reached the request is allowed
/// (and logged): an outage of the limiter must not take the APIs down with it.
public final class RedisRateLimiter: RateLimiter, @unchecked Sendable {
    let broker: RedisBroker
    let logger: Logger
    /// Set while Redis does not answer: the outage is logged once, not once per request.
    private let failing = Atomic<Bool>(false)

    public init(broker: RedisBroker, logger: Logger) {
        self.broker = broker
        self.logger = logger
    }

    static let script = RedisScript("""
        local counts = {}
        local allowed = 1
        for i = 1, #KEYS do
          local c = tonumber(redis.call('get', KEYS[i]) or '0')
          counts[i] = c
          if c + 1 > tonumber(ARGV[i * 2 - 1]) then allowed = 0 end
        end
        if allowed == 1 then
          for i = 1, #KEYS do
            redis.call('incr', KEYS[i])
            redis.call('expire', KEYS[i], ARGV[i * 2])
          end
        end
        return counts
        """)

    public func hit(key: String, limits: [RateLimit], now: Double, completion: @escaping @Sendable (RateDecision) -> Void) {
        // In a cluster every window of one subject shares the subject's slot (one script).
        let subject = broker.key("hub:rl:", key)
        let keys = limits.map { limit in "\(subject)|\(limit.window)|\(Int(now) / limit.window)" }
        let arguments = limits.flatMap { [Array(String($0.count).utf8), Array(String($0.window + 1).utf8)] }
        Self.script.run(on: broker.route(forKey: subject), keys: keys, arguments: arguments) { [self] reply in
            guard case .array(let values) = reply, values.count == limits.count else {
                if !self.failing.exchange(true, ordering: .relaxed) {
                    self.logger.warning("rate limiter unavailable; allowing requests until Redis answers again")
                }
                completion(RateDecision(allowed: true, limit: limits.first?.count ?? 0, remaining: 0, reset: Int(now), retryAfter: 0))
                return
            }
            if self.failing.exchange(false, ordering: .relaxed) { self.logger.notice("rate limiter counting in Redis again") }
            completion(RateDecision.decide(limits: limits, counts: values.map { Int($0.int ?? 0) }, now: now))
        }
    }
}
