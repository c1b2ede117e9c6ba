import Channels
import Dispatch
import Glibc

/// Why a storage operation failed.
public struct StorageError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Where uploaded media and artifacts live, by key (`media/<meeting>/<file>`,
/// `artifacts/<meeting>/<name>`). Small on purpose: a local folder today, an S3-compatible
/// bucket (SeaweedFS's S3 gateway) next, with the same keys as object names.
public protocol ObjectStorage: Sendable {
    var backendName: String { get }
    /// Moves a finished upload into storage (the staged file is gone afterwards); returns its size.
    func importFile(key: String, from path: String) async throws(StorageError) -> Int64
    func write(key: String, bytes: [UInt8]) async throws(StorageError)
    /// The object's size, or nil when there is none.
    func size(key: String) async -> Int64?
    func read(key: String, offset: Int64, length: Int) async throws(StorageError) -> [UInt8]
    /// Removes every object whose key starts with `prefix` (a meeting's folder).
    func deleteAll(prefix: String) async
}

/// Objects as files under a root folder (`<data-dir>/meetings`). Keys are made by the hub
/// from ids and checked again here, so no key can name a path outside the root.
public final class LocalFolderStorage: ObjectStorage {
    public let root: String
    private let queue = DispatchQueue(label: "hub.meetings.storage", attributes: .concurrent)
    public var backendName: String { "local" }

    public init(root: String) throws(StorageError) {
        self.root = root
        for dir in [root, root + "/media", root + "/artifacts", root + "/profiles"] {
            if mkdir(dir, 0o750) != 0 && errno != EEXIST { throw StorageError("cannot create \(dir): errno \(errno)") }
        }
    }

    package static func isSafe(key: String) -> Bool {
        let parts = key.split(separator: "/", omittingEmptySubsequences: false)
        guard !parts.isEmpty, key.utf8.count <= 512 else { return false }
        for part in parts {
            if part.isEmpty || part == "." || part == ".." { return false }
            for byte in part.utf8 {
                let ok = (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
                    || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
                if !ok { return false }
            }
        }
        return true
    }

    private func path(_ key: String) throws(StorageError) -> String {
        guard Self.isSafe(key: key) else { throw StorageError("bad storage key") }
        return root + "/" + key
    }

    /// Creates the folders above a key's file.
    private func makeParents(_ key: String) throws(StorageError) {
        var dir = root
        for part in key.split(separator: "/").dropLast() {
            dir += "/" + part
            if mkdir(dir, 0o750) != 0 && errno != EEXIST { throw StorageError("cannot create \(dir): errno \(errno)") }
        }
    }

    private func onQueue<T: Sendable>(_ body: @escaping @Sendable () -> Result<T, StorageError>) async throws(StorageError) -> T {
        try await withCheckedContinuation { continuation in
            queue.async { continuation.resume(returning: body()) }
        }.get()
    }

    public func importFile(key: String, from source: String) async throws(StorageError) -> Int64 {
        let target = try path(key)
        return try await onQueue { [self] in
            do throws(StorageError) {
                try makeParents(key)
                if rename(source, target) != 0 {
                    guard errno == EXDEV else { throw StorageError("cannot move upload: errno \(errno)") }
                    try Self.copy(source, target)
                    unlink(source)
                }
                var info = stat()
                guard stat(target, &info) == 0 else { throw StorageError("stored upload vanished") }
                return .success(Int64(info.st_size))
            } catch {
                return .failure(error)
            }
        }
    }

    public func write(key: String, bytes: [UInt8]) async throws(StorageError) {
        let target = try path(key)
        try await onQueue { [self] in
            do throws(StorageError) {
                try makeParents(key)
                // Written aside and renamed, so a reader never sees half an artifact.
                let temporary = target + ".part-" + RandomIDs.short()
                let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
                guard fd >= 0 else { throw StorageError("cannot write object: errno \(errno)") }
                var written = 0
                while written < bytes.count {
                    let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, bytes.count - written) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { close(fd); unlink(temporary); throw StorageError("cannot write object: errno \(errno)") }
                    written += n
                }
                fsync(fd)
                close(fd)
                guard rename(temporary, target) == 0 else { unlink(temporary); throw StorageError("cannot store object: errno \(errno)") }
                return .success(())
            } catch {
                return .failure(error)
            }
        }
    }

    public func size(key: String) async -> Int64? {
        guard let target = try? path(key) else { return nil }
        return try? await onQueue {
            // lstat and O_NOFOLLOW: the hub writes objects as regular files, so a symlink here was
            // planted by someone else and may point anywhere; it is never followed.
            var info = stat()
            guard lstat(target, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return .failure(StorageError("absent")) }
            return .success(Int64(info.st_size))
        }
    }

    public func read(key: String, offset: Int64, length: Int) async throws(StorageError) -> [UInt8] {
        let target = try path(key)
        return try await onQueue {
            let fd = open(target, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { return .failure(StorageError("object not found")) }
            defer { close(fd) }
            var bytes = [UInt8](repeating: 0, count: length)
            var got = 0
            while got < length {
                let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, length - got, off_t(offset) + off_t(got)) }
                if n < 0 && errno == EINTR { continue }
                if n < 0 { return .failure(StorageError("cannot read object: errno \(errno)")) }
                if n == 0 { break }
                got += n
            }
            return .success(Array(bytes.prefix(got)))
        }
    }

    public func deleteAll(prefix: String) async {
        // Prefixes are folders here: `media/<meeting>/`.
        var folder = prefix
        while folder.hasSuffix("/") { folder.removeLast() }
        guard let target = try? path(folder) else { return }
        _ = try? await onQueue { () -> Result<Void, StorageError> in
            Self.removeTree(target)
            return .success(())
        }
    }

    /// Removes everything inside a folder, keeping the folder (staged uploads left by a crash).
    public static func emptyFolder(_ path: String) {
        guard let dir = opendir(path) else { return }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for name in names { removeTree(path + "/" + name) }
    }

    private static func removeTree(_ path: String) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        if (info.st_mode & S_IFMT) == S_IFDIR {
            if let dir = opendir(path) {
                var names: [String] = []
                while let entry = readdir(dir) {
                    let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
                    }
                    if name != "." && name != ".." { names.append(name) }
                }
                closedir(dir)
                for name in names { removeTree(path + "/" + name) }
            }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    private static func copy(_ source: String, _ target: String) throws(StorageError) {
        let input = open(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else { throw StorageError("cannot read upload: errno \(errno)") }
        defer { close(input) }
        let output = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o640)
        guard output >= 0 else { throw StorageError("cannot store upload: errno \(errno)") }
        defer { close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { unlink(target); throw StorageError("cannot read upload: errno \(errno)") }
            if n == 0 { break }
            var written = 0
            while written < n {
                let w = buffer.withUnsafeBytes { Glibc.write(output, $0.baseAddress! + written, n - written) }
                if w < 0 && errno == EINTR { continue }
                if w <= 0 { unlink(target); throw StorageError("cannot store upload: errno \(errno)") }
                written += w
            }
        }
        fsync(output)
    }
}

enum RandomIDs {
    static func short() -> String { Crypto.hex(Crypto.randomBytes(6)) }
}
