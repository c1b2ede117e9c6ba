import Glibc
import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat

/// The pieces of the gateway rooms that need no processes: seed 000's record format, gateway
/// addresses, the outbound client's response parsing (and the client against a tiny server),
/// and asset-name checks.
final class GatewayPartsTests: XCTestCase {
    func testRecordRoundTripsTheSeedExampleByteForByte() {
        let text = "192.168.1.12|working|recorder|math101|2025-01-01T12:00:00|00:05:12|45%"
        let record = GatewayRecord(bytes: Array(text.utf8))
        XCTAssertEqual(record?.room, "math101")
        XCTAssertEqual(record?.mediaDuration, "00:05:12")
        XCTAssertEqual(record?.text, text)
        let free = GatewayRecord(bytes: Array("10.0.0.1|started|media|None|2025-01-01T12:00:00|0|0".utf8))
        XCTAssertNil(free?.room)
        XCTAssertEqual(free?.text, "10.0.0.1|started|media|None|2025-01-01T12:00:00|0|0")
        XCTAssertEqual(free?.adminStatus, ["gateway": "10.0.0.1", "status": "started", "room": nil, "media_duration": "0", "transcript_progress": "0"])
        XCTAssertNil(GatewayRecord(bytes: Array("a|b|c".utf8)), "not seven fields")
        XCTAssertNil(GatewayRecord(bytes: Array("a|b|c|d|e|f|g|h".utf8)), "eight fields")
        XCTAssertNil(GatewayRecord(bytes: []), "empty")
        let blanks = GatewayRecord(bytes: Array("10.0.0.2|started|media||||".utf8))
        XCTAssertEqual(blanks?.startTime, "", "empty fields stay fields")
        XCTAssertNil(blanks?.room)
        XCTAssertEqual(GatewayRecord(bytes: Array("10.0.0.3|working|média|salle été|t|1|2".utf8))?.room, "salle été", "UTF-8 kept")
        XCTAssertEqual(GatewayRecord.epochSeconds("2025-01-01T12:00:00"), 1_735_732_800)
    }

    func testFieldsThatWouldBreakTheRecordOrAChannelAreRefused() {
        XCTAssertNil(GatewayRecord.problem(with: "math101", field: "room"))
        XCTAssertNotNil(GatewayRecord.problem(with: "a|b", field: "room"))
        XCTAssertNotNil(GatewayRecord.problem(with: "room#alice", field: "room"))
        XCTAssertNotNil(GatewayRecord.problem(with: "None", field: "room"))
        XCTAssertNotNil(GatewayRecord.problem(with: "", field: "room"))
        XCTAssertNotNil(GatewayRecord.problem(with: "a\nb", field: "room"))
    }

    func testAddressesWithAndWithoutPorts() {
        XCTAssertEqual(GatewayAddress("192.168.1.12")?.description, "192.168.1.12:80")
        XCTAssertEqual(GatewayAddress("192.168.1.12:8080")?.port, 8080)
        XCTAssertEqual(GatewayAddress("[::1]:9000")?.description, "[::1]:9000")
        XCTAssertEqual(GatewayAddress("localhost:81")?.host, "127.0.0.1")
        XCTAssertNil(GatewayAddress("gateway.example.com"), "names would need a blocking resolver")
        XCTAssertNil(GatewayAddress("1.2.3.4:0"))
        XCTAssertNil(GatewayAddress("1.2.3.4:99999"))
    }

    func testResponseParsingLengthChunkedAndClose() {
        func parse(_ text: String, closed: Bool = false) -> HTTPResponseParser.Outcome {
            HTTPResponseParser.parse(Array(text.utf8), isHead: false, closed: closed)
        }
        guard case .complete(let r1, true) = parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") else { return XCTFail() }
        XCTAssertEqual(r1.body, Array("ok".utf8))
        guard case .incomplete = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok") else { return XCTFail() }
        guard case .complete(let r2, true) = parse("HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n") else { return XCTFail() }
        XCTAssertEqual(r2.status, 503)
        XCTAssertEqual(r2.body, Array("abcde".utf8))
        guard case .incomplete = parse("HTTP/1.1 200 OK\r\n\r\nuntil close") else { return XCTFail() }
        guard case .complete(let r3, false) = parse("HTTP/1.1 200 OK\r\n\r\nuntil close", closed: true) else { return XCTFail() }
        XCTAssertEqual(r3.body, Array("until close".utf8))
        guard case .complete(_, false) = parse("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n") else { return XCTFail() }
        guard case .invalid = parse("SSH-2.0-OpenSSH\r\n\r\n") else { return XCTFail() }
    }

    func testAssetNamesStayInTheFolder() {
        XCTAssertEqual(GatewayAssets.safeName("assets.tar.xz"), "assets.tar.xz")
        for bad in ["..", "%2e%2e", "..%2fetc", "%2Fetc%2Fpasswd", "a%5cb", "a%00b", "."] {
            XCTAssertNil(GatewayAssets.safeName(bad), bad)
        }
    }

    /// The client against a one-shot keep-alive server on a socket: two requests, one connection;
    /// a silent server times out within the total timeout.
    func testClientReusesConnectionsAndTimesOut() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        listen(listener, 8)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let port = UInt16(bigEndian: address.sin_port)
        let accepted = Atomic<Int>(0)
        let server = Thread {
            // Serves every request on each connection with a fixed response until the peer closes.
            while true {
                let fd = accept(listener, nil, nil)
                if fd < 0 { return }
                accepted.add(1, ordering: .relaxed)
                var buffer = [UInt8](repeating: 0, count: 4096)
                while recv(fd, &buffer, buffer.count, 0) > 0 {
                    let reply = Array("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong".utf8)
                    _ = reply.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
                }
                close(fd)
            }
        }
        server.start()
        let client = GatewayHTTPClient(settings: .init(connectTimeout: 1, totalTimeout: 0.5))
        defer { client.shutdown() }
        let target = GatewayAddress("127.0.0.1:\(port)")!
        for _ in 0..<2 {
            let done = expectation(description: "response")
            client.send(to: target, method: "GET", path: "/gateway/status?gw_id=a") { result in
                XCTAssertEqual(try? result.get().body, Array("pong".utf8))
                done.fulfill()
            }
            wait(for: [done], timeout: 5)
        }
        XCTAssertEqual(accepted.load(ordering: .relaxed), 1, "the second request reused the first connection")
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)

        // A listener that never answers: the total timeout ends the call.
        let silent = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var silentAddress = sockaddr_in()
        silentAddress.sin_family = sa_family_t(AF_INET)
        silentAddress.sin_addr.s_addr = inet_addr("127.0.0.1")
        var silentLength = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &silentAddress) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(silent, $0, silentLength) } }
        listen(silent, 8)
        _ = withUnsafeMutablePointer(to: &silentAddress) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(silent, $0, &silentLength) } }
        defer { close(silent) }
        let timedOut = expectation(description: "timeout")
        let began = GatewayHTTPClient.now()
        client.send(to: GatewayAddress("127.0.0.1:\(UInt16(bigEndian: silentAddress.sin_port))")!, method: "POST", path: "/gateway/start") { result in
            if case .failure(let error) = result { XCTAssertEqual(error, .timeout) } else { XCTFail("expected a timeout") }
            XCTAssertLessThan(GatewayHTTPClient.now() - began, 1.5)
            timedOut.fulfill()
        }
        wait(for: [timedOut], timeout: 5)
    }
}
