import Dispatch
import Glibc
import Synchronization

/// Seed 000's `GET /assets/{file_name}`: files from one configured folder, nothing outside it.
///
/// A name is one path segment (after percent-decoding): no `/`, `\`, NUL, `.` or `..`, so
/// `../`, `%2e%2e%2f` and absolute paths are refused; the resolved path must still lie in
/// the folder, so a symlink pointing out of it is refused too. Files are read on a
/// background queue, never on a service thread.
public struct GatewayAssets: Sendable {
    public let root: String?
    public let maxBytes: Int
    /// Files are read whole, so memory is bounded by reads in flight × `maxBytes`.
    public let maxReads: Int
    let reading = SharedCounter()

    public init(root: String?, maxBytes: Int = 256 * 1024 * 1024, maxReads: Int = 4) {
        self.root = root.flatMap { $0.isEmpty ? nil : $0 }
        self.maxBytes = maxBytes
        self.maxReads = maxReads
    }

    static func notFound() -> HTTPResponse { ErrorShape.fastAPI.response(404, "File not found") }

    /// The decoded name, or nil when it could name anything but a file directly in the folder.
    package static func safeName(_ raw: String) -> String? {
        let name = HTTPRequest.percentDecode(raw.replacingPlus)
        guard !name.isEmpty, name != ".", name != "..", name.utf8.count <= 255 else { return nil }
        for byte in name.utf8 where byte == UInt8(ascii: "/") || byte == UInt8(ascii: "\\") || byte == 0 { return nil }
        return name
    }

    public func serve(_ raw: String, reply: @escaping @Sendable (HTTPResponse) -> Void) {
        guard let name = Self.safeName(raw) else {
            reply(ErrorShape.fastAPI.response(400, "Invalid file name"))
            return
        }
        guard let root else { reply(Self.notFound()); return }
        guard reading.value.add(1, ordering: .acquiringAndReleasing).newValue <= maxReads else {
            reading.value.subtract(1, ordering: .acquiringAndReleasing)
            reply(ErrorShape.fastAPI.response(503, "Too many downloads in progress, retry shortly"))
            return
        }
        DispatchQueue.global().async { [reading] in
            let response = Self.read(root: root, name: name, maxBytes: maxBytes)
            reading.value.subtract(1, ordering: .acquiringAndReleasing)
            reply(response)
        }
    }

    package static func read(root: String, name: String, maxBytes: Int) -> HTTPResponse {
        guard let realRoot = realPath(root), let realFile = realPath(root + "/" + name),
              realFile.hasPrefix(realRoot.hasSuffix("/") ? realRoot : realRoot + "/")
        else { return notFound() }
        var info = stat()
        guard stat(realFile, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return notFound() }
        guard Int(info.st_size) <= maxBytes else { return ErrorShape.fastAPI.response(500, "Asset larger than \(maxBytes) bytes") }
        guard let file = fopen(realFile, "rb") else { return notFound() }
        defer { fclose(file) }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        let count = bytes.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
        bytes.removeSubrange(count...)
        return HTTPResponse(status: 200, headers: [
            ("content-type", contentType(name)),
            ("content-disposition", "attachment; filename=\"\(name.filter { $0 != "\"" })\""),
        ], body: bytes)
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func contentType(_ name: String) -> String {
        let lower = name.lowercased()
        if lower.hasSuffix(".json") { return "application/json" }
        if lower.hasSuffix(".txt") { return "text/plain; charset=utf-8" }
        if lower.hasSuffix(".xz") { return "application/x-xz" }
        if lower.hasSuffix(".gz") || lower.hasSuffix(".tgz") { return "application/gzip" }
        if lower.hasSuffix(".zip") { return "application/zip" }
        return "application/octet-stream"
    }
}

extension String {
    /// A literal `+` in a path segment is a plus, not a space (that is query encoding).
    var replacingPlus: String { self.split(separator: "+", omittingEmptySubsequences: false).joined(separator: "%2B") }
}

/// An atomic count shared by copies of a struct.
final class SharedCounter: Sendable {
    let value = Atomic<Int>(0)
}
