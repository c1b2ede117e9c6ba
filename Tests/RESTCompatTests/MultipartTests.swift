import Foundation
import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat

/// The multipart parser and receiver: what an upload of seed 004's `POST /v1/files` (a file
/// plus metadata fields) turns into, however the bytes are split on the way in.
final class MultipartTests: XCTestCase {
    var directory = ""

    override func setUp() {
        var template = Array((NSTemporaryDirectory() + "/uploads-XXXXXX").utf8CString)
        directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    override func tearDown() {
        for name in leftovers() { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    func leftovers() -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] }

    func settings(body: Int = 1 << 30, file: Int = 1 << 30, field: Int = 1 << 20, parts: Int = 1000) -> UploadSettings {
        UploadSettings(directory: directory, limits: MultipartLimits(maxBodyBytes: body, maxFileBytes: file, maxFieldBytes: field, maxParts: parts))
    }

    let boundary = "----hubBoundary7MA4YWxk"
    var contentType: String { "multipart/form-data; boundary=\(boundary)" }

    /// Content that looks like the delimiter's start without being it.
    let trickyFile: [UInt8] = Array("RIFF\r\n--\r\n------hubBoundary7MA4YWx\r\n\r\r\n-".utf8) + (0..<200).map { UInt8($0) }

    func body(_ parts: [(name: String, filename: String?, type: String?, content: [UInt8])], preamble: String = "", epilogue: String = "") -> [UInt8] {
        var out = Array(preamble.utf8)
        for (i, part) in parts.enumerated() {
            out += Array(((i == 0 && preamble.isEmpty ? "" : "\r\n") + "--\(boundary)\r\n").utf8)
            var disposition = "Content-Disposition: form-data; name=\"\(part.name)\""
            if let filename = part.filename { disposition += "; filename=\"\(filename)\"" }
            out += Array((disposition + "\r\n").utf8)
            if let type = part.type { out += Array("Content-Type: \(type)\r\n".utf8) }
            out += Array("\r\n".utf8) + part.content
        }
        out += Array("\r\n--\(boundary)--\r\n".utf8) + Array(epilogue.utf8)
        return out
    }

    var meetingUpload: [UInt8] {
        body([
            ("title", nil, nil, Array("Weekly sync — ünïcode".utf8)),
            ("file", "standup.wav", "audio/wav", trickyFile),
            ("language", nil, nil, []),
            ("voice_sample", "me.ogg", nil, Array("OggS".utf8)),
        ])
    }

    func contents(_ path: String) -> [UInt8] { Array(FileManager.default.contents(atPath: path) ?? Data()) }

    func receive(_ chunks: [ArraySlice<UInt8>], settings: UploadSettings? = nil) throws(MultipartError) -> MultipartForm {
        let receiver = MultipartReceiver(contentType: contentType, settings: settings ?? self.settings())
        for chunk in chunks { try receiver.feed(Array(chunk)) }
        return try receiver.finish()
    }

    func checkMeetingForm(_ form: MultipartForm, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(form.fields.map(\.name), ["title", "language"], file: file, line: line)
        XCTAssertEqual(form.field("title"), "Weekly sync — ünïcode", file: file, line: line)
        XCTAssertEqual(form.field("language"), "", file: file, line: line)
        XCTAssertEqual(form.files.map(\.fieldName), ["file", "voice_sample"], file: file, line: line)
        let audio = form.file("file")!
        XCTAssertEqual(audio.filename, "standup.wav", file: file, line: line)
        XCTAssertEqual(audio.contentType, "audio/wav", file: file, line: line)
        XCTAssertEqual(audio.size, trickyFile.count, file: file, line: line)
        XCTAssertEqual(contents(audio.path), trickyFile, file: file, line: line)
        XCTAssertTrue(audio.path.hasPrefix(directory + "/upload-"), file: file, line: line)
        XCTAssertEqual(form.file("voice_sample")?.contentType, "application/octet-stream", file: file, line: line)
        XCTAssertEqual(contents(form.file("voice_sample")!.path), Array("OggS".utf8), file: file, line: line)
    }

    func testSplitAtEveryBytePosition() throws {
        let whole = meetingUpload
        for cut in 0...whole.count {
            let form = try receive([whole[..<cut], whole[cut...]])
            checkMeetingForm(form)
            form.removeFiles()
        }
        XCTAssertEqual(leftovers(), [])
    }

    func testOneByteAtATimeAndUnevenChunks() throws {
        let whole = meetingUpload
        let form = try receive(whole.indices.map { whole[$0...$0] })
        checkMeetingForm(form)
        form.removeFiles()
        for size in [2, 3, 7, 13, 41, 64] {
            let chunks = stride(from: 0, to: whole.count, by: size).map { whole[$0..<min($0 + size, whole.count)] }
            let form = try receive(chunks)
            checkMeetingForm(form)
            form.removeFiles()
        }
    }

    func testPreambleEpilogueAndQuotedOrEncodedNames() throws {
        let raw = Array("""
            This is the preamble.\r
            --\(boundary)  \r
            content-disposition: form-data; name="a\\"b"; filename*=UTF-8''%E2%82%AC%20rates.csv\r
            \r
            x\r
            --\(boundary)--\r
            epilogue, ignored: --\(boundary)\r\n
            """.utf8)
        let form = try receive([raw[...]])
        XCTAssertEqual(form.files.first?.fieldName, "a\"b")
        XCTAssertEqual(form.files.first?.filename, "€ rates.csv")
        XCTAssertEqual(contents(form.files[0].path), Array("x".utf8))
        form.removeFiles()
    }

    func testManyFields() throws {
        let parts = (0..<500).map { (name: "field\($0)", filename: String?.none, type: String?.none, content: Array("value \($0)".utf8)) }
        let whole = body(parts)
        let form = try receive(stride(from: 0, to: whole.count, by: 1000).map { whole[$0..<min($0 + 1000, whole.count)] })
        XCTAssertEqual(form.fields.count, 500)
        XCTAssertEqual(form.field("field0"), "value 0")
        XCTAssertEqual(form.field("field499"), "value 499")
        XCTAssertEqual(form.fields.map(\.name), parts.map(\.name), "in the order sent")
        XCTAssertThrowsError(try receive([whole[...]], settings: settings(parts: 100))) { error in
            XCTAssertEqual(error as? MultipartError, .tooManyParts(limit: 100))
        }
    }

    func testTruncatedBodiesFailAndLeaveNoFiles() {
        let whole = meetingUpload
        // Everything short of the closing `--` is incomplete.
        let closing = whole.count - 2
        for cut in 0..<closing {
            XCTAssertThrowsError(try receive([whole[..<cut]])) { error in
                let expected: [MultipartError] = [.truncated, .missingBoundary]
                XCTAssertTrue(expected.contains(error as! MultipartError), "cut at \(cut): \(error)")
            }
            XCTAssertEqual(leftovers(), [], "cut at \(cut)")
        }
        XCTAssertEqual(MultipartError.truncated.routeError.status, 400)
    }

    func testMissingOrWrongBoundary() {
        for type in ["multipart/form-data", "application/json", "multipart/form-data; boundary=", "text/plain; boundary=x"] {
            let receiver = MultipartReceiver(contentType: type, settings: settings())
            XCTAssertThrowsError(try receiver.feed(meetingUpload)) { XCTAssertEqual($0 as? MultipartError, .missingBoundary, type) }
        }
        let other = MultipartReceiver(contentType: "multipart/form-data; boundary=\"another\"", settings: settings())
        XCTAssertNoThrow(try other.feed(meetingUpload))
        XCTAssertThrowsError(try other.finish()) { XCTAssertEqual($0 as? MultipartError, .missingBoundary) }
        XCTAssertEqual(leftovers(), [])
        XCTAssertTrue(MultipartError.missingBoundary.routeError.message.contains("boundary"))
    }

    func testMalformedParts() {
        let noDisposition = Array("--\(boundary)\r\nContent-Type: text/plain\r\n\r\nx\r\n--\(boundary)--".utf8)
        XCTAssertThrowsError(try receive([noDisposition[...]])) {
            XCTAssertEqual($0 as? MultipartError, .malformed("part without a Content-Disposition header"))
        }
        let noName = Array("--\(boundary)\r\nContent-Disposition: form-data\r\n\r\nx\r\n--\(boundary)--".utf8)
        XCTAssertThrowsError(try receive([noName[...]])) { XCTAssertEqual($0 as? MultipartError, .malformed("part without a name")) }
        let endless = Array("--\(boundary)\r\nX-Pad: ".utf8) + [UInt8](repeating: 65, count: 40_000)
        XCTAssertThrowsError(try receive([endless[...]])) {
            XCTAssertEqual($0 as? MultipartError, .malformed("part headers longer than 16384 bytes"))
        }
        let glued = Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--\(boundary)junk".utf8)
        XCTAssertThrowsError(try receive([glued[...]])) { XCTAssertEqual(($0 as? MultipartError)?.routeError.status, 400) }
    }

    func testOversizeFilesFieldsAndBodiesAre413AndLeaveNoFiles() {
        let whole = meetingUpload
        XCTAssertThrowsError(try receive([whole[...]], settings: settings(file: trickyFile.count - 1))) {
            XCTAssertEqual($0 as? MultipartError, .fileTooLarge(field: "file", limit: trickyFile.count - 1))
        }
        XCTAssertEqual(leftovers(), [])
        XCTAssertNoThrow(try receive([whole[...]], settings: settings(file: trickyFile.count)).removeFiles(), "exactly the limit is fine")
        XCTAssertThrowsError(try receive([whole[...]], settings: settings(field: 10))) {
            XCTAssertEqual($0 as? MultipartError, .fieldTooLarge(field: "title", limit: 10))
        }
        XCTAssertThrowsError(try receive([whole[..<300], whole[300...]], settings: settings(body: whole.count - 1))) {
            XCTAssertEqual($0 as? MultipartError, .bodyTooLarge(limit: whole.count - 1))
        }
        XCTAssertEqual(leftovers(), [])
        let error = MultipartError.fileTooLarge(field: "file", limit: 5).routeError
        XCTAssertEqual(error.status, 413)
        XCTAssertEqual(JSONParser.parseOrNull(ErrorShape.meetings.response(error.status, error.message, code: error.code, details: error.details).body),
                       ["error": ["code": "FILE_TOO_LARGE", "message": "file 'file' larger than 5 bytes", "details": ["field": "file", "max_bytes": 5]]])
    }

    /// A 64 MiB file goes through in 64 KiB chunks; the process grows by far less than the file.
    func testHugeFileStreamsToDiskWithBoundedMemory() throws {
        let size = 64 << 20
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        for i in chunk.indices { chunk[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
        let head = Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\nContent-Type: video/mp4\r\n\r\n".utf8)
        let tail = Array("\r\n--\(boundary)--\r\n".utf8)
        let receiver = MultipartReceiver(contentType: contentType, settings: settings())
        let before = residentBytes()
        var peak = before
        try receiver.feed(head)
        for n in 0..<(size / chunk.count) {
            try receiver.feed(chunk)
            if n % 64 == 0 { peak = max(peak, residentBytes()) }
        }
        try receiver.feed(tail)
        let form = try receiver.finish()
        XCTAssertEqual(form.files.first?.size, size)
        var info = stat()
        XCTAssertEqual(stat(form.files[0].path, &info), 0)
        XCTAssertEqual(Int(info.st_size), size)
        XCTAssertLessThan(peak - before, 16 << 20, "grew \(peak - before) bytes for a \(size)-byte file")
        form.removeFiles()
        XCTAssertEqual(leftovers(), [])
    }

    func residentBytes() -> Int {
        let text = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? "0 0"
        return (Int(text.split(separator: " ")[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    func testMovedFilesAreKeptAndOthersRemoved() throws {
        let form = try receive([meetingUpload[...]])
        let kept = directory + "/kept.wav"
        try form.file("file")!.move(to: kept)
        form.removeFiles()
        XCTAssertEqual(leftovers(), ["kept.wav"])
        XCTAssertEqual(contents(kept), trickyFile)
    }
}

extension JSONParser {
    static func parseOrNull(_ bytes: [UInt8]) -> JSONValue { (try? parse(bytes)) ?? .null }
}
