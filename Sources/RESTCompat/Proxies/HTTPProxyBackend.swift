import Channels
import Logging
import Synchronization

/// Centrifugo's HTTP proxy: each proxy kind POSTs its JSON request to its endpoint, through the
/// hub's non-blocking outbound client, and the backend's JSON answer decides.
///
/// A backend that times out, refuses the connection, answers non-200 or garbage is the protocol's
/// temporary internal error (100) for that one client; so is a call over `maxInFlight`, which is
/// answered at once rather than queued, so a stuck backend cannot pile up memory or delay clients
/// of other kinds past their own timeout.
public final class HTTPProxyBackend: ProxyBackend {
    public struct Endpoint: Sendable {
        public var address: GatewayAddress
        public var path: String
    }

    public struct Settings: Sendable {
        public var endpoints: [ProxyKind: String] = [:]
        public var timeout: Double = 1
        /// A kind's own timeout (`proxy_<kind>_timeout`), else `timeout`.
        public var timeouts: [ProxyKind: Double] = [:]
        /// Namespaces' own endpoint URLs (`proxy_subscribe_endpoint`… in a namespace), checked at start.
        public var namespaceEndpoints: Set<String> = []
        /// Request header names copied from the client's upgrade request (lowercased).
        public var forwardedHeaderNames: [String] = []
        /// Headers added to every proxy request (e.g. a shared secret the backend checks).
        public var staticHeaders: [(String, String)] = []
        public var maxInFlight = 256
        public init() {}
    }

    private let endpoints: [ProxyKind: Endpoint]
    private let namespaceEndpoints: [String: Endpoint]
    private let timeouts: [ProxyKind: Double]
    private let staticHeaders: [(String, String)]
    private let maxInFlight: Int
    private let inFlight = Atomic<Int>(0)
    private let client: GatewayHTTPClient
    private let metrics: MetricsRegistry
    private let logger: Logger

    /// Checks every endpoint URL (the hub refuses to start on a bad one) and starts the client's thread.
    public init(settings: Settings, metrics: MetricsRegistry, logger: Logger) throws(ConfigProblem) {
        var endpoints: [ProxyKind: Endpoint] = [:]
        for (kind, url) in settings.endpoints {
            let (address, path) = try Self.parse(url: url, key: "proxy_\(kind.rawValue)_endpoint")
            endpoints[kind] = Endpoint(address: address, path: path)
        }
        for (name, value) in settings.staticHeaders where !Self.isToken(name) || value.utf8.contains(where: { $0 < 0x20 && $0 != 9 }) {
            throw ConfigProblem("proxy_static_http_headers: '\(name)' is not a valid header name, or its value has control characters")
        }
        self.endpoints = endpoints
        var byURL: [String: Endpoint] = [:]
        for url in settings.namespaceEndpoints {
            let (address, path) = try Self.parse(url: url, key: "a namespace's proxy endpoint")
            byURL[url] = Endpoint(address: address, path: path)
        }
        namespaceEndpoints = byURL
        timeouts = Dictionary(uniqueKeysWithValues: ProxyKind.allCases.map { ($0, settings.timeouts[$0] ?? settings.timeout) })
        staticHeaders = settings.staticHeaders
        maxInFlight = settings.maxInFlight
        let longest = timeouts.values.max() ?? settings.timeout
        // Each call's own total deadline still ends a connect that takes longer than its kind allows.
        var http = GatewayHTTPClient.Settings(connectTimeout: min(longest, 3), totalTimeout: longest)
        // The in-flight bound is enforced here; the client never needs to queue beyond it.
        http.maxActive = settings.maxInFlight
        http.maxQueued = settings.maxInFlight
        http.maxIdlePerAddress = 32
        http.maxResponseBytes = 1024 * 1024
        client = GatewayHTTPClient(settings: http)
        self.metrics = metrics
        self.logger = logger
        metrics.describe("hub_proxy_calls_total", type: "counter", help: "Backend proxy calls by kind and outcome (result, error, disconnect, failed, overloaded).")
        metrics.describe("hub_proxy_call_duration_seconds", type: "histogram", help: "Backend proxy call latency by kind.")
    }

