import Glibc

/// Where the parser hands what it finds: one part's headers, its content in pieces of any
/// size, its end. The pieces point into the parser's buffer and are valid only for the call.
public protocol MultipartSink {
    mutating func partBegan(_ part: MultipartPartHeaders) throws(MultipartError)
    mutating func partData(_ bytes: UnsafeRawBufferPointer) throws(MultipartError)
    mutating func partEnded() throws(MultipartError)
}

/// What a part's headers say: its form field name, the client's file name if it is a file,
/// and its content type.
public struct MultipartPartHeaders: Sendable, Equatable {
    public var name: String
    public var filename: String?
    public var contentType: String?

    package init(name: String, filename: String?, contentType: String?) {
        self.name = name
        self.filename = filename
        self.contentType = contentType
    }
}

/// An incremental `multipart/form-data` parser (RFC 7578 / RFC 2046): fed the body in
/// chunks of any size, it never holds more than one chunk plus a delimiter's length of the
/// body, and a part's headers (bounded), so a part of any size streams through.
public struct MultipartParser: Sendable {
    private enum State: Sendable { case preamble, afterDelimiter, headers, body, epilogue }

    /// `CRLF--boundary`: what ends one part and starts the next.
    private let delimiter: [UInt8]
    private var state = State.preamble
    /// Bytes that may be the start of a delimiter (or of the bytes after one), kept for the
    /// next chunk. Starts as a CRLF so a body that opens with `--boundary` matches too.
    private var carry: [UInt8] = [13, 10]
    private var headerBytes: [UInt8] = []
    private var sawDelimiter = false
    static let maxHeaderBytes = 16 * 1024

    /// The boundary from a `multipart/form-data; boundary=…` content type, or nil.
    public static func boundary(contentType: String) -> String? {
        let pieces = HeaderParameters.split(contentType)
        guard let type = pieces.first, type.lowercased() == "multipart/form-data" else { return nil }
        guard let value = HeaderParameters.parameters(pieces.dropFirst())["boundary"],
              (1...70).contains(value.utf8.count) else { return nil }
        return value
    }

    public init(boundary: String) {
        delimiter = Array("\r\n--\(boundary)".utf8)
    }

    /// True once the closing delimiter was seen; whatever follows it is ignored.
    public var isComplete: Bool { state == .epilogue }

    public mutating func feed<Sink: MultipartSink>(_ chunk: UnsafeRawBufferPointer, into sink: inout Sink) throws(MultipartError) {
        if state == .epilogue || chunk.isEmpty { return }
        var work = carry
        carry = []
        work.append(contentsOf: chunk)
        try process(work, into: &sink)
    }

    /// The body ended: anything but a completed closing delimiter is an error.
    public func finish() throws(MultipartError) {
        if state == .epilogue { return }
        if !sawDelimiter { throw .missingBoundary }
        throw .truncated
    }

    private mutating func process<Sink: MultipartSink>(_ input: [UInt8], into sink: inout Sink) throws(MultipartError) {
        var work = input
        var i = 0
        while i < work.count {
            switch state {
            case .preamble, .body:
                let found = Self.search(delimiter, in: work, from: i)
                let end = found.index ?? work.count
                if state == .body, end > i {
                    let outcome = work.withUnsafeBytes { raw in
                        Result { () throws(MultipartError) in try sink.partData(UnsafeRawBufferPointer(rebasing: raw[i..<end])) }
                    }
                    try outcome.get()
                }
                guard let at = found.index else { return }
                if !found.complete {
                    carry = Array(work[at...])
                    return
                }
                if state == .body { try sink.partEnded() }
                sawDelimiter = true
                state = .afterDelimiter
                i = at + delimiter.count
            case .afterDelimiter:
                // `--` closes the body; otherwise optional padding, then CRLF and headers.
                if work[i] == 32 || work[i] == 9 {
                    i += 1
                    continue
                }
                guard work.count - i >= 2 else {
                    carry = Array(work[i...])
                    return
                }
                if work[i] == 45 && work[i + 1] == 45 {
                    state = .epilogue
                    return
                }
                guard work[i] == 13 && work[i + 1] == 10 else { throw .malformed("boundary line not followed by CRLF") }
                // Keep the CRLF: the header block then always ends with CRLF CRLF, even empty.
                state = .headers
                headerBytes = []
            case .headers:
                let take = min(work.count - i, Self.maxHeaderBytes + 4 - headerBytes.count)
                let searchFrom = max(0, headerBytes.count - 3)
                headerBytes.append(contentsOf: work[i..<(i + take)])
                i += take
                guard let end = Self.find([13, 10, 13, 10], in: headerBytes, from: searchFrom) else {
                    if headerBytes.count >= Self.maxHeaderBytes + 4 { throw .malformed("part headers longer than \(Self.maxHeaderBytes) bytes") }
                    continue
                }
                let part = try Self.parseHeaders(headerBytes[min(2, end)..<end])
                try sink.partBegan(part)
                state = .body
                // What came after the blank line is body: go on with it, then the rest of work.
                let leftover = Array(headerBytes[(end + 4)...]) + work[i...]
                headerBytes = []
                work = leftover
                i = 0
            case .epilogue:
                return
            }
        }
    }

