import Channels
import Store

/// Seed 003's bot commands: a chat message `/<name>` (text) is answered with the command's
/// `response` instead of going to the agent, while the command is enabled.
///
/// `june:bot:command:<command_id>` → `{command_id, name, description, response, enabled,
/// created_at, updated_at}`; `june:bot:command-name:<name>` → command_id, claimed with
/// compare-and-set so a name is unique across nodes.
public final class BotCommands: Sendable {
    let store: any RecordStore
    let node: Node

    public init(store: any RecordStore, node: Node) {
        self.store = store
        self.node = node
    }

    static func key(_ id: String) -> String { "june:bot:command:" + id }
    static func nameKey(_ name: String) -> String { "june:bot:command-name:" + name }
    static let maxCommands = 1000

    /// 1–32 lower-case letters, digits or `_`.
    static func isName(_ text: String) -> Bool {
        (1...32).contains(text.utf8.count) && text.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F }
    }

    public func list(completion: @escaping @Sendable (Result<[JSONValue], StoreError>) -> Void) {
        StoreWalk.fold(store, prefix: "june:bot:command:", into: [JSONValue]()) { list, record in
            if let value = try? JSONParser.parse(record.value) { list.append(value) }
            return list.count < Self.maxCommands
        } done: { completion($0) }
    }

    /// The answer to a chat message when it is an enabled command, nil otherwise.
    public func reply(to text: String, completion: @escaping @Sendable (String?) -> Void) {
        guard text.hasPrefix("/") else { completion(nil); return }
        let name = String(text.dropFirst().prefix { $0 != " " }).lowercased()
        guard Self.isName(name) else { completion(nil); return }
        store.get(Self.nameKey(name)) { [store] found in
            guard case .success(let id?) = found else { completion(nil); return }
            store.get(Self.key(String(decoding: id, as: UTF8.self))) { read in
                guard case .success(let bytes?) = read, let command = try? JSONParser.parse(bytes),
                      command["enabled"]?.boolValue ?? true, let response = command["response"]?.stringValue else { completion(nil); return }
                completion(response)
            }
        }
    }

    static let schema: JSONValue = ["type": "object", "properties": [
        "name": ["type": "string", "pattern": "^[a-z0-9_]{1,32}$"], "description": ["type": "string"],
        "response": ["type": "string"], "enabled": ["type": "boolean"],
    ]]

    struct Fields {
        var description: String?
        var response: String?
        var enabled: Bool?
    }

    static func fields(_ body: JSONValue) throws(RouteError) -> Fields {
        let description = try JuneInput.string(body, "description")
        let response = try JuneInput.string(body, "response")
        var enabled: Bool?
        if let value = body["enabled"], !value.isNull {
            guard let flag = value.boolValue else { throw RouteError(400, "enabled must be a boolean") }
            enabled = flag
        }
        if let description, description.utf8.count > 1000 { throw RouteError(400, "description is longer than 1000 bytes") }
        if let response, response.utf8.count > 10_000 { throw RouteError(400, "response is longer than 10000 bytes") }
        return Fields(description: description, response: response, enabled: enabled)
    }

    func routes(auth: AuthScheme, responses: ([Int: String]) -> [Int: String]) -> [Route] {
        [
            Route("GET", "/admin/bot/commands", auth: auth, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Bot commands, by id (admin only)", tag: "june-admin", responses: responses([200: "Commands"])) { [self] ctx in
                list { result in
                    switch result {
                    case .failure: ctx.fail(RouteError(503, "Command store unavailable"))
                    case .success(let list): ctx.json(200, .array(list))
                    }
                }
            },
            Route("POST", "/admin/bot/commands", auth: auth, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Create a bot command (admin only)", tag: "june-admin",
                  body: .json(["type": "object", "required": ["name", "response"], "properties": Self.schema["properties"]!]),
                  responses: responses([200: "The command", 400: "Invalid field", 409: "A command of that name exists"])) { [self] ctx in
                ctx.guarded { () throws(RouteError) in
                    let body = try JuneInput.object(ctx.request)
                    guard let name = try JuneInput.string(body, "name"), Self.isName(name) else {
                        throw RouteError(400, "name must be 1-32 lower-case letters, digits or _")
                    }
                    let fields = try Self.fields(body)
                    guard let response = fields.response, !response.isEmpty else { throw RouteError(400, "response is required") }
                    let id = RandomID.uuid()
                    let now = ISOTime.string(node.clock.now())
                    let command: JSONValue = [
                        "command_id": .string(id), "name": .string(name), "description": .string(fields.description ?? ""),
                        "response": .string(response), "enabled": .bool(fields.enabled ?? true), "created_at": .string(now), "updated_at": .string(now),
                    ]
                    store.compareAndSet(Self.nameKey(name), expected: nil, new: Array(id.utf8)) { [self] claimed in
                        switch claimed {
                        case .failure: ctx.fail(RouteError(503, "Command store unavailable"))
                        case .success(false): ctx.fail(RouteError(409, "A command named \(name) exists"))
                        case .success(true):
                            store.put(Self.key(id), value: JSONWriter.bytes(command)) { stored in
                                if case .success = stored { ctx.json(200, command) } else { ctx.fail(RouteError(503, "Command store unavailable")) }
                            }
                        }
                    }
                }
            },
            Route("PUT", "/admin/bot/commands/{command_id}", auth: auth, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Change a bot command's description, response or enabled (admin only)", tag: "june-admin",
                  body: .json(Self.schema), responses: responses([200: "The command", 400: "Invalid field", 404: "No such command"])) { [self] ctx in
                ctx.guarded { () throws(RouteError) in
                    let body = try JuneInput.object(ctx.request)
                    let fields = try Self.fields(body)
                    if let response = fields.response, response.isEmpty { throw RouteError(400, "response must not be empty") }
                    let id = ctx.params["command_id"] ?? ""
                    storedCommand(id, ctx) { [self] bytes in
                        guard let current = try? JSONParser.parse(bytes) else { ctx.fail(RouteError(404, "Command not found")); return }
                        if let name = body["name"]?.stringValue, name != current["name"]?.stringValue {
                            ctx.fail(RouteError(400, "name cannot be changed (delete and create the command)"))
                            return
                        }
                        let updated: JSONValue = [
                            "command_id": current["command_id"] ?? .string(id), "name": current["name"] ?? "",
                            "description": fields.description.map { .string($0) } ?? current["description"] ?? "",
                            "response": fields.response.map { .string($0) } ?? current["response"] ?? "",
                            "enabled": fields.enabled.map { .bool($0) } ?? current["enabled"] ?? true,
                            "created_at": current["created_at"] ?? .null, "updated_at": .string(ISOTime.string(node.clock.now())),
                        ]
                        store.put(Self.key(id), value: JSONWriter.bytes(updated)) { stored in
                            if case .success = stored { ctx.json(200, updated) } else { ctx.fail(RouteError(503, "Command store unavailable")) }
                        }
                    }
                }
            },
            Route("DELETE", "/admin/bot/commands/{command_id}", auth: auth, errors: .fastAPI, rateLimit: "june-default",
                  summary: "Delete a bot command (admin only)", tag: "june-admin",
                  responses: responses([200: "Deleted", 404: "No such command"])) { [self] ctx in
                let id = ctx.params["command_id"] ?? ""
                storedCommand(id, ctx) { [self] bytes in
                    let name = (try? JSONParser.parse(bytes))?["name"]?.stringValue
                    store.delete(Self.key(id)) { [self] deleted in
                        guard case .success = deleted else { ctx.fail(RouteError(503, "Command store unavailable")); return }
                        if let name { store.delete(Self.nameKey(name)) { _ in } }
                        ctx.json(200, ["message": "Command deleted", "command_id": .string(id)])
                    }
                }
            },
        ]
    }

    /// The stored command's record, or the route answered 503 (store down) or 404 (no such id).
    private func storedCommand(_ id: String, _ ctx: RouteContext, then: @escaping @Sendable ([UInt8]) -> Void) {
        store.get(Self.key(id)) { read in
            switch read {
            case .failure: ctx.fail(RouteError(503, "Command store unavailable"))
            case .success(nil): ctx.fail(RouteError(404, "Command not found"))
            case .success(let bytes?): then(bytes)
            }
        }
    }
}
