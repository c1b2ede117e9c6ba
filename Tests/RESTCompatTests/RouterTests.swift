import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat

struct PlainEncoder: FrameEncoder {
    func frame(_ payload: [UInt8]) -> WireFrame { WireFrame(bytes: payload) }
}

final class RouterTests: XCTestCase {
    func makeRouter(apiKey: String? = "k3y") -> (Router, Node) {
        var config = EngineConfig()
        var options = ChannelOptions()
        options.historySize = 10
        options.historyTTL = 60
        options.presence = true
        config.namespaces = ChannelNamespaces(defaultOptions: options)
        let node = Node(config: config, broker: MemoryBroker(), presence: MemoryPresenceStore(), encoder: PlainEncoder())
        let routes = Health(node: node).routes + ServerAPI(node: node).routes
        return (Router(routes: routes, credentials: Credentials(serverAPIKey: apiKey)), node)
    }

    /// Runs a request through the router; the routes here answer synchronously.
    func call(_ router: Router, _ method: String, _ path: String, headers: [String: String] = [:], body: String = "") -> (Int, JSONValue) {
        let result = Mutex<HTTPResponse?>(nil)
        router.handle(HTTPRequest(method: method, path: path, headers: headers, body: Array(body.utf8))) { response in
            result.withLock { $0 = response }
        }
        let response = result.withLock { $0 }!
        return (response.status, (try? JSONParser.parse(response.body)) ?? .null)
    }

    func testHealthNeedsNoCredentials() {
        let (router, _) = makeRouter()
        let (status, body) = call(router, "GET", "/health")
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body["status"], "healthy")
        XCTAssertEqual(call(router, "HEAD", "/health").0, 200)
    }

    func testUnknownPathsAndMethods() {
        let (router, _) = makeRouter()
        XCTAssertEqual(call(router, "GET", "/nowhere").0, 404)
        XCTAssertEqual(call(router, "GET", "/nowhere").1["error"]?["message"], "not found")
        XCTAssertEqual(call(router, "DELETE", "/health").0, 405)
        XCTAssertEqual(call(router, "GET", "/api/publish", headers: ["x-api-key": "k3y"]).0, 405)
    }

    func testServerAPIKeyInEitherHeaderAndNothingElse() {
        let (router, _) = makeRouter()
        let body = #"{"channel":"news","data":{"x":1}}"#
        XCTAssertEqual(call(router, "POST", "/api/publish", body: body).0, 401)
        XCTAssertEqual(call(router, "POST", "/api/publish", headers: ["x-api-key": "wrong"], body: body).0, 401)
        XCTAssertEqual(call(router, "POST", "/api/publish", headers: ["authorization": "Bearer k3y"], body: body).0, 401)
        XCTAssertEqual(call(router, "POST", "/api/publish", headers: ["x-api-key": "k3y"], body: body).1["result"]?["offset"], 1)
        XCTAssertEqual(call(router, "POST", "/api/publish", headers: ["authorization": "apikey k3y"], body: body).1["result"]?["offset"], 2)
        let (unconfigured, _) = makeRouter(apiKey: nil)
        XCTAssertEqual(call(unconfigured, "POST", "/api/publish", headers: ["x-api-key": ""], body: body).0, 401, "no key configured: API closed")
    }

    func testServerAPIErrorsUseTheProtocolShape() {
        let (router, _) = makeRouter()
        let key = ["x-api-key": "k3y"]
        XCTAssertEqual(call(router, "POST", "/api/publish", headers: key, body: "[1]").0, 400)
        XCTAssertEqual(call(router, "POST", "/api/publish", headers: key, body: "{oops").0, 400)
        let (status, body) = call(router, "POST", "/api/publish", headers: key, body: #"{"data":{}}"#)
        XCTAssertEqual(status, 200)
        XCTAssertEqual(body["error"]?["code"], 107)
        XCTAssertEqual(call(router, "POST", "/api/publish", headers: key, body: #"{"channel":"nope:x","data":1}"#).1["error"]?["code"], 102)
        XCTAssertEqual(call(router, "POST", "/api/history", headers: key, body: #"{"channel":"news","limit":"x"}"#).1["error"]?["code"], 107)
    }

    func testPublishThenHistoryAndBroadcastThroughTheAPI() {
        let (router, _) = makeRouter()
        let key = ["x-api-key": "k3y"]
        let (_, broadcast) = call(router, "POST", "/api/broadcast", headers: key, body: #"{"channels":["a","b","bad:x"],"data":{"n":1}}"#)
        let responses = broadcast["result"]?["responses"]?.arrayValue
        XCTAssertEqual(responses?.count, 3)
        XCTAssertEqual(responses?[0]["result"]?["offset"], 1)
        XCTAssertEqual(responses?[2]["error"]?["code"], 102)
        _ = call(router, "POST", "/api/publish", headers: key, body: #"{"channel":"a","data":{"n":2}}"#)
        let (_, history) = call(router, "POST", "/api/history", headers: key, body: #"{"channel":"a","limit":10,"reverse":true}"#)
        XCTAssertEqual(history["result"]?["publications"]?.arrayValue?.map { $0["data"]!["n"]! }, [2, 1])
        let (_, position) = call(router, "POST", "/api/history", headers: key, body: #"{"channel":"a"}"#)
        XCTAssertNil(position["result"]?["publications"], "no limit: position only")
        XCTAssertEqual(position["result"]?["offset"], 2)
        XCTAssertEqual(call(router, "POST", "/api/history_remove", headers: key, body: #"{"channel":"a"}"#).1["result"], [:])
        XCTAssertNil(call(router, "POST", "/api/history", headers: key, body: #"{"channel":"a","limit":10}"#).1["result"]?["publications"])
        XCTAssertEqual(call(router, "POST", "/api/info", headers: key).1["result"]?["nodes"]?.arrayValue?.count, 1)
    }

    func testPathParametersAndQueryDecoding() {
        let route = Route("GET", "/v1/files/{file_id}/status", auth: .none, summary: "") { _ in }
        XCTAssertEqual(route.match("/v1/files/abc/status"), ["file_id": "abc"])
        XCTAssertNil(route.match("/v1/files/abc"))
        XCTAssertNil(route.match("/v1/files/abc/status/x"))
        let query = HTTPRequest.parseQuery("gw_id=gw%2001&room=a+b&flag")
        XCTAssertEqual(query.map(\.0), ["gw_id", "room", "flag"])
        XCTAssertEqual(query.map(\.1), ["gw 01", "a b", ""])
    }
}
