import Channels
import Logging
import Store
import Synchronization

/// Media-gateway rooms (seed 000) on the record store and the channel engine: allocation,
/// forwarding to each gateway's launcher API (seed 002), and a publication on the
/// gateway channels for every change. The route tables are thin over this.
///
/// Every state lives in `gateway:{gw_id}` records (and the `gateway-room:{room}` index);
/// this type keeps nothing but the set of gateways it is talking to right now.
public final class GatewayService: Sendable {
    public struct Settings: Sendable {
        public var connectTimeout: Double = 3
        public var totalTimeout: Double = 10
        public var monitorInterval: Double = 5
        public var monitorFailures = 3
        public init() {}
    }

    /// Every change of every gateway.
    public static let allChannel = "gateways:all"
    public static func channel(gateway id: String) -> String { "gateways:id:" + id }
    public static func channel(room: String) -> String { "gateways:room:" + room }
    /// The namespace the gateway channels live in (history keeps their recent changes).
    public static let namespace = "gateways"

    public typealias Reply = @Sendable (HTTPResponse) -> Void

    let store: any RecordStore
    let node: Node
    let client: GatewayHTTPClient
    public let settings: Settings
    let logger: Logger
    /// Gateways with a start or stop in flight from this node: the monitor leaves them alone.
    let inFlight = Mutex<Set<String>>([])

    public init(store: any RecordStore, node: Node, client: GatewayHTTPClient, settings: Settings, logger: Logger) {
        self.store = store
        self.node = node
        self.client = client
        self.settings = settings
        self.logger = logger
    }

    static func error(_ status: Int, _ message: String) -> HTTPResponse { ErrorShape.fastAPI.response(status, message) }
    static let storeDown = error(503, "Gateway store unavailable")

    // MARK: Reading

    /// One gateway record; nil when absent or not in the seven-field format.
    func record(_ id: String, completion: @escaping @Sendable (Result<GatewayRecord?, StoreError>) -> Void) {
        store.get(GatewayRecord.key(id)) { result in
            completion(result.map { $0.flatMap(GatewayRecord.init(bytes:)) })
        }
    }

    /// Every gateway record, in gw_id order, a page at a time from the store.
    func allRecords(completion: @escaping @Sendable (Result<[(String, GatewayRecord)], StoreError>) -> Void) {
        @Sendable func page(after: String?, found: [(String, GatewayRecord)]) {
            store.list(prefix: GatewayRecord.keyPrefix, after: after, limit: 500) { result in
                switch result {
                case .failure(let error): completion(.failure(error))
                case .success(let records):
                    var found = found
                    for record in records {
                        guard let parsed = GatewayRecord(bytes: record.value) else { continue }
                        found.append((String(record.key.dropFirst(GatewayRecord.keyPrefix.count)), parsed))
                    }
                    if records.count < 500 { completion(.success(found)) } else { page(after: records.last!.key, found: found) }
                }
            }
        }
        page(after: nil, found: [])
    }

    /// The gateway serving a room, through the room index (one read, never a scan).
    func gateway(inRoom room: String, completion: @escaping @Sendable (Result<(String, GatewayRecord)?, StoreError>) -> Void) {
        store.get(GatewayRecord.roomKey(room)) { [self] result in
            switch result {
            case .failure(let error): completion(.failure(error))
            case .success(nil): completion(.success(nil))
            case .success(let id?):
                let id = String(decoding: id, as: UTF8.self)
                record(id) { result in
                    // The index may lag a record another tool rewrote: trust only a match.
                    completion(result.map { record in record.flatMap { $0.room == room ? (id, $0) : nil } })
                }
            }
        }
    }

    /// `GET /status` and `GET /progress`: the stored state, by gw_id (preferred) or room.
    public func status(id: String?, room: String?, reply: @escaping Reply) {
        let answer: @Sendable (Result<GatewayRecord?, StoreError>) -> Void = { result in
            switch result {
            case .failure: reply(Self.storeDown)
            case .success(nil): reply(Self.error(404, "Gateway or room not found"))
            case .success(let record?): reply(.json(200, ["status": "success", "data": record.statusData]))
            }
        }
        if let id, !id.isEmpty {
            record(id, completion: answer)
        } else if let room, !room.isEmpty {
            gateway(inRoom: room) { answer($0.map { $0?.1 }) }
        } else {
            reply(Self.error(400, "Missing parameters"))
        }
    }

