import Channels
import Glibc
import Synchronization

/// An HTTP/1.1 response from a gateway.
public struct GatewayHTTPResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? { headers.first { $0.0 == name.lowercased() }?.1 }
}

/// Why a call to a gateway got no response. The service maps these onto 502/504.
public enum GatewayHTTPError: Error, Sendable, Equatable, CustomStringConvertible {
    case connectTimeout
    case timeout
    case unreachable(String)
    case badResponse(String)
    case overloaded
    case shutdown

    public var description: String {
        switch self {
        case .connectTimeout: return "connect timed out"
        case .timeout: return "no complete response in time"
        case .unreachable(let why): return "unreachable: \(why)"
        case .badResponse(let why): return "bad response: \(why)"
        case .overloaded: return "too many gateway requests queued"
        case .shutdown: return "hub shutting down"
        }
    }

    /// A timeout is a 504 (the gateway is slow); everything else a 502.
    public var isTimeout: Bool { self == .connectTimeout || self == .timeout }
}

/// The outbound HTTP/1.1 client the hub talks to media gateways with.
///
/// One thread of its own runs every exchange on non-blocking sockets under `poll()`, so a
/// slow or dead gateway costs a file descriptor and a deadline, never a thread: lws service
/// threads only enqueue and are called back. (A pool of blocking threads was the other
/// choice; it would tie one thread up per stalled gateway and need a bound that either
/// queues healthy requests behind dead gateways or grows without limit.)
///
/// Connections are kept alive and reused per gateway address; completions run on the
/// client's thread and must not block.
public final class GatewayHTTPClient: @unchecked Sendable {
    public struct Settings: Sendable {
        public var connectTimeout: Double
        public var totalTimeout: Double
        /// Exchanges in flight at once; more wait their turn (their deadline still runs).
        public var maxActive = 256
        /// Exchanges waiting for a slot before new ones are refused as overloaded.
        public var maxQueued = 10_000
        public var maxIdlePerAddress = 8
        public var idleTimeout: Double = 30
        public var maxResponseBytes = 4 * 1024 * 1024

        public init(connectTimeout: Double, totalTimeout: Double) {
            self.connectTimeout = connectTimeout
            self.totalTimeout = totalTimeout
        }
    }

    typealias Completion = @Sendable (Result<GatewayHTTPResponse, GatewayHTTPError>) -> Void

    private struct Submitted {
        var address: GatewayAddress
        var bytes: [UInt8]
        var isHead: Bool
        var deadline: Double
        var completion: Completion
    }

    private enum Phase { case connecting, writing, reading }

    private final class Exchange {
        let request: Submitted
        var fd: Int32 = -1
        var phase = Phase.connecting
        var reused = false
        var retried = false
        var connectDeadline: Double = 0
        var written = 0
        var input: [UInt8] = []
        init(_ request: Submitted) { self.request = request }
    }

    private struct Idle {
        var fd: Int32
        var since: Double
    }

    public let settings: Settings
    private let inbox = Mutex<(items: [Submitted], stopped: Bool)>(([], false))
    private var wakeRead: Int32 = -1
    private var wakeWrite: Int32 = -1
    private var thread: pthread_t?

    // Owned by the client thread only.
    private var waiting: [Exchange] = []
    private var active: [Int32: Exchange] = [:]
    private var idle: [GatewayAddress: [Idle]] = [:]

