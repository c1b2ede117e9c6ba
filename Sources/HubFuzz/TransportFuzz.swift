import Channels

/// What the HTTP transports read from a client before any session sees it: a unidirectional
/// connect request, an `/emulation` request (JSON and Protobuf) and an SSE `Last-Event-ID`.
///
/// Properties: a connect request is the `connect` command with an object body, or refused with
/// 107; an emulation request decodes to a non-empty session or to nothing; an event id read
/// back names a channel and, written again, reads back the same; an event-stream frame of any
/// hub-written JSON is one event.
enum TransportFuzz {
    static func check(_ input: [UInt8]) {
        switch ProtocolCodec.uniJSON.commands(in: input).first {
        case .command(let command)?:
            invariant(command.method == "connect" && command.body.objectValue != nil, "uni connect read as \(command.method)")
        case .invalid(_, let error)?:
            invariant(error.code == ProtocolError.badRequest.code, "uni connect refused with \(error.code)")
        default:
            invariant(false, "uni connect gave no line")
        }
        for protobuf in [false, true] {
            if let request = EmulationRequest.decode(input, protobuf: protobuf) {
                invariant(!request.session.isEmpty, "emulation request without a session accepted")
            }
        }
        let text = String(decoding: input, as: UTF8.self)
        if let (channel, position) = Wire.position(fromEventID: text) {
            invariant(!channel.isEmpty, "event id without a channel accepted")
            let again = Wire.eventID(channel: channel, offset: position.offset, epoch: position.epoch)
            if let (channel2, position2) = Wire.position(fromEventID: again) {
                invariant(channel2 == channel && position2 == position, "event id does not read back: \(again)")
            } else {
                invariant(false, "event id written by the hub not readable: \(again)")
            }
        }
        if let json = try? JSONParser.parse(input) {
            let frame = Wire(.uniJSON, .eventStream).frame(JSONWriter.bytes(json), with: NoFrames(), eventID: "1:e:c").bytes
            let blank = zip(frame, frame.dropFirst()).enumerated().filter { $0.element == (0x0A, 0x0A) }.map(\.offset)
            invariant(blank == [frame.count - 2], "an event-stream frame of hub JSON is not exactly one event")
        }
    }

    struct NoFrames: FrameEncoder {
        func frame(_ payload: [UInt8]) -> WireFrame { WireFrame(bytes: payload) }
    }
}
