import CLibWebSockets
import Channels
import Glibc
import Logging
import RESTCompat

// The HTTP request/response protocol callback: a request's head, its body in, its answer out,
// and the answers lws would not give for request heads it drops.

func httpCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int, loop: ServiceLoop
) -> Int32 {
    switch reason {
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
        guard let wsi else { return 0 }
        if let stream = sessionIn(user) as? HTTPStream { return writeStream(stream, wsi: wsi, loop: loop) }
        guard let exchange = sessionIn(user) as? HTTPExchange else { return 0 }
        if !exchange.headersSent, exchange.method != "HEAD", let response = exchange.response.withLock({ $0 }), let body = response.stream {
            return startStream(exchange, response, body: body, wsi: wsi, user: user, loop: loop)
        }
        return writeResponse(exchange, wsi: wsi, loop: loop)

    case LWS_CALLBACK_CLOSED_HTTP:
        endStream(user, loop: loop)
        releaseSession(user)
        return 0

    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        // lws rebinds the protocol after every keep-alive transaction and frees the per-session
        // slot without a CLOSED_HTTP: let go of the exchange in it here, or every answered
        // request (response body included) would stay retained for good.
        if let wsi, let input, String(cString: input.assumingMemoryBound(to: CChar.self)) == "__lws_close_free_wsi" {
            answerDroppedRequest(wsi, loop: loop)
        }
        endStream(user, loop: loop)
        releaseSession(user)
        return 0

    default:
        return 0
    }
}

func beginHTTP(wsi: OpaquePointer, user: UnsafeMutableRawPointer?, loop: ServiceLoop,
                       input: UnsafeMutableRawPointer?, length: Int) -> Int32 {
    let exchange = HTTPExchange(loop: loop, wsi: wsi, startedAt: loop.node.clock.now())
    keepSession(exchange, in: user)
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
    if path.hasPrefix("/connection/"), !loop.settings.proxyHeaderNames.isEmpty {
        exchange.forwardedHeaders = forwardedHeaders(wsi, names: loop.settings.proxyHeaderNames)
    }
    if path.hasPrefix("/connection/") || exchange.headers["accept"]?.contains("text/event-stream") == true {
        for name in streamRequestHeaders {
            if let value = customHeader(wsi, name + ":") { exchange.headers[name] = value }
        }
    }
    if loop.router.tracing {
        for name in traceRequestHeaders {
            if let value = customHeader(wsi, name + ":") { exchange.headers[name] = value }
        }
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

func dispatch(_ exchange: HTTPExchange, wsi: OpaquePointer, loop: ServiceLoop) {
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
    var built = HTTPRequest(method: exchange.method, path: exchange.path, query: exchange.query, headers: exchange.headers,
                            body: exchange.body, remoteAddress: exchange.remoteAddress)
    built.forwardedHeaders = exchange.forwardedHeaders
    let request = built
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

let badRequest = plainAnswer(400, "Bad Request", #"{"error":"malformed request: bad request line, header, or percent-encoding such as %00"}"#)
func headTooLarge(_ limit: Int) -> String {
    plainAnswer(431, "Request Header Fields Too Large", #"{"error":"request head larger than \#(limit) bytes"}"#)
}
func headerTimeout(_ seconds: Int) -> String {
    plainAnswer(408, "Request Timeout", #"{"error":"request head not received within \#(seconds) s"}"#)
}

/// lws 4.1 closes without a word on some request heads (a `%00` in the path, a head over
/// `max_header_size`, one not complete in time). A keep-alive connection that lws closes with
/// request bytes it never turned into a request gets the answer lws would not give. Runs while
/// lws drops the protocol on its way to closing, before it shuts the socket for writing; lws
/// binds the protocol only once a first request was parsed, so the first request of a
/// connection is not covered.
func answerDroppedRequest(_ wsi: OpaquePointer, loop: ServiceLoop) {
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

/// A whole HTTP/1.1 answer for a connection lws cannot answer itself; the connection closes.
func plainAnswer(_ status: Int, _ phrase: String, _ body: String) -> String {
    "HTTP/1.1 \(status) \(phrase)\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n\(body)"
}
