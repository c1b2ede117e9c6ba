import Channels

/// The client protocol decoder: one WebSocket message of newline-separated JSON commands.
///
/// Properties: every document the parser accepts writes back to one it accepts as equal, and
/// writing is stable (write ∘ parse ∘ write = write); every decoded command encodes to bytes
/// that decode to the same command; ids outside 0…2³²−1 are never accepted.
enum ProtocolFuzz {
    static func check(_ message: [UInt8]) {
        for line in ClientCommand.lines(of: message) {
            invariant(!line.contains(0x0A), "a line holds a newline")
            checkJSON(Array(line))
            switch ClientCommand.decode(line) {
            case .command(let command):
                if let id = command.id { invariant(id >= 0 && id <= Int64(UInt32.max), "id \(id) accepted") }
                invariant(command.method != "id", "the id taken for the method")
                let again = ClientCommand.decode(ArraySlice(command.encoded))
                invariant(again == .command(command), "command \(command) re-decoded as \(again)")
            case .pong:
                invariant((try? JSONParser.parse(Array(line)))?.objectValue?.isEmpty == true, "pong from a non-empty line")
            case .invalid(_, let error):
                invariant(error.code == ProtocolError.badRequest.code, "decoder refused with code \(error.code)")
            }
        }
    }

    static func checkJSON(_ bytes: [UInt8]) {
        guard let value = try? JSONParser.parse(bytes) else { return }
        let written = JSONWriter.bytes(value)
        let reparsed: JSONValue
        do {
            reparsed = try JSONParser.parse(written)
        } catch {
            invariant(false, "writer output refused by the parser (\(error)): \(String(decoding: written, as: UTF8.self))")
            return
        }
        invariant(reparsed == value, "round trip changed the value: \(String(decoding: written, as: UTF8.self))")
        invariant(JSONWriter.bytes(reparsed) == written, "writing is not stable: \(String(decoding: written, as: UTF8.self))")
    }
}
