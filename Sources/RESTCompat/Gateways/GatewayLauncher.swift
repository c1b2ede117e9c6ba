import Channels

/// Seed 002 (`002_0bd6e77573590d09.txt`): the launcher API every media gateway exposes,
/// served by the hub too and mapped onto the same gateway operations as seed 000's proxy.
/// Parameters come from the JSON body or the query string; a missing or invalid mandatory
/// one is a 422 in FastAPI's validation shape, naming the field in `loc`.
///
/// Seed 002 documents no authentication for a gateway's own API; on the hub, where these
/// calls start and stop any gateway, they take the same bearer tokens as seed 000.
public struct GatewayLauncher: Sendable {
    let service: GatewayService

    public init(service: GatewayService) { self.service = service }

    public static let types = ["Record", "Streaming", "SIP"]
    static let tag = "gateways (seed 002)"

    public var routes: [Route] {
        [
            Route("POST", "/gateway/start", auth: RoomProxy.normal, errors: .fastAPI, summary: "Start the named gateway", tag: Self.tag,
                  query: [QueryParameter("gw_id"), QueryParameter("type"), QueryParameter("room"), QueryParameter("webrtc_domain")],
                  body: .json(["type": "object", "required": ["type", "room", "webrtc_domain", "gw_id"], "properties": [
                      "type": ["type": "string", "enum": ["Record", "Streaming", "SIP"]], "room": ["type": "string"],
                      "webrtc_domain": ["type": "object"], "gw_id": ["type": "string"],
                  ]]),
                  responses: [200: "processing_state", 404: "Unknown gw_id", 409: "Gateway busy", 422: "Missing or invalid parameter"]) { context in
                guard let params = Self.parameters(context) else { return }
                var problems: [JSONValue] = []
                let type = params["type"]?.stringValue
                if type == nil { problems.append(Self.missing("type")) } else if !Self.types.contains(type!) {
                    problems.append(Self.invalid("type", "value is not a valid enumeration member; permitted: 'Record', 'Streaming', 'SIP'"))
                }
                let room = params["room"]?.stringValue ?? ""
                if room.isEmpty { problems.append(Self.missing("room")) }
                var domain = params["webrtc_domain"]
                if let text = domain?.stringValue { domain = (try? JSONParser.parse(Array(text.utf8))) ?? .null }
                if params["webrtc_domain"] == nil { problems.append(Self.missing("webrtc_domain")) } else if domain?.objectValue == nil {
                    problems.append(Self.invalid("webrtc_domain", "must be a JSON object, e.g. {\"renavisio_visio_plus\": {\"name\": \"…\", \"domain\": \"meet.jit.si\"}}"))
                }
                let id = params["gw_id"]?.stringValue ?? ""
                if id.isEmpty { problems.append(Self.missing("gw_id")) }
                guard problems.isEmpty else { context.respond(.json(422, ["detail": .array(problems)])); return }
                if let problem = GatewayRecord.problem(with: room, field: "room") {
                    context.respond(.json(422, ["detail": [Self.invalid("room", problem)]]))
                    return
                }
                var body = params.objectValue ?? []
                body.removeAll { $0.0 == "webrtc_domain" }
                body.append(("webrtc_domain", domain!))
                service.start(id: id, room: room, body: .object(body), trace: context.trace, reply: context.respond)
            },
            Route("POST", "/gateway/stop", auth: RoomProxy.normal, errors: .fastAPI, summary: "Stop the named gateway", tag: Self.tag,
                  query: [QueryParameter("gw_id")], body: .json(["type": "object", "required": ["gw_id"]]),
                  responses: [200: "processing_state", 404: "Unknown gw_id", 422: "Missing gw_id"]) { context in
                guard let params = Self.parameters(context), let id = Self.gatewayID(context, params) else { return }
                service.stop(id: id, body: params, trace: context.trace, reply: context.respond)
            },
            Route("GET", "/gateway/status", auth: RoomProxy.normal, errors: .fastAPI, summary: "The named gateway's task and progress",
                  tag: Self.tag, query: [QueryParameter("gw_id", required: true)],
                  responses: [200: "Task, recording time, transcript progress", 404: "Unknown gw_id", 422: "Missing gw_id"]) { context in
                guard let params = Self.parameters(context), let id = Self.gatewayID(context, params) else { return }
                service.launcherStatus(id: id, reply: context.respond)
            },
            Route("POST", "/gateway/command", auth: RoomProxy.normal, errors: .fastAPI, summary: "Send a command to the named gateway",
                  tag: Self.tag, query: [QueryParameter("gw_id", required: true)], body: .json(["type": "object"]),
                  responses: [200: "ACK with echoed input", 403: "Gateway is not working", 404: "Unknown gw_id", 422: "Missing gw_id"]) { context in
                guard let params = Self.parameters(context), let id = Self.gatewayID(context, params) else { return }
                service.command(id: id, body: context.request.body, contentType: context.request.header("content-type"), trace: context.trace,
                                reply: context.respond)
            },
        ]
    }

    /// Body members and query parameters together (the body wins), or nil after a 422.
    static func parameters(_ context: RouteContext) -> JSONValue? {
        var members: [(String, JSONValue)] = []
        if !context.request.body.isEmpty {
            guard let value = try? JSONParser.parse(context.request.body), let object = value.objectValue else {
                context.respond(.json(422, ["detail": [["loc": ["body"], "msg": "body must be a JSON object", "type": "value_error.jsondecode"]]]))
                return nil
            }
            members = object
        }
        for (name, value) in context.request.query where !members.contains(where: { $0.0 == name }) {
            members.append((name, .string(value)))
        }
        return .object(members)
    }

    static func gatewayID(_ context: RouteContext, _ params: JSONValue) -> String? {
        guard let id = params["gw_id"]?.stringValue, !id.isEmpty else {
            context.respond(.json(422, ["detail": [missing("gw_id")]]))
            return nil
        }
        return id
    }

    static func missing(_ field: String) -> JSONValue {
        ["loc": ["body", .string(field)], "msg": "field required", "type": "value_error.missing"]
    }

    static func invalid(_ field: String, _ message: String) -> JSONValue {
        ["loc": ["body", .string(field)], "msg": .string(message), "type": "value_error"]
    }
}

extension GatewayService {
    /// Seed 002's status for the named gateway, from its record (the monitor keeps it current).
    public func launcherStatus(id: String, reply: @escaping Reply) {
        record(id) { result in
            switch result {
            case .failure: reply(Self.storeDown)
            case .success(nil): reply(Self.error(404, "Gateway not found"))
            case .success(let record?):
                let working = record.state == "working"
                reply(.json(200, [
                    "gw_id": .string(id),
                    "processing_state": .string(record.state),
                    "task": working ? .string(record.type) : .null,
                    "room": record.room.map { .string($0) } ?? .null,
                    "recording_time": GatewayRecord.nullable(record.mediaDuration),
                    "transcript_progress": GatewayRecord.nullable(record.transcriptProgress),
                ]))
            }
        }
    }
}
