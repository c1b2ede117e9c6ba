/// The mount point cache jobs read from, and how paths from clients map into it.
///
/// Clients send paths relative to the filespace (`00_Media/video.mp4`) or absolute paths as
/// their own OS mounts it (`/Volumes/dmpfs/tc-east-1/…`, `C:\dmpfs\tc-east-1\…`,
/// `/mnt/lucidlink/tc-east-1/…`); the mount prefixes are stripped and the rest is looked up
/// under the root. Nothing that resolves outside the root (`..`, symlinks) is ever accepted.
public struct CacheRoot: Sendable {
    /// The canonical path of the root (symlinks resolved), so containment is a prefix test.
    public let path: String
    let prefixes: [[Substring]]

    /// The mount prefixes of the seed's three operating systems; `*` stands for one path segment
    /// (filesystem, filespace, drive letter).
    public static let defaultPrefixes = ["/Volumes/*/*", "/mnt/lucidlink/*", "*:\\*\\*"]

    /// The most files one job may name after expansion: bounds the memory a request can claim.
    public static let maxFilesPerJob = 1_000_000

    /// Nil when the root does not exist or is not a directory.
    public init?(path: String, prefixes: [String] = CacheRoot.defaultPrefixes) {
        guard let real = CacheFileSystem.realPath(path), CacheFileSystem.entry(real, follow: true)?.kind == .directory else { return nil }
        self.path = real == "/" ? "" : real
        self.prefixes = prefixes.map { Self.segments($0) }.filter { !$0.isEmpty }
    }

    /// A path's segments with either separator (Windows forbids `\` in names, so a cross-platform
    /// filespace never has one).
    /// Split on scalars, not characters: a prepended mark such as U+06DD joins the `\` after it
    /// into one character, which a character split would keep inside a name (found by the fuzzer).
    static func segments(_ path: String) -> [Substring] {
        path.unicodeScalars.split(whereSeparator: { $0 == "/" || $0 == "\\" }).map { Substring($0) }
    }

    static func isWindowsAbsolute(_ path: String) -> Bool {
        let chars = Array(path.utf8.prefix(3))
        return chars.count == 3 && ((chars[0] | 0x20) >= 0x61 && (chars[0] | 0x20) <= 0x7A) && chars[1] == UInt8(ascii: ":")
            && (chars[2] == UInt8(ascii: "\\") || chars[2] == UInt8(ascii: "/"))
    }

    /// The path relative to the root ("" for the root itself), or a 400 naming the path.
    public func relative(_ requested: String) throws(RouteError) -> String {
        if requested.isEmpty || requested.utf8.contains(0) { throw RouteError(400, "Invalid path: \(requested)") }
        var parts = Self.segments(requested)
        let windows = Self.isWindowsAbsolute(requested)
        if windows || requested.hasPrefix("/") || requested.hasPrefix("\\") {
            guard let rest = stripPrefix(parts, windows: windows) else {
                throw RouteError(400, "Path is outside the cache root: \(requested)")
            }
            parts = rest
        }
        var kept: [Substring] = []
        for part in parts where part != "." {
            if part == ".." { throw RouteError(400, "Path escapes the cache root: \(requested)") }
            kept.append(part)
        }
        return kept.joined(separator: "/")
    }

    /// What follows the first mount prefix (or the root itself) the path starts with.
    private func stripPrefix(_ parts: [Substring], windows: Bool) -> [Substring]? {
        let own = Self.segments(path)
        if !windows, parts.count >= own.count, Array(parts.prefix(own.count)) == own { return Array(parts.dropFirst(own.count)) }
        for pattern in prefixes {
            let patternIsWindows = pattern.first?.hasSuffix(":") == true
            guard patternIsWindows == windows, parts.count >= pattern.count else { continue }
            let matches = zip(parts, pattern).allSatisfy { part, expected in
                if expected == "*" { return true }
                if expected == "*:" { return part.hasSuffix(":") }
                return windows ? part.lowercased() == expected.lowercased() : part == expected
            }
            if matches { return Array(parts.dropFirst(pattern.count)) }
        }
        return nil
    }

    /// The absolute path of a relative one, checked to resolve inside the root; nil when
    /// nothing is there. Throws when a symlink leads out of the root.
    package func resolve(_ relative: String, shownAs requested: String) throws(RouteError) -> String? {
        let full = relative.isEmpty ? path : path + "/" + relative
        guard let real = CacheFileSystem.realPath(full) else { return nil }
        guard contains(real) else { throw RouteError(400, "Path escapes the cache root: \(requested)") }
        return real
    }

    func contains(_ real: String) -> Bool {
        real == path || real.hasPrefix(path + "/") || (path.isEmpty && real.hasPrefix("/"))
    }

    /// The files a job covers, each once, with sizes: the files named, then every regular file
    /// under the directories named (recursively unless told not to). Symlinks to files inside
    /// the root count; symlinked directories are not descended (no cycles, no double counting);
    /// devices, FIFOs and sockets are skipped (reading a FIFO would never end).
    func expand(files: [String], directories: [String], recursive: Bool) throws(RouteError) -> [CacheFile] {
        var seen = Set<String>()
        var result: [CacheFile] = []
        func add(_ relative: String, _ size: Int64) throws(RouteError) {
            guard seen.insert(relative).inserted else { return }
            guard result.count < Self.maxFilesPerJob else {
                throw RouteError(400, "Too many files: a job holds at most \(Self.maxFilesPerJob)")
            }
            result.append(CacheFile(path: relative, size: size))
        }
        for requested in files {
            let rel = try relative(requested)
            guard let real = try resolve(rel, shownAs: requested) else { throw RouteError(400, "File not found: \(requested)") }
            guard let entry = CacheFileSystem.entry(real, follow: true), entry.kind == .file else {
                throw RouteError(400, "Not a file: \(requested)")
            }
            try add(rel, entry.size)
        }
        for requested in directories {
            let rel = try relative(requested)
            guard let real = try resolve(rel, shownAs: requested) else { throw RouteError(400, "Directory not found: \(requested)") }
            guard CacheFileSystem.entry(real, follow: true)?.kind == .directory else { throw RouteError(400, "Not a directory: \(requested)") }
            var pending = [rel]
            while let dir = pending.popLast() {
                let full = dir.isEmpty ? path : path + "/" + dir
                guard var entries = CacheFileSystem.list(full) else {
                    throw RouteError(400, "Directory not readable: \(dir.isEmpty ? requested : dir)")
                }
                entries.sort { $0.0 < $1.0 }
                var subdirectories: [String] = []
                for (name, entry) in entries {
                    let child = dir.isEmpty ? name : dir + "/" + name
                    switch entry.kind {
                    case .file:
                        try add(child, entry.size)
                    case .directory:
                        subdirectories.append(child)
                    case .symlink:
                        guard let target = CacheFileSystem.realPath(path + "/" + child) else { continue }  // dangling: nothing to cache
                        guard contains(target) else { throw RouteError(400, "Path escapes the cache root: \(child)") }
                        if let resolved = CacheFileSystem.entry(target, follow: true), resolved.kind == .file { try add(child, resolved.size) }
                    case .other:
                        continue
                    }
                }
                // Depth-first in name order: popLast takes the first subdirectory next.
                if recursive { pending.append(contentsOf: subdirectories.reversed()) }
            }
        }
        return result
    }
}

/// One file of a job: its path relative to the cache root and its size when the job was made.
public struct CacheFile: Sendable, Equatable {
    public var path: String
    public var size: Int64
}
