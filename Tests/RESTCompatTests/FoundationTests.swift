import Foundation
import Logging
import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat
@testable import RedisEngine

final class ManualClock: Clock, @unchecked Sendable {
    let time = Mutex<Double>(1_800_000_000)
    func now() -> Double { time.withLock { $0 } }
    func advance(_ seconds: Double) { time.withLock { $0 += seconds } }
}

/// The cross-cutting pieces of RESTCompat, exercised through routes declared the way the seed
/// systems' route tables declare theirs.
final class FoundationTests: XCTestCase {
    let secret = "jwt-secret"
    let clock = ManualClock()

    func router(limiter: any RateLimiter = MemoryRateLimiter(), classes: [RateLimitClass] = RateLimitClass.seedDefaults) -> Router {
        let ok: @Sendable (RouteContext) -> Void = { context in
            context.json(200, ["ok": true, "user": context.caller.user.map { .string($0) } ?? .null])
        }
        let routes = [
            Route("GET", "/status", auth: .bearerToken("rooms", admin: false), errors: .fastAPI, summary: "room status", handler: ok),
            Route("GET", "/admin/statuses", auth: .bearerToken("rooms", admin: true), errors: .fastAPI, summary: "all", handler: ok),
            Route("GET", "/api/v1/cache/jobs", auth: .apiKey("teamcache"), errors: .teamCache, rateLimit: "teamcache", summary: "jobs", handler: ok),
            Route("GET", "/admin/users", auth: .jwt(roles: ["admin", "moderator"]), errors: .fastAPI, rateLimit: "june-default", summary: "users", handler: ok),
            Route("GET", "/v1/meetings", auth: .jwt(roles: []), errors: .meetings, rateLimit: "meetings-status", summary: "meetings", handler: ok),
            Route("POST", "/chat", auth: .jwt(roles: []), errors: .fastAPI, summary: "chat", body: .json(["type": "object"])) { context in
                do throws(RouteError) {
                    let body = try context.jsonObject()
                    guard body["content"]?.stringValue != nil else { throw RouteError(422, "field 'content' is required") }
                    context.json(200, ["echo": body["content"]!])
                } catch {
                    context.fail(error)
                }
            },
            Route("GET", "/health", auth: .none, summary: "health", handler: ok),
            Route("POST", "/auth/token", auth: .optionalJWT, errors: .fastAPI, summary: "token", handler: ok),
        ]
        let credentials = Credentials(
            serverAPIKey: "hub-key", apiKeys: ["teamcache": "demo-api-key-2024"],
            bearerTokens: ["rooms": .init(allowed: "1234", admin: "admin-secret-key")], tokens: TokenVerifier(hmacSecret: secret))
        return Router(routes: routes, credentials: credentials, limiter: limiter, limitClasses: classes, clock: clock)
    }

