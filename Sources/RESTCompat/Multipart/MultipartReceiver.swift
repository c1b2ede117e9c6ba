import Channels
import Glibc

/// Turns a multipart body into a `MultipartForm`: the parser finds the parts, file parts go
/// straight to temp files under the upload directory, text fields stay in memory; every
/// limit is checked as the bytes arrive. Not thread-safe: one caller feeds it in order
/// (the edge's upload queue, or the router for a body it already holds).
public final class MultipartReceiver {
    private var parser: MultipartParser?
    private var sink: Sink
    private var received = 0
    private var failure: MultipartError?

    /// `contentType` is the request's; without a boundary every call fails with `.missingBoundary`.
    public init(contentType: String, settings: UploadSettings, limits: MultipartLimits? = nil) {
        parser = MultipartParser.boundary(contentType: contentType).map(MultipartParser.init(boundary:))
        sink = Sink(directory: settings.directory, limits: limits ?? settings.limits)
        if parser == nil { failure = .missingBoundary }
    }

    /// The error the body already earned, if any (later bytes are then ignored).
    public var error: MultipartError? { failure }

    public func feed(_ chunk: UnsafeRawBufferPointer) throws(MultipartError) {
        if let failure { throw failure }
        do throws(MultipartError) {
            received += chunk.count
            if received > sink.limits.maxBodyBytes { throw MultipartError.bodyTooLarge(limit: sink.limits.maxBodyBytes) }
            try parser?.feed(chunk, into: &sink)
        } catch {
            fail(error)
            throw error
        }
    }

    public func feed(_ bytes: [UInt8]) throws(MultipartError) {
        let outcome = bytes.withUnsafeBytes { raw in Result { () throws(MultipartError) in try feed(raw) } }
        try outcome.get()
    }

    /// The body is complete: the form, or the error (and no files left behind).
    public func finish() throws(MultipartError) -> MultipartForm {
        if let failure { throw failure }
        do throws(MultipartError) {
            try parser?.finish()
        } catch {
            fail(error)
            throw error
        }
        return MultipartForm(fields: sink.fields, files: sink.files)
    }

    /// Gives up (the connection went away): closes and deletes whatever was written.
    public func abandon() {
        if failure == nil { fail(.truncated) }
    }

    private func fail(_ error: MultipartError) {
        failure = error
        sink.discard()
    }

    /// Parses and stores a body held whole in memory (requests that did not come through
    /// the edge's streaming path).
    public static func receive(body: [UInt8], contentType: String, settings: UploadSettings, limits: MultipartLimits? = nil) throws(MultipartError) -> MultipartForm {
        let receiver = MultipartReceiver(contentType: contentType, settings: settings, limits: limits)
        try receiver.feed(body)
        return try receiver.finish()
    }

    private struct Sink: MultipartSink {
        enum Current {
            case none
            case field(name: String, bytes: [UInt8])
            case file(UploadedFile, fd: Int32)
        }

        let directory: String
        let limits: MultipartLimits
        var fields: [(name: String, value: String)] = []
        var files: [UploadedFile] = []
        var current = Current.none
        var parts = 0

        init(directory: String, limits: MultipartLimits) {
            self.directory = directory
            self.limits = limits
        }

        mutating func partBegan(_ part: MultipartPartHeaders) throws(MultipartError) {
            parts += 1
            if parts > limits.maxParts { throw .tooManyParts(limit: limits.maxParts) }
            guard let filename = part.filename else {
                current = .field(name: part.name, bytes: [])
                return
            }
            let path = directory + "/upload-" + RandomID.make(length: 24)
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw .storage("cannot create \(path): \(String(cString: strerror(errno)))") }
            let file = UploadedFile(fieldName: part.name, filename: filename,
                                    contentType: part.contentType ?? "application/octet-stream", path: path, size: 0)
            files.append(file)
            current = .file(file, fd: fd)
        }

        mutating func partData(_ bytes: UnsafeRawBufferPointer) throws(MultipartError) {
            switch current {
            case .none:
                return
            case .field(let name, var value):
                if value.count + bytes.count > limits.maxFieldBytes { throw .fieldTooLarge(field: name, limit: limits.maxFieldBytes) }
                current = .none  // keeps `value` uniquely referenced while it grows
                value.append(contentsOf: bytes)
                current = .field(name: name, bytes: value)
            case .file(var file, let fd):
                if file.size + bytes.count > limits.maxFileBytes { throw .fileTooLarge(field: file.fieldName, limit: limits.maxFileBytes) }
                guard FileWriter.writeAll(fd, bytes) else { throw .storage("cannot write \(file.path): \(String(cString: strerror(errno)))") }
                file.size += bytes.count
                current = .file(file, fd: fd)
            }
        }

        mutating func partEnded() throws(MultipartError) {
            switch current {
            case .none:
                break
            case .field(let name, let bytes):
                fields.append((name, String(decoding: bytes, as: UTF8.self)))
            case .file(let file, let fd):
                current = .none
                guard close(fd) == 0 else { throw .storage("cannot write \(file.path): \(String(cString: strerror(errno)))") }
                files[files.count - 1] = file
            }
            current = .none
        }

        mutating func discard() {
            if case .file(_, let fd) = current { close(fd) }
            current = .none
            for file in files { unlink(file.path) }
            files = []
            fields = []
        }
    }
}
