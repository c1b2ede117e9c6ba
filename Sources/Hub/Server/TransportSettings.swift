import Synchronization

/// How the edge talks to the network: TLS, WebSocket compression, a deadline for each stage
/// of a request, and how many connections it holds. docs/security.md ("Transport") lists
/// what each promises and the test that checks it.
struct TransportSettings: Sendable {
    /// PEM certificate and key; nil serves plain HTTP/WS.
    var tls: (cert: String, key: String)?
    var websocketCompression: Bool
    /// ALPN offers h2 besides http/1.1 (TLS only).
    var http2: Bool
    /// TLS handshake, and the longest pause between two chunks of a request body (lws `timeout_secs`).
    var handshakeTimeout: Int
    /// From the first byte of a request to the end of its headers (lws `timeout_secs_ah_idle`).
    var headerTimeout: Int
    /// An HTTP keep-alive connection waiting for its next request (lws `keepalive_timeout`).
    var idleTimeout: Int
    /// From the end of the headers to the last byte of a body held in memory, however it
    /// trickles in (checked as chunks arrive; a pause is cut by `handshakeTimeout`).
    var bodyTimeout: Int
    var maxHeaderSize: Int
    var reusePort: Bool
    let connections: ConnectionLimiter

    init(config: HubConfig) {
        if let cert = config.tlsCert, let key = config.tlsKey { tls = (cert, key) }
        websocketCompression = config.websocketCompression
        http2 = config.http2
        handshakeTimeout = config.handshakeTimeout
        headerTimeout = config.headerTimeout
        idleTimeout = config.idleTimeout
        bodyTimeout = config.bodyTimeout
        maxHeaderSize = config.maxHeaderSize
        reusePort = config.reusePort
        connections = ConnectionLimiter(total: config.maxConnections, perAddress: config.maxConnectionsPerIP)
    }
}

/// Open connections in total and per client address, shared by every service loop: a
/// connection over either limit is refused as it is accepted, before lws sees it.
final class ConnectionLimiter: Sendable {
    let total: Int
    /// 0: no per-address limit.
    let perAddress: Int
    private let open = Mutex<(total: Int, byAddress: [String: Int])>((0, [:]))

    init(total: Int, perAddress: Int) {
        self.total = total
        self.perAddress = perAddress
    }

    /// Counts a new connection from `address`, or refuses it (false) and counts nothing.
    func admit(_ address: String) -> Bool {
        open.withLock { state in
            if state.total >= total { return false }
            let mine = state.byAddress[address, default: 0]
            if perAddress > 0 && mine >= perAddress { return false }
            state.total += 1
            state.byAddress[address] = mine + 1
            return true
        }
    }

    func release(_ address: String) {
        open.withLock { state in
            state.total -= 1
            let left = state.byAddress[address, default: 1] - 1
            if left <= 0 { state.byAddress.removeValue(forKey: address) } else { state.byAddress[address] = left }
        }
    }

    var count: Int { open.withLock { $0.total } }
}
