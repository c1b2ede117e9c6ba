import Foundation
import SwiftProtobuf
import XCTest

@testable import Channels

/// The Protobuf flavour against the generated message types: what a client encodes decodes to
/// the command the JSON flavour would give, and what the hub encodes parses as the client expects.
final class ProtobufCodecTests: XCTestCase {
    private func delimited(_ commands: PBCommand...) throws -> [UInt8] {
        var out: [UInt8] = []
        for command in commands {
            let body: [UInt8] = try command.serializedBytes()
            var n = body.count
            while n >= 0x80 {
                out.append(UInt8(n & 0x7F) | 0x80)
                n >>= 7
            }
            out.append(UInt8(n))
            out += body
        }
        return out
    }

    private func reply(_ bytes: [UInt8]) throws -> PBReply {
        guard let (length, start) = ProtobufCodec.readVarint(bytes, from: 0) else { throw CocoaError(.coderReadCorrupt) }
        XCTAssertEqual(Int(length), bytes.count - start, "one whole reply per encoding")
        return try PBReply(serializedBytes: Array(bytes[start...]))
    }

    func testSubscribeCommandDecodesLikeItsJSONForm() throws {
        var command = PBCommand()
        command.id = 7
        command.subscribe.channel = "gateways"
        command.subscribe.recover = true
        command.subscribe.offset = 42
        command.subscribe.epoch = "ep"
        let lines = ProtocolCodec.protobuf.commands(in: try delimited(command))
        let json = ClientCommand.decode(ArraySlice(#"{"id":7,"subscribe":{"channel":"gateways","recover":true,"epoch":"ep","offset":42}}"#.utf8))
        XCTAssertEqual(lines, [json])
    }

    func testSeveralCommandsAndThePongInOneMessage() throws {
        var publish = PBCommand()
        publish.id = 1
        publish.publish.channel = "news"
        publish.publish.data = Data(#"{"text":"hi"}"#.utf8)
        var ping = PBCommand()
        ping.id = 2
        ping.ping = PBPingRequest()
        let lines = ProtocolCodec.protobuf.commands(in: try delimited(publish) + [0] + (try delimited(ping)))
        XCTAssertEqual(lines.count, 3)
        guard case let .command(first) = lines[0] else { return XCTFail("publish not decoded: \(lines[0])") }
        XCTAssertEqual(first.method, "publish")
        XCTAssertEqual(first.body["data"], ["text": "hi"])
        XCTAssertEqual(lines[1], .pong)
        guard case let .command(third) = lines[2] else { return XCTFail("ping not decoded") }
        XCTAssertEqual(third.method, "ping")
        XCTAssertEqual(third.id, 2)
    }

    func testMalformedInputIsABadRequest() throws {
        for bytes: [UInt8] in [[0x7F, 1, 2], Array(repeating: 0xFF, count: 11), [3, 0xFF, 0xFF, 0xFF]] {
            let lines = ProtocolCodec.protobuf.commands(in: bytes)
            guard case let .invalid(_, error)? = lines.last else { return XCTFail("\(bytes) accepted: \(lines)") }
            XCTAssertEqual(error.code, ProtocolError.badRequest.code)
        }
        var publish = PBCommand()
        publish.id = 9
        publish.publish.channel = "news"
        publish.publish.data = Data([0, 1, 2])
        XCTAssertEqual(ProtocolCodec.protobuf.commands(in: try delimited(publish)).map { line -> Int64? in
            if case let .invalid(id, _) = line { return id }
            return nil
        }, [9], "non-JSON data is refused under the command's id")
    }

    func testPublicationPushCarriesTheJSONBytesOffsetInfoAndTags() throws {
        let publication = Publication(offset: 5, data: .raw(Array(#"{"status":"working"}"#.utf8)),
                                      info: ClientInfo(user: "alice", client: "c1", connInfo: ["role": "admin"]),
                                      tags: [("gw", "gw01")], time: 1_700_000_000_000)
        let encoded = try reply(ProtocolCodec.protobuf.publication(channel: "gateway:gw01", publication))
        XCTAssertEqual(encoded.push.channel, "gateway:gw01")
        XCTAssertEqual(String(decoding: encoded.push.pub.data, as: UTF8.self), #"{"status":"working"}"#)
        XCTAssertEqual(encoded.push.pub.offset, 5)
        XCTAssertEqual(encoded.push.pub.info.user, "alice")
        XCTAssertEqual(String(decoding: encoded.push.pub.info.connInfo, as: UTF8.self), #"{"role":"admin"}"#)
        XCTAssertEqual(encoded.push.pub.tags, ["gw": "gw01"])
        XCTAssertEqual(encoded.push.pub.time, 1_700_000_000_000)
    }

    func testRepliesAndErrorsKeepTheirIds() throws {
        let subscribed = try reply(ProtocolCodec.protobuf.reply(id: 3, method: "subscribe", result: [
            "recoverable": true, "epoch": "ep", "offset": 12, "positioned": true, "was_recovering": true, "recovered": true,
            "publications": [["data": ["n": 11], "offset": 11]],
        ]))
        XCTAssertEqual(subscribed.id, 3)
        XCTAssertTrue(subscribed.subscribe.recovered && subscribed.subscribe.wasRecovering && subscribed.subscribe.recoverable)
        XCTAssertEqual(subscribed.subscribe.offset, 12)
        XCTAssertEqual(subscribed.subscribe.publications.map(\.offset), [11])
        let failed = try reply(ProtocolCodec.protobuf.error(id: 4, ProtocolError.tooManyRequests))
        XCTAssertEqual(failed.id, 4)
        XCTAssertEqual(failed.error.code, 111)
        XCTAssertTrue(failed.error.temporary)
        let unsubscribed = try reply(ProtocolCodec.protobuf.push(channel: "news", kind: "unsubscribe", body: ["code": 2500, "reason": "insufficient state"]))
        XCTAssertEqual(unsubscribed.push.unsubscribe.code, 2500)
        XCTAssertEqual(ProtocolCodec.protobuf.ping, [0], "the server's ping is an empty Reply")
    }
}
