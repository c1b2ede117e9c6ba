import Channels
import Synchronization

/// A query parameter a route reads, for validation messages and the OpenAPI document.
public struct QueryParameter: Sendable {
    public var name: String
    public var required: Bool
    public var type: String
    public var description: String

    public init(_ name: String, required: Bool = false, type: String = "string", description: String = "") {
        self.name = name
        self.required = required
        self.type = type
        self.description = description
    }
}

/// What a route takes as its body.
public enum RequestBody: Sendable {
    /// A JSON document described by a JSON schema; `required: false` when the route takes an
    /// empty body as `{}` (the server API does, as Centrifugo).
    case json(JSONValue, required: Bool = true)
    /// `multipart/form-data` described by a JSON schema; file parts are streamed to disk and
    /// the handler gets `RouteContext.form` (see `MultipartForm`). `maxFileBytes` lowers the
    /// configured per-file limit for this route.
    case multipart(JSONValue, maxFileBytes: Int? = nil)
}

/// Everything a handler gets: the request, path parameters, the authenticated caller, and
/// the way to answer (in the route's error shape for failures).
public struct RouteContext: Sendable {
    public let request: HTTPRequest
    public let params: [String: String]
    public let caller: Caller
    public let errors: ErrorShape
    /// This request's server span, for the spans of what the handler calls (nil: tracing off).
    public let trace: TraceParent?
    let responder: Responder

    /// The parsed `multipart/form-data` body of a `.multipart` route (always set for one).
    public var form: MultipartForm? { request.upload?.form }

    public func respond(_ response: HTTPResponse) { responder(response) }
    public func json(_ status: Int, _ value: JSONValue) { responder(.json(status, value)) }
    public func fail(_ error: RouteError) { responder(errors.response(error.status, error.message, code: error.code, details: error.details)) }

    /// The body as a JSON object, or a 400 (422 for FastAPI systems, as FastAPI answers) naming the problem.
    public func jsonObject() throws(RouteError) -> JSONValue {
        let status = errors == .fastAPI ? 422 : 400
        guard !request.body.isEmpty else { throw RouteError(status, "request body must be a JSON object") }
        do {
            let value = try JSONParser.parse(request.body)
            guard value.objectValue != nil else { throw RouteError(status, "request body must be a JSON object") }
            return value
        } catch let error as JSONParseError {
            throw RouteError(status, "invalid JSON in request body: \(error)")
        } catch {
            throw error as! RouteError
        }
    }
}

/// One REST endpoint, declared once: method, path pattern (`/v1/files/{file_id}`), auth
/// scheme, rate-limit class, error shape, what it reads, what it answers, and the handler.
/// The router enforces the declaration and the OpenAPI document is generated from it.
public struct Route: Sendable {
    public var method: String
    /// The path pattern; its segments are split once, here, not per request.
    public var pattern: String { didSet { segments = Route.split(pattern) } }
    public var auth: AuthScheme
    public var errors: ErrorShape
    public var rateLimit: String?
    public var summary: String
    public var tag: String
    public var query: [QueryParameter]
    public var body: RequestBody?
    /// Documented responses: status → description.
    public var responses: [Int: String]
    public var produces: String
    public var handler: @Sendable (RouteContext) -> Void
    /// Set for a read whose answer lives on a channel: with `Accept: text/event-stream` it
    /// streams (`LiveRead`); the plain GET is unchanged.
    public var live: LiveChannel?

    public init(_ method: String, _ pattern: String, auth: AuthScheme, errors: ErrorShape = .hub, rateLimit: String? = nil,
                summary: String, tag: String = "hub", query: [QueryParameter] = [], body: RequestBody? = nil,
                responses: [Int: String] = [200: "OK"], produces: String = "application/json",
                handler: @escaping @Sendable (RouteContext) -> Void) {
        self.method = method
        self.pattern = pattern
        self.auth = auth
        self.errors = errors
        self.rateLimit = rateLimit
        self.summary = summary
        self.tag = tag
        self.query = query
        self.body = body
        self.responses = responses
        self.produces = produces
        self.handler = handler
        self.segments = Route.split(pattern)
    }

