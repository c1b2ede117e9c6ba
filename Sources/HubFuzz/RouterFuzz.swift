import Channels
import RESTCompat
import Synchronization

/// The router (path matching, methods, OPTIONS) and the query-string parser.
///
/// Properties: a request gets 200 from the route it matched, 404/405 otherwise, never
/// anything else; the parameters it extracted, put back into the route's pattern, give the
/// same path segments; query pairs re-encoded strictly parse back to the same pairs.
enum RouterFuzz {
    static let patterns = ["/", "/api/v1/health", "/v1/files/{file_id}", "/v1/meetings/{meeting_id}/artifacts/{name}/download",
                           "/assets/{file_name}", "/api/v1/cache/jobs/{jobId}"]
    static let methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", ""]

    static let router: Router = {
        var routes: [Route] = []
        for pattern in patterns {
            for method in ["GET", "DELETE"] {
                routes.append(Route(method, pattern, auth: .none, summary: "fuzz") { context in
                    let params = JSONValue.object(context.params.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })
                    context.json(200, ["pattern": .string(pattern), "params": params])
                })
            }
        }
        return Router(routes: routes, credentials: Credentials(serverAPIKey: nil))
    }()

    static func check(_ input: [UInt8]) {
        let method = methods[Int(input.first ?? 0) % methods.count]
        let target = String(decoding: input.dropFirst(), as: UTF8.self)
        let path: String
        var query = ""
        if let mark = target.firstIndex(of: "?") {
            path = String(target[..<mark])
            query = String(target[target.index(after: mark)...])
        } else {
            path = target
        }
        checkQuery(query)
        let pairs = HTTPRequest.parseQuery(query)
        let answer = Mutex<HTTPResponse?>(nil)
        router.handle(HTTPRequest(method: method, path: path, query: pairs, headers: ["x-request-id": "fuzz"])) { response in
            answer.withLock { $0 = response }
        }
        guard let response = answer.withLock({ $0 }) else {
            invariant(false, "no answer for \(method) \(path)")
            return
        }
        let allowed: Set<Int> = method == "OPTIONS" ? [204, 404] : [200, 404, 405]
        invariant(allowed.contains(response.status), "\(method) \(path) answered \(response.status)")
        guard response.status == 200, let body = try? JSONParser.parse(response.body),
              let pattern = body["pattern"]?.stringValue, let params = body["params"]?.objectValue
        else { return }
        var values: [String: String] = [:]
        for (name, value) in params {
            guard let text = value.stringValue else { continue }
            invariant(!text.isEmpty && !text.contains("/"), "parameter \(name) = \(text) spans segments")
            values[name] = text
        }
        let rebuilt = segments(pattern).map { segment -> Substring in
            guard segment.first == "{", segment.last == "}" else { return segment }
            return Substring(values[String(segment.dropFirst().dropLast())] ?? "")
        }
        invariant(rebuilt == segments(path), "\(path) matched \(pattern) with \(params)")
    }

    static func segments(_ path: String) -> [Substring] { path.split(separator: "/") }

    static func checkQuery(_ query: String) {
        let pairs = HTTPRequest.parseQuery(query)
        let encoded = pairs.map { strictEncode($0.0) + "=" + strictEncode($0.1) }.joined(separator: "&")
        let again = HTTPRequest.parseQuery(encoded)
        invariant(again.count == pairs.count && zip(again, pairs).allSatisfy { $0 == $1 },
                  "query \(query) re-encoded as \(encoded) parsed differently")
        for (key, value) in pairs {
            invariant(HTTPRequest.percentDecode(strictEncode(key)) == key, "percent round trip changed \(key)")
            invariant(HTTPRequest.percentDecode(strictEncode(value)) == value, "percent round trip changed \(value)")
        }
    }

    /// Every byte but unreserved ones as %XX.
    static func strictEncode(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for byte in text.utf8 {
            let unreserved = (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
                || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "~")
            if unreserved { out.append(byte) } else { out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 15)]] }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
