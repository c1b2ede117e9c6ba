import XCTest
@testable import Channels

/// A backend's proxy reply, read as Centrifugo's HTTP proxy defines it.
final class ProxyAnswerTests: XCTestCase {
    private func parse(_ text: String) -> ProxyAnswer? { ProxyAnswer.parse(Array(text.utf8)) }

    func testResultErrorAndDisconnect() {
        XCTAssertEqual(parse(#"{"result":{"user":"alice","expire_at":1700000000}}"#),
                       .result(["user": "alice", "expire_at": 1_700_000_000]))
        XCTAssertEqual(parse(#"{"error":{"code":1403,"message":"no session","temporary":true}}"#),
                       .error(ProtocolError(code: 1403, message: "no session", temporary: true)))
        XCTAssertEqual(parse(#"{"error":{"code":103}}"#), .error(ProtocolError(code: 103, message: "")))
        XCTAssertEqual(parse(#"{"disconnect":{"code":4501,"reason":"banned"}}"#),
                       .disconnect(DisconnectReason(code: 4501, reason: "banned")))
    }

    func testAnEmptyObjectIsAnEmptyResult() {
        XCTAssertEqual(parse("{}"), .result([:]))
        XCTAssertEqual(parse(#"{"result":null,"error":null,"disconnect":null}"#), .result([:]))
    }

    func testGarbageIsNotAnAnswer() {
        for text in ["", "<html>", "[]", "42", #"{"result":"yes"}"#, #"{"error":{"message":"no code"}}"#,
                     #"{"disconnect":{"code":70000}}"#, #"{"error":{"code":-1}}"#] {
            XCTAssertNil(parse(text), text)
        }
    }

    func testPayloadsComeAsJSONOrBase64OfJSON() {
        let result: JSONValue = ["data": ["a": 1], "b64info": .string(Base64URL.encode(Array(#"{"name":"Alice"}"#.utf8))),
                                 "b64bad": "!!!"]
        XCTAssertEqual(ProxyAnswer.payload(result, "data"), .value(["a": 1]))
        XCTAssertEqual(ProxyAnswer.payload(result, "info"), .value(["name": "Alice"]))
        XCTAssertEqual(ProxyAnswer.payload(result, "meta"), .absent)
        XCTAssertEqual(ProxyAnswer.payload(result, "bad"), .invalid)
    }
}
