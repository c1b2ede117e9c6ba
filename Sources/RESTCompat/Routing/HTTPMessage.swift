import Channels

/// An HTTP request as the routes see it, already read whole by the edge (bodies are
/// bounded there by the configured limit), except a `.multipart` route's body, which the
/// edge streams to disk as it arrives and hands over as `upload`.
public struct HTTPRequest: Sendable {
    public var method: String
    public var path: String
    public var query: [(String, String)]
    /// Header values by lower-cased name.
    public var headers: [String: String]
    public var body: [UInt8]
    public var remoteAddress: String
    /// The streamed multipart body of a `.multipart` route (the edge sets it; `body` is then empty).
    public var upload: MultipartUpload?
    /// The headers `proxy_http_headers` names, as sent (the client-protocol transports' sessions
    /// forward them to the backend proxies); empty on other routes.
    public var forwardedHeaders: [(String, String)] = []

    public init(method: String, path: String, query: [(String, String)] = [], headers: [String: String] = [:],
                body: [UInt8] = [], remoteAddress: String = "", upload: MultipartUpload? = nil) {
        self.upload = upload
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
    }

    public func header(_ name: String) -> String? {
        // Callers mostly pass lower-case literals: lowercasing those allocated a String per call.
        headers[name.utf8.contains(where: { (65...90).contains($0) }) ? name.lowercased() : name]
    }

    public func queryValue(_ name: String) -> String? { query.first { $0.0 == name }?.1 }

    /// Splits `a=1&b=two%20words` into decoded pairs.
    public static func parseQuery(_ text: String) -> [(String, String)] {
        text.split(separator: "&", omittingEmptySubsequences: true).map { part in
            let pieces = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let key = percentDecode(pieces[0])
            let value = pieces.count > 1 ? percentDecode(pieces[1]) : ""
            return (key, value)
        }
    }

    public static func percentDecode<S: StringProtocol>(_ text: S) -> String {
        var out: [UInt8] = []
        var bytes = Array(text.utf8)[...]
        while let byte = bytes.popFirst() {
            if byte == UInt8(ascii: "+") { out.append(0x20); continue }
            if byte == UInt8(ascii: "%"), bytes.count >= 2,
               let value = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
                out.append(value)
                bytes = bytes.dropFirst(2)
                continue
            }
            out.append(byte)
        }
        return String(decoding: out, as: UTF8.self)
    }
}

public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]
    /// A body written as it happens (SSE, HTTP streaming) instead of `body`: the edge sends the
    /// headers without a length, then hands the stream its connection.
    public var stream: (any ResponseStream)?

    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = [], stream: (any ResponseStream)? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream
    }

    public static func json(_ status: Int, _ value: JSONValue) -> HTTPResponse {
        HTTPResponse(status: status, headers: [("content-type", "application/json")], body: JSONWriter.bytes(value))
    }

    public var contentType: String { headers.first { $0.0.lowercased() == "content-type" }?.1 ?? "application/octet-stream" }
}

/// Hands a response back to the edge; callable once, from any thread.
public typealias Responder = @Sendable (HTTPResponse) -> Void

/// The body of a streamed response. The edge calls `start` on its service thread once the
/// headers are out, and `stopped` exactly once when the connection ends (either side).
public protocol ResponseStream: Sendable {
    /// `sink` takes the body's bytes, frame by frame, under the connection's outbound limits;
    /// `sink.close` ends the response.
    func start(sink: any ClientTransport)
    func stopped()
    /// The protocol session behind the stream, whose deadlines and pings the edge's tick drives.
    var session: ClientSession? { get }
}