    private(set) var segments: [Substring]

    /// This route, answering `Accept: text/event-stream` as a live stream of its answer.
    public func streaming(_ channel: LiveChannel) -> Route {
        var route = self
        route.live = channel
        return route
    }

    static func split(_ path: String) -> [Substring] { path.split(separator: "/", omittingEmptySubsequences: true) }

    var pathParameters: [String] {
        segments.filter { $0.first == "{" && $0.last == "}" }.map { String($0.dropFirst().dropLast()) }
    }

    /// Path parameters when the path matches the pattern, nil otherwise.
    func match(_ path: String) -> [String: String]? { match(parts: Route.split(path)) }

    /// Path parameters when the (already split) path matches, nil otherwise.
    func match(parts: [Substring]) -> [String: String]? { Route.match(parts: parts, pattern: segments) }

    static func match(parts: [Substring], pattern: [Substring]) -> [String: String]? {
        guard parts.count == pattern.count else { return nil }
        var params: [String: String] = [:]
        for (part, expected) in zip(parts, pattern) {
            if expected.first == "{", expected.last == "}" {
                params[String(expected.dropFirst().dropLast())] = String(part)
            } else if part != expected {
                return nil
            }
        }
        return params
    }
}

/// A route held by reference, with its metrics label made once.
private final class RouteEntry: Sendable {
    let route: Route
    let label: String
    let method: String
    let segments: [Substring]

    init(_ route: Route) {
        self.route = route
        label = route.method + " " + route.pattern
        method = route.method
        segments = route.segments
    }
}

/// Runs requests through their route's declaration: match, auth, rate limit, handler; adds
/// request ids, rate-limit, security and CORS headers; counts everything in the metrics.
public final class Router: Sendable {
    public let routes: [Route]
    /// The engine live reads subscribe through (nil: reads never stream).
    let node: Node?
    /// The routes as the request path reads them: one reference each, so trying a route and
    /// capturing it in the closures that finish a request retains once instead of copying a
    /// struct of a dozen fields (retains and all), which showed up in REST profiles.
    private let entries: [RouteEntry]
    private let credentials: Credentials
    private let limiter: any RateLimiter
    private let limitClasses: [String: RateLimitClass]
    public let metrics: MetricsRegistry
    private let corsOrigins: String
    private let clock: any Clock
    /// Set when traces are exported: a server span per request.
    private let tracer: Tracer?
    /// Whether requests get server spans (the edge reads `traceparent` only then).
    public var tracing: Bool { tracer != nil }
    /// Where `.multipart` routes' files go and how large uploads may be.
    public let uploads: UploadSettings
    /// Callers a rate limit refused, until their window resets (`class|rate key` → Unix time),
    /// so their next upload is refused before its body is read rather than after it was
    /// written to disk. Node-local and bounded (`maxRememberedRefusals`); expired entries go.
    private let refusedUntil = Mutex<[String: Double]>([:])
    static let maxRememberedRefusals = 10_000

    public init(routes: [Route], credentials: Credentials, limiter: any RateLimiter = MemoryRateLimiter(),
                limitClasses: [RateLimitClass] = [], metrics: MetricsRegistry = MetricsRegistry(), corsOrigins: String = "*",
                clock: any Clock = SystemClock(),
                uploads: UploadSettings = UploadSettings(directory: "/tmp", limits: MultipartLimits(maxBodyBytes: 10 << 20, maxFileBytes: 10 << 20)),
                tracer: Tracer? = nil, node: Node? = nil) {
        self.node = node
        self.uploads = uploads
        self.tracer = tracer
        self.routes = routes
        self.entries = routes.map(RouteEntry.init)
        self.credentials = credentials
        self.limiter = limiter
        self.limitClasses = Dictionary(limitClasses.map { ($0.name, $0) }, uniquingKeysWith: { $1 })
        self.metrics = metrics
        self.corsOrigins = corsOrigins
        self.clock = clock
        metrics.describe("hub_http_requests_total", type: "counter", help: "HTTP requests by route, method and status.")
        metrics.describe("hub_http_request_duration_seconds", type: "histogram", help: "HTTP request latency by route.")
        metrics.describe("hub_rate_limited_total", type: "counter", help: "Requests refused by a rate limit, by class.")
    }

