// The generator's socket layer: non-blocking TCP on one epoll set, a minimal WebSocket client
// (upgrade request, masked frames out, unmasked frames in, ping/pong, fragments). All raw socket
// and buffer code of the generator lives here and in Wire.swift (the floor server's, in
// FloorServer.swift).
import CEpoll
import Glibc

/// Monotonic nanoseconds. Publisher and subscribers live in this one process, so a stamp written
/// into a payload compares directly with the time its copy arrives.
@inline(__always) func monotonicNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

enum WSOpcode {
    static let continuation: UInt8 = 0x0
    static let text: UInt8 = 0x1
    static let binary: UInt8 = 0x2
    static let close: UInt8 = 0x8
    static let ping: UInt8 = 0x9
    static let pong: UInt8 = 0xA
}

enum ConnectionPhase { case connecting, upgrading, open, closed }

/// One client connection. Only the event loop's thread touches it.
final class Connection {
    let fd: Int32
    /// The caller's number for it (subscriber index, or -1 for the publisher).
    let index: Int
    var phase = ConnectionPhase.connecting
    /// Bytes of an incomplete upgrade response or frame, kept until the rest arrives.
    var inbound: [UInt8] = []
    /// Bytes the kernel did not take yet.
    var outbound: [UInt8] = []
    var outboundSent = 0
    var watchingWrite = true
    var fragments: [UInt8] = []
    var fragmentOpcode: UInt8 = 0
    /// Protocol bytes that did not make a whole message yet (NATS and MQTT are streams over frames).
    var stream: [UInt8] = []
    let mask: (UInt8, UInt8, UInt8, UInt8)
    let requestHead: [UInt8]

    // Set by the protocol layer.
    var ready = false
    var isPublisher = false
    var channels: [String] = []
    var user = ""
    var pendingReplies = 0
    var startedNs: UInt64 = 0
    /// An HTTP response stream (SSE) instead of a WebSocket: after the response head, bytes go
    /// to the wire as they come (`Bench.streamed`), with no frames.
    var isHTTPStream = false
    /// Delta mode: the previous publication's data, the base the next fossil delta applies to.
    var deltaBase: [UInt8] = []

    init(fd: Int32, index: Int, requestHead: [UInt8]) {
        self.fd = fd
        self.index = index
        self.requestHead = requestHead
        let r = UInt32.random(in: 1...UInt32.max)
        mask = (UInt8(truncatingIfNeeded: r), UInt8(truncatingIfNeeded: r >> 8),
                UInt8(truncatingIfNeeded: r >> 16), UInt8(truncatingIfNeeded: r >> 24))
    }

    var pendingOutboundBytes: Int { outbound.count - outboundSent }
}

final class EventLoop {
    private let epfd: Int32
    private var table: [Connection?] = []
    private let events: UnsafeMutablePointer<epoll_event>
    private let maxEvents: Int32 = 512
    private let readBuffer: UnsafeMutablePointer<UInt8>
    private let readCapacity = 256 * 1024
    /// A frame being built before it is written (reused).
    private var scratch: [UInt8] = []
    /// Whom events go to: opened, message (valid only during the call), closed. Held unmanaged
    /// and called through `_withUnsafeGuaranteedRef`, so a message costs no reference counting.
    private var delegateRef: Unmanaged<Bench>?
    var delegate: Bench {
        get { delegateRef.unsafelyUnwrapped.takeUnretainedValue() }
        set { delegateRef = .passUnretained(newValue) }
    }
    /// When the last read returned: the arrival time of everything in it.
    private(set) var readTimeNs: UInt64 = 0
    /// Bytes read from subscriber sockets (not the publisher's): wire bytes per delivery.
    private(set) var subscriberBytesRead = 0

    init() {
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        precondition(epfd >= 0, "epoll_create1 failed")
        events = .allocate(capacity: Int(maxEvents))
        readBuffer = .allocate(capacity: readCapacity)
        scratch.reserveCapacity(64 * 1024)
    }

    deinit {
        events.deallocate()
        readBuffer.deallocate()
        Glibc.close(epfd)
    }

