// `hub-bench starts`: seed 000's allocation under a growing fleet. Registers N gateways the way a
// deployment does (each `POST /register` with its address), all pointing at a stand-in launcher
// (seed 002) served from this process, then times `POST /start` and the release that makes the
// gateway free again (`POST /stop`, then the gateway registering itself anew), one at a time.
// The time of a start should not depend on N: the hub reads a few members of its free-gateway
// set, never the list of every gateway.
import ArgumentParser
import Foundation
import Glibc

struct Starts: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "starts", abstract: "Seed 000 /start + release against N registered gateways: p50/p99 per step.")
    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option(help: "Bearer token for the gateway routes (the hub's gateway_allowed_token).") var token = "bench"
    @Option(help: "Gateways registered before timing.") var gateways = 10
    @Option(help: "Timed /start + release rounds.") var rounds = 500
    @Option(help: "Connections registering at once.") var concurrency = 16
    @Option(help: "Server PID, for its resident memory.") var serverPid: Int32?
    @Option(help: "Name in the results.") var label = "hub"
    @Option(help: "Append JSON lines to this file.") var out: String?

    func run() throws {
        let launcher = try StandInLauncher()
        let address = "127.0.0.1:\(launcher.port)"
        let began = monotonicNs()
        try register(ids: (0..<gateways).map(Self.id), address: address)
        let registerSeconds = Double(monotonicNs() - began) / 1e9
        FileHandle.standardError.write(Data("starts: \(gateways) gateways registered in \(String(format: "%.2f", registerSeconds)) s\n".utf8))

        let client = try BlockingHTTP(host: host, port: UInt16(port), token: token)
        var starts: [Double] = [], releases: [Double] = []
        var failures: [String: Int] = [:]
        for round in 0..<rounds {
            let t0 = monotonicNs()
            let (status, body) = try client.post("/start", json: ["room": "bench-room-\(round)"])
            let t1 = monotonicNs()
            guard status == 200, let id = (try? JSONSerialization.jsonObject(with: Data(body))) .flatMap({ ($0 as? [String: Any])?["gw_id"] as? String }) else {
                failures["start \(status)", default: 0] += 1
                continue
            }
            starts.append(Double(t1 - t0) / 1e6)
            let (stopped, _) = try client.post("/stop", json: ["gw_id": id])
            let (registered, _) = try client.post("/register", json: ["gw_id": id, "gw_ip": address, "gw_type": "bench"])
            guard stopped == 200, registered == 200 else {
                failures["release \(stopped)/\(registered)", default: 0] += 1
                continue
            }
            releases.append(Double(monotonicNs() - t1) / 1e6)
        }
        var record: [String: Any] = [
            "scenario": "start", "phase": "summary", "server": label, "gateways": gateways, "rounds": rounds,
            "register_s": registerSeconds, "starts": starts.count,
            "start_p50_ms": Self.percentile(starts, 0.5), "start_p99_ms": Self.percentile(starts, 0.99),
            "release_p50_ms": Self.percentile(releases, 0.5), "release_p99_ms": Self.percentile(releases, 0.99),
        ]
        if !failures.isEmpty { record["failures"] = failures }
        if let pid = serverPid, let rss = CPUTime.residentKiB(pid: pid) { record["server_rss_kib"] = rss }
        let line = String(decoding: try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]), as: UTF8.self) + "\n"
        print(line, terminator: "")
        if let out, let handle = FileHandle(forWritingAtPath: out) ?? (FileManager.default.createFile(atPath: out, contents: nil) ? FileHandle(forWritingAtPath: out) : nil) {
            handle.seekToEndOfFile()
            handle.write(Data(line.utf8))
            handle.closeFile()
        }
        guard !starts.isEmpty else { throw BenchError("no /start succeeded: \(failures)") }
    }

    static func id(_ index: Int) -> String { "bench\(index)" }

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.down)))]
    }

    /// `concurrency` connections, each registering its share in turn.
    private func register(ids: [String], address: String) throws {
        let failure = LockedText()
        let threads = max(1, min(concurrency, ids.count))
        var workers: [Thread] = []
        let done = DispatchGroup()
        for worker in 0..<threads {
            done.enter()
            let mine = stride(from: worker, to: ids.count, by: threads).map { ids[$0] }
            let (host, port, token) = (host, UInt16(port), token)
            let thread = Thread {
                defer { done.leave() }
                do {
                    let client = try BlockingHTTP(host: host, port: port, token: token)
                    for id in mine {
                        let (status, body) = try client.post("/register", json: ["gw_id": id, "gw_ip": address, "gw_type": "bench"])
                        if status != 200 { failure.set("register \(id): \(status) \(String(decoding: body, as: UTF8.self))"); return }
                    }
                } catch {
                    failure.set("register: \(error)")
                }
            }
            workers.append(thread)
            thread.start()
        }
        done.wait()
        if let text = failure.get() { throw BenchError(text) }
    }
}