    /// The route a request will be served by, if any (the edge asks before reading a body).
    public func route(method: String, path: String) -> Route? {
        routes.first { ($0.method == method || ($0.method == "GET" && method == "HEAD")) && $0.match(path) != nil }
    }

    /// For a request to a `.multipart` route with a multipart body, the intake the edge
    /// streams the body into as it arrives; nil for every other request (the edge buffers
    /// those under its own limit). A caller the route's auth refuses gets an intake that
    /// drops the body unread: nothing of theirs reaches the disk.
    public func multipartIntake(method: String, path: String, headers: [String: String], remoteAddress: String,
                                resume: @escaping @Sendable () -> Void) -> MultipartIntake? {
        // The header first: it is the cheap test, and most requests are not uploads.
        guard let contentType = headers["content-type"], contentType.lowercased().hasPrefix("multipart/"),
              let route = route(method: method, path: path), case .multipart = route.body else { return nil }
        let probe = HTTPRequest(method: method, path: path, headers: headers, remoteAddress: remoteAddress)
        let now = clock.now()
        var refusal: MultipartError?
        let caller = try? Authenticator.check(probe, scheme: route.auth, credentials: credentials, now: now).get()
        if let caller, let className = route.rateLimit,
           let until = refusedUntil.withLock({ $0[className + "|" + caller.rateKey] }), until > now {
            refusal = .rateLimited(retryAfter: max(1, Int((until - now).rounded(.up))))
        }
        return MultipartIntake(contentType: contentType, declaredLength: headers["content-length"].flatMap { Int($0) },
                               settings: uploads, limits: uploads.limits(for: route), store: caller != nil, refusal: refusal,
                               resume: resume)
    }

