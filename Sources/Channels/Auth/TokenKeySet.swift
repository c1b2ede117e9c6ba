import Glibc
import Logging
import Synchronization

/// The keys of a JWKS endpoint, cached by `kid`, and when to fetch them again.
///
/// Verification reads a snapshot under the lock and never waits. A token naming a `kid` the
/// snapshot lacks starts a refetch, at most one per `minRefetchInterval` and one at a time;
/// callers that can wait (a connect, a subscribe) are called back when it ends, and the
/// whole set is swapped at once. A failed fetch keeps the keys already held.
public final class TokenKeySet: Sendable {
    public struct Limits: Sendable {
        /// Keys taken from one JWKS; the rest are skipped (and logged).
        public var maxKeys = 100
        public var maxBodyBytes = 256 * 1024
        /// Seconds between two fetches, whatever tokens arrive.
        public var minRefetchInterval: Double = 10
        /// Callers waiting for one refetch; more are answered at once with the keys held.
        public var maxWaiting = 10_000

        public init() {}
    }

    /// Fetches the JWKS body; calls back exactly once, with the body or why there is none.
    public typealias Fetch = @Sendable (@escaping @Sendable (Result<[UInt8], FetchFailure>) -> Void) -> Void

    public struct FetchFailure: Error, Sendable, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    private struct State {
        var keys: [String: JSONWebKey] = [:]
        var fetching = false
        var lastStarted = -Double.infinity
        var waiting: [@Sendable () -> Void] = []
    }

    public let limits: Limits
    private let fetch: Fetch
    private let now: @Sendable () -> Double
    private let logger: Logger
    private let state = Mutex(State())

    public init(limits: Limits = Limits(), logger: Logger, now: @escaping @Sendable () -> Double = TokenKeySet.monotonicNow, fetch: @escaping Fetch) {
        self.limits = limits
        self.fetch = fetch
        self.now = now
        self.logger = logger
    }

    public static let monotonicNow: @Sendable () -> Double = {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    public func key(_ kid: String) -> JSONWebKey? { state.withLock { $0.keys[kid] } }

    public var keyIDs: [String] { state.withLock { Array($0.keys.keys) }.sorted() }

    /// Starts a fetch unless one is running or the last began under `minRefetchInterval` ago.
    /// `waiter` runs when the running (or started) fetch ends, or at once when none may start.
    public func refetch(because reason: String, then waiter: (@Sendable () -> Void)? = nil) {
        let time = now()
        enum Decision { case join, start, refuse }
        let decision = state.withLock { state -> Decision in
            if state.fetching {
                guard let waiter, state.waiting.count < limits.maxWaiting else { return .refuse }
                state.waiting.append(waiter)
                return .join
            }
            guard time - state.lastStarted >= limits.minRefetchInterval else { return .refuse }
            state.fetching = true
            state.lastStarted = time
            if let waiter { state.waiting.append(waiter) }
            return .start
        }
        switch decision {
        case .join: return
        case .refuse: waiter?()
        case .start:
            logger.info("fetching the JWKS", metadata: ["reason": "\(reason)"])
            fetch { [self] result in complete(result) }
        }
    }

    /// Fetches again when the keys are older than `maxAge`, so a key the issuer withdrew stops
    /// being accepted even if no token ever names an unknown kid.
    public func refreshIfOlder(than maxAge: Double) {
        let due = state.withLock { !$0.fetching && now() - $0.lastStarted >= maxAge }
        if due { refetch(because: "periodic refresh") }
    }

    private func complete(_ result: Result<[UInt8], FetchFailure>) {
        var installed: [String: JSONWebKey]?
        switch result {
        case .success(let body):
            switch Self.parse(body, limits: limits) {
            case .success(let parsed):
                for refusal in parsed.skipped.prefix(20) { logger.warning("\(refusal)") }
                if parsed.skipped.count > 20 { logger.warning("\(parsed.skipped.count - 20) more JWKS keys skipped") }
                installed = parsed.keys
                logger.notice("JWKS loaded", metadata: ["keys": "\(parsed.keys.count)", "kids": "\(parsed.keys.keys.sorted().joined(separator: ","))"])
            case .failure(let failure):
                logger.warning("JWKS refused, keeping the keys held", metadata: ["error": "\(failure)"])
            }
        case .failure(let failure):
            logger.warning("JWKS fetch failed, keeping the keys held; tokens naming other kids are refused", metadata: ["error": "\(failure)"])
        }
        let waiting = state.withLock { state -> [@Sendable () -> Void] in
            if let installed { state.keys = installed }
            state.fetching = false
            defer { state.waiting.removeAll() }
            return state.waiting
        }
        for waiter in waiting { waiter() }
    }

    public struct Parsed: Sendable {
        public var keys: [String: JSONWebKey]
        public var skipped: [JSONWebKey.Refusal]
    }

    /// The usable keys of a JWKS document, and the ones skipped with why.
    public static func parse(_ body: [UInt8], limits: Limits = Limits()) -> Result<Parsed, FetchFailure> {
        guard body.count <= limits.maxBodyBytes else { return .failure(FetchFailure("JWKS larger than \(limits.maxBodyBytes) bytes")) }
        guard let document = try? JSONParser.parse(body), let list = document["keys"]?.arrayValue else {
            return .failure(FetchFailure("not a JWKS (a JSON object with a keys array)"))
        }
        var parsed = Parsed(keys: [:], skipped: [])
        for jwk in list {
            switch JSONWebKey.parse(jwk) {
            case .success(let key):
                if parsed.keys[key.kid] != nil {
                    parsed.skipped.append(JSONWebKey.Refusal(kid: key.kid, reason: "a key with this kid came earlier"))
                } else if parsed.keys.count >= limits.maxKeys {
                    parsed.skipped.append(JSONWebKey.Refusal(kid: key.kid, reason: "more than \(limits.maxKeys) keys"))
                } else {
                    parsed.keys[key.kid] = key
                }
            case .failure(let refusal):
                parsed.skipped.append(refusal)
            }
        }
        return .success(parsed)
    }
}
