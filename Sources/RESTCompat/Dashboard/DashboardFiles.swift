import Dispatch
import Glibc

/// The live dashboard: static files from the repository (`dashboard/`, plain HTML, CSS and ES
/// modules, no build step) served at `/` and `/ui/{file}`, plus the JavaScript protocol client
/// it imports (`clients/js`) at `/ui/lib/{file}`.
///
/// Each URL names one file directly in its folder: a name with `/`, `\`, NUL, a leading `.`
/// (so no `..`, no dot files) or an extension not listed below is 404, and the resolved path
/// must still lie in the folder, so a symlink pointing out of it is refused too. Files are
/// read on a background queue, never on a service thread, and are small (at most 2 MiB).
public struct DashboardFiles: Sendable {
    public let root: String
    public let libraryRoot: String
    static let maxBytes = 2 * 1024 * 1024
    /// Files are read whole: memory stays under `maxReads` × `maxBytes` whatever the request rate.
    static let maxReads = 16
    let reading = SharedCounter()

    public init(root: String, libraryRoot: String) {
        self.root = root
        self.libraryRoot = libraryRoot
    }

    /// Stricter than the hub's default: the page only talks to its own origin (HTTP and
    /// WebSocket), plays audio replies from `blob:` URLs, and may not be framed.
    static let policy = ("content-security-policy",
                         "default-src 'self'; connect-src 'self'; img-src 'self' data:; media-src 'self' blob: data:; "
                         + "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

    public var routes: [Route] {
        let tag = "dashboard"
        let responses = [200: "The file", 404: "No such dashboard file", 503: "Too many files being read; retry"]
        return [
            Route("GET", "/", auth: .none, summary: "The live dashboard (HTML; sign-in happens in the page)", tag: tag,
                  responses: responses, produces: "text/html") { [root, reading] context in
                Self.serve(root: root, name: "index.html", reading: reading, reply: context.respond)
            },
            Route("GET", "/ui/{file}", auth: .none, summary: "The dashboard's scripts and style sheets", tag: tag,
                  responses: responses, produces: "text/plain") { [root, reading] context in
                Self.serve(root: root, name: context.params["file"] ?? "", reading: reading, reply: context.respond)
            },
            Route("GET", "/ui/lib/{file}", auth: .none, summary: "The JavaScript protocol client (clients/js) the dashboard imports",
                  tag: tag, responses: responses, produces: "text/plain") { [libraryRoot, reading] context in
                Self.serve(root: libraryRoot, name: context.params["file"] ?? "", reading: reading, reply: context.respond)
            },
        ]
    }

    /// The decoded name when it names a servable file directly in the folder, else nil.
    static func safeName(_ raw: String) -> String? {
        let name = HTTPRequest.percentDecode(raw.replacingPlus)
        guard !name.isEmpty, !name.hasPrefix("."), name.utf8.count <= 128, contentType(name) != nil else { return nil }
        for byte in name.utf8 where byte == UInt8(ascii: "/") || byte == UInt8(ascii: "\\") || byte < 0x20 { return nil }
        return name
    }

    static func contentType(_ name: String) -> String? {
        guard let dot = name.lastIndex(of: ".") else { return nil }
        switch name[name.index(after: dot)...].lowercased() {
        case "html": return "text/html; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "js", "mjs": return "text/javascript; charset=utf-8"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "ico": return "image/x-icon"
        case "json": return "application/json"
        case "webmanifest": return "application/manifest+json"
        default: return nil
        }
    }

    static func notFound(_ message: String = "no such dashboard file") -> HTTPResponse { ErrorShape.hub.response(404, message) }

    static func serve(root: String, name raw: String, reading: SharedCounter, reply: @escaping @Sendable (HTTPResponse) -> Void) {
        guard let name = safeName(raw) else { reply(notFound()); return }
        guard reading.value.add(1, ordering: .acquiringAndReleasing).newValue <= maxReads else {
            reading.value.subtract(1, ordering: .acquiringAndReleasing)
            reply(ErrorShape.hub.response(503, "too many dashboard files being read, retry shortly"))
            return
        }
        DispatchQueue.global().async {
            let response = read(root: root, name: name)
            reading.value.subtract(1, ordering: .acquiringAndReleasing)
            reply(response)
        }
    }

    static func read(root: String, name: String) -> HTTPResponse {
        guard let realRoot = GatewayAssets.realPath(root) else {
            return notFound("dashboard folder not found (set --dashboard-dir)")
        }
        guard let realFile = GatewayAssets.realPath(root + "/" + name),
              realFile.hasPrefix(realRoot.hasSuffix("/") ? realRoot : realRoot + "/") else { return notFound() }
        var info = stat()
        guard stat(realFile, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG,
              let bytes = FileBytes.read(realFile, limit: maxBytes), let type = contentType(name) else { return notFound() }
        // Revalidated on every load, so a changed dashboard shows without a hard refresh.
        return HTTPResponse(status: 200, headers: [("content-type", type), ("cache-control", "no-cache"), policy], body: bytes)
    }
}
