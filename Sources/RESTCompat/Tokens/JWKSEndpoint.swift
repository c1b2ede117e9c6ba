import Channels

/// Where the hub fetches the JWKS its token keys come from, and the fetch itself.
///
/// Plain `http://` to an IP address or `localhost` only: the outbound client speaks no TLS
/// and resolves no names (resolving would block its thread), so the JWKS is served by an
/// issuer's sidecar or an internal address, or proxied there.
public final class JWKSEndpoint: Sendable {
    public let address: GatewayAddress
    public let path: String
    private let client: GatewayHTTPClient

    /// Checks the URL (the hub refuses to start on a bad one) and starts the client's thread.
    public init(url: String, timeout: Double, maxBodyBytes: Int) throws(ConfigProblem) {
        (address, path) = try Self.parse(url: url)
        var settings = GatewayHTTPClient.Settings(connectTimeout: min(timeout, 3), totalTimeout: timeout)
        settings.maxActive = 1
        settings.maxQueued = 4
        settings.maxIdlePerAddress = 1
        // Headers on top of the largest body the key set takes; a larger answer is cut off.
        settings.maxResponseBytes = maxBodyBytes + 16 * 1024
        client = GatewayHTTPClient(settings: settings)
    }

    /// The address and request path of a JWKS URL, or why the hub cannot fetch it (the reason
    /// leaves the URL out: it may carry a credential).
    public static func parse(url: String) throws(ConfigProblem) -> (GatewayAddress, String) {
        guard url.hasPrefix("http://") else {
            throw ConfigProblem(url.hasPrefix("https://")
                ? "token_jwks_url: https is not supported (the hub's outbound client has no TLS); serve the JWKS over http:// from the issuer's sidecar or an internal address"
                : "token_jwks_url must be an http:// URL, e.g. http://127.0.0.1:8080/.well-known/jwks.json")
        }
        let rest = url.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        guard let address = GatewayAddress(String(rest[..<slash])) else {
            throw ConfigProblem("token_jwks_url: the host must be an IP address or localhost, optionally with :port (names are not resolved)")
        }
        let path = rest[slash...].isEmpty ? "/" : String(rest[slash...])
        guard !path.contains("#"), path.utf8.allSatisfy({ (0x21...0x7E).contains($0) }) else {
            throw ConfigProblem("token_jwks_url: the path must be plain (no fragment or spaces)")
        }
        return (address, path)
    }

    /// Where the JWKS is, for logs: the address only, since the URL's path or query may carry
    /// a credential (the URL is treated as a secret, like the other token settings).
    public var shownAddress: String { "\(address)" }

    /// One GET of the JWKS; what the key set's refetches call.
    public func fetch(_ completion: @escaping @Sendable (Result<[UInt8], TokenKeySet.FetchFailure>) -> Void) {
        client.send(to: address, method: "GET", path: path) { result in
            switch result {
            case .success(let response) where response.status == 200:
                completion(.success(response.body))
            case .success(let response):
                completion(.failure(TokenKeySet.FetchFailure("JWKS endpoint answered HTTP \(response.status)")))
            case .failure(let error):
                completion(.failure(TokenKeySet.FetchFailure("\(error)")))
            }
        }
    }

    public func shutdown() { client.shutdown() }
}