    func call(_ router: Router, _ method: String, _ path: String, headers: [String: String] = [:], body: String = "", from address: String = "10.0.0.1") -> HTTPResponse {
        let result = Mutex<HTTPResponse?>(nil)
        let done = DispatchSemaphore(value: 0)
        router.handle(HTTPRequest(method: method, path: path, headers: headers, body: Array(body.utf8), remoteAddress: address)) { response in
            result.withLock { $0 = response }
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 5), .success)
        return result.withLock { $0! }
    }

    func json(_ response: HTTPResponse) -> JSONValue { (try? JSONParser.parse(response.body)) ?? .null }
    func header(_ response: HTTPResponse, _ name: String) -> String? { response.headers.first { $0.0.lowercased() == name }?.1 }

    func jwt(_ user: String, role: String? = nil, exp: Double? = nil) -> String {
        TokenSigner.hs256(claims: .compact([("sub", .string(user)), ("role", role.map { .string($0) }), ("exp", .int(Int64(exp ?? clock.now() + 3600)))]), secret: secret)
    }

    func testStaticBearerTokensAsSeed000Documents() {
        let r = router()
        XCTAssertEqual(call(r, "GET", "/status").status, 401)
        XCTAssertEqual(json(call(r, "GET", "/status")), ["detail": "Not authenticated"])
        XCTAssertEqual(call(r, "GET", "/status", headers: ["authorization": "Bearer 1234"]).status, 200)
        XCTAssertEqual(call(r, "GET", "/status", headers: ["authorization": "Bearer admin-secret-key"]).status, 200, "admin token passes where the normal one does")
        XCTAssertEqual(call(r, "GET", "/status", headers: ["authorization": "Bearer 12345"]).status, 401)
        XCTAssertEqual(call(r, "GET", "/admin/statuses", headers: ["authorization": "Bearer 1234"]).status, 403)
        XCTAssertEqual(call(r, "GET", "/admin/statuses", headers: ["authorization": "Bearer admin-secret-key"]).status, 200)
        // The scheme is case-insensitive and must be followed by a space and a token.
        XCTAssertEqual(call(r, "GET", "/status", headers: ["authorization": "bearer 1234"]).status, 200)
        XCTAssertEqual(call(r, "GET", "/status", headers: ["authorization": "BEARER  1234 "]).status, 200)
        for refused in ["Bearer1234", "Bearer ", "Bearer", "Basic 1234", "Bearar 1234", "1234"] {
            XCTAssertEqual(call(r, "GET", "/status", headers: ["authorization": refused]).status, 401, refused)
        }
    }

    func testAnOptionalJWTIsEitherValidOrAbsent() {
        let r = router()
        XCTAssertEqual(json(call(r, "POST", "/auth/token")), ["ok": true, "user": .null], "no bearer: the route decides")
        XCTAssertEqual(json(call(r, "POST", "/auth/token", headers: ["authorization": "Bearer " + jwt("ana")])), ["ok": true, "user": "ana"])
        let forged = call(r, "POST", "/auth/token", headers: ["authorization": "Bearer " + jwt("ana") + "x"])
        XCTAssertEqual(forged.status, 401)
        XCTAssertEqual(json(forged), ["detail": "Could not validate credentials"])
        XCTAssertEqual(header(forged, "www-authenticate"), "Bearer")
        let expired = call(r, "POST", "/auth/token", headers: ["authorization": "Bearer " + jwt("ana", exp: clock.now() - 10)])
        XCTAssertEqual(expired.status, 401)
    }

    func testAPIKeyAndRateLimitAsSeed001Documents() {
        let r = router()
        let denied = call(r, "GET", "/api/v1/cache/jobs", headers: ["x-api-key": "wrong"])
        XCTAssertEqual(denied.status, 401)
        XCTAssertEqual(json(denied), ["success": false, "error": "Invalid or missing API key"])
        for i in 1...10 {
            let ok = call(r, "GET", "/api/v1/cache/jobs", headers: ["x-api-key": "demo-api-key-2024"])
            XCTAssertEqual(ok.status, 200, "request \(i)")
            XCTAssertEqual(header(ok, "x-ratelimit-remaining"), String(10 - i))
        }
        let limited = call(r, "GET", "/api/v1/cache/jobs", headers: ["x-api-key": "demo-api-key-2024"])
        XCTAssertEqual(limited.status, 429)
        XCTAssertEqual(json(limited), ["success": false, "error": "Too many requests, please try again later"])
        XCTAssertNotNil(header(limited, "retry-after"))
        clock.advance(60)
        XCTAssertEqual(call(r, "GET", "/api/v1/cache/jobs", headers: ["x-api-key": "demo-api-key-2024"]).status, 200, "a new window")
    }

    func testJWTRolesAndSeed003RateLimitBody() {
        let r = router(classes: [RateLimitClass("june-default", [RateLimit(2, per: 60), RateLimit(1000, per: 3600)])])
        XCTAssertEqual(call(r, "GET", "/admin/users").status, 401)
        XCTAssertEqual(header(call(r, "GET", "/admin/users"), "www-authenticate"), "Bearer")
        XCTAssertEqual(call(r, "GET", "/admin/users", headers: ["authorization": "Bearer \(jwt("u1"))"]).status, 403)
        XCTAssertEqual(call(r, "GET", "/admin/users", headers: ["authorization": "Bearer \(jwt("m1", role: "moderator"))"]).status, 200)
        let expired = call(r, "GET", "/admin/users", headers: ["authorization": "Bearer \(jwt("a1", role: "admin", exp: clock.now() - 1))"])
        XCTAssertEqual(json(expired), ["detail": "Token has expired"])
        let admin = ["authorization": "Bearer \(jwt("a1", role: "admin"))"]
        XCTAssertEqual(call(r, "GET", "/admin/users", headers: admin).status, 200)
        XCTAssertEqual(call(r, "GET", "/admin/users", headers: admin).status, 200)
        let limited = call(r, "GET", "/admin/users", headers: admin)
        XCTAssertEqual(limited.status, 429)
        XCTAssertEqual(json(limited)["detail"], "Rate limit exceeded")
        XCTAssertEqual(json(limited)["retry_after"]?.intValue.map { $0 > 0 && $0 <= 60 }, true)
        XCTAssertEqual(header(limited, "x-ratelimit-limit"), "2")
        XCTAssertEqual(header(limited, "x-ratelimit-remaining"), "0")
        // Limits count per user: another admin still gets through.
        XCTAssertEqual(call(r, "GET", "/admin/users", headers: ["authorization": "Bearer \(jwt("a2", role: "admin"))"]).status, 200)
    }

    func testMeetingsErrorEnvelope() {
        let r = router()
        let response = call(r, "GET", "/v1/meetings")
        XCTAssertEqual(response.status, 401)
        XCTAssertEqual(json(response)["error"]?["code"], "UNAUTHORIZED")
        XCTAssertEqual(json(response)["error"]?["details"], [:])
        let token = ["authorization": "Bearer \(jwt("u"))"]
        for _ in 0..<60 { XCTAssertEqual(call(r, "GET", "/v1/meetings", headers: token).status, 200) }
        XCTAssertEqual(json(call(r, "GET", "/v1/meetings", headers: token))["error"]?["code"], "RATE_LIMITED")
    }

    func testBadJSONIsAFastAPIStyle422NamingTheProblem() {
        let r = router()
        let token = ["authorization": "Bearer \(jwt("u"))"]
        let broken = call(r, "POST", "/chat", headers: token, body: "{nope")
        XCTAssertEqual(broken.status, 422)
        XCTAssertTrue(json(broken)["detail"]?.stringValue?.contains("invalid JSON") == true)
        XCTAssertEqual(json(call(r, "POST", "/chat", headers: token, body: "{}")), ["detail": "field 'content' is required"])
        XCTAssertEqual(json(call(r, "POST", "/chat", headers: token, body: #"{"content":"hi"}"#)), ["echo": "hi"])
    }

    func testEveryResponseCarriesRequestIDSecurityAndCORSHeaders() {
        let r = router()
        let response = call(r, "GET", "/health", headers: ["x-request-id": "abc-123"])
        XCTAssertEqual(header(response, "x-request-id"), "abc-123")
        XCTAssertEqual(header(response, "x-frame-options"), "DENY")
        XCTAssertEqual(header(response, "x-content-type-options"), "nosniff")
        XCTAssertNotNil(header(response, "content-security-policy"))
        XCTAssertNotNil(header(response, "strict-transport-security"))
        XCTAssertEqual(header(response, "x-xss-protection"), "1; mode=block")
        XCTAssertEqual(header(response, "access-control-allow-origin"), "*")
        XCTAssertEqual(header(call(r, "GET", "/nope"), "x-request-id")?.count, 16, "generated when absent")
        // Generated ids are 16 letters and digits and never repeat.
        let ids = (0..<5000).compactMap { _ in header(call(r, "GET", "/health"), "x-request-id") }
        XCTAssertEqual(Set(ids).count, 5000)
        XCTAssertTrue(ids.allSatisfy { $0.utf8.count == 16 && $0.utf8.allSatisfy { (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) } })
        let preflight = call(r, "OPTIONS", "/chat", headers: ["access-control-request-method": "POST", "access-control-request-headers": "authorization"])
        XCTAssertEqual(preflight.status, 204)
        XCTAssertEqual(header(preflight, "access-control-allow-methods"), "POST, OPTIONS")
    }

    func testMetricsCountRequestsByRouteAndStatus() {
        let r = router()
        _ = call(r, "GET", "/health")
        _ = call(r, "GET", "/status")
        for _ in 0..<11 { _ = call(r, "GET", "/api/v1/cache/jobs", headers: ["x-api-key": "demo-api-key-2024"]) }
        let text = r.metrics.render()
        XCTAssertTrue(text.contains(#"hub_http_requests_total{route="GET /health",method="GET",status="200"} 1"#), text)
        XCTAssertTrue(text.contains(#"hub_http_requests_total{route="GET /status",method="GET",status="401"} 1"#))
        XCTAssertTrue(text.contains(#"hub_rate_limited_total{class="teamcache"} 1"#))
        XCTAssertTrue(text.contains(#"hub_http_request_duration_seconds_bucket{route="GET /health",le="+Inf"} 1"#))
    }

    func testOpenAPIListsEveryRouteWithItsSecurity() {
        let r = router()
        let spec = OpenAPIDocument.build(routes: r.routes, version: "1")
        let paths = spec["paths"]!.objectValue!.map(\.0)
        XCTAssertEqual(Set(paths), Set(r.routes.map(\.pattern)))
        XCTAssertEqual(spec["paths"]?["/admin/statuses"]?["get"]?["responses"]?["403"]?["description"], "Admin token required")
        XCTAssertEqual(spec["paths"]?["/api/v1/cache/jobs"]?["get"]?["security"], [["teamcacheApiKey": []]])
        XCTAssertNotNil(spec["paths"]?["/api/v1/cache/jobs"]?["get"]?["responses"]?["429"])
        XCTAssertEqual(spec["components"]?["securitySchemes"]?["jwt"]?["bearerFormat"], "JWT")
        XCTAssertEqual(spec["paths"]?["/health"]?["get"]?["security"], [])
        // x-auth carries what `security` cannot: admin-only tokens and JWT roles.
        XCTAssertEqual(spec["paths"]?["/admin/statuses"]?["get"]?["x-auth"]?["scheme"], "bearerToken")
        XCTAssertEqual(spec["paths"]?["/admin/statuses"]?["get"]?["x-auth"]?["admin"], true)
        XCTAssertEqual(spec["paths"]?["/health"]?["get"]?["x-auth"], ["scheme": "none"])
    }

    func testRateLimitParsing() {
        XCTAssertEqual(RateLimit(parsing: "10/minute"), RateLimit(10, per: 60))
        XCTAssertEqual(RateLimit(parsing: "100 / hour"), RateLimit(100, per: 3600))
        XCTAssertEqual(RateLimit(parsing: "5/30s"), RateLimit(5, per: 30))
        XCTAssertNil(RateLimit(parsing: "ten/minute"))
        XCTAssertNil(RateLimit(parsing: "10/fortnight"))
    }

    func testMemoryLimiterForgetsIdleClients() {
        let limiter = MemoryRateLimiter()
        for i in 0..<100 { limiter.hit(key: "k\(i)", limits: [RateLimit(1, per: 60)], now: clock.now()) { _ in } }
        XCTAssertEqual(limiter.trackedWindows, 100)
        clock.advance(120)
        limiter.hit(key: "fresh", limits: [RateLimit(1, per: 60)], now: clock.now()) { _ in }
        XCTAssertEqual(limiter.trackedWindows, 1)
    }
}