    public func handle(_ request: HTTPRequest, respond: @escaping Responder) {
        let started = clock.now()
        let requestID = request.header("x-request-id").flatMap { $0.isEmpty || $0.utf8.count > 128 ? nil : $0 } ?? RequestID.next()
        var routeLabel = "unmatched"
        // Named once the route is known; `nil` (one check) when tracing is off.
        let span = tracer?.startServerSpan(request.method, traceparent: request.header("traceparent"),
                                           tracestate: request.header("tracestate"),
                                           attributes: [("http.request.method", .string(request.method))])
        let finish: @Sendable (HTTPResponse, [(String, String)], String) -> Void = { [metrics, clock, corsOrigins] response, extra, label in
            if let span { Router.end(span, label: label, status: response.status, requestID: requestID) }
            var response = response
            response.headers += extra
            response.headers.append(("x-request-id", requestID))
            response.headers.append(("access-control-allow-origin", corsOrigins))
            response.headers.append(("access-control-expose-headers", "x-request-id, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, retry-after"))
            // Routes set their own headers in lower case (a CSP of their own wins).
            for (name, value) in Router.securityHeaders where !response.headers.contains(where: { $0.0 == name }) {
                response.headers.append((name, value))
            }
            metrics.increment("hub_http_requests_total", labels: [("route", label), ("method", request.method), ("status", String(response.status))])
            metrics.observe("hub_http_request_duration_seconds", labels: [("route", label)], seconds: clock.now() - started)
            // The handler has answered: temp files it did not move go now, before the client
            // hears back (so nothing is left once the response is out).
            request.upload?.form?.removeFiles()
            respond(response)
        }
        if request.method == "OPTIONS" {
            let allowed = routes.filter { $0.match(request.path) != nil }.map(\.method)
            finish(HTTPResponse(status: allowed.isEmpty ? 404 : 204, headers: [
                ("access-control-allow-methods", (Set(allowed).sorted() + ["OPTIONS"]).joined(separator: ", ")),
                ("access-control-allow-headers", request.header("access-control-request-headers") ?? "authorization, content-type, x-api-key"),
                ("access-control-max-age", "600"),
            ]), [], "preflight")
            return
        }
        var pathMatched = false
        let parts = Route.split(request.path)
        // Entries, not Routes: binding a Route (a struct of a dozen fields) to a variable copies
        // it, retains and all, for every route tried.
        for entry in entries {
            guard let params = Route.match(parts: parts, pattern: entry.segments) else { continue }
            pathMatched = true
            guard entry.method == request.method || (entry.method == "GET" && request.method == "HEAD") else { continue }
            routeLabel = entry.label
            let label = routeLabel
            let caller: Caller
            switch Authenticator.check(request, scheme: entry.route.auth, credentials: credentials, now: clock.now()) {
            case .success(let c):
                caller = c
            case .failure(let refusal):
                let message = refusal.message.isEmpty ? entry.route.errors.unauthorizedMessage : refusal.message
                var challenge: [(String, String)] = []
                if refusal.status == 401, case .jwt = entry.route.auth { challenge.append(("www-authenticate", "Bearer")) }
                if refusal.status == 401, case .optionalJWT = entry.route.auth { challenge.append(("www-authenticate", "Bearer")) }
                if refusal.status == 401, case .bearerToken = entry.route.auth { challenge.append(("www-authenticate", "Bearer")) }
                finish(entry.route.errors.response(refusal.status, message, code: "UNAUTHORIZED"), challenge, label)
                return
            }
            let run: @Sendable ([(String, String)]) -> Void = { [uploads, node] headers in
                var request = request
                var bufferedForm: MultipartForm?
                if case .multipart = entry.route.body {
                    // The edge streamed it already; a body that came whole (not through the
                    // edge) is parsed here, under the same limits.
                    let upload = request.upload ?? {
                        do throws(MultipartError) {
                            let form = try MultipartReceiver.receive(body: request.body, contentType: request.header("content-type") ?? "",
                                                                     settings: uploads, limits: uploads.limits(for: entry.route))
                            bufferedForm = form
                            return .received(form)
                        } catch {
                            return .failed(error)
                        }
                    }()
                    if case .failed(.rateLimited(let retryAfter)) = upload {
                        // Refused at the edge while over the limit; the window ended since.
                        finish(entry.route.errors.rateLimited(retryAfter: retryAfter), headers + [("retry-after", String(retryAfter))], label)
                        return
                    }
                    if case .failed(let error) = upload {
                        let failure = error.routeError
                        finish(entry.route.errors.response(failure.status, failure.message, code: failure.code, details: failure.details), headers, label)
                        return
                    }
                    request.upload = upload
                    request.body = []
                }
                let served = request
                let streams = entry.route.live != nil && node != nil && served.method == "GET"
                    && served.header("accept")?.contains("text/event-stream") == true
                let context = RouteContext(request: request, params: params, caller: caller, errors: entry.route.errors,
                                           trace: span?.asParent) { [bufferedForm, node] response in
                    bufferedForm?.removeFiles()
                    // A live read answers its first read as usual when it fails (same errors, same
                    // shape); a 200 becomes the stream's first event.
                    guard streams, let node, let live = entry.route.live, response.status == 200,
                          let answer = try? JSONParser.parse(response.body) else {
                        finish(response, headers, label)
                        return
                    }
                    live.resolve(served, params, caller, answer) { channel in
                        guard let channel else {
                            finish(response, headers, label)
                            return
                        }
                        let errors = entry.route.errors
                        let stream = LiveRead(node: node, channel: channel, lastEventID: served.header("last-event-id")) { done in
                            entry.route.handler(RouteContext(request: served, params: params, caller: caller, errors: errors, trace: nil, responder: done))
                        }
                        finish(HTTPResponse(status: 200, headers: LiveRead.headers, stream: stream), headers, label)
                    }
                }
                entry.route.handler(context)
            }
            guard let className = entry.route.rateLimit, let limitClass = limitClasses[className], !limitClass.limits.isEmpty else {
                run([])
                return
            }
            let limitKey = className + "|" + caller.rateKey
            limiter.hit(key: limitKey, limits: limitClass.limits, now: clock.now()) { [metrics, self] decision in
                let headers = [
                    ("x-ratelimit-limit", String(decision.limit)), ("x-ratelimit-remaining", String(decision.remaining)),
                    ("x-ratelimit-reset", String(decision.reset)),
                ]
                if decision.allowed {
                    run(headers)
                } else {
                    metrics.increment("hub_rate_limited_total", labels: [("class", className)])
                    if case .multipart = entry.route.body { rememberRefusal(limitKey, retryAfter: decision.retryAfter) }
                    finish(entry.route.errors.rateLimited(retryAfter: decision.retryAfter), headers + [("retry-after", String(decision.retryAfter))], label)
                }
            }
            return
        }
        let shape = ErrorShape.hub
        finish(pathMatched ? shape.response(405, "method not allowed") : shape.response(404, "not found"), [], routeLabel)
    }

