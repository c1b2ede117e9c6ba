/// Where a stream stands: the offset of its newest publication and the epoch that names
/// this incarnation of the stream. A new epoch means earlier offsets are meaningless.
public struct StreamPosition: Sendable, Equatable {
    public var offset: UInt64
    public var epoch: String

    public init(offset: UInt64, epoch: String) {
        self.offset = offset
        self.epoch = epoch
    }

    public var json: JSONValue { ["offset": .int(Int64(offset)), "epoch": .string(epoch)] }
}

/// Who a client is, as shown in presence, join/leave and publication `info`.
public struct ClientInfo: Sendable, Equatable {
    public var user: String
    public var client: String
    /// Connection info from the connection token (`info` claim), raw JSON.
    public var connInfo: JSONValue?
    /// Channel info from the subscription token (`info` claim), raw JSON.
    public var chanInfo: JSONValue?

    public init(user: String, client: String, connInfo: JSONValue? = nil, chanInfo: JSONValue? = nil) {
        self.user = user
        self.client = client
        self.connInfo = connInfo
        self.chanInfo = chanInfo
    }

    public init?(json: JSONValue) {
        guard let client = json["client"]?.stringValue else { return nil }
        self.init(user: json["user"]?.stringValue ?? "", client: client, connInfo: json["conn_info"], chanInfo: json["chan_info"])
    }

    public var json: JSONValue {
        .compact([("user", .string(user)), ("client", .string(client)), ("conn_info", connInfo), ("chan_info", chanInfo)])
    }

    /// The bytes of `JSONWriter.write(json)`, written without building `json` first.
    func write(into out: inout [UInt8]) {
        out.append(contentsOf: #"{"user":"#.utf8)
        JSONWriter.writeString(user, into: &out)
        out.append(contentsOf: #","client":"#.utf8)
        JSONWriter.writeString(client, into: &out)
        if let connInfo {
            out.append(contentsOf: #","conn_info":"#.utf8)
            JSONWriter.write(connInfo, into: &out)
        }
        if let chanInfo {
            out.append(contentsOf: #","chan_info":"#.utf8)
            JSONWriter.write(chanInfo, into: &out)
        }
        out.append(UInt8(ascii: "}"))
    }
}

/// One message in a channel. `data` is the publisher's JSON, kept serialised.
public struct Publication: Sendable, Equatable {
    public var offset: UInt64
    public var data: JSONValue
    public var info: ClientInfo?
    public var tags: [(String, String)]
    /// Milliseconds since the epoch when the hub accepted it.
    public var time: Int64

    public init(offset: UInt64 = 0, data: JSONValue, info: ClientInfo? = nil, tags: [(String, String)] = [], time: Int64 = 0) {
        self.offset = offset
        self.data = data
        self.info = info
        self.tags = tags
        self.time = time
    }

    /// Reads a publication stored or sent as JSON (the `json` form).
    public init?(json: JSONValue) {
        guard let data = json["data"] else { return nil }
        self.init(offset: UInt64(max(0, json["offset"]?.intValue ?? 0)), data: data,
                  info: json["info"].flatMap(ClientInfo.init(json:)),
                  tags: json["tags"]?.objectValue?.compactMap { key, value in value.stringValue.map { (key, $0) } } ?? [],
                  time: json["time"]?.intValue ?? 0)
    }

    public static func == (lhs: Publication, rhs: Publication) -> Bool {
        lhs.offset == rhs.offset && lhs.data == rhs.data && lhs.info == rhs.info && lhs.time == rhs.time
            && lhs.tags.elementsEqual(rhs.tags, by: { $0 == $1 })
    }

    /// The same publication with `data` as a string of its JSON text: how JSON subscribers that
    /// negotiated fossil deltas receive whole publications (the text is the next delta's base).
    public var dataAsText: Publication {
        var copy = self
        copy.data = .string(String(decoding: JSONWriter.bytes(data), as: UTF8.self))
        return copy
    }

    /// The bytes of `JSONWriter.write(json)` (with `"delta":true` last when `delta`), written
    /// without building `json` first: once per publication, but building the tree, then
    /// freeing its arrays of tuples (generic destroys), cost more than writing the bytes.
    func write(into out: inout [UInt8], delta: Bool = false) {
        out.append(contentsOf: #"{"data":"#.utf8)
        JSONWriter.write(data, into: &out)
        if let info {
            out.append(contentsOf: #","info":"#.utf8)
            info.write(into: &out)
        }
        if offset > 0 {
            out.append(contentsOf: #","offset":"#.utf8)
            JSONWriter.writeInt(Int64(offset), into: &out)
        }
        if !tags.isEmpty {
            out.append(contentsOf: #","tags":{"#.utf8)
            for (index, (key, value)) in tags.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                JSONWriter.writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                JSONWriter.writeString(value, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
        if time > 0 {
            out.append(contentsOf: #","time":"#.utf8)
            JSONWriter.writeInt(time, into: &out)
        }
        if delta { out.append(contentsOf: #","delta":true"#.utf8) }
        out.append(UInt8(ascii: "}"))
    }

    public var json: JSONValue {
        .compact([
            ("data", data),
            ("info", info?.json),
            ("offset", offset > 0 ? .int(Int64(offset)) : nil),
            ("tags", tags.isEmpty ? nil : .object(tags.map { ($0.0, .string($0.1)) })),
            ("time", time > 0 ? .int(time) : nil),
        ])
    }
}

/// A history read: the publications asked for and the stream's current position.
public struct HistoryResult: Sendable, Equatable {
    public var publications: [Publication]
    public var position: StreamPosition

    public init(publications: [Publication], position: StreamPosition) {
        self.publications = publications
        self.position = position
    }
}

/// What a history read asks for. `limit` nil means as many as history holds, 0 means only
/// the position; `since` returns publications after that position (before it, with `reverse`).
public struct HistoryFilter: Sendable, Equatable {
    public var limit: Int?
    public var since: StreamPosition?
    public var reverse: Bool

    public init(limit: Int? = nil, since: StreamPosition? = nil, reverse: Bool = false) {
        self.limit = limit
        self.since = since
        self.reverse = reverse
    }
}