    /// `GET /admin/statuses`: every gateway by gw_id.
    public func allStatuses(reply: @escaping Reply) {
        allRecords { result in
            switch result {
            case .failure: reply(Self.storeDown)
            case .success(let all): reply(.json(200, .object(all.map { ($0.0, $0.1.adminStatus) })))
            }
        }
    }

    /// The state of every gateway and the position of `gateways:all` just before it was read:
    /// a dashboard shows the snapshot and subscribes recovering from that position, so it
    /// misses no change and needs no polling.
    public func snapshot(completion: @escaping @Sendable (Result<JSONValue, ProtocolError>) -> Void) {
        node.history(channel: Self.allChannel, filter: HistoryFilter(limit: 0)) { [self] position in
            switch position {
            case .failure(let error): completion(.failure(error))
            case .success(let history):
                allRecords { result in
                    switch result {
                    case .failure: completion(.failure(ProtocolError.internal))
                    case .success(let all):
                        completion(.success([
                            "gateways": .object(all.map { ($0.0, $0.1.liveStatus) }),
                            "offset": .int(Int64(history.position.offset)), "epoch": .string(history.position.epoch),
                        ]))
                    }
                }
            }
        }
    }

    // MARK: Registration

    /// `POST /register`: `<gw_ip>|started|<gw_type>|None|<start_time>|0|0`.
    public func register(id: String, ip: String, type: String, reply: @escaping Reply) {
        guard GatewayAddress(ip) != nil else {
            reply(Self.error(400, "'gw_ip' must be an IP address, optionally with :port"))
            return
        }
        if let problem = GatewayRecord.problem(with: id, field: "gw_id") ?? GatewayRecord.problem(with: type, field: "gw_type") {
            reply(Self.error(400, problem))
            return
        }
        let record = GatewayRecord(ip: ip, state: "started", type: type, room: nil, startTime: GatewayRecord.isoNow())
        store.get(GatewayRecord.key(id)) { [self] previous in
            let previousRoom = (try? previous.get()).flatMap { $0 }.flatMap(GatewayRecord.init(bytes:))?.room
            store.put(GatewayRecord.key(id), value: record.bytes) { [self] result in
                guard case .success = result else { reply(Self.storeDown); return }
                if let previousRoom { releaseRoom(previousRoom, id: id) }
                publish("register", id: id, record: record, rooms: [])
                reply(.json(200, ["status": "success", "message": .string("Gateway \(id) registered"), "gw_id": .string(id)]))
            }
        }
    }

    /// `POST /unregister`: deletes the mapping.
    public func unregister(id: String, reply: @escaping Reply) {
        record(id) { [self] current in
            store.delete(GatewayRecord.key(id)) { [self] result in
                switch result {
                case .failure: reply(Self.storeDown)
                case .success(false): reply(Self.error(404, "Gateway not found"))
                case .success(true):
                    let last = (try? current.get()).flatMap { $0 }
                    if let room = last?.room { releaseRoom(room, id: id) }
                    publishRemoval("unregister", id: id, last: last, reason: "unregistered")
                    reply(.json(200, ["status": "success", "message": .string("Gateway \(id) unregistered")]))
                }
            }
        }
    }

    // MARK: Start and stop

    /// `POST /start`: claims a free gateway with compare-and-set (so concurrent starts on any
    /// number of nodes never share one), then asks it to start.
    /// `trace`, here and below: the request's span, so the call to the gateway is its child.
    public func start(room: String, body: JSONValue, trace: TraceParent? = nil, reply: @escaping Reply) {
        if let problem = GatewayRecord.problem(with: room, field: "room") {
            reply(Self.error(400, problem))
            return
        }
        claimFree(room: room, rounds: Self.claimRounds) { [self] outcome in
            switch outcome {
            case .failure: reply(Self.storeDown)
            case .success(nil): reply(Self.error(503, "No available gateways"))
            case .success(let (id, previous, claimed)?):
                forwardStart(id: id, previous: previous, claimed: claimed, body: body, trace: trace, reply: reply)
            }
        }
    }

