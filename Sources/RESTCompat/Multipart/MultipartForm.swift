import Glibc

/// A `multipart/form-data` body as a handler sees it: the text fields in memory, the file
/// parts already on disk under the upload directory. The router removes the files once the
/// handler has answered, so a handler keeps a file by moving it (`UploadedFile.move(to:)`)
/// before it responds.
public struct MultipartForm: Sendable {
    public var fields: [(name: String, value: String)]
    public var files: [UploadedFile]

    public init(fields: [(name: String, value: String)] = [], files: [UploadedFile] = []) {
        self.fields = fields
        self.files = files
    }

    public func field(_ name: String) -> String? { fields.first { $0.name == name }?.value }
    public func file(_ name: String) -> UploadedFile? { files.first { $0.fieldName == name } }

    /// Deletes the temp files still where the upload put them (moved ones are gone already).
    public func removeFiles() {
        for file in files { unlink(file.path) }
    }
}

/// One file part, streamed to a temp file. `filename` is the client's and is never used in
/// a path: temp names are random, under the upload directory.
public struct UploadedFile: Sendable, Equatable {
    public var fieldName: String
    public var filename: String
    public var contentType: String
    public var path: String
    public var size: Int

    /// Moves the temp file to `destination` (which the caller has checked stays under its
    /// own root), copying when it is on another file system.
    public func move(to destination: String) throws(RouteError) {
        if rename(path, destination) == 0 { return }
        guard errno == EXDEV else { throw RouteError(500, "could not store the upload: \(String(cString: strerror(errno)))") }
        let input = open(path, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw RouteError(500, "could not store the upload") }
        defer { close(input) }
        let output = open(destination, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard output >= 0 else { throw RouteError(500, "could not store the upload: \(String(cString: strerror(errno)))") }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var failed = false
        while !failed {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                failed = true
                break
            }
            failed = buffer.withUnsafeBytes { !FileWriter.writeAll(output, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        if close(output) != 0 { failed = true }
        if failed {
            unlink(destination)
            throw RouteError(500, "could not store the upload")
        }
        unlink(path)
    }
}

/// What a multipart body may hold. Fields are kept in memory, so they get their own small limit.
public struct MultipartLimits: Sendable, Equatable {
    /// The whole body, bytes.
    public var maxBodyBytes: Int
    /// One file part, bytes.
    public var maxFileBytes: Int
    /// One text field, bytes.
    public var maxFieldBytes: Int
    /// All text fields together, bytes: what one form may hold in memory.
    public var maxFieldsTotalBytes: Int
    public var maxParts: Int

    public init(maxBodyBytes: Int, maxFileBytes: Int, maxFieldBytes: Int = 1024 * 1024, maxFieldsTotalBytes: Int = 4 * 1024 * 1024,
                maxParts: Int = 1000) {
        self.maxBodyBytes = maxBodyBytes
        self.maxFileBytes = maxFileBytes
        self.maxFieldBytes = maxFieldBytes
        self.maxFieldsTotalBytes = maxFieldsTotalBytes
        self.maxParts = maxParts
    }
}

/// Where uploads go and how large they may be (`--upload-dir`, `--max-upload-size`,
/// `--max-upload-file-size`).
public struct UploadSettings: Sendable {
    public var directory: String
    public var limits: MultipartLimits

    public init(directory: String, limits: MultipartLimits) {
        self.directory = directory
        self.limits = limits
    }

    /// A route may lower the file limit (seed 004 states its own); never raise it.
    public func limits(for route: Route) -> MultipartLimits {
        var limits = self.limits
        if case .multipart(_, let maxFileBytes?) = route.body { limits.maxFileBytes = min(limits.maxFileBytes, maxFileBytes) }
        return limits
    }
}

/// Why a multipart body was refused.
public enum MultipartError: Error, Sendable, Equatable {
    /// The content type is not `multipart/form-data` with a boundary, or the body never had one.
    case missingBoundary
    /// The body ended before the closing boundary.
    case truncated
    case malformed(String)
    case bodyTooLarge(limit: Int)
    case fileTooLarge(field: String, limit: Int)
    case fieldTooLarge(field: String, limit: Int)
    case fieldsTooLarge(limit: Int)
    case tooManyParts(limit: Int)
    /// The upload could not be written (disk full, directory gone); the message is for the log.
    case storage(String)
    /// The caller is over the route's rate limit: refused before any byte is read or written.
    case rateLimited(retryAfter: Int)

    /// The answer, in the route's error shape: 413 for sizes, 400 for a broken body.
    public var routeError: RouteError {
        switch self {
        case .missingBoundary:
            return RouteError(400, "multipart body without a boundary: expected Content-Type multipart/form-data; boundary=…")
        case .truncated:
            return RouteError(400, "multipart body ended before its closing boundary")
        case .malformed(let reason):
            return RouteError(400, "malformed multipart body: \(reason)")
        case .bodyTooLarge(let limit):
            return RouteError(413, "request body larger than \(limit) bytes", code: "FILE_TOO_LARGE")
        case .fileTooLarge(let field, let limit):
            return RouteError(413, "file '\(field)' larger than \(limit) bytes", code: "FILE_TOO_LARGE",
                              details: ["field": .string(field), "max_bytes": .int(Int64(limit))])
        case .fieldTooLarge(let field, let limit):
            return RouteError(413, "form field '\(field)' larger than \(limit) bytes", code: "FILE_TOO_LARGE",
                              details: ["field": .string(field), "max_bytes": .int(Int64(limit))])
        case .fieldsTooLarge(let limit):
            return RouteError(413, "form fields larger than \(limit) bytes together", code: "FILE_TOO_LARGE")
        case .tooManyParts(let limit):
            return RouteError(413, "more than \(limit) parts in the form", code: "FILE_TOO_LARGE")
        case .storage:
            return RouteError(500, "could not store the upload")
        case .rateLimited:
            return RouteError(429, "Rate limit exceeded", code: "RATE_LIMITED")
        }
    }
}

enum FileWriter {
    /// Writes every byte, retrying short writes and interrupts.
    static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }
}