private final class LockedText: @unchecked Sendable {
    private let lock = NSLock()
    private var text: String?
    func set(_ value: String) { lock.lock(); if text == nil { text = value }; lock.unlock() }
    func get() -> String? { lock.lock(); defer { lock.unlock() }; return text }
}

/// One keep-alive HTTP/1.1 connection, blocking: the client of a sequential latency measurement.
final class BlockingHTTP {
    let fd: Int32
    let host: String
    let authorization: String
    private var buffer: [UInt8] = []

    init(host: String, port: UInt16, token: String) throws {
        self.host = host
        authorization = "Bearer " + token
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { close(fd); throw BenchError("connect \(host):\(port): errno \(errno)") }
    }

    deinit { close(fd) }

    func post(_ path: String, json: [String: Any]) throws -> (Int, [UInt8]) {
        let body = [UInt8](try JSONSerialization.data(withJSONObject: json))
        let head = "POST \(path) HTTP/1.1\r\nHost: \(host)\r\nAuthorization: \(authorization)\r\n"
            + "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        try write(Array(head.utf8) + body)
        return try readResponse()
    }

    private func write(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw BenchError("send: errno \(errno)") }
            sent += n
        }
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw BenchError("connection closed by the server") }
        buffer += chunk[0..<n]
    }

    /// Status and body of one response with a Content-Length (what the hub sends).
    private func readResponse() throws -> (Int, [UInt8]) {
        let separator: [UInt8] = [13, 10, 13, 10]
        var end: Int?
        while end == nil {
            if buffer.count >= 4 {
                end = (0...(buffer.count - 4)).first { buffer[$0..<($0 + 4)].elementsEqual(separator) }
            }
            if end == nil { try fill() }
        }
        let head = String(decoding: buffer[0..<end!], as: UTF8.self)
        let lines = head.split(separator: "\r\n")
        let status = lines.first.flatMap { $0.split(separator: " ").dropFirst().first }.flatMap { Int($0) } ?? 0
        let length = lines.dropFirst().compactMap { line -> Int? in
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "content-length" else { return nil }
            return Int(parts[1].trimmingCharacters(in: .whitespaces))
        }.first ?? 0
        let start = end! + 4
        while buffer.count < start + length { try fill() }
        let body = Array(buffer[start..<(start + length)])
        buffer.removeFirst(start + length)
        return (status, body)
    }
}

