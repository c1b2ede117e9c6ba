import Foundation
import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat

/// A `.multipart` route as the edge drives it: the router hands out an intake, the body is
/// appended in the pieces the socket delivers (pausing when told), and the handler sees the
/// form with its files on disk; files it did not move are gone once it answered.
final class UploadRouteTests: XCTestCase {
    var directory = ""
    let secret = "jwt-secret"
    let boundary = "XyZ"
    var contentType: String { "multipart/form-data; boundary=\(boundary)" }
    /// What the handler saw, for the assertions.
    let seen = Seen()

    override func setUp() {
        var template = Array((NSTemporaryDirectory() + "/uploads-XXXXXX").utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    override func tearDown() {
        for name in leftovers() { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    func leftovers() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted() }

    func router(maxBody: Int = 1 << 30, maxFile: Int = 1 << 30) -> Router {
        let keepDirectory = directory
        let routes = [
            Route("POST", "/v1/files", auth: .jwt(roles: []), errors: .meetings, summary: "upload",
                  body: .multipart(["type": "object"], maxFileBytes: 4 << 20)) { [seen] context in

                guard let form = context.form, let file = form.file("file") else {
                    context.fail(RouteError(400, "file is required"))
                    return
                }
                seen.value.withLock { $0 = ["size": .int(Int64(file.size)), "name": .string(file.filename),
                                      "meeting": form.field("meeting").map { .string($0) } ?? .null, "path": .string(file.path)] }
                if form.field("keep") == "yes" {
                    do throws(RouteError) { try file.move(to: keepDirectory + "/kept") } catch { context.fail(error); return }
                }
                context.json(201, ["file_id": "f1", "status": "pending"])
            },
            Route("POST", "/v1/notes", auth: .jwt(roles: []), errors: .meetings, summary: "json", body: .json(["type": "object"])) { context in
                context.json(200, ["ok": true])
            },
        ]
        return Router(routes: routes, credentials: Credentials(serverAPIKey: nil, tokens: TokenVerifier(hmacSecret: secret)),
                      uploads: UploadSettings(directory: directory, limits: MultipartLimits(maxBodyBytes: maxBody, maxFileBytes: maxFile)))
    }

    var token: String {
        TokenSigner.hs256(claims: ["sub": "alice", "exp": .int(Int64(Date().timeIntervalSince1970) + 3600)], secret: secret)
    }

    func upload(fileBytes: Int, fields: [(String, String)] = [("meeting", "m-42")]) -> [UInt8] {
        var out: [UInt8] = []
        for (name, value) in fields {
            out += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(name)\"\r\n\r\n\(value)\r\n".utf8)
        }
        out += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"call.wav\"\r\nContent-Type: audio/wav\r\n\r\n".utf8)
        out += [UInt8](repeating: 0x41, count: fileBytes)
        out += Array("\r\n--\(boundary)--\r\n".utf8)
        return out
    }

    func headers(_ body: [UInt8], token: String? = nil) -> [String: String] {
        var headers = ["content-type": contentType, "content-length": String(body.count)]
        if let token { headers["authorization"] = "Bearer \(token)" }
        return headers
    }

    /// Plays the edge: appends in `chunk`-byte reads, stops reading while paused (as
    /// lws_rx_flow_control does), dispatches once the body is complete.
    func stream(_ router: Router, _ body: [UInt8], headers: [String: String], chunk: Int = 16 * 1024,
                maxPending: UnsafeMutablePointer<Int>? = nil) -> (HTTPResponse, MultipartIntake?) {
        let resumed = DispatchSemaphore(value: 0)
        guard let intake = router.multipartIntake(method: "POST", path: "/v1/files", headers: headers, remoteAddress: "10.0.0.9",
                                                  resume: { resumed.signal() }) else {
            return (call(router, HTTPRequest(method: "POST", path: "/v1/files", headers: headers, body: body)), nil)
        }
        if !intake.refusedUpFront {
            var offset = 0
            while offset < body.count {
                let end = min(offset + chunk, body.count)
                let pause = body[offset..<end].withUnsafeBytes { intake.append($0) }
                maxPending?.pointee = max(maxPending?.pointee ?? 0, intake.pendingBytes)
                if pause { XCTAssertEqual(resumed.wait(timeout: .now() + 10), .success, "resumed after a pause") }
                offset = end
            }
        }
        let result = Mutex<HTTPResponse?>(nil)
        let done = DispatchSemaphore(value: 0)
        intake.finish { upload in
            router.handle(HTTPRequest(method: "POST", path: "/v1/files", headers: headers, remoteAddress: "10.0.0.9", upload: upload)) { response in
                result.withLock { $0 = response }
                done.signal()
            }
        }
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success)
        return (result.withLock { $0! }, intake)
    }

    func call(_ router: Router, _ request: HTTPRequest) -> HTTPResponse {
        let result = Mutex<HTTPResponse?>(nil)
        router.handle(request) { response in result.withLock { $0 = response } }
        return result.withLock { $0! }
    }

    func json(_ response: HTTPResponse) -> JSONValue { (try? JSONParser.parse(response.body)) ?? .null }

    func testStreamedUploadReachesTheHandlerAndIsCleanedUp() {
        let r = router()
        let body = upload(fileBytes: 100_000)
        let (response, intake) = stream(r, body, headers: headers(body, token: token))
        XCTAssertNotNil(intake, "a multipart route streams")
        XCTAssertEqual(response.status, 201)
        XCTAssertEqual(json(response), ["file_id": "f1", "status": "pending"])
        let seenNow = seen.value.withLock { $0 }
        XCTAssertEqual(seenNow["size"], 100_000)
        XCTAssertEqual(seenNow["name"], "call.wav")
        XCTAssertEqual(seenNow["meeting"], "m-42")
        XCTAssertTrue(seenNow["path"]?.stringValue?.hasPrefix(directory + "/upload-") == true)
        XCTAssertEqual(leftovers(), [], "temp file removed after the handler answered")
    }