    /// Members of the free set read per round: enough that a round rarely comes back with every
    /// one taken, few enough that the read stays small however many gateways there are.
    static let claimBatch = 16
    /// Rounds before a start gives up: each new round means every member read was taken by
    /// another start in the meantime, i.e. the free set shrank by at least a batch.
    static let claimRounds = 64

    /// A random few of the free set, tried in turn; when all of them were taken by other starts
    /// (which took them out of the set), another few.
    private func claimFree(room: String, rounds: Int,
                           completion: @escaping @Sendable (Result<(String, GatewayRecord, GatewayRecord)?, StoreError>) -> Void) {
        store.members(of: GatewayRecord.free.name, limit: Self.claimBatch) { [self] result in
            guard case .success(let members) = result else {
                if case .failure(let error) = result { completion(.failure(error)) }
                return
            }
            let candidates = members.compactMap { member -> (String, GatewayRecord)? in
                guard let record = GatewayRecord(bytes: member.value), record.isAvailable else { return nil }
                return (String(member.key.dropFirst(GatewayRecord.keyPrefix.count)), record)
            }.shuffled()
            guard !candidates.isEmpty else { completion(.success(nil)); return }
            claim(candidates[...], room: room) { [self] outcome in
                if case .success(nil) = outcome, rounds > 1 {
                    claimFree(room: room, rounds: rounds - 1, completion: completion)
                } else {
                    completion(outcome)
                }
            }
        }
    }

    /// Seed 002's `POST /gateway/start` on the hub: the named gateway, if it is free.
    public func start(id: String, room: String, body: JSONValue, trace: TraceParent? = nil, reply: @escaping Reply) {
        record(id) { [self] result in
            switch result {
            case .failure: reply(Self.storeDown)
            case .success(nil): reply(Self.error(404, "No mapping found for provided gw_id"))
            case .success(let current?):
                guard current.isAvailable else {
                    reply(Self.error(409, "Gateway \(id) is \(current.state), not started"))
                    return
                }
                claim([(id, current)][...], room: room) { [self] outcome in
                    switch outcome {
                    case .failure: reply(Self.storeDown)
                    case .success(nil): reply(Self.error(409, "Gateway \(id) was taken by another request"))
                    case .success(let (id, previous, claimed)?):
                        forwardStart(id: id, previous: previous, claimed: claimed, body: body, trace: trace, reply: reply)
                    }
                }
            }
        }
    }

    private func claim(_ candidates: ArraySlice<(String, GatewayRecord)>, room: String,
                       completion: @escaping @Sendable (Result<(String, GatewayRecord, GatewayRecord)?, StoreError>) -> Void) {
        guard let (id, current) = candidates.first else { completion(.success(nil)); return }
        let claimed = GatewayRecord(ip: current.ip, state: "working", type: current.type, room: room,
                                    startTime: GatewayRecord.isoNow(), mediaDuration: "0", transcriptProgress: "0")
        store.compareAndSet(GatewayRecord.key(id), expected: current.bytes, new: claimed.bytes) { [self] result in
            switch result {
            case .failure(let error): completion(.failure(error))
            case .success(true):
                inFlight.withLock { _ = $0.insert(id) }
                completion(.success((id, current, claimed)))
            case .success(false): claim(candidates.dropFirst(), room: room, completion: completion)
            }
        }
    }

    private func forwardStart(id: String, previous: GatewayRecord, claimed: GatewayRecord, body: JSONValue, trace: TraceParent?,
                              reply: @escaping Reply) {
        let room = claimed.room ?? ""
        let members = (body.objectValue ?? []).filter { $0.0 != "gw_id" } + [("gw_id", JSONValue.string(id))]
        store.put(GatewayRecord.roomKey(room), value: Array(id.utf8)) { [self] _ in
            call(id: id, ip: claimed.ip, method: "POST", path: "/gateway/start", body: JSONWriter.bytes(.object(members)),
                 trace: trace) { [self] outcome in
                switch outcome {
                case .success(let response) where (200..<300).contains(response.status):
                    inFlight.withLock { _ = $0.remove(id) }
                    publish("start", id: id, record: claimed, rooms: [room])
                    reply(response)
                case .success(let response):
                    release(id: id, claimed: claimed, previous: previous) { reply(response) }
                case .failure(let failure):
                    release(id: id, claimed: claimed, previous: previous) { reply(failure.response) }
                }
            }
        }
    }

