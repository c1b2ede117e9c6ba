import Channels

/// Seed 003's chat and AI endpoints (`/chat`, `/api/v1/llm/generate`, `/api/v1/tts/speak`),
/// each a request/reply over a service channel, plus the two calls workers use
/// (`/api/services/token`, `/api/services/reply`, server API key).
public struct JuneAI: Sendable {
    let chat: ChatService
    let services: ServiceDesk
    let tokens: AuthTokens

    public init(chat: ChatService, services: ServiceDesk, tokens: AuthTokens) {
        self.chat = chat
        self.services = services
        self.tokens = tokens
    }

    static let serviceErrors: [Int: String] = [
        400: "Invalid body", 401: "Not authenticated", 403: "User blocked", 429: "Rate limited",
        503: "No worker connected for the service", 504: "The worker did not answer in time",
    ]

    public var routes: [Route] {
        [
            Route("POST", "/chat", auth: .jwt(roles: []), errors: .fastAPI, rateLimit: "june-chat",
                  summary: "Send a chat message (text or base64 audio) and get the agent's reply", tag: "june-chat",
                  body: .json(["type": "object", "required": ["type", "content"], "properties": [
                      "type": ["type": "string", "enum": ["text", "audio"]], "content": ["type": "string"], "conversation_id": ["type": "string"],
                  ]]),
                  responses: [200: "The agent's reply {type, content, conversation_id}"].merging(Self.serviceErrors) { $1 }) { ctx in
                postChat(ctx)
            },
            Route("POST", "/api/v1/llm/generate", auth: .jwt(roles: []), errors: .fastAPI, rateLimit: "june-llm",
                  summary: "Generate text with the LLM (cached by prompt)", tag: "june-ai",
                  body: .json(["type": "object", "required": ["prompt"], "properties": ["prompt": ["type": "string", "minLength": 1, "maxLength": 100_000]]]),
                  responses: [200: "{text}"].merging(Self.serviceErrors) { $1 }) { ctx in
                generate(ctx)
            },
            Route("POST", "/api/v1/tts/speak", auth: .jwt(roles: []), errors: .fastAPI, rateLimit: "june-tts",
                  summary: "Synthesize speech (cached by text, language and voice)", tag: "june-ai",
                  body: .json(["type": "object", "required": ["text"], "properties": [
                      "text": ["type": "string", "minLength": 1, "maxLength": 50_000], "language": ["type": "string", "default": "en"],
                      "voice_id": ["type": "string", "default": "default"],
                  ]]),
                  responses: [200: "{audio_b64, sample_rate}"].merging(Self.serviceErrors) { $1 }) { ctx in
                speak(ctx)
            },
            Route("POST", "/api/v1/audio/transcribe", auth: .jwt(roles: []), errors: .fastAPI, rateLimit: "june-transcribe",
                  summary: "Transcribe an audio file; with full_round_trip also answer it with the LLM and speak the answer",
                  tag: "june-ai",
                  query: [QueryParameter("full_round_trip", description: "true: transcript → LLM → TTS (also accepted as a form field)"),
                          QueryParameter("language", description: "ISO 639-1 code (also accepted as a form field)")],
                  body: .multipart(["type": "object", "required": ["audio"], "properties": [
                      "audio": ["type": "string", "format": "binary"], "full_round_trip": ["type": "string"], "language": ["type": "string"],
                  ]], maxFileBytes: Self.maxAudioBytes),
                  responses: [200: "{transcript, detected_language} (+ llm_response, audio_b64, sample_rate)", 413: "Audio too large"]
                    .merging(Self.serviceErrors) { $1 }) { ctx in
                transcribe(ctx)
            },
            Route("POST", "/api/services/token", auth: .serverAPIKey, summary: "Connection token for a service worker (subscribes it to service:<name>)",
                  tag: "services", body: .json(["type": "object", "required": ["service"], "properties": ["service": ["type": "string", "enum": .array(ServiceDesk.services.map { .string($0) })]]]),
                  responses: [200: "{token, channel}", 400: "Unknown service", 401: "Bad API key", 503: "No token secret configured"]) { ctx in
                workerToken(ctx)
            },
            Route("POST", "/api/services/reply", auth: .serverAPIKey, summary: "A worker's answer to a service request",
                  tag: "services", body: .json(["type": "object", "required": ["request_id"], "properties": [
                      "request_id": ["type": "string"], "result": ["type": "object"], "error": ["type": "object"],
                  ]]),
                  responses: [200: "Accepted", 400: "Bad body", 401: "Bad API key"]) { ctx in
                workerReply(ctx)
            },
        ]
    }

