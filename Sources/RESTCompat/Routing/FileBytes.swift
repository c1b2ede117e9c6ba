#if canImport(Glibc)
import Glibc
#endif

/// Whole small files read into memory: config files and keys at start, an uploaded audio file
/// the transcription route sends on.
public enum FileBytes {
    /// The file's bytes; nil when it cannot be read or holds more than `limit` bytes.
    public static func read(_ path: String, limit: Int = 16 * 1024 * 1024) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buffer, 1, buffer.count, file)
            if n > 0 { bytes.append(contentsOf: buffer[0..<n]) }
            if bytes.count > limit { return nil }
            if n < buffer.count { break }
        }
        return ferror(file) == 0 ? bytes : nil
    }
}
