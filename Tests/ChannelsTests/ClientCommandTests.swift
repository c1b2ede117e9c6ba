import XCTest

@testable import Channels

/// The command framing `ClientSession` reads (and `hub-fuzz protocol` checks): one message,
/// newline-separated commands, each `{"id":N,"<method>":{…}}`.
final class ClientCommandTests: XCTestCase {
    private func lines(_ text: String) -> [ClientCommand.Line] {
        ClientCommand.lines(of: Array(text.utf8)).map(ClientCommand.decode)
    }

    func testAMessageSplitsIntoItsCommandsSkippingBlankLines() {
        let decoded = lines("{\"id\":1,\"connect\":{\"token\":\"t\"}}\n\n  \r\n{}\n{\"presence\":{\"channel\":\"a\"},\"id\":2}\r\n")
        XCTAssertEqual(decoded, [
            .command(ClientCommand(id: 1, method: "connect", body: ["token": "t"])),
            .pong,
            .command(ClientCommand(id: 2, method: "presence", body: ["channel": "a"])),
        ])
    }

    func testIdsOutsideUnsigned32BitsAndMissingMethodsAreBadRequests() {
        for text in ["{\"id\":-1,\"ping\":{}}", "{\"id\":4294967296,\"ping\":{}}", "{\"id\":\"7\",\"ping\":{}}", "{\"id\":1.5,\"ping\":{}}"] {
            guard case .invalid(nil, let error) = lines(text)[0] else { return XCTFail(text) }
            XCTAssertEqual(error.code, 107, text)
        }
        XCTAssertEqual(lines("{\"id\":4294967295,\"ping\":{}}"), [.command(ClientCommand(id: 4_294_967_295, method: "ping", body: [:]))])
        guard case .invalid(5, let error) = lines("{\"id\":5}")[0] else { return XCTFail("no method") }
        XCTAssertEqual(error.message, "command has no method")
        guard case .invalid(nil, let parse) = lines("[1]")[0], case .invalid(nil, _) = lines("{\"id\":1,")[0] else { return XCTFail("not objects") }
        XCTAssertEqual(parse.message, "command must be a JSON object")
    }

    func testEncodedCommandsDecodeToThemselves() {
        let command = ClientCommand(id: 9, method: "publish", body: ["channel": "news", "data": ["text": "é\n\"", "n": -1.5]])
        XCTAssertEqual(ClientCommand.decode(ArraySlice(command.encoded)), .command(command))
        let fireAndForget = ClientCommand(id: nil, method: "send", body: ["data": [1, 2]])
        XCTAssertEqual(ClientCommand.decode(ArraySlice(fireAndForget.encoded)), .command(fireAndForget))
    }
}
