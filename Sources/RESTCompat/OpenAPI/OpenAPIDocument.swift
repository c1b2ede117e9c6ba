import Channels

/// The OpenAPI 3 document, generated from the route declarations so it cannot drift from
/// what the router serves.
public enum OpenAPIDocument {
    public static func build(routes: [Route], version: String) -> JSONValue {
        var paths: [(String, [(String, JSONValue)])] = []
        var schemes: [(String, JSONValue)] = []
        func addScheme(_ name: String, _ scheme: JSONValue) {
            if !schemes.contains(where: { $0.0 == name }) { schemes.append((name, scheme)) }
        }
        for route in routes {
            var operation: [(String, JSONValue)] = [
                ("operationId", .string(operationID(route))),
                ("summary", .string(route.summary)),
                ("tags", [.string(route.tag)]),
            ]
            var parameters: [JSONValue] = route.pathParameters.map { name in
                ["name": .string(name), "in": "path", "required": true, "schema": ["type": "string"]]
            }
            for q in route.query {
                parameters.append(.compact([
                    ("name", .string(q.name)), ("in", "query"), ("required", .bool(q.required)),
                    ("description", q.description.isEmpty ? nil : .string(q.description)), ("schema", ["type": .string(q.type)]),
                ]))
            }
            if !parameters.isEmpty { operation.append(("parameters", .array(parameters))) }
            switch route.body {
            case .json(let schema, let required)?:
                operation.append(("requestBody", ["required": .bool(required), "content": ["application/json": ["schema": schema]]]))
            case .multipart(let schema, _)?:
                operation.append(("requestBody", ["required": true, "content": ["multipart/form-data": ["schema": schema]]]))
            case nil:
                break
            }
            var responses: [(String, JSONValue)] = []
            let errorContent: JSONValue = ["application/json": ["schema": route.errors.schema]]
            var documented = route.responses
            switch route.auth {
            case .none, .optional: break
            case .clientProtocol:
                documented[200] = documented[200] ?? "OK"
            case .optionalJWT:
                documented[401] = documented[401] ?? "Invalid credentials"
            case .jwt(let roles):
                documented[401] = documented[401] ?? "Missing or invalid credentials"
                if !roles.isEmpty { documented[403] = documented[403] ?? "Insufficient role" }
            case .bearerToken(_, let admin):
                documented[401] = documented[401] ?? "Missing or invalid credentials"
                if admin { documented[403] = documented[403] ?? "Admin token required" }
            default:
                documented[401] = documented[401] ?? "Missing or invalid credentials"
            }
            if route.rateLimit != nil { documented[429] = documented[429] ?? "Rate limit exceeded" }
            if route.body != nil { documented[413] = documented[413] ?? "Body larger than the configured limit" }
            for (status, description) in documented.sorted(by: { $0.key < $1.key }) {
                var produced: [(String, JSONValue)] = [(route.produces, JSONValue.object([("schema", JSONValue.object([]))]))]
                if status == 200, route.live != nil {
                    // `Accept: text/event-stream`: the same answer as events, again on every change.
                    produced.append(("text/event-stream", ["schema": [
                        "type": "string",
                        "description": "Server-sent events: `id: <offset>:<epoch>` and `data: <the JSON answer>`, first the current answer, then one after every change; resumes from Last-Event-ID",
                    ]]))
                }
                let content: JSONValue = status < 400 ? .object(produced) : errorContent
                responses.append((String(status), ["description": .string(description), "content": content]))
            }
            operation.append(("responses", .object(responses)))
            switch route.auth {
            case .none, .clientProtocol:
                operation.append(("security", []))
            case .serverAPIKey:
                addScheme("hubApiKey", ["type": "apiKey", "in": "header", "name": "X-API-Key"])
                operation.append(("security", [["hubApiKey": []]]))
            case .apiKey(let name):
                addScheme("\(name)ApiKey", ["type": "apiKey", "in": "header", "name": "X-API-Key"])
                operation.append(("security", [.object([("\(name)ApiKey", [])])]))
            case .bearerToken(let name, _):
                addScheme("\(name)Bearer", ["type": "http", "scheme": "bearer"])
                operation.append(("security", [.object([("\(name)Bearer", [])])]))
            case .jwt:
                addScheme("jwt", ["type": "http", "scheme": "bearer", "bearerFormat": "JWT"])
                operation.append(("security", [["jwt": []]]))
            case .optionalJWT:
                // `{}` in the list: the requirement may be left out altogether.
                addScheme("jwt", ["type": "http", "scheme": "bearer", "bearerFormat": "JWT"])
                operation.append(("security", [["jwt": []], [:]]))
            case .optional(.bearerToken(let name, _)):
                addScheme("\(name)Bearer", ["type": "http", "scheme": "bearer"])
                operation.append(("security", [[:], .object([("\(name)Bearer", [])])]))
            case .optional:
                operation.append(("security", []))
            }
            // The scheme with its parameters (which roles, admin-only), so tools and the
            // authorization matrix test derive every route's expected answers from here.
            operation.append(("x-auth", authDescriptor(route.auth)))
            let method = route.method.lowercased()
            if let index = paths.firstIndex(where: { $0.0 == route.pattern }) {
                paths[index].1.append((method, .object(operation)))
            } else {
                paths.append((route.pattern, [(method, .object(operation))]))
            }
        }
        return [
            "openapi": "3.0.3",
            "info": ["title": "hub", "version": .string(version),
                     "description": "Every REST endpoint the hub serves: its own, Centrifugo's server API, and the seed systems' APIs."],
            "paths": .object(paths.map { ($0.0, .object($0.1)) }),
            "components": ["securitySchemes": .object(schemes)],
        ]
    }