    /// The address and path of an endpoint URL, or why not (the reason leaves the URL out: its
    /// path or query may carry a credential). Plain `http://` to an IP or localhost, like the JWKS.
    public static func parse(url: String, key: String) throws(ConfigProblem) -> (GatewayAddress, String) {
        guard url.hasPrefix("http://") else {
            throw ConfigProblem(url.hasPrefix("https://")
                ? "\(key): https is not supported (the hub's outbound client has no TLS); use http:// to a sidecar or an internal address"
                : "\(key) must be an http:// URL, e.g. http://127.0.0.1:3000/centrifugo/connect")
        }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        guard let address = GatewayAddress(String(rest[..<slash])) else {
            throw ConfigProblem("\(key): the host must be an IP address or localhost, optionally with :port (names are not resolved)")
        }
        let path = rest[slash...].isEmpty ? "/" : String(rest[slash...])
        guard !path.contains("#"), path.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw ConfigProblem("\(key): the path must be plain (no fragment or spaces)")
        }
        return (address, path)
    }

    /// RFC 9110 token characters: what a header name may be made of.
    public static func isToken(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { c in
            (0x30...0x39).contains(c) || (0x41...0x5A).contains(c) || (0x61...0x7A).contains(c) || "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }

    public func proxies(_ kind: ProxyKind) -> Bool { endpoints[kind] != nil }

    public func call(_ kind: ProxyKind, channel: String?, endpoint url: String?, request: JSONValue, headers: [(String, String)],
                     completion: @escaping @Sendable (ProxyAnswer) -> Void) {
        guard let endpoint = url.flatMap({ namespaceEndpoints[$0] }) ?? endpoints[kind] else {
            completion(.error(.notAvailable))
            return
        }
        let label = [("kind", kind.rawValue)]
        guard inFlight.add(1, ordering: .acquiringAndReleasing).newValue <= maxInFlight else {
            inFlight.subtract(1, ordering: .acquiringAndReleasing)
            metrics.increment("hub_proxy_calls_total", labels: label + [("outcome", "overloaded")])
            completion(.error(.internal))
            return
        }
        let started = GatewayHTTPClient.now()
        let body = JSONWriter.bytes(request)
        client.send(to: endpoint.address, method: "POST", path: endpoint.path, body: body,
                    headers: headers + staticHeaders, timeout: timeouts[kind]) { [self] result in
            inFlight.subtract(1, ordering: .acquiringAndReleasing)
            metrics.observe("hub_proxy_call_duration_seconds", labels: label, seconds: GatewayHTTPClient.now() - started)
            let answer: ProxyAnswer?
            switch result {
            case .success(let response) where response.status == 200:
                answer = ProxyAnswer.parse(response.body)
                if answer == nil {
                    // What the backend sent is not logged: it may echo a credential.
                    logger.warning("proxy backend answered something other than a proxy reply", metadata: [
                        "kind": "\(kind.rawValue)", "backend": "\(endpoint.address)", "bytes": "\(response.body.count)"])
                }
            case .success(let response):
                logger.warning("proxy backend answered HTTP \(response.status)", metadata: ["kind": "\(kind.rawValue)", "backend": "\(endpoint.address)"])
                answer = nil
            case .failure(let error):
                logger.warning("proxy backend unreachable", metadata: ["kind": "\(kind.rawValue)", "backend": "\(endpoint.address)", "error": "\(error)"])
                answer = nil
            }
            let outcome: String
            switch answer {
            case .result: outcome = "result"
            case .error: outcome = "error"
            case .disconnect: outcome = "disconnect"
            case nil: outcome = "failed"
            }
            metrics.increment("hub_proxy_calls_total", labels: label + [("outcome", outcome)])
            completion(answer ?? .error(.internal))
        }
    }

    public func shutdown() { client.shutdown() }
}
