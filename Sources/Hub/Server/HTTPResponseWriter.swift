import CLibWebSockets
import Channels
import Glibc
import Logging
import RESTCompat

// Writing an HTTP answer through lws, and the access log line for it.

/// Writes the response. One that fits the scratch buffer goes out in one write (headers and
/// body together: one syscall and one loop turn per request, which the REST benchmark showed
/// mattered); a larger one gets its headers in one writeable callback, then the body in chunks.
func writeResponse(_ exchange: HTTPExchange, wsi: OpaquePointer, loop: ServiceLoop) -> Int32 {
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
        if willClose(exchange, response, wsi: wsi), !addHeader(wsi, WSI_TOKEN_CONNECTION, "close", &cursor, end) { return -1 }
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
func writeWhole(_ response: HTTPResponse, _ exchange: HTTPExchange, wsi: OpaquePointer, loop: ServiceLoop,
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
    // The connection closes after this answer (its body was left unread): say so, or a client
    // reusing it for its next request finds it gone without an answer.
    if willClose(exchange, response, wsi: wsi), !addHeader(wsi, WSI_TOKEN_CONNECTION, "close", &cursor, end) { return -1 }
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

func addHeader(_ wsi: OpaquePointer, _ token: lws_token_indexes, _ value: String,
                       _ cursor: inout UnsafeMutablePointer<UInt8>?, _ end: UnsafeMutablePointer<UInt8>) -> Bool {
    value.withCString { v in
        lws_add_http_header_by_token(wsi, token, UnsafeRawPointer(v).assumingMemoryBound(to: UInt8.self), Int32(strlen(v)), &cursor, end) == 0
    }
}

/// Whether an HTTP/1.1 answer needs `connection: close` added: the connection ends after it and
/// the route did not say so itself.
func willClose(_ exchange: HTTPExchange, _ response: HTTPResponse, wsi: OpaquePointer) -> Bool {
    (exchange.tooLarge || exchange.lengthRequired || exchange.closeAfterResponse) && lws_get_network_wsi(wsi) == wsi
        && !response.headers.contains { $0.0.lowercased() == "connection" }
}

/// Ends the response: keep-alive for the next request, or close when the request body was
/// left unread (413).
func finishTransaction(_ exchange: HTTPExchange, wsi: OpaquePointer) -> Int32 {
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

func logAccess(_ exchange: HTTPExchange, status: Int, loop: ServiceLoop) {
    let tenths = Int(((loop.node.clock.now() - exchange.startedAt) * 10_000).rounded())
    let requestID = exchange.response.withLock { $0?.headers.first { $0.0 == "x-request-id" }?.1 } ?? "-"
    let message: Logger.Message = "\(exchange.method) \(exchange.path) \(status) \(tenths / 10).\(tenths % 10)ms id=\(requestID)"
    guard loop.settings.structuredAccessLog else { return loop.logger.info(message) }
    loop.logger.info(message, metadata: [
        "request_id": .string(requestID), "method": .string(exchange.method), "route": .string(exchange.path),
        "status": .stringConvertible(status), "duration_ms": .stringConvertible(Double(tenths) / 10),
    ])
}
