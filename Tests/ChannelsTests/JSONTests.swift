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

    func testRawValuesSpliceVerbatimAndCompareByContent() throws {
        let raw = JSONValue.raw(Array(#"{"x":1}"#.utf8))
        XCTAssertEqual(JSONWriter.string(["data": raw]), #"{"data":{"x":1}}"#)
        XCTAssertEqual(raw, ["x": 1])
        XCTAssertEqual(raw["x"], .int(1))
    }
}