    public init(settings: Settings) {
        self.settings = settings
        var fds: [Int32] = [0, 0]
        pipe(&fds)
        for fd in fds {
            _ = fcntl(fd, F_SETFL, O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        let box = Unmanaged.passRetained(self)
        var handle = pthread_t()
        pthread_create(&handle, nil, { raw in
            let client = Unmanaged<GatewayHTTPClient>.fromOpaque(raw!).takeRetainedValue()
            client.run()
            return nil
        }, box.toOpaque())
        thread = handle
    }

    /// Sends `method path` with `body` (JSON when not empty) to the gateway and calls back once.
    /// With `trace`, the exchange is a client span under it and carries that span's `traceparent`.
    /// `timeout` replaces the settings' total timeout for this request (a proxy kind's own).
    public func send(to address: GatewayAddress, method: String, path: String, body: [UInt8] = [],
                     contentType: String = "application/json", trace: TraceParent? = nil, headers: [(String, String)] = [],
                     timeout: Double? = nil,
                     completion: @escaping @Sendable (Result<GatewayHTTPResponse, GatewayHTTPError>) -> Void) {
        // A forwarded User-Agent (the proxies' allow-list) replaces the client's own.
        let agent = headers.contains { $0.0.lowercased() == "user-agent" } ? "" : "User-Agent: hub-gateway-client\r\n"
        var head = "\(method) \(path) HTTP/1.1\r\nHost: \(address)\r\n\(agent)Accept: application/json\r\n"
        var completion = completion
        // A name or value with a line break would split the head: such a header is left out.
        for (name, value) in headers where !(name + value).utf8.contains(where: { $0 == 13 || $0 == 10 }) && !name.isEmpty {
            head += "\(name): \(value)\r\n"
        }
        if let trace {
            let route = String(path.prefix { $0 != "?" })
            let span = trace.startSpan(method + " " + route, kind: .client, attributes: [
                ("http.request.method", .string(method)), ("server.address", .string(address.host)),
                ("server.port", .int(Int64(address.port))), ("url.path", .string(route)),
            ])
            head += "traceparent: \(span.context.traceparent)\r\n"
            if let state = span.context.state { head += "tracestate: \(state)\r\n" }
            let answer = completion
            completion = { result in
                switch result {
                case .success(let response):
                    span.end(attributes: [("http.response.status_code", .int(Int64(response.status)))],
                             error: response.status >= 400 ? "HTTP \(response.status)" : nil)
                case .failure(let error):
                    span.end(attributes: [("error.type", .string(error.isTimeout ? "timeout" : "unreachable"))], error: "\(error)")
                }
                answer(result)
            }
        }
        if !body.isEmpty || method == "POST" {
            head += "Content-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n"
        }
        head += "\r\n"
        let request = Submitted(address: address, bytes: Array(head.utf8) + body, isHead: method == "HEAD",
                                deadline: Self.now() + (timeout ?? settings.totalTimeout), completion: completion)
        let accepted = inbox.withLock { inbox -> Bool in
            guard !inbox.stopped, inbox.items.count < settings.maxQueued else { return false }
            inbox.items.append(request)
            return true
        }
        guard accepted else {
            completion(.failure(inbox.withLock { $0.stopped } ? .shutdown : .overloaded))
            return
        }
        wake()
    }

    /// Fails whatever is in flight and stops the thread.
    public func shutdown() {
        inbox.withLock { $0.stopped = true }
        wake()
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = Glibc.write(wakeWrite, &byte, 1)
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    // MARK: The client thread

    private func run() {
        var fds: [pollfd] = []
        // Which exchange each polled descriptor belonged to: a descriptor closed and reopened
        // while handling this round's events must not get another's events.
        var owners: [Exchange?] = []
        while true {
            let (submitted, stopped) = inbox.withLock { inbox -> ([Submitted], Bool) in
                defer { inbox.items.removeAll() }
                return (inbox.items, inbox.stopped)
            }
            if stopped {
                for exchange in Array(active.values) + waiting + submitted.map(Exchange.init) {
                    if exchange.fd >= 0 { close(exchange.fd) }
                    exchange.request.completion(.failure(.shutdown))
                }
                for list in idle.values { for connection in list { close(connection.fd) } }
                close(wakeRead)
                close(wakeWrite)
                return
            }
            waiting += submitted.map(Exchange.init)
            let now = Self.now()
            startWaiting(now: now)
            expire(now: now)

            fds.removeAll(keepingCapacity: true)
            owners.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0))
            owners.append(nil)
            var nextDeadline = now + 1
            for (fd, exchange) in active {
                let events = exchange.phase == .reading ? POLLIN : POLLOUT
                fds.append(pollfd(fd: fd, events: Int16(events), revents: 0))
                owners.append(exchange)
                nextDeadline = min(nextDeadline, exchange.request.deadline)
                if exchange.phase == .connecting { nextDeadline = min(nextDeadline, exchange.connectDeadline) }
            }
            let idleStart = fds.count
            for list in idle.values { for connection in list { fds.append(pollfd(fd: connection.fd, events: Int16(POLLIN), revents: 0)) } }
            for exchange in waiting { nextDeadline = min(nextDeadline, exchange.request.deadline) }
            let timeout = Int32(max(0, min(1000, (nextDeadline - now) * 1000 + 1)))
            let ready = poll(&fds, nfds_t(fds.count), timeout)
            guard ready > 0 else { continue }
            if fds[0].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 256)
                while Glibc.read(wakeRead, &sink, sink.count) > 0 {}
            }
            for index in 1..<fds.count where fds[index].revents != 0 {
                let fd = fds[index].fd
                if index >= idleStart {
                    // An idle keep-alive connection became readable: the gateway closed it.
                    dropIdle(fd)
                } else if let exchange = owners[index], active[fd] === exchange {
                    advance(exchange, revents: fds[index].revents)
                }
            }
        }
    }

    private func startWaiting(now: Double) {
        while active.count < settings.maxActive, !waiting.isEmpty {
            let exchange = waiting.removeFirst()
            if exchange.request.deadline <= now {
                exchange.request.completion(.failure(.timeout))
                continue
            }
            attach(exchange, now: now)
        }
    }

    /// Gives the exchange a connection: an idle one to the same gateway, or a new one.
    private func attach(_ exchange: Exchange, now: Double) {
        let address = exchange.request.address
        while var list = idle[address], let connection = list.popLast() {
            idle[address] = list.isEmpty ? nil : list
            if now - connection.since > settings.idleTimeout {
                close(connection.fd)
                continue
            }
            exchange.fd = connection.fd
            exchange.reused = true
            exchange.phase = .writing
            active[connection.fd] = exchange
            return
        }
        switch address.startConnect() {
        case .started(let fd):
            exchange.fd = fd
            exchange.reused = false
            exchange.phase = .connecting
            exchange.connectDeadline = now + settings.connectTimeout
            active[fd] = exchange
        case .failed(let error):
            exchange.request.completion(.failure(.unreachable(String(cString: strerror(error)))))
        }
    }

    private func expire(now: Double) {
        for (fd, exchange) in active {
            if exchange.phase == .connecting && exchange.connectDeadline <= now {
                finish(exchange, .failure(.connectTimeout), keepAlive: false)
            } else if exchange.request.deadline <= now {
                finish(exchange, .failure(.timeout), keepAlive: false)
            }
            _ = fd
        }
        waiting.removeAll { exchange in
            guard exchange.request.deadline <= now else { return false }
            exchange.request.completion(.failure(.timeout))
            return true
        }
        for (address, list) in idle {
            let fresh = list.filter { connection in
                if now - connection.since <= settings.idleTimeout { return true }
                close(connection.fd)
                return false
            }
            idle[address] = fresh.isEmpty ? nil : fresh
        }
    }

    /// Closes an idle connection, if it is still idle (it may have been handed to an exchange
    /// earlier in the same round).
    private func dropIdle(_ fd: Int32) {
        for (address, list) in idle where list.contains(where: { $0.fd == fd }) {
            let rest = list.filter { $0.fd != fd }
            idle[address] = rest.isEmpty ? nil : rest
            close(fd)
            return
        }
    }

    private func advance(_ exchange: Exchange, revents: Int16) {
        switch exchange.phase {
        case .connecting:
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(exchange.fd, SOL_SOCKET, SO_ERROR, &error, &length)
            if error != 0 {
                finish(exchange, .failure(.unreachable(String(cString: strerror(error)))), keepAlive: false)
                return
            }
            exchange.phase = .writing
            write(exchange)
        case .writing:
            write(exchange)
        case .reading:
            read(exchange)
        }
    }

    private func write(_ exchange: Exchange) {
        let bytes = exchange.request.bytes
        while exchange.written < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.send(exchange.fd, raw.baseAddress! + exchange.written, bytes.count - exchange.written, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                exchange.written += n
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                return
            } else {
                connectionLost(exchange, why: String(cString: strerror(errno)))
                return
            }
        }
        exchange.phase = .reading
    }

    private func read(_ exchange: Exchange) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(exchange.fd, &buffer, buffer.count, 0)
            if n > 0 {
                exchange.input.append(contentsOf: buffer[0..<n])
                if exchange.input.count > settings.maxResponseBytes {
                    finish(exchange, .failure(.badResponse("response larger than \(settings.maxResponseBytes) bytes")), keepAlive: false)
                    return
                }
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            // EOF or error: complete only if the body runs to the close.
            let eof = n == 0
            switch HTTPResponseParser.parse(exchange.input, isHead: exchange.request.isHead, closed: true) {
            case .complete(let response, _) where eof:
                finish(exchange, .success(response), keepAlive: false)
            case .invalid(let why):
                finish(exchange, .failure(.badResponse(why)), keepAlive: false)
            default:
                connectionLost(exchange, why: eof ? "connection closed before a complete response" : String(cString: strerror(errno)))
            }
            return
        }
        switch HTTPResponseParser.parse(exchange.input, isHead: exchange.request.isHead, closed: false) {
        case .incomplete:
            return
        case .invalid(let why):
            finish(exchange, .failure(.badResponse(why)), keepAlive: false)
        case .complete(let response, let reusable):
            finish(exchange, .success(response), keepAlive: reusable)
        }
    }

    /// A reused keep-alive connection the gateway had already closed is retried once on a new
    /// connection, as long as no byte of a response came back (the request was not processed).
    private func connectionLost(_ exchange: Exchange, why: String) {
        if exchange.reused && !exchange.retried && exchange.input.isEmpty {
            active[exchange.fd] = nil
            close(exchange.fd)
            exchange.retried = true
            exchange.written = 0
            exchange.fd = -1
            attach(exchange, now: Self.now())
            return
        }
        finish(exchange, .failure(.unreachable(why)), keepAlive: false)
    }

    private func finish(_ exchange: Exchange, _ result: Result<GatewayHTTPResponse, GatewayHTTPError>, keepAlive: Bool) {
        active[exchange.fd] = nil
        let address = exchange.request.address
        if keepAlive, (idle[address]?.count ?? 0) < settings.maxIdlePerAddress {
            idle[address, default: []].append(Idle(fd: exchange.fd, since: Self.now()))
        } else {
            close(exchange.fd)
        }
        exchange.fd = -1
        exchange.request.completion(result)
    }
}

