import XCTest
@testable import Channels

final class JSONTests: XCTestCase {
    func testParsesNestedDocumentKeepingKeyOrderAndIntegers() throws {
        let value = try JSONParser.parse(#"{"z":1,"a":[true,null,-2.5,"x\n\u00e9\ud83d\ude00"],"big":9007199254740993}"#)
        XCTAssertEqual(value.objectValue?.map(\.0), ["z", "a", "big"])
        XCTAssertEqual(value["big"], .int(9_007_199_254_740_993))
        XCTAssertEqual(value["a"]?.arrayValue?[3], .string("x\né😀"))
        XCTAssertEqual(JSONWriter.string(value), #"{"z":1,"a":[true,null,-2.5,"x\né😀"],"big":9007199254740993}"#)
    }

    func testRejectsMalformedInputWithPosition() {
        for bad in ["{", "{\"a\":}", "[1,]", "01", "\"\\x\"", "{\"a\" 1}", "tru", "1 2", "\"\u{01}\"", "\"\\ud800\"", "-", "1e"] {
            XCTAssertThrowsError(try JSONParser.parse(bad), bad)
        }
    }

    func testRejectsInvalidUTF8InStrings() {
        XCTAssertThrowsError(try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]))
    }

    func testBoundsNestingDepth() {
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        XCTAssertThrowsError(try JSONParser.parse(deep)) { error in
            XCTAssertTrue("\(error)".contains("nesting too deep"))
        }
        let fine = String(repeating: "[", count: 60) + String(repeating: "]", count: 60)
        XCTAssertNoThrow(try JSONParser.parse(fine))
    }

    func testWriterEscapesControlCharacters() {
        XCTAssertEqual(JSONWriter.string(.string("a\"b\\c\u{01}\t")), #""a\"b\\c\u0001\t""#)
        XCTAssertEqual(JSONWriter.string(.int(-9_223_372_036_854_775_807)), "-9223372036854775807")
    }

    func testWriterKeepsCleanRunsBetweenEscapesAndRoundTrips() throws {
        // Escapes at the ends, back to back and between multi-byte runs.
        let text = "\"lead\\\\é\u{1F}\u{7F}mid\n\n😀tail\""
        let written = JSONWriter.string(.string(text))
        XCTAssertEqual(written, #""\"lead\\\\é\u001f\#u{7F}mid\n\n😀tail\"""#)
        XCTAssertEqual(try JSONParser.parse(written), .string(text))
        XCTAssertEqual(JSONWriter.string(.string("")), #""""#)
    }

    func testPublicationPushIsTheTreeFormWrittenDirectly() throws {
        let full = Publication(offset: 42, data: ["text": "hé \"quoted\"", "n": 1],
                               info: ClientInfo(user: "u1", client: "c-1", connInfo: ["role": "admin"], chanInfo: .raw(Array(#"{"seat":3}"#.utf8))),
                               tags: [("kind", "chat"), ("lang", "fr")], time: 1_700_000_000_000)
        let bare = Publication(data: .raw(Array(#"[1,2]"#.utf8)))
        for publication in [full, bare] {
            for delta in [false, true] {
                var tree = publication.json
                if delta, case .object(var members) = tree { members.append(("delta", .bool(true))); tree = .object(members) }
                let expected = #"{"push":{"channel":"chat:room","pub":"# + JSONWriter.string(tree) + "}}"
                XCTAssertEqual(String(decoding: PushEncoding.publication(channel: "chat:room", publication, delta: delta), as: UTF8.self), expected)
            }
        }
        // The bare push of the unidirectional protocol.
        XCTAssertEqual(String(decoding: PushEncoding.publication(channel: "c", bare, wrapped: false), as: UTF8.self),
                       #"{"channel":"c","pub":{"data":[1,2]}}"#)
    }

    func testPublishDataIsKeptAsWrittenAndCheckedAsStrictly() throws {
        let text = #"{"id":3,"publish":{"channel":"c","data": {"a" : [1, 2.5e1, "é\n", null], "b":{}} }}"#
        let command = try JSONParser.parse(Array(text.utf8), keepingDataOf: "publish")
        XCTAssertEqual(command["publish"]?["data"], .raw(Array(#"{"a" : [1, 2.5e1, "é\n", null], "b":{}}"#.utf8)))
        XCTAssertEqual(command["publish"]?["data"], try JSONParser.parse(#"{"a":[1,2.5e1,"é\n",null],"b":{}}"#))
        XCTAssertEqual(command["publish"]?["channel"], .string("c"))
        // Only the named method's data, only at its top.
        let rpc = try JSONParser.parse(Array(#"{"rpc":{"data":{"x":1}},"publish":{"meta":{"data":2}}}"#.utf8), keepingDataOf: "publish")
        XCTAssertEqual(rpc["rpc"]?["data"], .object([("x", .int(1))]))
        XCTAssertEqual(rpc["publish"]?["meta"]?["data"], .int(2))
        // What the tree parser refuses inside data, this refuses too.
        let refused = [#""\ud800""#, #""\q""#, "1e999", "[1,]", "{\"a\" 1}", "\"\u{01}\"", "tru", "01",
                       String(repeating: "[", count: 70) + String(repeating: "]", count: 70)]
        for data in refused {
            XCTAssertThrowsError(try JSONParser.parse(Array(#"{"publish":{"data":"#.utf8) + Array(data.utf8) + Array("}}".utf8),
                                                      keepingDataOf: "publish"), data)
            XCTAssertThrowsError(try JSONParser.parse(Array(#"{"publish":{"data":"#.utf8) + Array(data.utf8) + Array("}}".utf8)), data)
        }
        XCTAssertThrowsError(try JSONParser.parse([0x7B, 0x22, 0x70, 0x75, 0x62, 0x6C, 0x69, 0x73, 0x68, 0x22, 0x3A, 0x7B, 0x22, 0x64, 0x61, 0x74, 0x61,
                                                   0x22, 0x3A, 0x22, 0xC3, 0x28, 0x22, 0x7D, 0x7D], keepingDataOf: "publish"))  // invalid UTF-8
    }

    func testRawValuesSpliceVerbatimAndCompareByContent() throws {
        let raw = JSONValue.raw(Array(#"{"x":1}"#.utf8))
        XCTAssertEqual(JSONWriter.string(["data": raw]), #"{"data":{"x":1}}"#)
        XCTAssertEqual(raw, ["x": 1])
        XCTAssertEqual(raw["x"], .int(1))
    }
}
