import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat

/// How the router picks a route and answers around it, with routes shaped like the seeds' tables.
final class RouterMatchingTests: XCTestCase {
    func router() -> Router {
        func echo(_ name: String) -> @Sendable (RouteContext) -> Void {
            { context in context.json(200, ["route": .string(name), "params": .object(context.params.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })]) }
        }
        return Router(routes: [
            Route("GET", "/v1/meetings/recent", auth: .none, errors: .meetings, summary: "", handler: echo("recent")),
            Route("GET", "/v1/meetings/{meeting_id}", auth: .none, errors: .meetings, summary: "", handler: echo("one")),
            Route("DELETE", "/v1/meetings/{meeting_id}", auth: .none, errors: .meetings, summary: "", handler: echo("delete")),
            Route("GET", "/v1/meetings/{meeting_id}/artifacts/{kind}", auth: .none, errors: .meetings, summary: "", handler: echo("artifact")),
        ], credentials: Credentials(serverAPIKey: nil))
    }

    func call(_ r: Router, _ method: String, _ path: String, headers: [String: String] = [:]) -> HTTPResponse {
        let result = Mutex<HTTPResponse?>(nil)
        r.handle(HTTPRequest(method: method, path: path, headers: headers)) { response in result.withLock { $0 = response } }
        return result.withLock { $0! }
    }

    func json(_ response: HTTPResponse) -> JSONValue { (try? JSONParser.parse(response.body)) ?? .null }
    func header(_ response: HTTPResponse, _ name: String) -> String? { response.headers.first { $0.0 == name }?.1 }

    func testDeclarationOrderDecidesBetweenLiteralAndParameter() {
        let r = router()
        XCTAssertEqual(json(call(r, "GET", "/v1/meetings/recent"))["route"], "recent")
        XCTAssertEqual(json(call(r, "GET", "/v1/meetings/m-1")), ["route": "one", "params": ["meeting_id": "m-1"]])
        XCTAssertEqual(json(call(r, "GET", "/v1/meetings/m-1/artifacts/summary"))["params"], ["kind": "summary", "meeting_id": "m-1"])
        XCTAssertEqual(json(call(r, "DELETE", "/v1/meetings/m-1"))["route"], "delete")
        XCTAssertEqual(json(call(r, "GET", "/v1/meetings/m-1/"))["route"], "one", "a trailing slash is the same path")
    }

    func testWrongMethodIs405AndUnknownPathIs404() {
        let r = router()
        XCTAssertEqual(call(r, "PUT", "/v1/meetings/m-1").status, 405)
        XCTAssertEqual(call(r, "GET", "/v1/meetings/m-1/artifacts").status, 404)
        XCTAssertEqual(call(r, "GET", "/v2/meetings").status, 404)
    }

    func testPreflightListsTheMethodsOfThePath() {
        let r = router()
        let preflight = call(r, "OPTIONS", "/v1/meetings/m-1", headers: ["access-control-request-method": "DELETE"])
        XCTAssertEqual(preflight.status, 204)
        XCTAssertEqual(header(preflight, "access-control-allow-methods"), "DELETE, GET, OPTIONS")
        XCTAssertEqual(call(r, "OPTIONS", "/nowhere").status, 404)
    }

    func testClientRequestIDsAreKeptOnlyWhenSane() {
        let r = router()
        XCTAssertEqual(header(call(r, "GET", "/v1/meetings/x", headers: ["x-request-id": "trace-1"]), "x-request-id"), "trace-1")
        let long = String(repeating: "a", count: 200)
        XCTAssertNotEqual(header(call(r, "GET", "/v1/meetings/x", headers: ["x-request-id": long]), "x-request-id"), long)
    }
}
