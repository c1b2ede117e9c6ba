import Channels
import Glibc

// Small pieces seed 003 (June Agent's gateway) shares across its routes and the chat session.

/// Standard base64 with padding: what `base64.b64decode` and browsers' `atob` expect.
enum Base64 {
    static func encode(_ bytes: [UInt8]) -> String {
        var text = Array(Base64URL.encode(bytes).utf8)
        for i in text.indices {
            if text[i] == UInt8(ascii: "-") { text[i] = UInt8(ascii: "+") } else if text[i] == UInt8(ascii: "_") { text[i] = UInt8(ascii: "/") }
        }
        while text.count % 4 != 0 { text.append(UInt8(ascii: "=")) }
        return String(decoding: text, as: UTF8.self)
    }

    /// Decodes standard or URL-safe base64; nil for anything else (whitespace is skipped).
    static func decode(_ text: String) -> [UInt8]? {
        let cleaned = text.utf8.filter { $0 != 0x20 && $0 != 0x0A && $0 != 0x0D && $0 != 0x09 }
        return Base64URL.decode(String(decoding: cleaned, as: UTF8.self))
    }
}

enum JuneInput {
    /// The request body as a JSON object, or a 400 (seed 003 documents 400 for a bad body).
    static func object(_ request: HTTPRequest) throws(RouteError) -> JSONValue {
        guard !request.body.isEmpty else { throw RouteError(400, "Request body must be a JSON object") }
        guard let value = try? JSONParser.parse(request.body), value.objectValue != nil else {
            throw RouteError(400, "Request body must be a JSON object")
        }
        return value
    }

    /// An optional string field: nil when absent or null, a 400 when another type.
    static func string(_ body: JSONValue, _ name: String) throws(RouteError) -> String? {
        guard let value = body[name], !value.isNull else { return nil }
        guard let text = value.stringValue else { throw RouteError(400, "\(name) must be a string") }
        return text
    }

    /// User ids and conversation ids end up inside channel names and store keys, so they
    /// keep to a safe alphabet: letters, digits, `_ . @ -`, 1–64 characters.
    static func isIdentifier(_ text: String) -> Bool {
        guard (1...64).contains(text.utf8.count) else { return false }
        return text.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A)
                || c == UInt8(ascii: "_") || c == UInt8(ascii: ".") || c == UInt8(ascii: "@") || c == UInt8(ascii: "-")
        }
    }

    /// Two lower-case letters (ISO 639-1).
    static func isLanguage(_ text: String) -> Bool {
        text.utf8.count == 2 && text.utf8.allSatisfy { $0 >= 0x61 && $0 <= 0x7A }
    }

    static func characters(_ text: String) -> Int { text.unicodeScalars.count }
}

extension RouteContext {
    /// Answers a thrown route error or runs the body.
    func guarded(_ body: () throws(RouteError) -> Void) {
        do { try body() } catch { fail(error) }
    }
}