/// Incremental HTTP/1.1 response parsing over the bytes received so far.
enum HTTPResponseParser {
    enum Outcome {
        case incomplete
        case invalid(String)
        /// The response, and whether the connection may carry another request.
        case complete(GatewayHTTPResponse, reusable: Bool)
    }

    static func parse(_ input: [UInt8], isHead: Bool, closed: Bool) -> Outcome {
        guard let headerEnd = find([13, 10, 13, 10], in: input, from: 0) else {
            return input.count > 64 * 1024 ? .invalid("response headers too large") : .incomplete
        }
        let lines = String(decoding: input[0..<headerEnd], as: UTF8.self).split(separator: "\r\n", omittingEmptySubsequences: false)
        let statusParts = lines[0].split(separator: " ", maxSplits: 2)
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]), (100...599).contains(status) else {
            return .invalid("not an HTTP/1.x status line")
        }
        var headers: [(String, String)] = []
        for line in lines.dropFirst() where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { return .invalid("malformed header line") }
            let value = line[line.index(after: colon)...].drop { $0 == " " || $0 == "\t" }
            headers.append((line[..<colon].lowercased(), String(value)))
        }
        func header(_ name: String) -> String? { headers.first { $0.0 == name }?.1 }
        let http10 = statusParts[0] == "HTTP/1.0"
        let connection = header("connection")?.lowercased() ?? ""
        var reusable = http10 ? connection.contains("keep-alive") : !connection.contains("close")
        let bodyStart = headerEnd + 4
        if status == 100 {
            // An interim response: what follows is the real one.
            return parse(Array(input[bodyStart...]), isHead: isHead, closed: closed)
        }
        if isHead || status == 204 || status == 304 || (100..<200).contains(status) {
            return .complete(GatewayHTTPResponse(status: status, headers: headers, body: []), reusable: reusable)
        }
        if header("transfer-encoding")?.lowercased().contains("chunked") == true {
            var cursor = bodyStart
            var body: [UInt8] = []
            while true {
                guard let lineEnd = find([13, 10], in: input, from: cursor) else { return .incomplete }
                let sizeText = String(decoding: input[cursor..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
                guard let size = Int(String(sizeText).trimmingCharacters(in: " "), radix: 16), size >= 0 else { return .invalid("bad chunk size") }
                cursor = lineEnd + 2
                if size == 0 {
                    // Trailers end with an empty line.
                    while true {
                        guard let end = find([13, 10], in: input, from: cursor) else { return .incomplete }
                        if end == cursor { break }
                        cursor = end + 2
                    }
                    return .complete(GatewayHTTPResponse(status: status, headers: headers, body: body), reusable: reusable)
                }
                guard input.count >= cursor + size + 2 else { return .incomplete }
                body.append(contentsOf: input[cursor..<cursor + size])
                cursor += size + 2
            }
        }
        if let lengthText = header("content-length") {
            guard let length = Int(lengthText.trimmingCharacters(in: " ")), length >= 0 else { return .invalid("bad content-length") }
            guard input.count >= bodyStart + length else { return .incomplete }
            return .complete(GatewayHTTPResponse(status: status, headers: headers, body: Array(input[bodyStart..<bodyStart + length])), reusable: reusable)
        }
        // No length: the body runs until the gateway closes the connection.
        reusable = false
        guard closed else { return .incomplete }
        return .complete(GatewayHTTPResponse(status: status, headers: headers, body: Array(input[bodyStart...])), reusable: false)
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard haystack.count >= needle.count, start <= haystack.count - needle.count else { return nil }
        var index = start
        while index <= haystack.count - needle.count {
            if haystack[index] == needle[0] && Array(haystack[index..<index + needle.count]) == needle { return index }
            index += 1
        }
        return nil
    }
}