    /// Largest audio file `/api/v1/audio/transcribe` takes (it is sent to the worker base64).
    static let maxAudioBytes = 25 * 1024 * 1024

    private func transcribe(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            guard let form = ctx.form, let audio = form.files.first(where: { $0.fieldName == "audio" }) else {
                throw RouteError(400, "audio file is required (multipart field 'audio')")
            }
            func option(_ name: String) -> String? {
                ctx.request.queryValue(name) ?? form.fields.first { $0.name == name }?.value
            }
            let roundTrip = ["true", "1", "yes"].contains((option("full_round_trip") ?? "false").lowercased())
            let language = option("language").flatMap { $0.isEmpty ? nil : $0 }
            if let language, !JuneInput.isLanguage(language) { throw RouteError(400, "language must be an ISO 639-1 code such as en, es, fr") }
            guard audio.size > 0 else { throw RouteError(400, "audio file is empty") }
            // Read now: the upload's temp file goes once the handler has answered.
            guard let bytes = FileBytes.read(audio.path, limit: Self.maxAudioBytes) else { throw RouteError(400, "audio file could not be read") }
            whenActive(ctx) { _ in
                chat.transcribe(audio: bytes, language: language) { result in
                    switch result {
                    case .failure(let error): ctx.fail(error)
                    case .success(let value):
                        guard let transcript = value["transcript"]?.stringValue else {
                            ctx.fail(RouteError(502, "The transcription worker answered without a transcript"))
                            return
                        }
                        let detected = value["detected_language"]?.stringValue ?? language ?? "en"
                        guard roundTrip else {
                            ctx.json(200, ["transcript": .string(transcript), "detected_language": .string(detected)])
                            return
                        }
                        answerAndSpeak(ctx, transcript: transcript, language: detected)
                    }
                }
            }
        }
    }

    /// The round trip's second half: the LLM answers the transcript, TTS speaks the answer.
    private func answerAndSpeak(_ ctx: RouteContext, transcript: String, language: String) {
        chat.generate(prompt: transcript) { result in
            switch result {
            case .failure(let error): ctx.fail(error)
            case .success(let value):
                guard let text = value["text"]?.stringValue else { ctx.fail(RouteError(502, "The LLM worker answered without text")); return }
                chat.synthesize(text: text, language: language, voice: "default") { spoken in
                    switch spoken {
                    case .failure(let error): ctx.fail(error)
                    case .success(let audio):
                        guard let b64 = audio["audio_b64"]?.stringValue else { ctx.fail(RouteError(502, "The TTS worker answered without audio")); return }
                        ctx.json(200, ["transcript": .string(transcript), "detected_language": .string(language),
                                       "llm_response": .string(text), "audio_b64": .string(b64),
                                       "sample_rate": .int(audio["sample_rate"]?.intValue ?? 16000)])
                    }
                }
            }
        }
    }

    /// Refuses blocked users even while their access token is still valid.
    private func whenActive(_ ctx: RouteContext, _ body: @escaping @Sendable (String) -> Void) {
        let user = ctx.caller.user ?? ""
        chat.users.isActive(user) { active in
            switch active {
            case .failure: ctx.fail(RouteError(503, "User store unavailable"))
            case .success(false): ctx.fail(RouteError(403, "User account is not active"))
            case .success(true): body(user)
            }
        }
    }

    private func postChat(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let input = try ChatInput.parse(try JuneInput.object(ctx.request))
            whenActive(ctx) { user in
                chat.submit(user: user, input, origin: "rest:" + RandomID.make(length: 12)) { result in
                    switch result {
                    case .success(let reply): ctx.json(200, reply.restJSON)
                    case .failure(let error): ctx.fail(error)
                    }
                }
            }
        }
    }

    private func generate(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let body = try JuneInput.object(ctx.request)
            guard let prompt = try JuneInput.string(body, "prompt") else { throw RouteError(400, "prompt is required") }
            let length = JuneInput.characters(prompt)
            guard (1...100_000).contains(length) else { throw RouteError(400, "prompt must be 1-100000 characters") }
            whenActive(ctx) { _ in
                chat.generate(prompt: prompt) { result in
                    switch result {
                    case .failure(let error): ctx.fail(error)
                    case .success(let value):
                        guard let text = value["text"]?.stringValue else { ctx.fail(RouteError(502, "The LLM worker answered without text")); return }
                        ctx.json(200, ["text": .string(text)])
                    }
                }
            }
        }
    }

    private func speak(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let body = try JuneInput.object(ctx.request)
            guard let text = try JuneInput.string(body, "text") else { throw RouteError(400, "text is required") }
            guard (1...50_000).contains(JuneInput.characters(text)) else { throw RouteError(400, "text must be 1-50000 characters") }
            let language = try JuneInput.string(body, "language") ?? "en"
            guard JuneInput.isLanguage(language) else { throw RouteError(400, "language must be an ISO 639-1 code such as en, es, fr") }
            let voice = try JuneInput.string(body, "voice_id") ?? "default"
            guard JuneInput.isIdentifier(voice) else { throw RouteError(400, "voice_id must be 1-64 letters, digits, _ . @ -") }
            whenActive(ctx) { _ in
                chat.synthesize(text: text, language: language, voice: voice) { result in
                    switch result {
                    case .failure(let error): ctx.fail(error)
                    case .success(let value):
                        guard let audio = value["audio_b64"]?.stringValue else { ctx.fail(RouteError(502, "The TTS worker answered without audio")); return }
                        ctx.json(200, ["audio_b64": .string(audio), "sample_rate": .int(value["sample_rate"]?.intValue ?? 16000)])
                    }
                }
            }
        }
    }

    private func workerToken(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let body = try JuneInput.object(ctx.request)
            guard let service = try JuneInput.string(body, "service"), ServiceDesk.services.contains(service) else {
                throw RouteError(400, "service must be one of \(ServiceDesk.services.joined(separator: ", "))")
            }
            guard let secret = tokens.secret else { throw RouteError(503, "No token secret configured") }
            let channel = ServiceDesk.channel(service)
            let now = tokens.clock.now()
            let token = TokenSigner.hs256(claims: .compact([
                ("sub", .string("worker:" + service)), ("role", "worker"), ("channels", [.string(channel)]),
                ("iat", .int(Int64(now))), ("exp", .int(Int64(now + 86_400))),
                ("aud", tokens.audience.map { .string($0) }), ("iss", tokens.issuer.map { .string($0) }),
            ]), secret: secret)
            ctx.json(200, ["token": .string(token), "channel": .string(channel), "expires_in": 86_400])
        }
    }

    private func workerReply(_ ctx: RouteContext) {
        ctx.guarded { () throws(RouteError) in
            let body = try JuneInput.object(ctx.request)
            guard let id = try JuneInput.string(body, "request_id"), !id.isEmpty else { throw RouteError(400, "request_id is required") }
            let result = body["result"].flatMap { $0.isNull ? nil : $0 }
            let error = body["error"].flatMap { $0.isNull ? nil : $0 }
            guard (result == nil) != (error == nil) else { throw RouteError(400, "exactly one of result and error is required") }
            if let result, result.objectValue == nil { throw RouteError(400, "result must be an object") }
            if let error, error.objectValue == nil { throw RouteError(400, "error must be an object") }
            services.reply(requestID: id, result: result, error: error)
            ctx.json(200, ["result": [:]])
        }
    }
}
