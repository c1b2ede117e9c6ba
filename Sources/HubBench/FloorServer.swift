// `hub-bench floor-server`: the cheapest broadcast server this machine allows, as a yardstick
// for fan-out latency. It speaks the lws mirror's wire (every message to every client), does no
// protocol work beyond WebSocket framing, and per turn of its epoll loop writes everything it
// read in that turn to each client with one send(2). Any real server doing one send per
// subscriber pays at least this much kernel time; the report sets the hub's latency beside it.
// With --threads N it runs N such loops, each with its own listener on the same port
// (SO_REUSEPORT: the kernel spreads the connections) and its own clients; what one loop read in
// a turn goes to its own clients at the end of that turn and to every other loop's inbox (a
// Mutex-guarded buffer and an eventfd in that loop's epoll set), which that loop sends to its
// clients once per turn: the floor for a server spreading its subscribers over N threads.
// A client that upgrades on `/ws` speaks the FastAPI peer's channel wire instead (scenario 2's
// floor): `/ws?channels=a,b` joins those channels, "ok" says it is registered, and "@name text"
// goes to channel name's members only, each member's bytes of a turn in one send(2). Channels
// are per loop: scenario 2 runs the floor with one.
// Its socket and buffer code (and that of `hub-bench proxy-backend`, below) is hub-bench's only unsafe code
// outside EventLoop.swift, Wire.swift and the blocking clients of Starts.swift.
import ArgumentParser
import CEpoll
import COpenSSL
import Foundation
import Glibc
import Synchronization

struct FloorServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "floor-server",
        abstract: "A minimal epoll WebSocket broadcast server (lws-mirror wire, or channels on /ws): the kernel's floor.")
    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option(help: "Bytes a client may have waiting before it is dropped.") var maxPendingBytes = 64 << 20
    @Option(help: "Epoll loops, one thread each, each with its own SO_REUSEPORT listener and clients.") var threads = 1

    func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
    }

    func run() throws {
        guard threads > 1 else {
            // one loop, no listener sharing, no inbox: the floor as it always was
            let server = try FloorServer(host: host, port: UInt16(port), maxPendingBytes: maxPendingBytes)
            server.run()
            return
        }
        let inboxes = try (0..<threads).map { _ in try FloorInbox() }
        // All listeners are bound before any loop runs, so a bind error ends the command here.
        let servers = try (0..<threads).map {
            try FloorServer(host: host, port: UInt16(port), maxPendingBytes: maxPendingBytes, inboxes: inboxes, index: $0)
        }
        for server in servers.dropFirst() {
            let thread = Thread { server.run() }
            thread.stackSize = 1 << 20
            thread.start()
        }
        servers[0].run()
    }
}

/// What the other loops read for one loop's clients: appended by them, taken whole by the loop at
/// the end of a turn in which its eventfd fired. A sender signals only when it makes the buffer
/// non-empty; the owner reads the eventfd before it takes the buffer, so no hand-off is missed.
final class FloorInbox: Sendable {
    let wakeFD: Int32
    private let bytes = Mutex<[UInt8]>([])

    init() throws {
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        guard wakeFD >= 0 else { throw SocketError("eventfd", errno) }
    }

    /// Another loop's turn: appended, and the owner woken if the buffer was empty.
    func hand(_ frames: [UInt8]) {
        let wasEmpty = bytes.withLock { buffer in
            let empty = buffer.isEmpty
            buffer.append(contentsOf: frames)
            return empty
        }
        if wasEmpty {
            var one: UInt64 = 1
            _ = Glibc.write(wakeFD, &one, 8)
        }
    }

    /// The owner's side: clears the eventfd, then swaps the buffer with `into` (which must be
    /// empty; its capacity is reused by the next senders).
    func take(into: inout [UInt8]) {
        var count: UInt64 = 0
        _ = Glibc.read(wakeFD, &count, 8)
        bytes.withLock { swap(&$0, &into) }
    }
}

private final class FloorClient {
    let fd: Int32
    var open = false
    /// Upgrade request bytes, then unparsed frame bytes.
    var inbound: [UInt8] = []
    /// What the kernel did not take yet (non-empty: EPOLLOUT is armed).
    var pending: [UInt8] = []
    var pendingSent = 0
    /// Position in `FloorServer.broadcast` (open clients only).
    var slot = -1
    /// Upgraded on `/ws`: "@name text" frames are routed to channel members.
    var routed = false
    /// The channels (indices into `FloorServer.members`) this client joined.
    var channels: [Int] = []

    init(fd: Int32) { self.fd = fd }
}

