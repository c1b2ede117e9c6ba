import CLibWebSockets
import Channels
import Glibc
import Logging
import RESTCompat

// The libwebsockets edge. This file and ServiceLoop.swift are the only places that handle
// raw lws pointers: the per-session slot holds a retained `EdgeSession`, released when lws
// reports the connection closed; every pointer handed to lws outlives the call.

/// The slot lws keeps per connection: one retained `EdgeSession` reference.
private typealias Slot = UnsafeMutablePointer<UnsafeMutableRawPointer?>

/// The lws protocol list; lws keeps a pointer to it for the process lifetime.
nonisolated(unsafe) private let protocols: UnsafeMutablePointer<lws_protocols> = {
    let list = UnsafeMutablePointer<lws_protocols>.allocate(capacity: 3)
    list.initialize(repeating: lws_protocols(), count: 3)
    list[0].name = UnsafePointer(strdup("hub"))
    list[0].callback = hubCallback
    list[0].per_session_data_size = MemoryLayout<UnsafeMutableRawPointer?>.size
    list[0].rx_buffer_size = 0
    list[1].name = UnsafePointer(strdup(listenerProtocol))
    list[1].callback = listenerCallback
    return list
}()

private let listenerProtocol = "hub-listen"

enum LWSContext {
    /// A context with no listener of its own, then our SO_REUSEPORT socket adopted into it.
    static func create(loop: ServiceLoop) throws -> OpaquePointer {
        let host = loop.settings.host
        let transport = loop.settings.transport
        // The first loop makes sure no other process listens on the port; the others join it.
        let exclusive: Int32 = loop.index == 0 && !transport.reusePort ? 1 : 0
        let listenFD = hub_listen_socket(host == "0.0.0.0" ? "0.0.0.0" : host, Int32(loop.settings.port), exclusive)
        guard listenFD >= 0 else {
            let hint = -listenFD == EADDRINUSE ? " (another process listens there; --reuse-port shares it on purpose)" : ""
            throw HubError.startup("could not listen on \(host):\(loop.settings.port): \(String(cString: strerror(-listenFD)))\(hint)")
        }
        var info = lws_context_creation_info()
        info.port = -2  // CONTEXT_PORT_NO_LISTEN_SERVER: a server vhost fed by adoption
        info.protocols = UnsafePointer(protocols)
        info.options = hub_lws_server_options(transport.tls == nil ? 0 : 1)
        info.user = Unmanaged.passUnretained(loop).toOpaque()
        info.pt_serv_buf_size = 64 * 1024
        info.timeout_secs = UInt32(transport.handshakeTimeout)
        info.timeout_secs_ah_idle = UInt32(transport.headerTimeout)
        info.keepalive_timeout = Int32(transport.idleTimeout)
        info.ka_time = 0
        info.max_http_header_data = UInt16(transport.maxHeaderSize)
        info.server_string = UnsafePointer(strdup("hub"))
        if transport.websocketCompression { info.extensions = hub_lws_extensions() }
        if let tls = transport.tls {
            // Adopted sockets get TLS (and ALPN h2/http1.1) from the vhost: lws_adopt_socket_vhost allows SSL.
            info.ssl_cert_filepath = UnsafePointer(strdup(tls.cert))
            info.ssl_private_key_filepath = UnsafePointer(strdup(tls.key))
            // lws 4.1's HPACK decoder drops every header it has no token for (X-API-Key,
            // X-Request-ID…), so h2 is offered only when asked for.
            info.alpn = UnsafePointer(strdup(transport.http2 ? "h2,http/1.1" : "http/1.1"))
            // Streams that carried a body linger a second (see finishTransaction): allow more than
            // lws's 24 at once, the limit past which lws ends the whole connection with GOAWAY.
            // The other values are lws's own defaults, which this setting replaces as a whole.
            info.http2_settings = (1, 65_536, 0, 128, 0, 16_384, UInt32(transport.maxHeaderSize))
        }
        guard let context = lws_create_context(&info) else {
            close(listenFD)
            let what = transport.tls.map { " (check that \($0.cert) and \($0.key) are a PEM certificate and its key)" } ?? ""
            throw HubError.startup("could not create the libwebsockets context\(what)")
        }
        guard let vhost = lws_get_vhost_by_name(context, "default"),
              hub_adopt_listener(vhost, listenFD, listenerProtocol) != nil
        else {
            lws_context_destroy(context)
            close(listenFD)
            throw HubError.startup("could not attach the listening socket to libwebsockets")
        }
        return context
    }
}

