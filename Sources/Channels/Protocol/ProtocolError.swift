/// Centrifugo client protocol error codes, sent in a reply's `error` member.
public struct ProtocolError: Error, Sendable, Equatable {
    public let code: Int
    public let message: String
    public var temporary: Bool = false

    public init(code: Int, message: String, temporary: Bool = false) {
        self.code = code
        self.message = message
        self.temporary = temporary
    }

    public static let `internal` = ProtocolError(code: 100, message: "internal server error", temporary: true)
    public static let unauthorized = ProtocolError(code: 101, message: "unauthorized")
    public static let unknownChannel = ProtocolError(code: 102, message: "unknown channel")
    public static let permissionDenied = ProtocolError(code: 103, message: "permission denied")
    public static let methodNotFound = ProtocolError(code: 104, message: "method not found")
    public static let alreadySubscribed = ProtocolError(code: 105, message: "already subscribed")
    public static let limitExceeded = ProtocolError(code: 106, message: "limit exceeded")
    public static let badRequest = ProtocolError(code: 107, message: "bad request")
    public static let notAvailable = ProtocolError(code: 108, message: "not available")
    public static let tokenExpired = ProtocolError(code: 109, message: "token expired")
    public static let expired = ProtocolError(code: 110, message: "expired")
    public static let tooManyRequests = ProtocolError(code: 111, message: "too many requests", temporary: true)
    public static let unrecoverablePosition = ProtocolError(code: 112, message: "unrecoverable position")

    /// The same code with a message that says what exactly was wrong.
    public func with(message: String) -> ProtocolError {
        ProtocolError(code: code, message: message, temporary: temporary)
    }

    public var json: JSONValue {
        .compact([("code", .int(Int64(code))), ("message", .string(message)), ("temporary", temporary ? .bool(true) : nil)])
    }
}

/// Centrifugo disconnect codes, used as WebSocket close codes. 3000–3499 tell the client
/// to reconnect, 3500–3999 not to.
public struct DisconnectReason: Sendable, Equatable {
    public let code: UInt16
    public let reason: String

    public init(code: UInt16, reason: String) {
        self.code = code
        self.reason = reason
    }

    public var reconnect: Bool { code < 3500 }

    public static let connectionClosed = DisconnectReason(code: 3000, reason: "connection closed")
    public static let shutdown = DisconnectReason(code: 3001, reason: "shutdown")
    public static let serverError = DisconnectReason(code: 3004, reason: "internal server error")
    public static let expired = DisconnectReason(code: 3005, reason: "connection expired")
    public static let subscriptionExpired = DisconnectReason(code: 3006, reason: "subscription expired")
    public static let slow = DisconnectReason(code: 3008, reason: "slow")
    public static let writeError = DisconnectReason(code: 3009, reason: "write error")
    public static let insufficientState = DisconnectReason(code: 3010, reason: "insufficient state")
    public static let forceReconnect = DisconnectReason(code: 3011, reason: "force reconnect")
    public static let noPong = DisconnectReason(code: 3012, reason: "no pong")
    public static let tooManyRequests = DisconnectReason(code: 3013, reason: "too many requests")
    public static let invalidToken = DisconnectReason(code: 3500, reason: "invalid token")
    public static let badRequest = DisconnectReason(code: 3501, reason: "bad request")
    public static let stale = DisconnectReason(code: 3502, reason: "stale")
    public static let forceNoReconnect = DisconnectReason(code: 3503, reason: "force disconnect")
    public static let connectionLimit = DisconnectReason(code: 3504, reason: "connection limit")
    public static let channelLimit = DisconnectReason(code: 3505, reason: "channel limit")
    public static let permissionDenied = DisconnectReason(code: 3507, reason: "permission denied")
    public static let tooManyErrors = DisconnectReason(code: 3509, reason: "too many errors")
}

/// Why the server removed a client from a channel (the `unsubscribe` push).
public struct UnsubscribeReason: Sendable, Equatable {
    public let code: Int
    public let reason: String
    public static let server = UnsubscribeReason(code: 2000, reason: "server unsubscribe")
    public static let insufficientState = UnsubscribeReason(code: 2500, reason: "insufficient state")
}
