/// The commands a backend may decide for the hub (Centrifugo's proxy kinds). The raw value is
/// the kind's name in config keys and metrics.
public enum ProxyKind: String, Sendable, CaseIterable {
    case connect, refresh, subscribe, publish, rpc
    case subRefresh = "sub_refresh"
}

/// What a backend decided: its `result`, an `error` for the client's reply, or a `disconnect`.
/// A backend that could not be asked (timeout, refused, 5xx, garbage) comes back as `.error`
/// with the protocol's temporary internal error, as in Centrifugo.
public enum ProxyAnswer: Sendable, Equatable {
    case result(JSONValue)
    case error(ProtocolError)
    case disconnect(DisconnectReason)

    /// Reads a backend's HTTP body: `{"result": {…}}`, `{"error": {"code", "message", "temporary"}}`
    /// or `{"disconnect": {"code", "reason"}}`. Nil for anything else, which the caller treats as
    /// the backend failing. An empty `{}` is an empty result (Centrifugo allows it).
    public static func parse(_ body: [UInt8]) -> ProxyAnswer? {
        guard let json = try? JSONParser.parse(body), json.objectValue != nil else { return nil }
        if let error = json["error"], error != .null {
            guard let code = error["code"]?.intValue, (0...Int64(UInt32.max)).contains(code) else { return nil }
            return .error(ProtocolError(code: Int(code), message: error["message"]?.stringValue ?? "",
                                        temporary: error["temporary"]?.boolValue ?? false))
        }
        if let disconnect = json["disconnect"], disconnect != .null {
            guard let code = disconnect["code"]?.intValue, (0...Int64(UInt16.max)).contains(code) else { return nil }
            return .disconnect(DisconnectReason(code: UInt16(code), reason: disconnect["reason"]?.stringValue ?? ""))
        }
        var result = json["result"] ?? [:]
        if result == .null { result = [:] }
        guard result.objectValue != nil else { return nil }
        return .result(result)
    }

    /// A payload of a result: `data` as JSON, or `b64data` decoded and parsed (the hub relays JSON
    /// payloads to every codec, so bytes that are not JSON are refused).
    public static func payload(_ result: JSONValue, _ name: String) -> Payload {
        if let value = result[name] { return .value(value) }
        guard let b64 = result["b64" + name]?.stringValue else { return .absent }
        guard let bytes = Base64URL.decode(b64), let parsed = try? JSONParser.parse(bytes) else { return .invalid }
        return .value(parsed)
    }

    public enum Payload: Sendable, Equatable {
        case absent, invalid
        case value(JSONValue)

        /// The value, or nil when the backend sent none.
        public var json: JSONValue? { if case .value(let v) = self { return v } else { return nil } }
    }
}

/// The backend the hub asks when a client connects without a token, refreshes, subscribes,
/// publishes, calls an RPC or refreshes a subscription (Centrifugo's proxy feature). The engine
/// knows nothing of how it is reached; the hub implements it over HTTP. `call` must never block
/// the caller's thread: it answers later, once, on any thread.
public protocol ProxyBackend: Sendable {
    /// Whether this kind has an endpoint. Channel kinds are proxied only in namespaces that ask
    /// for it (`proxy_subscribe`, `proxy_publish`, `proxy_sub_refresh`).
    func proxies(_ kind: ProxyKind) -> Bool
    /// Sends the request (Centrifugo's JSON shape for the kind) with the client's forwarded
    /// headers, and answers once. `endpoint`: a namespace's own URL for the kind, else the global one.
    func call(_ kind: ProxyKind, channel: String?, endpoint: String?, request: JSONValue, headers: [(String, String)],
              completion: @escaping @Sendable (ProxyAnswer) -> Void)
}