    /// Gives a claimed gateway back after its start failed.
    private func release(id: String, claimed: GatewayRecord, previous: GatewayRecord, then: @escaping @Sendable () -> Void) {
        store.compareAndSet(GatewayRecord.key(id), expected: claimed.bytes, new: previous.bytes) { [self] result in
            inFlight.withLock { _ = $0.remove(id) }
            if case .success(false) = result { logger.warning("gateway \(id) changed while its start failed; left as it is") }
            if case .failure(let error) = result { logger.error("gateway \(id): could not release after a failed start: \(error)") }
            releaseRoom(claimed.room ?? "", id: id)
            then()
        }
    }

    /// `POST /stop`: asks the gateway to stop; on success the record is `stopped` without a room.
    public func stop(id: String, body: JSONValue, trace: TraceParent? = nil, reply: @escaping Reply) {
        record(id) { [self] result in
            switch result {
            case .failure: reply(Self.storeDown)
            case .success(nil): reply(Self.error(404, "No mapping found for provided gw_id"))
            case .success(let current?):
                let members = (body.objectValue ?? []).filter { $0.0 != "gw_id" } + [("gw_id", JSONValue.string(id))]
                inFlight.withLock { _ = $0.insert(id) }
                call(id: id, ip: current.ip, method: "POST", path: "/gateway/stop", body: JSONWriter.bytes(.object(members)),
                     trace: trace) { [self] outcome in
                    guard case .success(let response) = outcome, (200..<300).contains(response.status) else {
                        inFlight.withLock { _ = $0.remove(id) }
                        switch outcome {
                        case .success(let response): reply(response)
                        case .failure(let failure): reply(failure.response)
                        }
                        return
                    }
                    update(id: id) { record in
                        var record = record
                        record.state = "stopped"
                        record.room = nil
                        record.mediaDuration = "None"
                        record.transcriptProgress = "None"
                        return record
                    } completion: { [self] outcome in
                        inFlight.withLock { _ = $0.remove(id) }
                        if case .success(let (before, after)?) = outcome {
                            if let room = before.room { releaseRoom(room, id: id) }
                            publish("stop", id: id, record: after, rooms: before.room.map { [$0] } ?? [])
                        }
                        reply(response)
                    }
                }
            }
        }
    }

    /// `GET|POST /command`: the body as-is to the gateway, only while it is `working`.
    public func command(id: String, body: [UInt8], contentType: String?, trace: TraceParent? = nil, reply: @escaping Reply) {
        record(id) { [self] result in
            switch result {
            case .failure: reply(Self.storeDown)
            case .success(nil): reply(Self.error(404, "No mapping found for provided gw_id"))
            case .success(let current?):
                guard current.state == "working" else {
                    reply(Self.error(403, "Gateway \(id) is not working (state: \(current.state))"))
                    return
                }
                call(id: id, ip: current.ip, method: "POST", path: "/gateway/command?gw_id=" + Self.percentEncode(id), body: body,
                     contentType: contentType ?? "application/json", trace: trace) { outcome in
                    switch outcome {
                    case .success(let response): reply(response)
                    case .failure(let failure): reply(failure.response)
                    }
                }
            }
        }
    }

    // MARK: Talking to gateways

    /// Calls a gateway; a failure comes back as the 502/504 to answer with.
    func call(id: String, ip: String, method: String, path: String, body: [UInt8], contentType: String = "application/json",
              trace: TraceParent? = nil, completion: @escaping @Sendable (Result<HTTPResponse, HTTPResponseFailure>) -> Void) {
        guard let address = GatewayAddress(ip) else {
            completion(.failure(HTTPResponseFailure(Self.error(502, "Gateway \(id) has an unusable address '\(ip)'"))))
            return
        }
        client.send(to: address, method: method, path: path, body: body, contentType: contentType, trace: trace) { [settings] result in
            switch result {
            case .success(let response):
                var headers: [(String, String)] = []
                if let type = response.header("content-type") { headers.append(("content-type", type)) }
                completion(.success(HTTPResponse(status: response.status, headers: headers, body: response.body)))
            case .failure(let error) where error.isTimeout:
                let limit = error == .connectTimeout ? settings.connectTimeout : settings.totalTimeout
                completion(.failure(HTTPResponseFailure(Self.error(504, "Gateway \(id) at \(address) did not answer within \(Self.seconds(limit)) (\(error))"))))
            case .failure(let error):
                completion(.failure(HTTPResponseFailure(Self.error(502, "Gateway \(id) at \(address) failed: \(error)"))))
            }
        }
    }