/// One epoll loop. Unchecked Sendable: a loop is built on the main thread, then used only by the
/// thread that runs it; the loops share nothing but the inboxes (which are Sendable).
final class FloorServer: @unchecked Sendable {
    private let epfd: Int32
    private let listener: Int32
    private let maxPendingBytes: Int
    /// Every loop's inbox (empty with one loop) and this loop's position among them.
    private let inboxes: [FloorInbox]
    private let index: Int
    /// This loop's eventfd (-1 with one loop) and the buffer its inbox is swapped into.
    private let wakeFD: Int32
    private var woken = false
    private var received: [UInt8] = []
    private var clients: [FloorClient?] = []
    private var broadcast: [FloorClient] = []
    /// Server frames (unmasked) read during the current turn, sent to everyone at its end.
    private var turn: [UInt8] = []
    /// The channel wire: names, members, each channel's frames of this turn, and which have some.
    private var channelIndex: [String: Int] = [:]
    private var members: [[FloorClient]] = []
    private var channelTurn: [[UInt8]] = []
    private var dirtyChannels: [Int] = []
    /// A routed frame's unmasked payload, reused.
    private var scratch: [UInt8] = []
    private let readBuffer: UnsafeMutablePointer<UInt8>
    private let readCapacity = 256 * 1024