    func testAMovedFileStays() {
        let r = router()
        let body = upload(fileBytes: 1000, fields: [("keep", "yes")])
        XCTAssertEqual(stream(r, body, headers: headers(body, token: token)).0.status, 201)
        XCTAssertEqual(leftovers(), ["kept"])
    }

    func testBackpressureBoundsWhatWaitsInMemory() {
        let r = router()
        let body = upload(fileBytes: 3 << 20)
        var maxPending = 0
        let (response, _) = stream(r, body, headers: headers(body, token: token), chunk: 64 * 1024, maxPending: &maxPending)
        XCTAssertEqual(response.status, 201)
        XCTAssertEqual(seen.value.withLock { $0["size"] }, .int(3 << 20))
        XCTAssertLessThanOrEqual(maxPending, MultipartIntake.highWater + 64 * 1024)
    }

    func testTheRouteLimitAndTheConfiguredLimitAre413InTheRouteShape() {
        let r = router()
        let tooBig = upload(fileBytes: (4 << 20) + 1)
        let (response, _) = stream(r, tooBig, headers: headers(tooBig, token: token), chunk: 256 * 1024)
        XCTAssertEqual(response.status, 413)
        XCTAssertEqual(json(response)["error"]?["code"], "FILE_TOO_LARGE")
        XCTAssertEqual(json(response)["error"]?["details"]?["max_bytes"], .int(4 << 20), "the route's own lower limit")
        XCTAssertEqual(leftovers(), [])

        let small = router(maxBody: 10_000)
        let body = upload(fileBytes: 20_000)
        let (declared, intake) = stream(small, body, headers: headers(body, token: token))
        XCTAssertEqual(intake?.refusedUpFront, true, "a declared length over the limit is refused before reading")
        XCTAssertEqual(declared.status, 413)
        var chunked = headers(body, token: token)
        chunked["content-length"] = nil
        let (streamed, _) = stream(small, body, headers: chunked)
        XCTAssertEqual(streamed.status, 413)
        XCTAssertEqual(json(streamed)["error"]?["message"], "request body larger than 10000 bytes")
        XCTAssertEqual(leftovers(), [])
    }

    func testUnauthenticatedUploadsNeverTouchTheDisk() {
        let r = router()
        let body = upload(fileBytes: 200_000)
        let (response, intake) = stream(r, body, headers: headers(body, token: "forged"))
        XCTAssertEqual(response.status, 401)
        XCTAssertEqual(json(response)["error"]?["code"], "UNAUTHORIZED")
        XCTAssertEqual(intake?.pendingBytes, 0)
        XCTAssertEqual(leftovers(), [])
        XCTAssertNil(seen.value.withLock { $0["size"] }, "the handler never ran")
    }

    func testBrokenAndTruncatedBodiesAre400() {
        let r = router()
        let body = upload(fileBytes: 5000)
        let cut = Array(body.dropLast(10))
        let (truncated, _) = stream(r, cut, headers: headers(cut, token: token))
        XCTAssertEqual(truncated.status, 400)
        XCTAssertEqual(json(truncated)["error"]?["message"], "multipart body ended before its closing boundary")
        XCTAssertEqual(leftovers(), [])
        var wrongType = headers(body, token: token)
        wrongType["content-type"] = "application/json"
        let (notMultipart, intake) = stream(r, body, headers: wrongType)
        XCTAssertNil(intake, "not multipart: buffered as usual")
        XCTAssertEqual(notMultipart.status, 400)
        XCTAssertTrue(json(notMultipart)["error"]?["message"]?.stringValue?.contains("boundary") == true)
    }

    func testAbandonedUploadsLeaveNoFiles() {
        let r = router()
        let body = upload(fileBytes: 500_000)
        let intake = r.multipartIntake(method: "POST", path: "/v1/files", headers: headers(body, token: token), remoteAddress: "", resume: {})!
        _ = body[..<300_000].withUnsafeBytes { intake.append($0) }
        intake.abandon()
        let drained = DispatchSemaphore(value: 0)
        intake.finish { _ in drained.signal() }
        XCTAssertEqual(drained.wait(timeout: .now() + 5), .success)
        XCTAssertEqual(leftovers(), [])
    }

    func testOtherRoutesAreNotStreamed() {
        let r = router()
        XCTAssertNil(r.multipartIntake(method: "POST", path: "/v1/notes", headers: ["content-type": contentType], remoteAddress: "", resume: {}))
        XCTAssertNil(r.multipartIntake(method: "POST", path: "/nowhere", headers: ["content-type": contentType], remoteAddress: "", resume: {}))
    }

    func testABufferedMultipartBodyIsParsedByTheRouterToo() {
        let r = router()
        let body = upload(fileBytes: 3000)
        let response = call(r, HTTPRequest(method: "POST", path: "/v1/files", headers: headers(body, token: token), body: body))
        XCTAssertEqual(response.status, 201)
        XCTAssertEqual(seen.value.withLock { $0["size"] }, 3000)
        XCTAssertEqual(leftovers(), [])
    }

    func testTheOpenAPIDocumentDescribesTheUpload() {
        let spec = OpenAPIDocument.build(routes: router().routes, version: "1")
        let operation = spec["paths"]?["/v1/files"]?["post"]
        XCTAssertNotNil(operation?["requestBody"]?["content"]?["multipart/form-data"])
        XCTAssertNotNil(operation?["responses"]?["413"])
    }
}

final class Seen: Sendable {
    let value = Mutex<[String: JSONValue]>([:])
}