    static func authDescriptor(_ auth: AuthScheme) -> JSONValue {
        switch auth {
        case .none: return ["scheme": "none"]
        case .serverAPIKey: return ["scheme": "serverAPIKey"]
        case .apiKey(let name): return ["scheme": "apiKey", "name": .string(name)]
        case .bearerToken(let name, let admin): return ["scheme": "bearerToken", "name": .string(name), "admin": .bool(admin)]
        case .jwt(let roles): return ["scheme": "jwt", "roles": .array(roles.map { .string($0) })]
        case .optionalJWT: return ["scheme": "optionalJWT"]
        case .clientProtocol: return ["scheme": "clientProtocol"]
        case .optional(let inner): return ["scheme": "optional", "inner": authDescriptor(inner)]
        }
    }

    static func operationID(_ route: Route) -> String {
        var id = route.method.lowercased()
        for segment in route.segments {
            let cleaned = segment.filter { $0.isLetter || $0.isNumber }
            id += "_" + cleaned
        }
        return id
    }
}

/// `GET /openapi.json`, `GET /docs` and `GET /metrics`.
public struct APIDocs: Sendable {
    let router: @Sendable () -> Router?
    let version: String

    public init(version: String, router: @escaping @Sendable () -> Router?) {
        self.version = version
        self.router = router
    }

    public static let docsPage = """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
        <title>hub API</title>
        <style>
        body{font:15px/1.5 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c2330}
        header{background:#1c2330;color:#fff;padding:16px 24px}h1{margin:0;font-size:20px}
        main{max-width:1000px;margin:0 auto;padding:16px 24px}
        section{background:#fff;border-radius:8px;margin:12px 0;padding:12px 16px;box-shadow:0 1px 2px #0001}
        .m{display:inline-block;min-width:64px;font-weight:700;font-family:monospace}
        .GET{color:#1769aa}.POST{color:#2e7d32}.PUT{color:#9a6700}.DELETE{color:#c62828}.PATCH{color:#6a1b9a}
        code{font-size:14px}.s{color:#555}.sec{font-size:12px;background:#eef;border-radius:4px;padding:1px 6px;margin-left:8px}
        h2{font-size:16px;margin:20px 0 4px;text-transform:uppercase;letter-spacing:.05em;color:#555}
        ul{margin:4px 0 0 0}
        </style></head><body><header><h1>hub — REST API</h1><div id="v"></div></header><main id="app">Loading /openapi.json…</main>
        <script src="/docs/app.js"></script></body></html>
        """

    public static let docsScript = """
        fetch('/openapi.json').then(r => r.json()).then(spec => {
          document.getElementById('v').textContent = spec.info.description + ' Version ' + spec.info.version + '.';
          const app = document.getElementById('app'); app.textContent = '';
          const byTag = {};
          for (const [path, ops] of Object.entries(spec.paths)) for (const [method, op] of Object.entries(ops))
            (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method.toUpperCase(), path, op]);
          for (const [tag, list] of Object.entries(byTag)) {
            const h = document.createElement('h2'); h.textContent = tag; app.appendChild(h);
            for (const [method, path, op] of list) {
              const s = document.createElement('section');
              const line = document.createElement('div');
              const m = document.createElement('span'); m.className = 'm ' + method; m.textContent = method; line.appendChild(m);
              const c = document.createElement('code'); c.textContent = path; line.appendChild(c);
              const sec = (op.security || []).map(x => Object.keys(x)[0]).filter(Boolean);
              if (sec.length) { const b = document.createElement('span'); b.className = 'sec'; b.textContent = sec.join(', '); line.appendChild(b); }
              s.appendChild(line);
              const d = document.createElement('div'); d.className = 's'; d.textContent = op.summary; s.appendChild(d);
              const ul = document.createElement('ul');
              for (const p of op.parameters || []) { const li = document.createElement('li'); li.textContent = p.in + ' ' + p.name + (p.required ? ' (required)' : ''); ul.appendChild(li); }
              for (const [code, r] of Object.entries(op.responses)) { const li = document.createElement('li'); li.textContent = code + ': ' + r.description; ul.appendChild(li); }
              s.appendChild(ul); app.appendChild(s);
            }
          }
        });
        """

    public var routes: [Route] {
        [
            Route("GET", "/openapi.json", auth: .none, summary: "This OpenAPI document", responses: [200: "OpenAPI 3 document"]) { context in
                guard let router = router() else { context.fail(RouteError(503, "starting")); return }
                context.json(200, OpenAPIDocument.build(routes: router.routes, version: version))
            },
            Route("GET", "/docs", auth: .none, summary: "A readable page over /openapi.json", responses: [200: "HTML page"],
                  produces: "text/html") { context in
                context.respond(HTTPResponse(status: 200, headers: [("content-type", "text/html; charset=utf-8")], body: Array(Self.docsPage.utf8)))
            },
            Route("GET", "/docs/app.js", auth: .none, summary: "The script of the /docs page", responses: [200: "JavaScript"],
                  produces: "application/javascript") { context in
                context.respond(HTTPResponse(status: 200, headers: [("content-type", "application/javascript; charset=utf-8")], body: Array(Self.docsScript.utf8)))
            },
            Route("GET", "/metrics", auth: .none, summary: "Prometheus metrics", responses: [200: "Prometheus text exposition"],
                  produces: "text/plain") { context in
                guard let router = router() else { context.fail(RouteError(503, "starting")); return }
                context.respond(HTTPResponse(status: 200, headers: [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                                             body: Array(router.metrics.render().utf8)))
            },
        ]
    }
}
