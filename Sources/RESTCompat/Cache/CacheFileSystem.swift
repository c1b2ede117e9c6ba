import Glibc

/// The file-system calls the cache jobs need: resolving paths, walking directories, reading
/// files through a caller's buffer. The only file of the cache module that touches C pointers.
enum CacheFileSystem {
    enum Kind: Sendable, Equatable {
        case file, directory, symlink, other
    }

    struct Entry: Sendable {
        var kind: Kind
        var size: Int64
    }

    /// The canonical absolute path (symlinks, `.` and `..` resolved), or nil when it does not exist.
    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// What is at `path`; `follow` decides whether a final symlink is looked through.
    static func entry(_ path: String, follow: Bool) -> Entry? {
        var st = stat()
        let rc = follow ? stat(path, &st) : lstat(path, &st)
        guard rc == 0 else { return nil }
        return Entry(kind: kind(st.st_mode), size: Int64(st.st_size))
    }

    private static func kind(_ mode: mode_t) -> Kind {
        switch mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFLNK: return .symlink
        default: return .other
        }
    }

    /// Lists one directory: (name, kind without following symlinks, size). Nil when it cannot be opened.
    static func list(_ directory: String) -> [(String, Entry)]? {
        guard let dir = opendir(directory) else { return nil }
        defer { closedir(dir) }
        let fd = dirfd(dir)
        var result: [(String, Entry)] = []
        while let item = readdir(dir) {
            let name = withUnsafePointer(to: &item.pointee.d_name) { raw in
                String(cString: UnsafeRawPointer(raw).assumingMemoryBound(to: CChar.self))
            }
            if name == "." || name == ".." { continue }
            var st = stat()
            guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            result.append((name, Entry(kind: kind(st.st_mode), size: Int64(st.st_size))))
        }
        return result
    }

    /// An open file being read for caching.
    struct OpenFile: ~Copyable {
        let fd: Int32

        /// Opens a regular file for reading without following a final symlink (the caller
        /// resolved and checked the path just before). Returns the errno text on failure.
        static func open(_ path: String) -> Result<OpenFile, CacheReadError> {
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
            guard fd >= 0 else { return .failure(CacheReadError(errno: errno)) }
            // Tells the kernel to read ahead generously: the whole point is to pull every byte.
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
            return .success(OpenFile(fd: fd))
        }

        /// Reads up to `buffer.count` bytes; 0 at end of file.
        func read(into buffer: inout [UInt8]) -> Result<Int, CacheReadError> {
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n >= 0 { return .success(n) }
                if errno == EINTR { continue }
                return .failure(CacheReadError(errno: errno))
            }
        }

        deinit { Glibc.close(fd) }
    }
}

/// Why a file could not be read, in the operating system's words.
struct CacheReadError: Error, Sendable {
    var message: String
    init(message: String) { self.message = message }
    init(errno code: Int32) { message = String(cString: strerror(code)) }
}
