import Glibc
import Logging

/// `--log-format json`: one JSON object per line on standard error, for log shippers that parse
/// fields rather than text (timestamp, level, label, message, then swift-log's metadata as keys).
struct JSONLineLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let level = event.level, message = event.message
        var fields = metadata
        if let explicit = event.metadata { fields.merge(explicit) { $1 } }
        if let error = event.error { fields["error"] = .string("\(error)") }
        var out = "{\"timestamp\":\"\(Self.timestamp())\",\"level\":\"\(level.rawValue)\",\"label\":"
        Self.append(string: label, to: &out)
        out += ",\"message\":"
        Self.append(string: message.description, to: &out)
        for key in fields.keys.sorted() where !["timestamp", "level", "label", "message"].contains(key) {
            out += ","
            Self.append(string: key, to: &out)
            out += ":"
            Self.append(value: fields[key]!, to: &out)
        }
        out += "}\n"
        // One write(2) per line, so lines from several service threads never interleave.
        var bytes = Array(out.utf8)[...]
        while !bytes.isEmpty {
            let written = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            guard written > 0 else { return }
            bytes = bytes.dropFirst(written)
        }
    }

    /// UTC with milliseconds, e.g. 2026-12-06T04:45:00.123Z.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var parts = tm()
        var seconds = now.tv_sec
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S", &parts)
        let millis = Int(now.tv_nsec / 1_000_000)
        let prefix = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return prefix + "." + String(repeating: "0", count: millis < 10 ? 2 : millis < 100 ? 1 : 0) + "\(millis)Z"
    }

    static func append(value: Logger.Metadata.Value, to out: inout String) {
        switch value {
        case .string(let text): append(string: text, to: &out)
        case .stringConvertible(let item as any BinaryInteger): out += "\(item)"  // status codes as numbers
        case .stringConvertible(let item as Double) where item.isFinite: out += "\(item)"
        case .stringConvertible(let item): append(string: item.description, to: &out)
        case .array(let items):
            out += "["
            for (index, item) in items.enumerated() {
                if index > 0 { out += "," }
                append(value: item, to: &out)
            }
            out += "]"
        case .dictionary(let entries):
            out += "{"
            for (index, key) in entries.keys.sorted().enumerated() {
                if index > 0 { out += "," }
                append(string: key, to: &out)
                out += ":"
                append(value: entries[key]!, to: &out)
            }
            out += "}"
        }
    }

    static func append(string: String, to out: inout String) {
        out += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