/// The listening socket became readable: accept everything waiting and hand each
/// connection to lws as an HTTP server connection of this loop.
private func listenerCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard reason == LWS_CALLBACK_RAW_RX_FILE, let wsi, let vhost = lws_get_vhost(wsi), let loop = loopFor(wsi) else { return 0 }
    let listenFD = lws_get_socket_fd(wsi)
    let limiter = loop.settings.transport.connections
    var peer = [CChar](repeating: 0, count: 64)
    for _ in 0..<256 {
        let fd = hub_accept(listenFD, &peer, Int32(peer.count))
        if fd < 0 { break }
        let address = String(cString: peer)
        guard limiter.admit(address) else {
            // Refused before lws or TLS sees it: a plain-HTTP client gets a reason, a TLS one a close.
            if loop.settings.transport.tls == nil { hub_send_now(fd, tooManyConnections, Int32(tooManyConnections.utf8.count)) }
            close(fd)
            continue
        }
        guard let connection = lws_adopt_socket_vhost(vhost, fd) else {
            limiter.release(address)  // lws closed the socket itself
            continue
        }
        loop.admitted[connection] = Admission(address: address)
    }
    return 0
}

private let badRequest = plainAnswer(400, "Bad Request", #"{"error":"malformed request: bad request line, header, or percent-encoding such as %00"}"#)
private func headTooLarge(_ limit: Int) -> String {
    plainAnswer(431, "Request Header Fields Too Large", #"{"error":"request head larger than \#(limit) bytes"}"#)
}
private func headerTimeout(_ seconds: Int) -> String {
    plainAnswer(408, "Request Timeout", #"{"error":"request head not received within \#(seconds) s"}"#)
}

/// lws 4.1 closes without a word on some request heads (a `%00` in the path, a head over
/// `max_header_size`, one not complete in time). A keep-alive connection that lws closes with
/// request bytes it never turned into a request gets the answer lws would not give. Runs while
/// lws drops the protocol on its way to closing, before it shuts the socket for writing; lws
/// binds the protocol only once a first request was parsed, so the first request of a
/// connection is not covered.
private func answerDroppedRequest(_ wsi: OpaquePointer, loop: ServiceLoop) {
    guard lws_get_network_wsi(wsi) == wsi, lws_is_ssl(wsi) == 0, let admission = loop.admitted[wsi], !admission.busy,
          let answeredBytes = admission.answeredBytes
    else { return }
    let fd = lws_get_socket_fd(wsi)
    var received: Int64 = -1
    var written: Int64 = -1
    hub_tcp_counters(fd, &received, &written)
    guard received > answeredBytes else { return }
    // lws answers some bad requests itself (403 for a bad `%xx`): then it wrote since our last answer.
    guard let writtenBytes = admission.writtenBytes, written == writtenBytes else { return }
    let transport = loop.settings.transport
    let text: String
    if received - answeredBytes >= Int64(transport.maxHeaderSize) {
        text = headTooLarge(transport.maxHeaderSize)
    } else if loop.node.clock.now() - admission.idleSince >= Double(transport.headerTimeout) {
        text = headerTimeout(transport.headerTimeout)
    } else {
        text = badRequest
    }
    hub_send_now(fd, text, Int32(text.utf8.count))
}

private let tooManyConnections = plainAnswer(503, "Service Unavailable", #"{"error":"too many connections"}"#)

/// A whole HTTP/1.1 answer for a connection lws cannot answer itself; the connection closes.
private func plainAnswer(_ status: Int, _ phrase: String, _ body: String) -> String {
    "HTTP/1.1 \(status) \(phrase)\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n\(body)"
}

/// What the edge knows of an accepted connection (service thread only).
struct Admission {
    let address: String
    /// When the connection last finished a response.
    var idleSince: Double = 0
    /// Bytes received from the client up to the end of the last answered request (nil until
    /// one is answered).
    var answeredBytes: Int64?
    /// Bytes written to the client up to the end of that answer.
    var writtenBytes: Int64?
    /// A request is being answered: a close now is the edge's own doing.
    var busy = false
}

private func loopFor(_ wsi: OpaquePointer?) -> ServiceLoop? {
    guard let wsi, let context = lws_get_context(wsi), let raw = lws_context_user(context) else { return nil }
    return Unmanaged<ServiceLoop>.fromOpaque(raw).takeUnretainedValue()
}

private func sessionIn(_ user: UnsafeMutableRawPointer?) -> EdgeSession? {
    guard let user else { return nil }
    let slot = user.assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    guard let raw = slot.pointee else { return nil }
    return Unmanaged<EdgeSession>.fromOpaque(raw).takeUnretainedValue()
}

private func store(_ session: EdgeSession, in user: UnsafeMutableRawPointer?) {
    guard let user else { return }
    release(user)
    user.assumingMemoryBound(to: UnsafeMutableRawPointer?.self).pointee = Unmanaged.passRetained(session).toOpaque()
}

private func release(_ user: UnsafeMutableRawPointer?) {
    guard let user else { return }
    let slot = user.assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    if let raw = slot.pointee {
        let session = Unmanaged<EdgeSession>.fromOpaque(raw)
        session.takeUnretainedValue().gone = true
        // An upload cut off mid-body leaves no temp files behind.
        (session.takeUnretainedValue() as? HTTPExchange)?.intake?.abandon()
        session.release()
        slot.pointee = nil
    }
}

private func header(_ wsi: OpaquePointer, _ token: lws_token_indexes) -> String? {
    let length = Int(lws_hdr_total_length(wsi, token))
    guard length > 0 else { return nil }
    var buffer = [CChar](repeating: 0, count: length + 1)
    guard lws_hdr_copy(wsi, &buffer, Int32(length + 1), token) >= 0 else { return nil }
    return String(cString: buffer)
}

private func customHeader(_ wsi: OpaquePointer, _ name: String) -> String? {
    let length = Int(lws_hdr_custom_length(wsi, name, Int32(name.utf8.count)))
    guard length > 0 else { return nil }
    var buffer = [CChar](repeating: 0, count: length + 1)
    guard lws_hdr_custom_copy(wsi, &buffer, Int32(length + 1), name, Int32(name.utf8.count)) >= 0 else { return nil }
    return String(cString: buffer)
}

private func peerAddress(_ wsi: OpaquePointer) -> String {
    var buffer = [CChar](repeating: 0, count: 64)
    guard lws_get_peer_simple(wsi, &buffer, 64) != nil else { return "" }
    return String(cString: buffer)
}

private let methodTokens: [(lws_token_indexes, String)] = [
    (WSI_TOKEN_GET_URI, "GET"), (WSI_TOKEN_POST_URI, "POST"), (WSI_TOKEN_OPTIONS_URI, "OPTIONS"),
    (WSI_TOKEN_PUT_URI, "PUT"), (WSI_TOKEN_PATCH_URI, "PATCH"), (WSI_TOKEN_DELETE_URI, "DELETE"),
    (WSI_TOKEN_HEAD_URI, "HEAD"),
]

private let requestHeaders: [(lws_token_indexes, String)] = [
    (WSI_TOKEN_HTTP_AUTHORIZATION, "authorization"), (WSI_TOKEN_HTTP_CONTENT_TYPE, "content-type"),
    (WSI_TOKEN_HTTP_CONTENT_LENGTH, "content-length"), (WSI_TOKEN_ORIGIN, "origin"),
    (WSI_TOKEN_HTTP_USER_AGENT, "user-agent"), (WSI_TOKEN_HOST, "host"), (WSI_TOKEN_HTTP_ACCEPT, "accept"),
    (WSI_TOKEN_HTTP_TRANSFER_ENCODING, "transfer-encoding"),
    (WSI_TOKEN_HTTP_RANGE, "range"),
]

/// Custom headers lws does not tokenise; the names routes read.
private let customRequestHeaders = ["x-api-key", "x-request-id", "access-control-request-method", "access-control-request-headers"]

/// The user id of a `/ws/{user_id}` path (percent-decoded), or nil for other paths.
private func chatUserID(_ path: String) -> String? {
    guard path.hasPrefix("/ws/") else { return nil }
    let rest = path.dropFirst(4)
    guard !rest.isEmpty, !rest.contains("/") else { return nil }
    return HTTPRequest.percentDecode(rest)
}

private func bearerToken(_ wsi: OpaquePointer) -> String? {
    guard let auth = header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION) else { return nil }
    let parts = auth.split(separator: " ", maxSplits: 1)
    guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
    return String(parts[1])
}

/// One decoded query parameter of the request.
private func queryValue(_ wsi: OpaquePointer, _ name: String) -> String? {
    var index: Int32 = 0
    var fragment = [CChar](repeating: 0, count: 4096)
    while lws_hdr_copy_fragment(wsi, &fragment, Int32(fragment.count), WSI_TOKEN_HTTP_URI_ARGS, index) > 0 {
        let pair = String(cString: fragment)
        if let eq = pair.firstIndex(of: "="), pair[..<eq] == name {
            return HTTPRequest.percentDecode(pair[pair.index(after: eq)...])
        }
        index += 1
    }
    return nil
}

/// The path of a WebSocket upgrade or HTTP request.
private func requestPath(_ wsi: OpaquePointer) -> String? {
    header(wsi, WSI_TOKEN_GET_URI)
}

private func hubCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let loop = loopFor(wsi) else { return 0 }
    switch reason {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        loop.serviceWakeup()
        return 0

    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        // Only the client-protocol endpoint and seed 003's chat endpoint upgrade to WebSocket.
        guard let wsi, let path = requestPath(wsi) else { return 1 }
        if path == "/connection/websocket" { return 0 }
        return chatUserID(path) != nil && loop.settings.chat != nil ? 0 : 1

    case LWS_CALLBACK_ESTABLISHED:
        guard let wsi else { return -1 }
        let connection = WebSocketConnection(
            loop: loop, wsi: wsi, remoteAddress: peerAddress(wsi),
            maxQueuedBytes: loop.settings.maxQueuedBytes, maxQueuedMessages: loop.settings.maxQueuedMessages)
        // lws agreed to permessage-deflate when we offer it and the client asked for it.
        connection.compressed = loop.settings.transport.websocketCompression
            && (header(wsi, WSI_TOKEN_EXTENSIONS)?.contains("permessage-deflate") ?? false)
        // Registered before the session starts: starting may already close the connection
        // (a bad token) and ask for the writeable callback that sends the close frame.
        store(connection, in: user)
        loop.connections[ObjectIdentifier(connection)] = connection
        if let path = requestPath(wsi), let userID = chatUserID(path), let chat = loop.settings.chat {
            let session = ChatSession(userID: userID, chat: chat, transport: connection, unframe: WebSocketFrameEncoder.payload(of:))
            connection.chat = session
            connection.session = session.clientSession
            session.start(token: bearerToken(wsi) ?? queryValue(wsi, "token"))
        } else {
            connection.session = loop.node.accept(transport: connection)
        }
        return 0

    case LWS_CALLBACK_RECEIVE:
        guard let wsi, let connection = sessionIn(user) as? WebSocketConnection else { return -1 }
        if connection.oversized { return 0 }  // inflating the rest of a refused message: dropped
        if connection.inbound.count + length > loop.settings.maxMessageSize {
            if connection.compressed {
                // lws keeps inflating a compressed frame and ignores -1 until it is done (a
                // small bomb would run to its end): close through the writeable callback instead.
                connection.oversized = true
                connection.inbound = []
                connection.close(DisconnectReason(code: 1009, reason: "message too big"))
                return 0
            }
            closeWith(wsi, code: 1009, reason: "message too big")
            return -1
        }
        if let input, length > 0 {
            connection.inbound.append(contentsOf: UnsafeRawBufferPointer(start: input, count: length))
        }
        if lws_is_final_fragment(wsi) != 0 && lws_remaining_packet_payload(wsi) == 0 {
            let message = connection.inbound
            connection.inbound = []
            if let chat = connection.chat {
                chat.handle(message: message)
            } else {
                connection.session?.handle(message: message)
            }
        }
        return 0

    case LWS_CALLBACK_SERVER_WRITEABLE:
        guard let wsi, let connection = sessionIn(user) as? WebSocketConnection else { return 0 }
        return writeFrames(connection, wsi: wsi, loop: loop)

    case LWS_CALLBACK_CLOSED:
        if let connection = sessionIn(user) as? WebSocketConnection {
            loop.connections.removeValue(forKey: ObjectIdentifier(connection))
            connection.outbound.withLock { $0.closing = true }
            if let chat = connection.chat { chat.closed() } else { connection.session?.closed() }
            connection.session = nil
            connection.chat = nil
        }
        release(user)
        return 0

    case LWS_CALLBACK_HTTP:
        guard let wsi else { return -1 }
        return beginHTTP(wsi: wsi, user: user, loop: loop, input: input, length: length)

    case LWS_CALLBACK_HTTP_BODY:
        guard let exchange = sessionIn(user) as? HTTPExchange else { return -1 }
        if let deadline = exchange.bodyDeadline, let wsi, loop.node.clock.now() > deadline {
            // A body trickling in, each chunk within lws's pause limit (handshake_timeout), is
            // cut at its overall deadline; a body that stalls is closed by lws at that limit.
            exchange.bodyTimedOut = true
            exchange.closeAfterResponse = true
            exchange.body = []
            dispatch(exchange, wsi: wsi, loop: loop)
            return 0
        }
        if exchange.dispatched { return 0 }  // answered already (timed out): the rest is dropped
        if let intake = exchange.intake {
            // Streamed to disk off this thread; reading pauses while the disk is behind.
            if let input, length > 0, intake.append(UnsafeRawBufferPointer(start: input, count: length)), let wsi {
                lws_rx_flow_control(wsi, 0)
            }
            return 0
        }
        if exchange.body.count + length > loop.settings.maxBodySize {
            exchange.tooLarge = true
        } else if let input, length > 0 {
            exchange.body.append(contentsOf: UnsafeRawBufferPointer(start: input, count: length))
        }
        return 0

    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        guard let wsi, let exchange = sessionIn(user) as? HTTPExchange else { return -1 }
        dispatch(exchange, wsi: wsi, loop: loop)
        return 0

    case LWS_CALLBACK_HTTP_WRITEABLE:
        guard let wsi, let exchange = sessionIn(user) as? HTTPExchange else { return 0 }
        return writeResponse(exchange, wsi: wsi, loop: loop)

    case LWS_CALLBACK_CLOSED_HTTP:
        release(user)
        return 0

    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        // lws rebinds the protocol after every keep-alive transaction and frees the per-session
        // slot without a CLOSED_HTTP: let go of the exchange in it here, or every answered
        // request (response body included) would stay retained for good.
        if let wsi, let input, String(cString: input.assumingMemoryBound(to: CChar.self)) == "__lws_close_free_wsi" {
            answerDroppedRequest(wsi, loop: loop)
        }
        release(user)
        return 0

    case LWS_CALLBACK_WSI_DESTROY:
        if let wsi, let admission = loop.admitted.removeValue(forKey: wsi) {
            loop.settings.transport.connections.release(admission.address)
        }
        return 0

    default:
        return lws_callback_http_dummy(wsi, reason, user, input, length)
    }
}

private func closeWith(_ wsi: OpaquePointer, code: UInt16, reason: String) {
    var bytes = Array(reason.utf8.prefix(120))
    lws_close_reason(wsi, lws_close_status(rawValue: UInt32(code)), &bytes, bytes.count)
}

/// Writes queued frames: one frame straight from its shared buffer, several gathered into
/// the loop's scratch buffer so a burst costs one syscall.
private func writeFrames(_ connection: WebSocketConnection, wsi: OpaquePointer, loop: ServiceLoop) -> Int32 {
    let (frames, more, close) = connection.takeFrames(budget: connection.compressed ? 0 : loop.scratchCapacity)
    if connection.compressed, let frame = frames.first {
        // permessage-deflate: lws frames and compresses the payload itself, one message per
        // writeable callback (it finishes a message's compressed tail before calling us again).
        let payload = WebSocketFrameEncoder.payload(of: frame)
        if payload.count <= loop.scratchCapacity {
            let base = loop.scratch + loop.pre
            payload.withUnsafeBufferPointer { base.update(from: $0.baseAddress!, count: $0.count) }
            if lws_write(wsi, base, payload.count, lws_write_protocol(rawValue: UInt32(hub_lws_write_text()))) < 0 { return -1 }
        } else {
            var buffer = [UInt8](repeating: 0, count: loop.pre + payload.count)
            buffer.replaceSubrange(loop.pre..., with: payload)
            let failed = buffer.withUnsafeMutableBufferPointer { all in
                lws_write(wsi, all.baseAddress! + loop.pre, payload.count, lws_write_protocol(rawValue: UInt32(hub_lws_write_text()))) < 0
            }
            if failed { return -1 }
        }
    } else if frames.count == 1, let frame = frames.first {
        let written = frame.bytes.withUnsafeBufferPointer { buffer in
            lws_write(wsi, UnsafeMutablePointer(mutating: buffer.baseAddress), buffer.count, lws_write_protocol(rawValue: UInt32(hub_lws_write_raw())))
        }
        if written < 0 { return -1 }
    } else if frames.count > 1 {
        let base = loop.scratch + loop.pre
        var used = 0
        for frame in frames {
            frame.bytes.withUnsafeBufferPointer { buffer in
                (base + used).update(from: buffer.baseAddress!, count: buffer.count)
            }
            used += frame.bytes.count
        }
        if lws_write(wsi, base, used, lws_write_protocol(rawValue: UInt32(hub_lws_write_raw()))) < 0 { return -1 }
    }
    if more {
        lws_callback_on_writable(wsi)
        return 0
    }
    if let close {
        closeWith(wsi, code: close.code, reason: close.reason)
        return -1
    }
    return 0
}

private func beginHTTP(wsi: OpaquePointer, user: UnsafeMutableRawPointer?, loop: ServiceLoop,
                       input: UnsafeMutableRawPointer?, length: Int) -> Int32 {
    let exchange = HTTPExchange(loop: loop, wsi: wsi, startedAt: loop.node.clock.now())
    store(exchange, in: user)
    loop.admitted[wsi]?.busy = true
    var method = "GET"
    var path = "/"
    for (token, name) in methodTokens {
        if let uri = header(wsi, token) {
            method = name
            path = uri
            break
        }
    }
    exchange.method = method
    exchange.path = path
    withUnsafeTemporaryAllocation(of: CChar.self, capacity: 4096) { fragment in
        var index: Int32 = 0
        while lws_hdr_copy_fragment(wsi, fragment.baseAddress, Int32(fragment.count), WSI_TOKEN_HTTP_URI_ARGS, index) > 0 {
            let pair = String(cString: fragment.baseAddress!)
            if let eq = pair.firstIndex(of: "=") {
                exchange.query.append((String(pair[..<eq]), String(pair[pair.index(after: eq)...])))
            } else {
                exchange.query.append((pair, ""))
            }
            index += 1
        }
    }
    for (token, name) in requestHeaders {
        if let value = header(wsi, token) { exchange.headers[name] = value }
    }
    for name in customRequestHeaders {
        if let value = customHeader(wsi, name + ":") { exchange.headers[name] = value }
    }
    // The address the accept loop already read (same numeric form), not a getpeername per request.
    if let admitted = loop.admitted[lws_get_network_wsi(wsi) ?? wsi]?.address, !admitted.isEmpty {
        exchange.remoteAddress = admitted
    } else {
        exchange.remoteAddress = peerAddress(wsi)
    }
    // Request smuggling: the body is framed by exactly one plain Content-Length or not at all.
    // Anything lws and a proxy in front could read differently is refused and the connection
    // closed, so no byte of it is ever taken for a next request.
    let lengthHeader = exchange.headers["content-length"]
    if let lengthHeader, lengthHeader.isEmpty || lengthHeader.utf8.count > 15 || !lengthHeader.utf8.allSatisfy({ (48...57).contains($0) }) {
        exchange.badFraming = "Content-Length must be one decimal number (got '\(lengthHeader.prefix(40))')"
    } else if exchange.headers["transfer-encoding"] != nil && lengthHeader != nil {
        exchange.badFraming = "Content-Length and Transfer-Encoding together are refused"
    }
    if exchange.badFraming != nil {
        exchange.closeAfterResponse = true
        dispatch(exchange, wsi: wsi, loop: loop)
        return 0
    }
    let declared = Int(lengthHeader ?? "") ?? 0
    if exchange.headers["transfer-encoding"] != nil {
        // This lws build does not de-chunk request bodies (nor any other transfer coding):
        // refuse clearly instead of hanging.
        exchange.lengthRequired = true
        exchange.closeAfterResponse = true
        dispatch(exchange, wsi: wsi, loop: loop)
        return 0
    }
    if exchange.headers["content-length"] == nil, ["POST", "PUT", "PATCH"].contains(method) {
        // No length means no body, but lws then expects one (up to 100 MiB) and would take
        // the next request for it: answer, then close.
        exchange.closeAfterResponse = true
    }
    if let intake = loop.router.multipartIntake(method: method, path: path, headers: exchange.headers, remoteAddress: exchange.remoteAddress,
                                                resume: { [weak exchange, unowned loop] in if let exchange { loop.requestResume(exchange) } }) {
        // A multipart upload: its own limits, streamed instead of buffered.
        exchange.intake = intake
        // A large upload may take long on a slow link: only the pause between chunks is limited.
        if intake.refusedUpFront {
            exchange.closeAfterResponse = true
        } else if declared > 0 {
            return 0
        }
        dispatch(exchange, wsi: wsi, loop: loop)
        return 0
    }
    if declared > loop.settings.maxBodySize {
        exchange.tooLarge = true
        exchange.closeAfterResponse = true
    } else if declared > 0 {
        // Whatever the method: lws reads a declared body before the next request, and
        // answering before it is read leaves lws re-announcing a completion forever.
        exchange.expectedLength = declared
        exchange.bodyDeadline = exchange.startedAt + Double(loop.settings.transport.bodyTimeout)
        return 0  // wait for LWS_CALLBACK_HTTP_BODY_COMPLETION
    }
    dispatch(exchange, wsi: wsi, loop: loop)
    return 0
}

private func dispatch(_ exchange: HTTPExchange, wsi: OpaquePointer, loop: ServiceLoop) {
    guard !exchange.dispatched else { return }
    exchange.dispatched = true
    // Refused before the route runs: answered in the error shape of the route the request was
    // for, and the connection closed, since its body was not (or not wholly) read.
    func refuse(_ status: Int, _ message: String, code: String) {
        let shape = loop.router.route(method: exchange.method, path: exchange.path)?.errors ?? .hub
        var response = shape.response(status, message, code: code)
        response.headers.append(("connection", "close"))
        exchange.respond(response)
    }
    if let problem = exchange.badFraming {
        refuse(400, problem, code: "BAD_REQUEST")
        return
    }
    if exchange.bodyTimedOut {
        refuse(408, "request body not received within \(loop.settings.transport.bodyTimeout) s", code: "REQUEST_TIMEOUT")
        return
    }
    if exchange.lengthRequired {
        let coding = exchange.headers["transfer-encoding"] ?? "chunked"
        refuse(411, coding.lowercased() == "chunked"
            ? "chunked request bodies are not supported: send Content-Length"
            : "Transfer-Encoding '\(coding.prefix(40))' is not supported: send Content-Length", code: "BAD_REQUEST")
        return
    }
    if exchange.tooLarge {
        refuse(413, "request body larger than \(loop.settings.maxBodySize) bytes", code: "FILE_TOO_LARGE")
        return
    }
    let request = HTTPRequest(method: exchange.method, path: exchange.path, query: exchange.query, headers: exchange.headers,
                              body: exchange.body, remoteAddress: exchange.remoteAddress)
    exchange.body = []
    if let intake = exchange.intake {
        // Handled on the upload queue once the last bytes are on disk.
        let router = loop.router
        intake.finish { [weak exchange] upload in
            var request = request
            request.upload = upload
            router.handle(request) { [weak exchange] response in exchange?.respond(response) }
        }
        return
    }
    loop.router.handle(request) { [weak exchange] response in exchange?.respond(response) }
}

/// Writes the response. One that fits the scratch buffer goes out in one write (headers and
/// body together: one syscall and one loop turn per request, which the REST benchmark showed
/// mattered); a larger one gets its headers in one writeable callback, then the body in chunks.
private func writeResponse(_ exchange: HTTPExchange, wsi: OpaquePointer, loop: ServiceLoop) -> Int32 {
    guard let response = exchange.response.withLock({ $0 }) else { return 0 }
    let isHead = exchange.method == "HEAD"
    // An HTTP/2 stream (a child of its TCP connection) needs headers and body as separate frames.
    let multiplexed = lws_get_network_wsi(wsi) != wsi
    if !multiplexed, !exchange.headersSent, let written = writeWhole(response, exchange, wsi: wsi, loop: loop, isHead: isHead) {
        return written
    }
    if !exchange.headersSent {
        exchange.headersSent = true
        let start = loop.scratch + loop.pre
        var cursor: UnsafeMutablePointer<UInt8>? = start
        let end = start + loop.scratchCapacity
        let headers = response.headers.filter { $0.0.lowercased() != "content-type" }
        let failed = response.contentType.withCString { type in
            lws_add_http_common_headers(wsi, UInt32(response.status), type, lws_filepos_t(response.body.count), &cursor, end) != 0
        }
        if failed { return -1 }
        for (name, value) in headers {
            let nameWithColon = name.lowercased() + ":"
            let ok = nameWithColon.withCString { n in
                value.withCString { v in
                    lws_add_http_header_by_name(wsi, UnsafeRawPointer(n).assumingMemoryBound(to: UInt8.self),
                                                UnsafeRawPointer(v).assumingMemoryBound(to: UInt8.self), Int32(strlen(v)), &cursor, end) == 0
                }
            }
            if !ok { return -1 }
        }
        let headersOnly = response.body.isEmpty || isHead
        if multiplexed && headersOnly {
            // No DATA frame follows: the HEADERS frame itself ends the stream.
            guard lws_finalize_http_header(wsi, &cursor, end) == 0, let tail = cursor else { return -1 }
            let length = tail - start
            if lws_write(wsi, start, length, lws_write_protocol(rawValue: UInt32(hub_lws_write_http_headers_final()))) != length { return -1 }
        } else if lws_finalize_write_http_header(wsi, start, &cursor, end) != 0 {
            return -1
        }
        logAccess(exchange, status: response.status, loop: loop)
        if headersOnly {
            return finishTransaction(exchange, wsi: wsi)
        }
        lws_callback_on_writable(wsi)
        return 0
    }
    let remaining = response.body.count - exchange.bodySent
    var chunk = min(remaining, loop.scratchCapacity)
    if multiplexed {
        // One DATA frame at most the default frame size, within the peer's flow-control window.
        let allowance = Int(lws_get_peer_write_allowance(wsi))
        chunk = min(chunk, 16_384, allowance >= 0 ? allowance : Int.max)
        if chunk <= 0 {
            lws_callback_on_writable(wsi)
            return 0
        }
    }
    let final = chunk == remaining
    let base = loop.scratch + loop.pre
    response.body.withUnsafeBufferPointer { buffer in
        base.update(from: buffer.baseAddress! + exchange.bodySent, count: chunk)
    }
    let mode = final ? hub_lws_write_http_final() : hub_lws_write_http()
    if lws_write(wsi, base, chunk, lws_write_protocol(rawValue: UInt32(mode))) != chunk { return -1 }
    exchange.bodySent += chunk
    if final {
        return finishTransaction(exchange, wsi: wsi)
    }
    lws_callback_on_writable(wsi)
    return 0
}

/// Headers and body in one write when they fit the scratch buffer (nil: they do not). The
/// content length goes in as a plain header, so lws does no body accounting of its own here.
private func writeWhole(_ response: HTTPResponse, _ exchange: HTTPExchange, wsi: OpaquePointer, loop: ServiceLoop,
                        isHead: Bool) -> Int32? {
    let headerBudget = 8 * 1024
    let body = isHead ? 0 : response.body.count
    guard body + headerBudget <= loop.scratchCapacity,
          response.headers.reduce(0, { $0 + $1.0.utf8.count + $1.1.utf8.count + 4 }) + 256 <= headerBudget else { return nil }
    exchange.headersSent = true
    let start = loop.scratch + loop.pre
    var cursor: UnsafeMutablePointer<UInt8>? = start
    let end = start + headerBudget
    guard lws_add_http_header_status(wsi, UInt32(response.status), &cursor, end) == 0,
          addHeader(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, response.contentType, &cursor, end),
          addHeader(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, String(response.body.count), &cursor, end)
    else { return -1 }
    for (name, value) in response.headers where name.lowercased() != "content-type" {
        let ok = (name.lowercased() + ":").withCString { n in
            value.withCString { v in
                lws_add_http_header_by_name(wsi, UnsafeRawPointer(n).assumingMemoryBound(to: UInt8.self),
                                            UnsafeRawPointer(v).assumingMemoryBound(to: UInt8.self), Int32(strlen(v)), &cursor, end) == 0
            }
        }
        if !ok { return -1 }
    }
    guard lws_finalize_http_header(wsi, &cursor, end) == 0, var tail = cursor else { return -1 }
    if body > 0 {
        response.body.withUnsafeBufferPointer { tail.update(from: $0.baseAddress!, count: body) }
        tail += body
    }
    let length = tail - start
    if lws_write(wsi, start, length, lws_write_protocol(rawValue: UInt32(hub_lws_write_http_headers()))) != length { return -1 }
    logAccess(exchange, status: response.status, loop: loop)
    return finishTransaction(exchange, wsi: wsi)
}

private func addHeader(_ wsi: OpaquePointer, _ token: lws_token_indexes, _ value: String,
                       _ cursor: inout UnsafeMutablePointer<UInt8>?, _ end: UnsafeMutablePointer<UInt8>) -> Bool {
    value.withCString { v in
        lws_add_http_header_by_token(wsi, token, UnsafeRawPointer(v).assumingMemoryBound(to: UInt8.self), Int32(strlen(v)), &cursor, end) == 0
    }
}

/// Ends the response: keep-alive for the next request, or close when the request body was
/// left unread (413).
private func finishTransaction(_ exchange: HTTPExchange, wsi: OpaquePointer) -> Int32 {
    // An unread body would be taken for the next request: close instead.
    if exchange.tooLarge || exchange.lengthRequired || exchange.closeAfterResponse { return -1 }
    if var admission = exchange.loop.admitted[wsi] {
        // Everything received so far belonged to answered requests: what comes next is new.
        admission.busy = false
        admission.idleSince = exchange.loop.node.clock.now()
        let fd = lws_get_socket_fd(wsi)
        var received: Int64 = -1
        var written: Int64 = -1
        hub_tcp_counters(fd, &received, &written)
        admission.answeredBytes = received >= 0 ? received : nil
        admission.writtenBytes = written >= 0 ? written : nil
        exchange.loop.admitted[wsi] = admission
    }
    if lws_get_network_wsi(wsi) != wsi {
        // An HTTP/2 stream ends here. One that carried a body may still get the client's empty
        // END_STREAM DATA frame, which lws 4.1 answers with GOAWAY for a stream already freed:
        // free it a moment later instead (lws never frees a server stream on its own).
        if exchange.expectedLength > 0 || exchange.intake != nil {
            lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_KEEPALIVE_IDLE, 1)
            return 0
        }
        return -1
    }
    return lws_http_transaction_completed(wsi) != 0 ? -1 : 0
}

private func logAccess(_ exchange: HTTPExchange, status: Int, loop: ServiceLoop) {
    let tenths = Int(((loop.node.clock.now() - exchange.startedAt) * 10_000).rounded())
    let requestID = exchange.response.withLock { $0?.headers.first { $0.0 == "x-request-id" }?.1 } ?? "-"
    loop.logger.info("\(exchange.method) \(exchange.path) \(status) \(tenths / 10).\(tenths % 10)ms id=\(requestID)")
}
