import Glibc
import RESTCompat

/// Path normalisation: cache job paths (`CacheRoot`), gateway asset names (`GatewayAssets`)
/// and meetings storage keys (`LocalFolderStorage`), against a real folder holding symlinks
/// that lead out of it.
///
/// Properties: nothing accepted has a `..` or empty segment, a NUL or a leading separator;
/// whatever a path resolves to on disk lies inside its root; an asset served is a file in the
/// assets folder and never the secret beside it.
enum PathFuzz {
    /// root/{inside/file.txt, in-link → inside/file.txt, out-link → ../outside, out-file → ../outside/secret.txt}
    /// and outside/secret.txt next to it.
    static let fixture: (root: String, cache: CacheRoot, secret: [UInt8]) = {
        var template = Array("/tmp/hub-fuzz-paths-XXXXXX".utf8CString)
        guard let base = mkdtemp(&template).map({ String(cString: $0) }) else { fatalError("cannot make a temporary folder") }
        let root = base + "/root"
        let secret = Array("the secret outside the root".utf8)
        mkdir(root, 0o755); mkdir(root + "/inside", 0o755); mkdir(base + "/outside", 0o755)
        write(root + "/inside/file.txt", Array("inside".utf8))
        write(root + "/plain.txt", Array("plain".utf8))
        write(base + "/outside/secret.txt", secret)
        symlink("inside/file.txt", root + "/in-link")
        symlink("../outside", root + "/out-link")
        symlink("../outside/secret.txt", root + "/out-file")
        symlink(base + "/outside/secret.txt", root + "/abs-out-file")
        guard let cache = CacheRoot(path: root) else { fatalError("cannot open the cache root") }
        return (cache.path, cache, secret)
    }()

    static func write(_ path: String, _ bytes: [UInt8]) {
        guard let file = fopen(path, "wb") else { fatalError("cannot write \(path)") }
        _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
        fclose(file)
    }

    static func check(_ input: [UInt8]) {
        let requested = String(decoding: input, as: UTF8.self)
        checkCachePath(requested)
        checkAssetName(requested)
        checkStorageKey(requested)
    }

    static func checkCachePath(_ requested: String) {
        let (root, cache, _) = fixture
        guard let relative = try? cache.relative(requested) else { return }
        invariant(!relative.hasPrefix("/") && !relative.utf8.contains(0) && !relative.contains("\\"), "relative path \(relative)")
        for segment in relative.split(separator: "/", omittingEmptySubsequences: false) where !relative.isEmpty {
            invariant(segment != ".." && segment != "." && !segment.isEmpty, "\(requested) kept segment '\(segment)' in \(relative)")
        }
        if let real = try? cache.resolve(relative, shownAs: requested) {
            invariant(real == root || real.hasPrefix(root + "/"), "\(requested) resolved to \(real), outside \(root)")
        }
    }

    static func checkAssetName(_ raw: String) {
        let (root, _, secret) = fixture
        guard let name = GatewayAssets.safeName(raw) else { return }
        invariant(!name.isEmpty && name != "." && name != "..", "asset name \(name)")
        invariant(!name.utf8.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "\\") || $0 == 0 }), "asset name \(name)")
        let response = GatewayAssets.read(root: root, name: name, maxBytes: 1 << 20)
        if response.status == 200 {
            invariant(response.body != secret, "asset \(raw) served the file outside the folder")
            invariant(["plain.txt", "in-link"].contains(name), "asset \(raw) served \(name)")
        }
    }

    static func checkStorageKey(_ key: String) {
        guard LocalFolderStorage.isSafe(key: key) else { return }
        invariant(!key.hasPrefix("/") && !key.hasSuffix("/"), "storage key \(key)")
        for segment in key.split(separator: "/", omittingEmptySubsequences: false) {
            invariant(segment != ".." && segment != "." && !segment.isEmpty, "storage key \(key) has segment '\(segment)'")
            invariant(segment.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "\\") && $0 != UInt8(ascii: "%") }, "storage key \(key)")
        }
    }
}
