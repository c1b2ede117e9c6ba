import CLibWebSockets
import Channels
import Glibc
import RESTCompat

// Streamed HTTP responses (SSE, HTTP streaming): headers without a length, then the body's
// frames as the engine queues them, written only from the writeable callback — the same
// bounded queue and slow-consumer rule as a WebSocket connection.

/// Sends a streamed response's headers and hands the stream its connection. The stream takes
/// the exchange's place in the session slot.
func startStream(_ exchange: HTTPExchange, _ response: HTTPResponse, body: any ResponseStream,
                 wsi: OpaquePointer, user: UnsafeMutableRawPointer?, loop: ServiceLoop) -> Int32 {
    exchange.headersSent = true
    let start = loop.scratch + loop.pre
    var cursor: UnsafeMutablePointer<UInt8>? = start
    let end = start + loop.scratchCapacity
    // No length: lws adds `connection: close` on HTTP/1.1 (the body ends with the connection);
    // on HTTP/2 the stream ends with its last DATA frame.
    let failed = response.contentType.withCString { type in
        lws_add_http_common_headers(wsi, UInt32(response.status), type, lws_filepos_t.max, &cursor, end) != 0
    }
    if failed { return -1 }
    for (name, value) in response.headers where name.lowercased() != "content-type" {
        let ok = (name.lowercased() + ":").withCString { n in
            value.withCString { v in
                lws_add_http_header_by_name(wsi, UnsafeRawPointer(n).assumingMemoryBound(to: UInt8.self),
                                            UnsafeRawPointer(v).assumingMemoryBound(to: UInt8.self), Int32(strlen(v)), &cursor, end) == 0
            }
        }
        if !ok { return -1 }
    }
    if lws_finalize_write_http_header(wsi, start, &cursor, end) != 0 { return -1 }
    logAccess(exchange, status: response.status, loop: loop)
    let stream = HTTPStream(loop: loop, wsi: wsi, remoteAddress: exchange.remoteAddress, body: body)
    keepSession(stream, in: user)
    loop.streams[ObjectIdentifier(stream)] = stream
    // A stream lives as long as the client listens: pings, not lws's idle timer, keep it honest.
    lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0)
    body.start(sink: stream)
    return 0
}

/// Writes what the stream queued: leftovers of a frame first, then whole frames, gathered into
/// the scratch buffer (one syscall per turn). Ends the response once a close was asked for
/// and everything before it is out.
func writeStream(_ stream: HTTPStream, wsi: OpaquePointer, loop: ServiceLoop) -> Int32 {
    let multiplexed = lws_get_network_wsi(wsi) != wsi
    var capacity = loop.scratchCapacity
    if multiplexed {
        // One DATA frame at most the default frame size, within the peer's flow-control window.
        let allowance = Int(lws_get_peer_write_allowance(wsi))
        capacity = min(capacity, 16_384, allowance >= 0 ? allowance : Int.max)
        if capacity <= 0 {
            lws_callback_on_writable(wsi)
            return 0
        }
    }
    let base = loop.scratch + loop.pre
    var used = 0
    func put(_ bytes: [UInt8], from offset: Int) -> Int {
        let count = min(bytes.count - offset, capacity - used)
        bytes.withUnsafeBufferPointer { (base + used).update(from: $0.baseAddress! + offset, count: count) }
        used += count
        return offset + count
    }
    if stream.carryOffset < stream.carry.count {
        stream.carryOffset = put(stream.carry, from: stream.carryOffset)
    }
    var more = false
    var close: DisconnectReason?
    if stream.carryOffset >= stream.carry.count {
        stream.carry = []
        stream.carryOffset = 0
        if used < capacity {
            let taken = stream.takeFrames(budget: capacity - used)
            more = taken.more
            close = taken.close
            for frame in taken.frames {
                let next = put(frame.bytes, from: 0)
                if next < frame.bytes.count {
                    // Only the first frame taken can be larger than the budget.
                    stream.carry = frame.bytes
                    stream.carryOffset = next
                    break
                }
            }
        } else {
            more = stream.outbound.withLock { $0.hasFrames }
        }
    }
    let pendingBytes = stream.carryOffset < stream.carry.count
    if used > 0 {
        if lws_write(wsi, base, used, lws_write_protocol(rawValue: UInt32(hub_lws_write_http()))) != used { return -1 }
    }
    if more || pendingBytes {
        lws_callback_on_writable(wsi)
        return 0
    }
    if close != nil {
        if multiplexed {
            // An HTTP/2 stream ends with an empty DATA frame flagged END_STREAM.
            _ = lws_write(wsi, base, 0, lws_write_protocol(rawValue: UInt32(hub_lws_write_http_final())))
        }
        stream.stop()
        return -1
    }
    return 0
}

/// The connection of a streamed response ended: the stream lets go of its session.
func endStream(_ user: UnsafeMutableRawPointer?, loop: ServiceLoop) {
    guard let stream = sessionIn(user) as? HTTPStream else { return }
    loop.streams.removeValue(forKey: ObjectIdentifier(stream))
    stream.stop()
}
