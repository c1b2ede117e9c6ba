import Glibc

/// Where a gateway's launcher API listens: seed 000's `gw_ip`, optionally with a port
/// (`192.168.1.12`, `192.168.1.12:8080`, `[::1]:8080`, `localhost:8080`).
///
/// Only numeric addresses (and `localhost`) are accepted: resolving names would block the
/// outbound client's thread, and the seed registers gateways by IP.
public struct GatewayAddress: Sendable, Hashable, CustomStringConvertible {
    public let host: String
    public let port: UInt16
    let isIPv6: Bool

    public init?(_ text: String) {
        var host = Substring(text)
        var port: UInt16 = 80
        if host.first == "[" {
            guard let close = host.firstIndex(of: "]") else { return nil }
            let rest = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if !rest.isEmpty {
                guard rest.first == ":", let value = UInt16(rest.dropFirst()), value > 0 else { return nil }
                port = value
            }
        } else if host.filter({ $0 == ":" }).count == 1, let colon = host.firstIndex(of: ":") {
            guard let value = UInt16(host[host.index(after: colon)...]), value > 0 else { return nil }
            port = value
            host = host[..<colon]
        }
        if host == "localhost" { host = "127.0.0.1" }
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, String(host), &v4) == 1 {
            isIPv6 = false
        } else if inet_pton(AF_INET6, String(host), &v6) == 1 {
            isIPv6 = true
        } else {
            return nil
        }
        self.host = String(host)
        self.port = port
    }

    /// `host:port` as sent in the `Host` header and used as the connection-pool key.
    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// A non-blocking socket with a connect in progress (or done), or the errno that stopped it.
    func startConnect() -> ConnectStart {
        let family = isIPv6 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failed(errno) }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let result: Int32
        if isIPv6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            inet_pton(AF_INET6, host, &address.sin6_addr)
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            inet_pton(AF_INET, host, &address.sin_addr)
            result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        if result == 0 || errno == EINPROGRESS { return .started(fd) }
        let error = errno
        close(fd)
        return .failed(error)
    }
}

/// A socket with its connect under way, or the errno that stopped it.
enum ConnectStart {
    case started(Int32)
    case failed(Int32)
}