    static func seconds(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value))s" : "\(value)s"
    }

    static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.append(Character(Unicode.Scalar(byte)))
            default:
                let hex = String(byte, radix: 16, uppercase: true)
                out += "%" + (hex.count == 1 ? "0" + hex : hex)
            }
        }
        return out
    }

    // MARK: Writing

    /// Read-modify-write with compare-and-set, retried when another writer got there first.
    /// Completes with (before, after), or nil when the record is gone or `change` kept it.
    func update(id: String, attempts: Int = 5, _ change: @escaping @Sendable (GatewayRecord) -> GatewayRecord?,
                completion: @escaping @Sendable (Result<(GatewayRecord, GatewayRecord)?, StoreError>) -> Void) {
        store.get(GatewayRecord.key(id)) { [self] result in
            switch result {
            case .failure(let error): completion(.failure(error))
            case .success(nil): completion(.success(nil))
            case .success(let bytes?):
                guard let current = GatewayRecord(bytes: bytes), let next = change(current), next != current else {
                    completion(.success(nil))
                    return
                }
                store.compareAndSet(GatewayRecord.key(id), expected: bytes, new: next.bytes) { [self] result in
                    switch result {
                    case .failure(let error): completion(.failure(error))
                    case .success(true): completion(.success((current, next)))
                    case .success(false):
                        if attempts > 1 { update(id: id, attempts: attempts - 1, change, completion: completion) } else { completion(.success(nil)) }
                    }
                }
            }
        }
    }

    /// Removes `gateway-room:{room}` if it still names this gateway.
    func releaseRoom(_ room: String, id: String) {
        guard !room.isEmpty else { return }
        store.compareAndSet(GatewayRecord.roomKey(room), expected: Array(id.utf8), new: nil) { _ in }
    }

    // MARK: Channels

    /// Publishes one change on `gateways:all`, the gateway's channel and the rooms' channels.
    /// The payload carries the `/admin/statuses` fields plus `type`, `event` and `gw_id`.
    func publish(_ event: String, id: String, record: GatewayRecord, rooms: [String], extra: [(String, JSONValue)] = []) {
        var payload: [(String, JSONValue)] = [("event", .string(event)), ("gw_id", .string(id))]
        payload += record.liveStatus.objectValue ?? []
        payload += extra
        send(.object(payload), id: id, rooms: Set(rooms + (record.room.map { [$0] } ?? [])))
    }

    func publishRemoval(_ event: String, id: String, last: GatewayRecord?, reason: String) {
        var payload: [(String, JSONValue)] = [("event", .string(event)), ("gw_id", .string(id))]
        if let last {
            payload += last.liveStatus.objectValue ?? []
        } else {
            payload += [("gateway", .null), ("status", .null), ("room", .null), ("media_duration", .null), ("transcript_progress", .null),
                        ("type", .null)]
        }
        payload.append(("reason", .string(reason)))
        send(.object(payload), id: id, rooms: Set(last?.room.map { [$0] } ?? []))
    }

    private func send(_ payload: JSONValue, id: String, rooms: Set<String>) {
        let data: JSONValue = .raw(JSONWriter.bytes(payload))
        let channels = [Self.allChannel, Self.channel(gateway: id)] + rooms.sorted().map { Self.channel(room: $0) }
        for channel in channels {
            node.publish(channel: channel, data: data) { [logger] result in
                if case .failure(let error) = result { logger.warning("gateway publication on \(channel) failed: \(error.message)") }
            }
        }
    }
}

/// A ready-made error response (502/504) standing for a failed call to a gateway.
public struct HTTPResponseFailure: Error, Sendable {
    public let response: HTTPResponse
    init(_ response: HTTPResponse) { self.response = response }
}
