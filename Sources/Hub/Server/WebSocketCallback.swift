import CLibWebSockets
import Channels
import Glibc
import Logging
import RESTCompat

// The WebSocket protocol callback: the upgrade filter, a connection's start, its messages
// in, its frames out (at the end of a turn, or from the writeable callback), its end.

func webSocketCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int, loop: ServiceLoop
) -> Int32 {
    switch reason {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        // Only the client-protocol endpoints (bidirectional and unidirectional) and seed 003's chat
        // endpoint upgrade to WebSocket.
        guard let wsi, let path = requestPath(wsi) else { return 1 }
        if path == "/connection/websocket" || path == "/connection/uni_websocket" { return 0 }
        // Seed 003's chat speaks its own JSON: a Protobuf client there is refused, not misread.
        if header(wsi, WSI_TOKEN_PROTOCOL)?.contains(protobufSubprotocol) == true { return 1 }
        return chatUserID(path) != nil && loop.settings.chat != nil ? 0 : 1

    case LWS_CALLBACK_ESTABLISHED:
        guard let wsi else { return -1 }
        let connection = WebSocketConnection(
            loop: loop, wsi: wsi, remoteAddress: peerAddress(wsi),
            maxQueuedBytes: loop.settings.maxQueuedBytes, maxQueuedMessages: loop.settings.maxQueuedMessages)
        // lws agreed to permessage-deflate when we offer it and the client asked for it.
        connection.compressed = loop.settings.transport.websocketCompression
            && (header(wsi, WSI_TOKEN_EXTENSIONS)?.contains("permessage-deflate") ?? false)
        if lws_is_ssl(wsi) == 0 && !connection.compressed { connection.plainSocket = lws_get_socket_fd(wsi) }
        // Registered before the session starts: starting may already close the connection
        // (a bad token) and ask for the writeable callback that sends the close frame.
        keepSession(connection, in: user)
        loop.connections[ObjectIdentifier(connection)] = connection
        if let path = requestPath(wsi), let userID = chatUserID(path), let chat = loop.settings.chat {
            let session = ChatSession(userID: userID, chat: chat, transport: connection, unframe: WebSocketFrameEncoder.payload(of:))
            connection.chat = session
            connection.session = session.clientSession
            session.start(token: bearerToken(wsi) ?? queryValue(wsi, "token"))
        } else if requestPath(wsi) == "/connection/uni_websocket" {
            // Unidirectional: the first message is the connect request, then the server talks.
            connection.session = loop.node.accept(transport: connection, wire: Wire(.uniJSON),
                                                  forwardedHeaders: forwardedHeaders(wsi, names: loop.settings.proxyHeaderNames))
        } else {
            // lws bound the connection to the subprotocol entry it negotiated.
            let codec: ProtocolCodec = negotiatedSubprotocol(wsi) == protobufSubprotocol ? .protobuf : .json
            connection.binary = codec.isBinary
            connection.session = loop.node.accept(transport: connection, codec: codec,
                                                  forwardedHeaders: forwardedHeaders(wsi, names: loop.settings.proxyHeaderNames))
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
            // lws reads one receive chunk per connection per service call: a read that (nearly)
            // filled it left more in the socket, and the loop reads again before it writes.
            if connection.receivedInService != loop.serviceCount {
                connection.receivedInService = loop.serviceCount
                connection.receivedBytes = 0
            }
            let before = connection.receivedBytes
            connection.receivedBytes += length
            let full = webSocketReceiveChunk * 3 / 4
            if before < full && connection.receivedBytes >= full { loop.saturated.append(connection) }
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
        if connection.writeFailed { return -1 }
        return writeFrames(connection, wsi: wsi, loop: loop)

    case LWS_CALLBACK_CLOSED:
        if let connection = sessionIn(user) as? WebSocketConnection {
            loop.connections.removeValue(forKey: ObjectIdentifier(connection))
            connection.outbound.withLock { $0.closing = true }
            if let chat = connection.chat { chat.closed() } else { connection.session?.closed() }
            connection.session = nil
            connection.chat = nil
        }
        releaseSession(user)
        return 0

    default:
        return 0
    }
}

func closeWith(_ wsi: OpaquePointer, code: UInt16, reason: String) {
    var bytes = Array(reason.utf8.prefix(120))
    lws_close_reason(wsi, lws_close_status(rawValue: UInt32(code)), &bytes, bytes.count)
}

/// Sends framed bytes. On a plain socket that lws holds no unsent bytes of, send(2) itself:
/// `lws_write(LWS_WRITE_RAW)` comes to the same syscall, but its role checks, buffered-out list
/// and logging calls were ~4 % of the core in a 1,000-subscriber fan-out (a write per subscriber
/// per turn). Whatever the kernel does not take goes to lws, which buffers it and finishes it
/// before any later write, so the bytes keep their order. `lwsHoldsNothing`: the caller has
/// just seen `lws_partial_buffered` return 0. False when the write failed (the connection ends).
private func sendFrames(_ connection: WebSocketConnection, wsi: OpaquePointer, _ bytes: UnsafeMutablePointer<UInt8>, _ count: Int,
                        lwsHoldsNothing: Bool) -> Bool {
    var sent = 0
    if connection.plainSocket >= 0 && (lwsHoldsNothing || lws_partial_buffered(wsi) == 0) {
        let n = send(connection.plainSocket, bytes, count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
        if n == count { return true }
        if n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { return false }
        sent = max(n, 0)
    }
    return lws_write(wsi, bytes + sent, count - sent, lws_write_protocol(rawValue: UInt32(hub_lws_write_raw()))) >= 0
}

/// Writes queued frames: one frame straight from its shared buffer, several gathered into
/// the loop's scratch buffer so a burst costs one syscall. `direct`: called at the end of a turn,
/// outside any lws callback, so a close frame waits for the writeable callback (only a callback's
/// -1 makes lws send it).
func writeFrames(_ connection: WebSocketConnection, wsi: OpaquePointer, loop: ServiceLoop, direct: Bool = false) -> Int32 {
    // The loop's array for the frames taken, lent out for this call (see `takeFrames(budget:into:)`).
    var frames = loop.takenFrames
    loop.takenFrames = []
    defer {
        // One by one: `removeAll(keepingCapacity:)` goes through a generic range replacement
        // and destroy, several times the cost of releasing the one or two frames of a write.
        while frames.popLast() != nil {}
        // A burst's large array goes; a small one is kept for the next write.
        loop.takenFrames = frames.capacity <= 64 ? frames : []
    }
    let (more, close) = connection.takeFrames(budget: connection.compressed ? 0 : loop.scratchCapacity, into: &frames)
    if connection.compressed, let frame = frames.first {
        // permessage-deflate: lws frames and compresses the payload itself, one message per
        // writeable callback (it finishes a message's compressed tail before calling us again).
        let payload = WebSocketFrameEncoder.payload(of: frame)
        let mode = connection.binary ? hub_lws_write_binary() : hub_lws_write_text()
        if payload.count <= loop.scratchCapacity {
            let base = loop.scratch + loop.pre
            payload.withUnsafeBufferPointer { base.update(from: $0.baseAddress!, count: $0.count) }
            if lws_write(wsi, base, payload.count, lws_write_protocol(rawValue: UInt32(mode))) < 0 { return -1 }
        } else {
            var buffer = [UInt8](repeating: 0, count: loop.pre + payload.count)
            buffer.replaceSubrange(loop.pre..., with: payload)
            let failed = buffer.withUnsafeMutableBufferPointer { all in
                lws_write(wsi, all.baseAddress! + loop.pre, payload.count, lws_write_protocol(rawValue: UInt32(mode))) < 0
            }
            if failed { return -1 }
        }
    } else if frames.count == 1, let frame = frames.first, !frame.bytes.isEmpty {
        let sent = frame.bytes.withUnsafeBufferPointer { buffer in
            sendFrames(connection, wsi: wsi, UnsafeMutablePointer(mutating: buffer.baseAddress!), buffer.count, lwsHoldsNothing: direct)
        }
        if !sent { return -1 }
    } else if frames.count > 1 {
        let base = loop.scratch + loop.pre
        var used = 0
        for frame in frames {
            frame.bytes.withUnsafeBufferPointer { buffer in
                (base + used).update(from: buffer.baseAddress!, count: buffer.count)
            }
            used += frame.bytes.count
        }
        if !sendFrames(connection, wsi: wsi, base, used, lwsHoldsNothing: direct) { return -1 }
    }
    if more || (direct && close != nil) {
        lws_callback_on_writable(wsi)
        return 0
    }
    if let close {
        closeWith(wsi, code: close.code, reason: close.reason)
        return -1
    }
    return 0
}