/// Seed 002's launcher API, as cheap as it gets: every request is answered 200 with the JSON body
/// it carried (so `/start`'s answer names the gateway the hub claimed), on keep-alive connections,
/// a thread per connection.
final class StandInLauncher: @unchecked Sendable {
    let fd: Int32
    let port: UInt16

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 512) == 0 else { throw BenchError("stand-in launcher: bind/listen errno \(errno)") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        port = UInt16(bigEndian: address.sin_port)
        let listener = fd
        Thread {
            while true {
                let client = accept(listener, nil, nil)
                if client < 0 { if errno == EINTR { continue }; return }
                Thread { Self.serve(client) }.start()
            }
        }.start()
    }

    private static func serve(_ fd: Int32) {
        defer { close(fd) }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        let separator: [UInt8] = [13, 10, 13, 10]
        while true {
            guard buffer.count >= 4, let end = (0...(buffer.count - 4)).first(where: { buffer[$0..<($0 + 4)].elementsEqual(separator) }) else {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { return }
                buffer += chunk[0..<n]
                continue
            }
            let head = String(decoding: buffer[0..<end], as: UTF8.self).lowercased()
            let length = head.split(separator: "\r\n").compactMap { line -> Int? in
                guard line.hasPrefix("content-length:") else { return nil }
                return Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces))
            }.first ?? 0
            while buffer.count < end + 4 + length {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { return }
                buffer += chunk[0..<n]
            }
            var body = Array(buffer[(end + 4)..<(end + 4 + length)])
            buffer.removeFirst(end + 4 + length)
            if body.isEmpty { body = Array("{\"status\":\"success\"}".utf8) }
            let reply = Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
            var sent = 0
            while sent < reply.count {
                let n = reply[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { return }
                sent += n
            }
        }
    }
}

/// One WebSocket connection to the hub, blocking: the client of `hub-bench proxies`, which times
/// one command at a time per connection (connects per second come from many threads of these).
final class BlockingWebSocket {
    let fd: Int32
    private var buffer: [UInt8] = []

    init(host: String, port: UInt16, path: String = "/connection/websocket") throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw BenchError("socket: \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // Closed with a reset: thousands of short connections leave no TIME_WAIT ports behind.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { close(fd); throw BenchError("connect \(host):\(port): errno \(errno)") }
        let head = "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        try write(Array(head.utf8))
        let separator: [UInt8] = [13, 10, 13, 10]
        var end: Int?
        while end == nil {
            if buffer.count >= 4 { end = (0...(buffer.count - 4)).first { buffer[$0..<($0 + 4)].elementsEqual(separator) } }
            if end == nil { try fill() }
        }
        guard buffer.starts(with: Array("HTTP/1.1 101".utf8)) else {
            close(fd)
            throw BenchError("upgrade refused: \(String(decoding: buffer.prefix(60), as: UTF8.self))")
        }
        buffer.removeFirst(end! + 4)
    }

    deinit { close(fd) }

    /// One masked text frame (a zero mask: the bytes go as they are, which RFC 6455 allows).
    func send(_ text: String) throws {
        let payload = Array(text.utf8)
        var frame: [UInt8] = [0x81]
        if payload.count < 126 {
            frame.append(0x80 | UInt8(payload.count))
        } else {
            frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        }
        frame += [0, 0, 0, 0]
        try write(frame + payload)
    }

    /// The next text message (a server frame, unmasked).
    func receive() throws -> [UInt8] {
        while true {
            if buffer.count >= 2 {
                var length = Int(buffer[1] & 0x7F)
                var header = 2
                if length == 126, buffer.count >= 4 {
                    length = Int(buffer[2]) << 8 | Int(buffer[3])
                    header = 4
                } else if length == 127, buffer.count >= 10 {
                    length = (0..<8).reduce(0) { $0 << 8 | Int(buffer[2 + $1]) }
                    header = 10
                }
                if length < 126 || header > 2, buffer.count >= header + length {
                    let opcode = buffer[0] & 0x0F
                    let message = Array(buffer[header..<(header + length)])
                    buffer.removeFirst(header + length)
                    if opcode == 8 { throw BenchError("closed by the server: \(String(decoding: message.dropFirst(2), as: UTF8.self))") }
                    if opcode == 1 || opcode == 2 { return message }
                    continue
                }
            }
            try fill()
        }
    }

    private func write(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw BenchError("send: errno \(errno)") }
            sent += n
        }
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 16_384)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw BenchError("connection closed by the server") }
        buffer += chunk[0..<n]
    }
}