    /// Ends a request's server span: named `METHOD /route/{pattern}` (a route's label is exactly
    /// that, so the raw path, with its ids, never names a span), error status for a 5xx.
    private static func end(_ span: Span, label: String, status: Int, requestID: String) {
        var attributes: [(String, JSONValue)] = [("http.response.status_code", .int(Int64(status))), ("hub.request_id", .string(requestID))]
        var name: String?
        if let space = label.firstIndex(of: " ") {
            attributes.append(("http.route", .string(String(label[label.index(after: space)...]))))
            name = label
        }
        span.end(name: name, attributes: attributes, error: status >= 500 ? "HTTP \(status)" : nil)
    }

    private func rememberRefusal(_ limitKey: String, retryAfter: Int) {
        let now = clock.now()
        refusedUntil.withLock { refused in
            if refused.count >= Router.maxRememberedRefusals { refused = refused.filter { $0.value > now } }
            if refused.count < Router.maxRememberedRefusals { refused[limitKey] = now + Double(retryAfter) }
        }
    }

    /// Seed 003's security headers, on every response (a route may set its own CSP).
    static let securityHeaders: [(String, String)] = [
        ("content-security-policy", "default-src 'self'; frame-ancestors 'none'"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("x-xss-protection", "1; mode=block"),
    ]
}

/// `x-request-id` for a request that brought none: 16 base-62 characters, unique within the
/// process and unlikely to repeat across restarts. A correlation id, not a secret, so it does
/// not need the system generator: one getrandom for the seed, then a counter through
/// SplitMix64's mixer (a bijection, so no two requests share an id before 2^64 of them).
enum RequestID {
    private static let seed: UInt64 = { var generator = SystemRandomNumberGenerator(); return generator.next() }()
    private static let counter = Atomic<UInt64>(0)
    private static let alphabet: [UInt8] = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8)

    static func next() -> String {
        var z = seed &+ counter.add(1, ordering: .relaxed).newValue &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        // 62^16 > 2^64: every value has its own spelling.
        return String(unsafeUninitializedCapacity: 16) { buffer in
            for i in 0..<16 {
                buffer[i] = alphabet[Int(z % 62)]
                z /= 62
            }
            return 16
        }
    }
}