    /// `inboxes` empty: one loop, as the floor always was; otherwise loop `index` of `inboxes.count`.
    init(host: String, port: UInt16, maxPendingBytes: Int, inboxes: [FloorInbox] = [], index: Int = 0) throws {
        self.maxPendingBytes = maxPendingBytes
        self.inboxes = inboxes
        self.index = index
        wakeFD = inboxes.isEmpty ? -1 : inboxes[index].wakeFD
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        readBuffer = .allocate(capacity: readCapacity)
        guard epfd >= 0, listener >= 0 else { throw SocketError("socket", errno) }
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if !inboxes.isEmpty { setsockopt(listener, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 4096) == 0 else { throw SocketError("bind/listen \(host):\(port)", errno) }
        watch(listener, EPOLLIN.rawValue, add: true)
        if wakeFD >= 0 { watch(wakeFD, EPOLLIN.rawValue, add: true) }
        turn.reserveCapacity(256 * 1024)
        received.reserveCapacity(256 * 1024)
    }

    func run() {
        let capacity: Int32 = 1024
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(capacity))
        defer { events.deallocate() }
        while true {
            let n = epoll_wait(epfd, events, capacity, -1)
            if n < 0 && errno != EINTR { break }
            for i in 0..<Int(max(n, 0)) {
                let fd = events[i].data.fd
                let flags = events[i].events
                if fd == listener { accept(); continue }
                if fd == wakeFD { woken = true; continue }
                guard Int(fd) < clients.count, let client = clients[Int(fd)] else { continue }
                if flags & EPOLLOUT.rawValue != 0 { flush(client) }
                if flags & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue) != 0 {
                    read(client)
                }
            }
            if !inboxes.isEmpty { exchange() }
            if !turn.isEmpty {
                // Indices, not iteration: a failed send drops the client from `broadcast`.
                var index = 0
                while index < broadcast.count {
                    let client = broadcast[index]
                    send(client, turn)
                    if index < broadcast.count, broadcast[index] === client { index += 1 }
                }
                turn.removeAll(keepingCapacity: true)
            }
            for channel in dirtyChannels {
                // As above: a failed send drops the client from `members[channel]`.
                var index = 0
                while index < members[channel].count {
                    let client = members[channel][index]
                    send(client, channelTurn[channel])
                    if index < members[channel].count, members[channel][index] === client { index += 1 }
                }
                channelTurn[channel].removeAll(keepingCapacity: true)
            }
            dirtyChannels.removeAll(keepingCapacity: true)
        }
    }

    /// End of a turn with several loops: this turn's frames go to every other loop's inbox, and
    /// what the others handed this loop (when its eventfd fired) joins the turn's one send per client.
    private func exchange() {
        if !turn.isEmpty {
            for (other, inbox) in inboxes.enumerated() where other != index { inbox.hand(turn) }
        }
        guard woken else { return }
        woken = false
        inboxes[index].take(into: &received)
        turn.append(contentsOf: received)
        received.removeAll(keepingCapacity: true)
    }

    private func watch(_ fd: Int32, _ mask: UInt32, add: Bool) {
        var event = epoll_event()
        event.events = mask
        event.data.fd = fd
        epoll_ctl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event)
    }

    private func accept() {
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            if fd < 0 { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if Int(fd) >= clients.count { clients.append(contentsOf: repeatElement(nil, count: Int(fd) + 1024 - clients.count)) }
            clients[Int(fd)] = FloorClient(fd: fd)
            watch(fd, EPOLLIN.rawValue | EPOLLRDHUP.rawValue, add: true)
        }
    }

    private func drop(_ client: FloorClient) {
        if client.slot >= 0 {
            let last = broadcast.removeLast()
            if last !== client {
                broadcast[client.slot] = last
                last.slot = client.slot
            }
            client.slot = -1
        }
        for channel in client.channels {
            guard let at = members[channel].firstIndex(where: { $0 === client }) else { continue }
            members[channel].swapAt(at, members[channel].count - 1)
            members[channel].removeLast()
        }
        client.channels = []
        clients[Int(client.fd)] = nil
        Glibc.close(client.fd)
    }

    private func read(_ client: FloorClient) {
        let n = Glibc.read(client.fd, readBuffer, readCapacity)
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { drop(client); return }
        if n < 0 { return }
        client.inbound.append(contentsOf: UnsafeBufferPointer(start: readBuffer, count: n))
        if !client.open && !upgrade(client) { return }
        frames(client)
    }

    /// Answers the upgrade once its head is complete; false while it is not (or on garbage).
    private func upgrade(_ client: FloorClient) -> Bool {
        let found = client.inbound.withUnsafeBufferPointer { EventLoop.find($0.baseAddress!, $0.count, Array("\r\n\r\n".utf8)) }
        guard let end = found else {
            if client.inbound.count > 16 * 1024 { drop(client) }
            return false
        }
        let head = String(decoding: client.inbound[..<end], as: UTF8.self)
        client.inbound.removeFirst(end + 4)
        // "GET /ws?channels=a,b HTTP/1.1": the channel wire (no query: channel "bench", as the FastAPI peer).
        let target = head.split(separator: "\r\n").first.map { $0.split(separator: " ") }.flatMap { $0.count > 1 ? String($0[1]) : nil } ?? "/"
        var joined: [String] = []
        if target == "/ws" || target.hasPrefix("/ws?") {
            client.routed = true
            joined = ["bench"]
            for pair in target.dropFirst(4).split(separator: "&") where pair.hasPrefix("channels=") {
                joined = pair.dropFirst("channels=".count).split(separator: ",").map(String.init)
            }
        }
        var key: String?
        var subprotocol: String?
        for line in head.split(separator: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = String(line[line.index(after: colon)...].drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
            if name == "sec-websocket-key" { key = value }
            if name == "sec-websocket-protocol" { subprotocol = value.split(separator: ",").first.map { String($0) } }
        }
        guard let key else { drop(client); return false }
        var response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        response += "Sec-WebSocket-Accept: \(Self.accept(key))\r\n"
        if let subprotocol { response += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
        response += "\r\n"
        client.open = true
        client.slot = broadcast.count
        broadcast.append(client)
        for name in joined {
            let channel = channelIndex[name] ?? {
                members.append([]); channelTurn.append([])
                channelIndex[name] = members.count - 1
                return members.count - 1
            }()
            members[channel].append(client)
            client.channels.append(channel)
        }
        var bytes = Array(response.utf8)
        if client.routed { bytes += [0x81, 2, UInt8(ascii: "o"), UInt8(ascii: "k")] }
        send(client, bytes)
        return client.slot >= 0
    }

    /// Takes whole client frames out of `inbound`: data frames join this turn's broadcast.
    private func frames(_ client: FloorClient) {
        var at = 0
        let bytes = client.inbound
        while bytes.count - at >= 2 {
            let opcode = bytes[at] & 0x0F
            let masked = bytes[at + 1] & 0x80 != 0
            var length = Int(bytes[at + 1] & 0x7F)
            var header = 2
            if length == 126 {
                guard bytes.count - at >= 4 else { break }
                length = Int(bytes[at + 2]) << 8 | Int(bytes[at + 3])
                header = 4
            } else if length == 127 {
                guard bytes.count - at >= 10 else { break }
                length = (0..<8).reduce(0) { $0 << 8 | Int(bytes[at + 2 + $1]) }
                header = 10
            }
            let maskAt = at + header
            if masked { header += 4 }
            guard length <= 16 << 20 else { drop(client); return }
            guard bytes.count - at >= header + length else { break }
            let payload = at + header
            if opcode == WSOpcode.close { drop(client); return }
            let mask = masked ? maskAt : nil
            if client.routed && (opcode == WSOpcode.text || opcode == WSOpcode.binary) {
                scratch.removeAll(keepingCapacity: true)
                Self.appendUnmasked(to: &scratch, bytes, from: payload, count: length, maskAt: mask)
                route(opcode)
            } else if opcode == WSOpcode.text || opcode == WSOpcode.binary || opcode == WSOpcode.continuation {
                Self.appendHeader(to: &turn, opcode: opcode, length: length)
                Self.appendUnmasked(to: &turn, bytes, from: payload, count: length, maskAt: mask)
            }
            at += header + length
        }
        if at > 0 { client.inbound.removeFirst(at) }
    }

    /// A routed frame in `scratch`: "@name text" joins channel name's turn as "text" (an unknown
    /// channel has no members: dropped); anything else goes to everyone, as the FastAPI peer does.
    private func route(_ opcode: UInt8) {
        guard scratch.first == UInt8(ascii: "@"), let space = scratch.firstIndex(of: 0x20) else {
            Self.appendHeader(to: &turn, opcode: opcode, length: scratch.count)
            turn.append(contentsOf: scratch)
            return
        }
        guard let channel = channelIndex[String(decoding: scratch[1..<space], as: UTF8.self)] else { return }
        if channelTurn[channel].isEmpty { dirtyChannels.append(channel) }
        Self.appendHeader(to: &channelTurn[channel], opcode: opcode, length: scratch.count - space - 1)
        channelTurn[channel].append(contentsOf: scratch[(space + 1)...])
    }

    /// A client frame's payload as sent (unmasked with the 4 bytes at `maskAt`, if any).
    private static func appendUnmasked(to out: inout [UInt8], _ bytes: [UInt8], from payload: Int, count: Int, maskAt: Int?) {
        guard let maskAt else {
            out.append(contentsOf: bytes[payload..<(payload + count)])
            return
        }
        for i in 0..<count { out.append(bytes[payload + i] ^ bytes[maskAt + (i & 3)]) }
    }

    /// A server (unmasked) frame's header, final fragment.
    private static func appendHeader(to out: inout [UInt8], opcode: UInt8, length: Int) {
        out.append(0x80 | opcode)
        if length < 126 {
            out.append(UInt8(length))
        } else if length <= 0xFFFF {
            out.append(126); out.append(UInt8(length >> 8)); out.append(UInt8(length & 0xFF))
        } else {
            out.append(127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((length >> shift) & 0xFF)) }
        }
    }

    private func send(_ client: FloorClient, _ bytes: [UInt8]) {
        if !client.pending.isEmpty {
            client.pending.append(contentsOf: bytes)
            if client.pending.count - client.pendingSent > maxPendingBytes { drop(client) }
            return
        }
        let n = bytes.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n == bytes.count { return }
        if n < 0 && errno != EAGAIN { drop(client); return }
        client.pending = Array(bytes[max(n, 0)...])
        client.pendingSent = 0
        watch(client.fd, EPOLLIN.rawValue | EPOLLRDHUP.rawValue | EPOLLOUT.rawValue, add: false)
    }

    private func flush(_ client: FloorClient) {
        let left = client.pending.count - client.pendingSent
        guard left > 0 else { return }
        let n = client.pending.withUnsafeBytes {
            Glibc.send(client.fd, $0.baseAddress! + client.pendingSent, left, Int32(MSG_NOSIGNAL))
        }
        if n < 0 { if errno != EAGAIN { drop(client) }; return }
        client.pendingSent += n
        if client.pendingSent == client.pending.count {
            client.pending.removeAll(keepingCapacity: false)
            client.pendingSent = 0
            watch(client.fd, EPOLLIN.rawValue | EPOLLRDHUP.rawValue, add: false)
        }
    }

    /// Sec-WebSocket-Accept: base64(SHA-1(key + the RFC 6455 GUID)).
    static func accept(_ key: String) -> String {
        let input = Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8)
        var digest = [UInt8](repeating: 0, count: 20)
        _ = input.withUnsafeBufferPointer { SHA1($0.baseAddress, $0.count, &digest) }
        var out = [UInt8](repeating: 0, count: 32)
        let written = EVP_EncodeBlock(&out, digest, 20)
        return String(decoding: out[0..<Int(written)], as: UTF8.self)
    }
}

