import CLibWebSockets
import Channels
import Glibc
import Logging
import RESTCompat

// The libwebsockets edge, split as the lws minimal examples are: this file creates the
// context, adopts the listening socket and routes each callback reason to its protocol's
// handler (WebSocketCallback.swift, HTTPCallback.swift, HTTPStreamCallback.swift, and
// RedisSocketCallback.swift for the Redis engine's sockets); RequestHead.swift reads request heads,
// HTTPResponseWriter.swift writes answers, SessionSlot.swift owns the per-connection slot.
// These files and ServiceLoop.swift are the only places that handle raw lws pointers: the
// per-session slot holds a retained `EdgeSession`, released when lws reports the connection
// closed; every pointer handed to lws outlives the call.

/// The lws protocol list; lws keeps a pointer to it for the process lifetime.
nonisolated(unsafe) private let protocols: UnsafeMutablePointer<lws_protocols> = {
    let list = UnsafeMutablePointer<lws_protocols>.allocate(capacity: 5)
    list.initialize(repeating: lws_protocols(), count: 5)
    list[0].name = UnsafePointer(strdup("hub"))
    list[0].callback = hubCallback
    list[0].per_session_data_size = MemoryLayout<UnsafeMutableRawPointer?>.size
    list[0].rx_buffer_size = webSocketReceiveChunk
    list[0].tx_packet_size = webSocketSendChunk
    list[1].name = UnsafePointer(strdup(listenerProtocol))
    list[1].callback = listenerCallback
    // The WebSocket subprotocol of the Protobuf flavour: lws picks it when the client asks for
    // it, and echoes it in the handshake; the same callback serves it.
    list[2].name = UnsafePointer(strdup(protobufSubprotocol))
    list[2].callback = hubCallback
    list[2].per_session_data_size = MemoryLayout<UnsafeMutableRawPointer?>.size
    list[2].rx_buffer_size = webSocketReceiveChunk
    list[2].tx_packet_size = webSocketSendChunk
    // The Redis engine's sockets, carried by the loop (RedisSocketCallback.swift).
    list[3].name = UnsafePointer(strdup(redisSocketProtocol))
    list[3].callback = redisSocketCallback
    return list
}()

private let listenerProtocol = "hub-listen"
/// lws allocates this much per WebSocket connection for received data (with 0 it takes the
/// 64 KiB service buffer: 67.5 KB of heap per idle connection, measured), and reads at most this
/// much from a connection per turn of the loop. Messages larger than it arrive in pieces, which
/// WebSocketCallback reassembles up to --max-message-size. A publisher whose read filled the chunk
/// makes the loop read again before it writes (ServiceLoop.run), so the small chunk does not
/// shrink the batches that go out to subscribers.
let webSocketReceiveChunk = 4096
/// With no tx_packet_size lws also caps each send at rx_buffer_size: keep sends as large as the
/// service buffer, as they were, so a coalesced batch of pushes still goes out in one write.
private let webSocketSendChunk = 64 * 1024
let protobufSubprotocol = "centrifuge-protobuf"

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
        // lws's own loop polls every descriptor each turn; on libev's epoll a turn costs only the
        // ready ones (with 10,000 connections the poll(2) walk was two thirds of the core).
        let foreignLoops = UnsafeMutablePointer<UnsafeMutableRawPointer?>.allocate(capacity: 1)
        defer { foreignLoops.deallocate() }
        foreignLoops.initialize(to: UnsafeMutableRawPointer(loop.eventLoop))
        info.foreign_loops = foreignLoops
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
            let what = transport.tls.map { " (check that \($0.cert) and \($0.key) are a PEM certificate and its key, and that libwebsockets-evlib-ev is installed)" }
                ?? " (lws loads its libev plugin: is libwebsockets-evlib-ev installed?)"
            throw HubError.startup("could not create the libwebsockets context\(what)")
        }
        guard let vhost = lws_get_vhost_by_name(context, "default"),
              hub_adopt_raw_descriptor(vhost, listenFD, listenerProtocol) != nil
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
func listenerCallback(
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
        FirstRequestDeadline.arm(connection, loop: loop)
    }
    return 0
}


let tooManyConnections = plainAnswer(503, "Service Unavailable", #"{"error":"too many connections"}"#)
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

/// The one lws protocol the hub serves (HTTP and WebSocket share it: lws binds plain HTTP to
/// the first protocol, and clients of the client protocol ask for no subprotocol). Each reason
/// goes to the handler of the protocol it belongs to.
private func hubCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let loop = loopFor(wsi) else { return 0 }
    switch reason {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        loop.serviceWakeup()
        return 0

    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION, LWS_CALLBACK_ESTABLISHED, LWS_CALLBACK_RECEIVE,
         LWS_CALLBACK_SERVER_WRITEABLE, LWS_CALLBACK_CLOSED:
        return webSocketCallback(wsi, reason, user, input, length, loop: loop)

    case LWS_CALLBACK_HTTP, LWS_CALLBACK_HTTP_BODY, LWS_CALLBACK_HTTP_BODY_COMPLETION, LWS_CALLBACK_HTTP_WRITEABLE,
         LWS_CALLBACK_CLOSED_HTTP, LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        return httpCallback(wsi, reason, user, input, length, loop: loop)

    case LWS_CALLBACK_TIMER:
        guard let wsi else { return 0 }
        return FirstRequestDeadline.fire(wsi, loop: loop)

    case LWS_CALLBACK_WSI_DESTROY:
        if let wsi, let admission = loop.admitted.removeValue(forKey: wsi) {
            loop.settings.transport.connections.release(admission.address)
        }
        return 0

    default:
        return lws_callback_http_dummy(wsi, reason, user, input, length)
    }
}
