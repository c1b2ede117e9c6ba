import RESTCompat

/// The streamed `multipart/form-data` parser.
///
/// Properties: the same body fed whole or cut into chunks at any points gives the same parts,
/// the same bytes and the same verdict; a body built from known parts (any bytes, a boundary
/// they do not contain) parses back to exactly those parts.
enum MultipartFuzz {
    static let boundary = "fuzzBoundary7MA4YWxk"

    enum Event: Equatable {
        case began(MultipartPartHeaders)
        case data([UInt8])
        case ended
    }

    /// Records what the parser reports, joining data pieces (their sizes depend on the chunks).
    struct Recorder: MultipartSink {
        var events: [Event] = []
        var dataBytes = 0
        mutating func partBegan(_ part: MultipartPartHeaders) throws(MultipartError) { events.append(.began(part)) }
        mutating func partData(_ bytes: UnsafeRawBufferPointer) throws(MultipartError) {
            dataBytes += bytes.count
            if case .data(let previous)? = events.last {
                events[events.count - 1] = .data(previous + Array(bytes))
            } else {
                events.append(.data(Array(bytes)))
            }
        }
        mutating func partEnded() throws(MultipartError) { events.append(.ended) }
    }

    struct Outcome: Equatable {
        var events: [Event]
        var error: MultipartError?
    }

    static func parse(_ body: [UInt8], boundary: String, cuts: [Int]) -> Outcome {
        var parser = MultipartParser(boundary: boundary)
        var recorder = Recorder()
        var start = 0
        do throws(MultipartError) {
            for end in cuts + [body.count] where end >= start {
                let fed = body[start..<end].withUnsafeBytes { chunk in
                    Result { () throws(MultipartError) in try parser.feed(chunk, into: &recorder) }
                }
                try fed.get()
                start = end
            }
            try parser.finish()
        } catch {
            return Outcome(events: recorder.events, error: error)
        }
        invariant(recorder.dataBytes <= body.count, "more part bytes than body bytes")
        return Outcome(events: recorder.events, error: nil)
    }

    static func randomCuts(_ count: Int, _ random: inout InputRandom) -> [Int] {
        guard count > 1 else { return [] }
        var cuts = (0..<random.below(8) + 1).map { _ in random.below(count) }
        if random.below(4) == 0 { cuts = Array(1..<count) }  // one byte at a time
        return cuts.sorted()
    }

    static func check(_ input: [UInt8]) {
        var random = InputRandom(input)
        if input.first == 0x01 {
            checkBuilt(Array(input.dropFirst()), &random)
            return
        }
        _ = MultipartParser.boundary(contentType: String(decoding: input.prefix(200), as: UTF8.self))
        let whole = parse(input, boundary: boundary, cuts: [])
        let cut = parse(input, boundary: boundary, cuts: randomCuts(input.count, &random))
        invariant(whole == cut, "chunking changed the outcome: \(whole) vs \(cut)")
    }

    /// Parts separated by 0x00 in the input; odd ones are files.
    static func checkBuilt(_ input: [UInt8], _ random: inout InputRandom) {
        let contents = input.split(separator: 0x00, maxSplits: 7, omittingEmptySubsequences: false).map(Array.init)
        let delimiter = Array("\r\n--\(boundary)".utf8)
        for content in contents where content.count >= delimiter.count {
            // A body holding its own delimiter cannot be framed with it; clients pick another.
            if (0...(content.count - delimiter.count)).contains(where: { Array(content[$0..<($0 + delimiter.count)]) == delimiter }) { return }
        }
        var body: [UInt8] = []
        var expected: [Event] = []
        for (index, content) in contents.enumerated() {
            let headers = MultipartPartHeaders(name: "field\(index)", filename: index % 2 == 1 ? "file \(index).bin" : nil,
                                               contentType: index % 2 == 1 ? "application/octet-stream" : nil)
            body += Array("--\(boundary)\r\nContent-Disposition: form-data; name=\"\(headers.name)\"".utf8)
            if let filename = headers.filename { body += Array("; filename=\"\(filename)\"".utf8) }
            body += Array("\r\n".utf8)
            if let type = headers.contentType { body += Array("Content-Type: \(type)\r\n".utf8) }
            body += Array("\r\n".utf8) + content + Array("\r\n".utf8)
            expected.append(.began(headers))
            if !content.isEmpty { expected.append(.data(content)) }
            expected.append(.ended)
        }
        body += Array("--\(boundary)--\r\n".utf8)
        let outcome = parse(body, boundary: boundary, cuts: randomCuts(body.count, &random))
        invariant(outcome == Outcome(events: expected, error: nil), "built body parsed as \(outcome)")
    }
}