// MARK: - `hub-bench proxy-backend`

/// The backend of scenario 8 (`hub-bench proxies`): Centrifugo's proxy protocol as cheap as it
/// gets, so that what the scenario measures is the hub's proxy path and not the backend. One epoll
/// loop, keep-alive HTTP/1.1; `/connect` allows every client as user `proxied`, `/subscribe` allows
/// every subscription, anything else is 404.
struct ProxyBackendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy-backend", abstract: "A minimal epoll HTTP backend for the hub's connect and subscribe proxies (answers allow).")
    @Option var host = "127.0.0.1"
    @Option var port: Int

    func run() throws {
        try ProxyBackendServer(host: host, port: UInt16(port)).run()
    }
}

private final class BackendClient {
    let fd: Int32
    var inbound: [UInt8] = []
    var pending: [UInt8] = []
    /// EPOLLOUT is armed (only while the kernel holds back part of a reply).
    var writeArmed = false
    init(fd: Int32) { self.fd = fd }
}

final class ProxyBackendServer {
    private let epfd: Int32
    private let listener: Int32
    private var clients: [BackendClient?] = []
    private let readBuffer: UnsafeMutablePointer<UInt8>
    private let readCapacity = 64 * 1024
    private static let answers: [String: [UInt8]] = [
        "/connect": reply(#"{"result":{"user":"proxied"}}"#),
        "/subscribe": reply(#"{"result":{}}"#),
    ]
    private static let notFound = Array("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".utf8)

    private static func reply(_ body: String) -> [UInt8] {
        Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
    }

    init(host: String, port: UInt16) throws {
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        readBuffer = .allocate(capacity: readCapacity)
        guard epfd >= 0, listener >= 0 else { throw SocketError("socket", errno) }
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &address.sin_addr)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listener, 4096) == 0 else { throw SocketError("bind/listen \(host):\(port)", errno) }
        watch(listener, EPOLLIN.rawValue, add: true)
    }

