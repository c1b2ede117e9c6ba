import Channels

/// How one seed system writes its errors. Each route answers in its own system's shape, so
/// legacy callers parse errors exactly as before.
public enum ErrorShape: Sendable, Equatable {
    /// The hub's own endpoints and the server API: `{"error":{"code":N,"message":"…"}}`.
    case hub
    /// FastAPI systems (seeds 000, 002, 003): `{"detail":"…"}`.
    case fastAPI
    /// TeamCache (seed 001): `{"success":false,"error":"…"}`.
    case teamCache
    /// Meetings API (seed 004): `{"error":{"code":"…","message":"…","details":{…}}}`.
    case meetings

    /// An error response in this shape. `code` is the seed's symbolic code where it has
    /// one (seed 004); otherwise one is derived from the status.
    public func response(_ status: Int, _ message: String, code: String? = nil, details: JSONValue? = nil) -> HTTPResponse {
        switch self {
        case .hub:
            // The server API speaks Centrifugo's codes: 101 for unauthorized.
            let protocolCode: Int64 = status == 401 ? 101 : Int64(status)
            return .json(status, ["error": ["code": .int(protocolCode), "message": .string(message)]])
        case .fastAPI:
            return .json(status, ["detail": .string(message)])
        case .teamCache:
            return .json(status, ["success": false, "error": .string(message)])
        case .meetings:
            return .json(status, ["error": [
                "code": .string(code ?? Self.meetingsCode(status)), "message": .string(message), "details": details ?? [:],
            ]])
        }
    }

    static func meetingsCode(_ status: Int) -> String {
        switch status {
        case 401, 403: return "UNAUTHORIZED"
        case 404: return "NOT_FOUND"
        case 413: return "FILE_TOO_LARGE"
        case 415: return "INVALID_FILE_TYPE"
        case 429: return "RATE_LIMITED"
        case 400, 422: return "BAD_REQUEST"
        default: return "INTERNAL_ERROR"
        }
    }

    /// The message each system gives for a missing or wrong credential.
    var unauthorizedMessage: String {
        switch self {
        case .hub: return "unauthorized"
        case .fastAPI: return "Not authenticated"
        case .teamCache: return "Invalid or missing API key"
        case .meetings: return "Authentication required or invalid token"
        }
    }

    /// The 429 each system sends. Seed 003 documents `{"detail":"Rate limit exceeded","retry_after":N}`.
    func rateLimited(retryAfter: Int) -> HTTPResponse {
        switch self {
        case .fastAPI:
            return .json(429, ["detail": "Rate limit exceeded", "retry_after": .int(Int64(retryAfter))])
        case .teamCache:
            return response(429, "Too many requests, please try again later")
        case .meetings:
            return response(429, "Rate limit exceeded", code: "RATE_LIMITED", details: ["retry_after": .int(Int64(retryAfter))])
        case .hub:
            return response(429, "too many requests")
        }
    }

    /// The JSON schema of this shape, for the OpenAPI document.
    var schema: JSONValue {
        switch self {
        case .hub:
            return ["type": "object", "properties": ["error": ["type": "object", "properties": ["code": ["type": "integer"], "message": ["type": "string"]]]]]
        case .fastAPI:
            return ["type": "object", "properties": ["detail": [:], "retry_after": ["type": "integer"]]]
        case .teamCache:
            return ["type": "object", "properties": ["success": ["type": "boolean"], "error": ["type": "string"]]]
        case .meetings:
            return ["type": "object", "properties": ["error": ["type": "object", "properties": [
                "code": ["type": "string"], "message": ["type": "string"], "details": ["type": "object"],
            ]]]]
        }
    }
}

/// Thrown by handlers and request helpers; rendered in the route's error shape.
public struct RouteError: Error, Sendable {
    public var status: Int
    public var message: String
    public var code: String?
    public var details: JSONValue?

    public init(_ status: Int, _ message: String, code: String? = nil, details: JSONValue? = nil) {
        self.status = status
        self.message = message
        self.code = code
        self.details = details
    }
}
