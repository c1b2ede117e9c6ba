import CLibWebSockets

/// A 408 for a first request whose head is too slow.
///
/// lws 4.1.6 closes a connection whose head is not complete within `timeout_secs_ah_idle`
/// (`lws_sul_wsitimeout_cb`, PENDING_TIMEOUT_HOLDING_AH) without calling the protocol: on the
/// first request nothing is bound yet (`protocol_bind_balance` is 0 until the head is parsed),
/// so `answerDroppedRequest` never runs for it. lws does deliver `LWS_CALLBACK_TIMER` of a
/// `lws_set_timer_usecs` timer to the unbound connection's default protocol (ours), so the
/// edge arms one when it adopts a plain-HTTP connection, a moment before lws's own deadline
/// (both start at the adoption, where lws attaches the header table), and answers there.
enum FirstRequestDeadline {
    /// How long before lws's deadline the edge answers: the effective header timeout of a first
    /// request is this much shorter.
    static let lead: Int64 = 200_000

    /// Arms the timer for a connection just adopted (plain HTTP only: a TLS connection cannot
    /// be written to beside lws).
    static func arm(_ wsi: OpaquePointer, loop: ServiceLoop) {
        guard loop.settings.transport.tls == nil else { return }
        let deadline = Int64(loop.settings.transport.headerTimeout) * 1_000_000
        lws_set_timer_usecs(wsi, max(100_000, deadline - lead))
    }

    /// The timer fired: answers 408 and has lws close the connection (returns 1) when bytes of
    /// a first head came but no request was parsed and nothing was written; otherwise (a request
    /// answered or under way, a WebSocket, a silent connection) it changes nothing.
    static func fire(_ wsi: OpaquePointer, loop: ServiceLoop) -> Int32 {
        guard lws_get_network_wsi(wsi) == wsi, lws_is_ssl(wsi) == 0, let admission = loop.admitted[wsi],
              !admission.busy, admission.answeredBytes == nil
        else { return 0 }
        let fd = lws_get_socket_fd(wsi)
        var received: Int64 = -1
        var written: Int64 = -1
        hub_tcp_counters(fd, &received, &written)
        guard received > 0, written == 0 else { return 0 }
        let text = headerTimeout(loop.settings.transport.headerTimeout)
        hub_send_now(fd, text, Int32(text.utf8.count))
        return 1
    }
}