    func run() {
        let capacity: Int32 = 1024
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(capacity))
        defer { events.deallocate() }
        while true {
            let n = epoll_wait(epfd, events, capacity, -1)
            if n < 0 && errno != EINTR { break }
            for i in 0..<Int(max(n, 0)) {
                let fd = events[i].data.fd
                if fd == listener { accept(); continue }
                guard Int(fd) < clients.count, let client = clients[Int(fd)] else { continue }
                if events[i].events & EPOLLOUT.rawValue != 0 { send(client, []) }
                if events[i].events & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue) != 0 {
                    read(client)
                }
            }
        }
    }

    private func watch(_ fd: Int32, _ mask: UInt32, add: Bool) {
        var event = epoll_event()
        event.events = mask
        event.data.fd = fd
        epoll_ctl(epfd, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &event)
    }

    private func accept() {
        while true {
            let fd = Glibc.accept(listener, nil, nil)
            if fd < 0 { return }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            if Int(fd) >= clients.count { clients.append(contentsOf: repeatElement(nil, count: Int(fd) + 1024 - clients.count)) }
            clients[Int(fd)] = BackendClient(fd: fd)
            watch(fd, EPOLLIN.rawValue | EPOLLRDHUP.rawValue, add: true)
        }
    }

    private func drop(_ client: BackendClient) {
        clients[Int(client.fd)] = nil
        Glibc.close(client.fd)
    }

    private func read(_ client: BackendClient) {
        let n = Glibc.read(client.fd, readBuffer, readCapacity)
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { drop(client); return }
        if n < 0 { return }
        client.inbound.append(contentsOf: UnsafeBufferPointer(start: readBuffer, count: n))
        // Every complete request in the buffer (the hub may pipeline on a kept-alive connection).
        var out: [UInt8] = []
        while let end = client.inbound.withUnsafeBufferPointer({ EventLoop.find($0.baseAddress!, $0.count, Array("\r\n\r\n".utf8)) }) {
            let head = String(decoding: client.inbound[..<end], as: UTF8.self)
            var length = 0
            for line in head.split(separator: "\r\n").dropFirst() {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == "content-length" { length = Int(parts[1].drop { $0 == " " }) ?? 0 }
            }
            guard client.inbound.count >= end + 4 + length else { break }
            client.inbound.removeFirst(end + 4 + length)
            let path = head.split(separator: " ", maxSplits: 2).dropFirst().first.map(String.init) ?? ""
            out += Self.answers[path] ?? Self.notFound
        }
        if client.inbound.count > 1 << 20 { drop(client); return }
        if !out.isEmpty { send(client, out) }
    }

    /// Sends `bytes` after whatever is still pending; arms EPOLLOUT while the kernel holds back.
    private func send(_ client: BackendClient, _ bytes: [UInt8]) {
        client.pending += bytes
        guard !client.pending.isEmpty else { return }
        let n = client.pending.withUnsafeBytes { Glibc.send(client.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno != EAGAIN { drop(client); return }
        client.pending.removeFirst(max(n, 0))
        if client.writeArmed == client.pending.isEmpty {
            client.writeArmed = !client.pending.isEmpty
            watch(client.fd, EPOLLIN.rawValue | EPOLLRDHUP.rawValue | (client.writeArmed ? EPOLLOUT.rawValue : 0), add: false)
        }
    }
}