    /// The first place `needle` occurs in `haystack` from `start`, or a place near the end
    /// where a prefix of it does (complete false: more bytes are needed to tell).
    static func search(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> (index: Int?, complete: Bool) {
        haystack.withUnsafeBytes { hay in
            needle.withUnsafeBytes { pin in
                guard let base = hay.baseAddress, let first = pin.first else { return (nil, false) }
                var at = start
                while at < hay.count {
                    guard let hit = memchr(base + at, Int32(first), hay.count - at) else { return (nil, false) }
                    let position = base.distance(to: UnsafeRawPointer(hit))
                    let available = min(pin.count, hay.count - position)
                    if memcmp(base + position, pin.baseAddress!, available) == 0 {
                        return (position, available == pin.count)
                    }
                    at = position + 1
                }
                return (nil, false)
            }
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        let found = search(needle, in: haystack, from: start)
        return found.complete ? found.index : nil
    }

    static func parseHeaders(_ block: ArraySlice<UInt8>) throws(MultipartError) -> MultipartPartHeaders {
        var disposition: String?
        var contentType: String?
        let text = String(decoding: block, as: UTF8.self)
        for line in text.split(separator: "\r\n", omittingEmptySubsequences: true) {
            guard let colon = line.firstIndex(of: ":") else { throw .malformed("part header line without a colon") }
            let name = line[..<colon].lowercased()
            let value = String(line[line.index(after: colon)...]).trimmingCharacters(in: " ")
            if name == "content-disposition" { disposition = value }
            if name == "content-type" { contentType = value }
        }
        guard let disposition else { throw .malformed("part without a Content-Disposition header") }
        let pieces = HeaderParameters.split(disposition)
        guard pieces.first?.lowercased() == "form-data" else { throw .malformed("part is not form-data") }
        let parameters = HeaderParameters.parameters(pieces.dropFirst())
        guard let fieldName = parameters["name"] else { throw .malformed("part without a name") }
        let filename = parameters["filename*"].flatMap(HeaderParameters.extendedValue) ?? parameters["filename"]
        return MultipartPartHeaders(name: fieldName, filename: filename, contentType: contentType)
    }
}

/// `type; key=value; key="quoted \"value\""` header values.
enum HeaderParameters {
    /// Splits at semicolons outside quotes; pieces are trimmed.
    static func split(_ value: String) -> [String] {
        var pieces: [String] = []
        var current = ""
        var quoted = false
        var escaped = false
        for character in value {
            if escaped {
                current.append(character)
                escaped = false
            } else if quoted && character == "\\" {
                current.append(character)
                escaped = true
            } else if character == "\"" {
                current.append(character)
                quoted.toggle()
            } else if character == ";" && !quoted {
                pieces.append(current.trimmingCharacters(in: " "))
                current = ""
            } else {
                current.append(character)
            }
        }
        pieces.append(current.trimmingCharacters(in: " "))
        return pieces
    }

    /// Lower-cased keys to unquoted values.
    static func parameters<C: Collection>(_ pieces: C) -> [String: String] where C.Element == String {
        var result: [String: String] = [:]
        for piece in pieces {
            guard let eq = piece.firstIndex(of: "=") else { continue }
            let key = String(piece[..<eq]).trimmingCharacters(in: " ").lowercased()
            var value = Substring(String(piece[piece.index(after: eq)...]).trimmingCharacters(in: " "))
            if value.count >= 2, value.first == "\"", value.last == "\"" {
                value = value.dropFirst().dropLast()
                var unescaped = ""
                var escaped = false
                for character in value {
                    if !escaped && character == "\\" { escaped = true; continue }
                    unescaped.append(character)
                    escaped = false
                }
                result[key] = unescaped
            } else {
                result[key] = String(value)
            }
        }
        return result
    }

    /// RFC 5987 `UTF-8''percent%20encoded`.
    static func extendedValue(_ value: String) -> String? {
        let parts = value.split(separator: "'", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].lowercased() == "utf-8" else { return nil }
        var out: [UInt8] = []
        var bytes = Array(parts[2].utf8)[...]
        while let byte = bytes.popFirst() {
            if byte == UInt8(ascii: "%"), bytes.count >= 2,
               let decoded = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
                out.append(decoded)
                bytes = bytes.dropFirst(2)
            } else {
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