    /// Starts a non-blocking connection from `source` (an IPv4 address such as 127.0.0.2) to
    /// `host:port`; the upgrade request goes out once TCP connects.
    func connect(index: Int, host: String, port: UInt16, source: String?, path: String,
                 subprotocol: String?, httpStream: Bool = false) -> Result<Connection, SocketError> {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(SocketError("socket", errno)) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if let source {
            // Let connect() pick the port per 4-tuple, so many sources share the port range.
            let ipBindAddressNoPort: Int32 = 24
            setsockopt(fd, Int32(IPPROTO_IP), ipBindAddressNoPort, &one, socklen_t(MemoryLayout<Int32>.size))
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_port = 0
            inet_pton(AF_INET, source, &local.sin_addr)
            let rc = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if rc != 0 { let e = errno; Glibc.close(fd); return .failure(SocketError("bind \(source)", e)) }
        }
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &remote.sin_addr)
        let rc = withUnsafePointer(to: &remote) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 && errno != EINPROGRESS { let e = errno; Glibc.close(fd); return .failure(SocketError("connect", e)) }

        var head = "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\n"
        if httpStream {
            head += "Accept: text/event-stream\r\n"
        } else {
            head += "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            head += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            if let subprotocol { head += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
        }
        head += "\r\n"
        let connection = Connection(fd: fd, index: index, requestHead: Array(head.utf8))
        connection.isHTTPStream = httpStream
        connection.startedNs = monotonicNs()
        if Int(fd) >= table.count { table.append(contentsOf: repeatElement(nil, count: Int(fd) + 1024 - table.count)) }
        table[Int(fd)] = connection
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue
        event.data.fd = fd
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event)
        return .success(connection)
    }

    /// Waits up to `timeoutMs` for socket events and handles them; returns how many there were.
    @discardableResult
    func poll(timeoutMs: Int32) -> Int {
        let n = epoll_wait(epfd, events, maxEvents, timeoutMs)
        guard n > 0 else { return 0 }
        for i in 0..<Int(n) {
            let event = events[i]
            let fd = Int(event.data.fd)
            guard fd < table.count, let connection = table[fd] else { continue }
            let flags = event.events
            if flags & EPOLLOUT.rawValue != 0 { writable(connection) }
            if connection.phase == .closed { continue }
            if flags & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue) != 0 {
                readable(connection)
            }
        }
        return Int(n)
    }

    // MARK: Sending

    /// Sends one masked frame.
    func send(_ connection: Connection, opcode: UInt8, _ payload: [UInt8]) {
        scratch.removeAll(keepingCapacity: true)
        payload.withUnsafeBufferPointer { Self.appendFrame(to: &scratch, opcode: opcode, payload: $0, mask: connection.mask) }
        sendRaw(connection, scratch)
    }

    /// Appends one masked client frame to `out` (so many frames can leave in one write).
    static func appendFrame(to out: inout [UInt8], opcode: UInt8, payload: UnsafeBufferPointer<UInt8>,
                            mask: (UInt8, UInt8, UInt8, UInt8)) {
        let n = payload.count
        out.append(0x80 | opcode)
        if n < 126 {
            out.append(0x80 | UInt8(n))
        } else if n <= 0xFFFF {
            out.append(0x80 | 126); out.append(UInt8(n >> 8)); out.append(UInt8(n & 0xFF))
        } else {
            out.append(0x80 | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((UInt64(n) >> UInt64(shift)) & 0xFF)) }
        }
        out.append(mask.0); out.append(mask.1); out.append(mask.2); out.append(mask.3)
        let start = out.count
        out.append(contentsOf: payload)
        out.withUnsafeMutableBufferPointer { buffer in
            let base = buffer.baseAddress! + start
            withUnsafeBytes(of: mask) { m in
                for i in 0..<n { base[i] ^= m[i & 3] }
            }
        }
    }

    /// Writes bytes now if nothing is queued, queues what the kernel does not take.
    func sendRaw(_ connection: Connection, _ bytes: [UInt8]) {
        guard connection.phase != .closed, !bytes.isEmpty else { return }
        if connection.pendingOutboundBytes > 0 {
            connection.outbound.append(contentsOf: bytes)
            return
        }
        var written = 0
        bytes.withUnsafeBytes { raw in
            while written < raw.count {
                let n = write(connection.fd, raw.baseAddress! + written, raw.count - written)
                if n > 0 { written += n; continue }
                if n < 0 && errno == EINTR { continue }
                break
            }
        }
        if written == bytes.count { return }
        if errno != EAGAIN && errno != EWOULDBLOCK {
            close(connection, reason: "write: \(String(cString: strerror(errno)))")
            return
        }
        connection.outbound.removeAll(keepingCapacity: true)
        connection.outbound.append(contentsOf: bytes[written...])
        connection.outboundSent = 0
        watchWrite(connection, true)
    }

    private func watchWrite(_ connection: Connection, _ on: Bool) {
        guard connection.watchingWrite != on else { return }
        connection.watchingWrite = on
        var event = epoll_event()
        event.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue | (on ? EPOLLOUT.rawValue : 0)
        event.data.fd = connection.fd
        epoll_ctl(epfd, EPOLL_CTL_MOD, connection.fd, &event)
    }

    private func writable(_ connection: Connection) {
        if connection.phase == .connecting {
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(connection.fd, SOL_SOCKET, SO_ERROR, &error, &length)
            if error != 0 {
                close(connection, reason: "connect: \(String(cString: strerror(error)))")
                return
            }
            connection.phase = .upgrading
            watchWrite(connection, false)
            sendRaw(connection, connection.requestHead)
            return
        }
        while connection.pendingOutboundBytes > 0 {
            let n = connection.outbound.withUnsafeBytes { raw in
                write(connection.fd, raw.baseAddress! + connection.outboundSent, raw.count - connection.outboundSent)
            }
            if n > 0 { connection.outboundSent += n; continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            close(connection, reason: "write: \(String(cString: strerror(errno)))")
            return
        }
        connection.outbound.removeAll(keepingCapacity: true)
        connection.outboundSent = 0
        watchWrite(connection, false)
    }

    // MARK: Receiving

    private func readable(_ connection: Connection) {
        let n = read(connection.fd, readBuffer, readCapacity)
        readTimeNs = monotonicNs()
        if n == 0 { close(connection, reason: "closed by server"); return }
        if n < 0 {
            if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return }
            close(connection, reason: "read: \(String(cString: strerror(errno)))")
            return
        }
        if !connection.isPublisher { subscriberBytesRead &+= n }
        if connection.inbound.isEmpty {
            let used = consume(connection, readBuffer, n)
            if used < n && connection.phase != .closed {
                connection.inbound.append(contentsOf: UnsafeBufferPointer(start: readBuffer + used, count: n - used))
            }
        } else {
            var held = connection.inbound
            connection.inbound = []
            held.append(contentsOf: UnsafeBufferPointer(start: readBuffer, count: n))
            let used = held.withUnsafeBufferPointer { consume(connection, $0.baseAddress!, $0.count) }
            if used < held.count && connection.phase != .closed {
                held.removeFirst(used)
                connection.inbound = held
            }
        }
    }

    /// Handles what it can of `count` bytes; returns how many it used.
    private func consume(_ connection: Connection, _ p: UnsafePointer<UInt8>, _ count: Int) -> Int {
        var offset = 0
        if connection.phase == .upgrading {
            guard let end = Self.find(p, count, [13, 10, 13, 10]) else {
                if count > 16 * 1024 { close(connection, reason: "upgrade response too long") }
                return 0
            }
            // "HTTP/1.1 101 ..." (200 for a response stream)
            let status = count >= 12 ? String(decoding: UnsafeBufferPointer(start: p + 9, count: 3), as: UTF8.self) : ""
            guard status == (connection.isHTTPStream ? "200" : "101") else {
                let line = String(decoding: UnsafeBufferPointer(start: p, count: min(end, 80)), as: UTF8.self)
                close(connection, reason: "upgrade refused: \(line)")
                return count
            }
            connection.phase = .open
            offset = end + 4
            delegate.opened(connection)
            if connection.phase == .closed { return count }
        }
        if connection.isHTTPStream {
            return offset + delegate.streamed(connection, p + offset, count - offset)
        }
        while count - offset >= 2 {
            let b0 = p[offset], b1 = p[offset + 1]
            var header = 2
            var length = Int(b1 & 0x7F)
            if length == 126 {
                guard count - offset >= 4 else { break }
                length = Int(p[offset + 2]) << 8 | Int(p[offset + 3])
                header = 4
            } else if length == 127 {
                guard count - offset >= 10 else { break }
                var l: UInt64 = 0
                for i in 0..<8 { l = l << 8 | UInt64(p[offset + 2 + i]) }
                guard l < 64 * 1024 * 1024 else { close(connection, reason: "frame too large"); return count }
                length = Int(l)
                header = 10
            }
            let masked = b1 & 0x80 != 0
            if masked { header += 4 }
            guard count - offset >= header + length else { break }
            let payload = UnsafeMutablePointer(mutating: p + offset + header)
            if masked {
                let m = (p + offset + header - 4)
                for i in 0..<length { payload[i] ^= m[i & 3] }
            }
            frame(connection, fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload, length)
            if connection.phase == .closed { return count }
            offset += header + length
        }
        return offset
    }

    private func frame(_ connection: Connection, fin: Bool, opcode: UInt8, _ payload: UnsafePointer<UInt8>, _ length: Int) {
        switch opcode {
        case WSOpcode.text, WSOpcode.binary:
            if fin && connection.fragments.isEmpty {
                delegateRef.unsafelyUnwrapped._withUnsafeGuaranteedRef { $0.message(connection, payload, length, opcode: opcode) }
            } else {
                connection.fragments.removeAll(keepingCapacity: true)
                connection.fragments.append(contentsOf: UnsafeBufferPointer(start: payload, count: length))
                connection.fragmentOpcode = opcode
                if fin { deliverFragments(connection) }
            }
        case WSOpcode.continuation:
            connection.fragments.append(contentsOf: UnsafeBufferPointer(start: payload, count: length))
            if fin { deliverFragments(connection) }
        case WSOpcode.ping:
            send(connection, opcode: WSOpcode.pong, Array(UnsafeBufferPointer(start: payload, count: length)))
        case WSOpcode.close:
            var code = 0
            if length >= 2 { code = Int(payload[0]) << 8 | Int(payload[1]) }
            let text = length > 2 ? String(decoding: UnsafeBufferPointer(start: payload + 2, count: length - 2), as: UTF8.self) : ""
            close(connection, reason: "close frame \(code) \(text)")
        default:
            break
        }
    }

    private func deliverFragments(_ connection: Connection) {
        let whole = connection.fragments
        connection.fragments = []
        whole.withUnsafeBufferPointer { delegate.message(connection, $0.baseAddress!, $0.count, opcode: connection.fragmentOpcode) }
    }

    /// Closes at once with a reset (SO_LINGER 0), so thousands of closes leave no TIME_WAIT behind.
    func close(_ connection: Connection, reason: String) {
        guard connection.phase != .closed else { return }
        connection.phase = .closed
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(connection.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        Glibc.close(connection.fd)
        table[Int(connection.fd)] = nil
        delegate.closed(connection, reason: reason)
    }

    static func find(_ p: UnsafePointer<UInt8>, _ count: Int, _ needle: [UInt8]) -> Int? {
        guard count >= needle.count else { return nil }
        var i = 0
        while i <= count - needle.count {
            if p[i] == needle[0] {
                var j = 1
                while j < needle.count && p[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }
}

struct SocketError: Error, CustomStringConvertible {
    let description: String
    init(_ what: String, _ code: Int32) { description = "\(what): \(String(cString: strerror(code)))" }
}

/// CPU seconds (user + system) of this process and of another one, for "who is the bottleneck".
enum CPUTime {
    static func ofSelf() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    /// utime + stime from /proc/PID/stat (all threads), in seconds; nil if the process is gone.
    static func of(pid: Int32) -> Double? {
        guard let text = readSmallFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: state is field 3; utime and stime are fields 14 and 15.
        guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// (steal, total) jiffies of the whole machine from /proc/stat: time the hypervisor gave to
    /// someone else while this VM wanted to run. A step with steal is a noisy step.
    static func stealTicks() -> (steal: Double, total: Double) {
        guard let text = readSmallFile("/proc/stat"), let line = text.split(separator: "\n").first else { return (0, 0) }
        let fields = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard fields.count >= 8 else { return (0, 0) }
        return (fields[7], fields.prefix(8).reduce(0, +))
    }

    /// VmRSS of a process in KiB.
    static func residentKiB(pid: Int32) -> Int? {
        guard let text = readSmallFile("/proc/\(pid)/status") else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.dropFirst(6).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
        }
        return nil
    }

    static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { Glibc.close(fd) }
        var bytes = [UInt8](repeating: 0, count: 8192)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: bytes[0..<n], as: UTF8.self)
    }
}
