import CLibWebSockets
import RESTCompat

// Reading a request head through lws: tokenised and custom headers, the query, the peer.

func header(_ wsi: OpaquePointer, _ token: lws_token_indexes) -> String? {
    let length = Int(lws_hdr_total_length(wsi, token))
    guard length > 0 else { return nil }
    var buffer = [CChar](repeating: 0, count: length + 1)
    guard lws_hdr_copy(wsi, &buffer, Int32(length + 1), token) >= 0 else { return nil }
    return String(cString: buffer)
}

func customHeader(_ wsi: OpaquePointer, _ name: String) -> String? {
    let length = Int(lws_hdr_custom_length(wsi, name, Int32(name.utf8.count)))
    guard length > 0 else { return nil }
    var buffer = [CChar](repeating: 0, count: length + 1)
    guard lws_hdr_custom_copy(wsi, &buffer, Int32(length + 1), name, Int32(name.utf8.count)) >= 0 else { return nil }
    return String(cString: buffer)
}

func peerAddress(_ wsi: OpaquePointer) -> String {
    var buffer = [CChar](repeating: 0, count: 64)
    guard lws_get_peer_simple(wsi, &buffer, 64) != nil else { return "" }
    return String(cString: buffer)
}

let methodTokens: [(lws_token_indexes, String)] = [
    (WSI_TOKEN_GET_URI, "GET"), (WSI_TOKEN_POST_URI, "POST"), (WSI_TOKEN_OPTIONS_URI, "OPTIONS"),
    (WSI_TOKEN_PUT_URI, "PUT"), (WSI_TOKEN_PATCH_URI, "PATCH"), (WSI_TOKEN_DELETE_URI, "DELETE"),
    (WSI_TOKEN_HEAD_URI, "HEAD"),
]

let requestHeaders: [(lws_token_indexes, String)] = [
    (WSI_TOKEN_HTTP_AUTHORIZATION, "authorization"), (WSI_TOKEN_HTTP_CONTENT_TYPE, "content-type"),
    (WSI_TOKEN_HTTP_CONTENT_LENGTH, "content-length"), (WSI_TOKEN_ORIGIN, "origin"),
    (WSI_TOKEN_HTTP_USER_AGENT, "user-agent"), (WSI_TOKEN_HOST, "host"), (WSI_TOKEN_HTTP_ACCEPT, "accept"),
    (WSI_TOKEN_HTTP_TRANSFER_ENCODING, "transfer-encoding"),
    (WSI_TOKEN_HTTP_RANGE, "range"),
]

/// Custom headers lws does not tokenise; the names routes read.
let customRequestHeaders = ["x-api-key", "x-request-id", "access-control-request-method", "access-control-request-headers"]
/// Where an EventSource resumes (`uni_sse`, live REST reads); read only for requests that can stream.
let streamRequestHeaders = ["last-event-id"]
/// W3C Trace Context, read only while traces are exported (each custom header is a lookup).
let traceRequestHeaders = ["traceparent", "tracestate"]

/// The user id of a `/ws/{user_id}` path (percent-decoded), or nil for other paths.
func chatUserID(_ path: String) -> String? {
    guard path.hasPrefix("/ws/") else { return nil }
    let rest = path.dropFirst(4)
    guard !rest.isEmpty, !rest.contains("/") else { return nil }
    return HTTPRequest.percentDecode(rest)
}

func bearerToken(_ wsi: OpaquePointer) -> String? {
    guard let auth = header(wsi, WSI_TOKEN_HTTP_AUTHORIZATION) else { return nil }
    let parts = auth.split(separator: " ", maxSplits: 1)
    guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
    return String(parts[1])
}

/// One decoded query parameter of the request.
func queryValue(_ wsi: OpaquePointer, _ name: String) -> String? {
    var index: Int32 = 0
    var fragment = [CChar](repeating: 0, count: 4096)
    while lws_hdr_copy_fragment(wsi, &fragment, Int32(fragment.count), WSI_TOKEN_HTTP_URI_ARGS, index) > 0 {
        let pair = String(cString: fragment)
        if let eq = pair.firstIndex(of: "="), pair[..<eq] == name {
            return HTTPRequest.percentDecode(pair[pair.index(after: eq)...])
        }
        index += 1
    }
    return nil
}

/// The path of a WebSocket upgrade or HTTP request.
func requestPath(_ wsi: OpaquePointer) -> String? {
    header(wsi, WSI_TOKEN_GET_URI)
}

/// The name of the protocol entry lws bound a WebSocket connection to (its subprotocol).
func negotiatedSubprotocol(_ wsi: OpaquePointer) -> String? {
    guard let proto = lws_get_protocol(wsi), let name = proto.pointee.name else { return nil }
    return String(cString: name)
}

/// The request headers `names` lists that the request carries, named as configured: what a
/// client session forwards to the backend proxies. lws keeps the headers it knows as tokens
/// and the rest as custom headers, so each name is looked up the way lws stored it.
func forwardedHeaders(_ wsi: OpaquePointer, names: [String]) -> [(String, String)] {
    names.compactMap { name in
        let wanted = name.lowercased() + ":"
        var token: lws_token_indexes?
        for index in 0..<Int32(WSI_TOKEN_COUNT.rawValue) {
            let candidate = lws_token_indexes(rawValue: UInt32(index))
            guard let text = lws_token_to_string(candidate) else { continue }
            if String(cString: text) == wanted { token = candidate; break }
        }
        let value = token.map { header(wsi, $0) } ?? customHeader(wsi, wanted)
        return value.map { (name, $0) }
    }
}
