import Channels
import Glibc
import Store

/// Seed 004's user-facing endpoints. Every id-addressed route answers 404 for another user's
/// id (admins see everything), so ids cannot be probed.
extension MeetingsPipeline {
    static let tag = "meetings"
    static let user = AuthScheme.jwt(roles: [])

    var userRoutes: [Route] {
        [
            Route("POST", "/v1/files", auth: Self.user, errors: .meetings, rateLimit: "meetings-uploads",
                  summary: "Upload a recording (audio/video, multipart part `file`); it is queued for processing", tag: Self.tag,
                  body: .multipart(["type": "object", "required": ["file"], "properties": [
                      "file": ["type": "string", "format": "binary"],
                      "title": ["type": "string", "description": "meeting title (default: the file name)"],
                      "metadata": ["type": "string", "description": "a JSON object kept with the meeting"],
                  ]], maxFileBytes: Int(clamping: settings.maxUploadBytes)),
                  responses: [201: "`{file_id, meeting_id, status: \"pending\"}`", 400: "No file part, bad metadata or a broken body",
                              401: "No or bad token", 413: "FILE_TOO_LARGE", 415: "INVALID_FILE_TYPE",
                              429: "Rate limited (10/hour)"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in try await upload(context) }
            },
            Route("GET", "/v1/files/{file_id}/status", auth: Self.user, errors: .meetings, rateLimit: "meetings-status",
                  summary: "Processing status and progress of an uploaded file", tag: Self.tag,
                  responses: [200: "`{status, progress}`", 401: "No or bad token", 404: "No such file (or not yours)",
                              429: "Rate limited"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let meetingID = try await meetingID(forFile: context.params["file_id"] ?? "")
                    let meeting = try await visibleMeeting(meetingID, caller: context.caller)
                    return .json(200, .compact([
                        ("file_id", .string(meeting.fileID)), ("meeting_id", .string(meeting.meetingID)),
                        ("status", .string(meeting.status.rawValue)), ("progress", .int(Int64(meeting.progress))),
                        ("stage", meeting.stage.map(JSONValue.string)), ("error", meeting.error.map(JSONValue.string)),
                    ]))
                }
            }.streaming(LiveChannel { [self] _, _, caller, answer, done in
                // The meeting's channel carries its owner, who may not be the caller (an admin).
                guard let meetingID = answer["meeting_id"]?.stringValue else { return done(nil) }
                Task { [self] in
                    let meeting = try? await visibleMeeting(meetingID, caller: caller)
                    done(meeting.map { MeetingChannels.meeting($0.meetingID, owner: $0.owner) })
                }
            }),
            Route("GET", "/v1/meetings", auth: Self.user, errors: .meetings, summary: "Your meetings, newest first, paginated",
                  tag: Self.tag,
                  query: [QueryParameter("page", type: "integer", description: "1-based page (default 1)"),
                          QueryParameter("limit", type: "integer", description: "page size 1-100 (default 20)"),
                          QueryParameter("status", description: "pending, processing, completed or failed")],
                  responses: [200: "`{meetings, page, limit, total, pages}`", 400: "Bad page, limit or status",
                              401: "No or bad token"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in try await listMeetings(context) }
            },
            Route("GET", "/v1/meetings/{meeting_id}", auth: Self.user, errors: .meetings,
                  summary: "Meeting details including status and artifacts", tag: Self.tag,
                  responses: [200: "The meeting", 401: "No or bad token", 404: "No such meeting (or not yours)"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let meeting = try await visibleMeeting(context.params["meeting_id"] ?? "", caller: context.caller)
                    var body = meetingJSON(meeting)
                    if case .object(var members) = body {
                        members.append(("artifacts", .array(try await artifactList(meeting, caller: context.caller))))
                        body = .object(members)
                    }
                    return .json(200, body)
                }
            },
            Route("DELETE", "/v1/meetings/{meeting_id}", auth: Self.user, errors: .meetings,
                  summary: "Delete a meeting with its media and artifacts", tag: Self.tag,
                  responses: [200: "`{deleted: true}`", 401: "No or bad token", 404: "No such meeting (or not yours)"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let meeting = try await visibleMeeting(context.params["meeting_id"] ?? "", caller: context.caller)
                    try await deleteMeeting(meeting)
                    return .json(200, ["deleted": true])
                }
            },
            Route("GET", "/v1/meetings/{meeting_id}/artifacts", auth: Self.user, errors: .meetings,
                  summary: "Artifacts of a meeting with expiring download links", tag: Self.tag,
                  responses: [200: "`{meeting_id, artifacts: [...]}`", 401: "No or bad token",
                              404: "No such meeting (or not yours)"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let meeting = try await visibleMeeting(context.params["meeting_id"] ?? "", caller: context.caller)
                    return .json(200, ["meeting_id": .string(meeting.meetingID),
                                       "artifacts": .array(try await artifactList(meeting, caller: context.caller))])
                }
            },
            Route("GET", "/v1/meetings/{meeting_id}/artifacts/{name}/download", auth: .none, errors: .meetings,
                  summary: "Download an artifact through a signed, expiring link (Range requests supported)", tag: Self.tag,
                  query: [QueryParameter("expires", required: true, type: "integer"), QueryParameter("user", required: true),
                          QueryParameter("signature", required: true)],
                  responses: [200: "The artifact", 206: "Part of it (Range)", 401: "Bad or missing signature",
                              403: "Link expired", 404: "No such artifact", 416: "Range not satisfiable", 429: "Rate limited"],
                  produces: "application/octet-stream") { [self] context in
                serve(context) { [self] () throws(RouteError) in try await download(context) }
            },
            Route("POST", "/v1/users/profiles", auth: Self.user, errors: .meetings,
                  summary: "Create a user profile, optionally with a voice sample (multipart)", tag: Self.tag,
                  body: .multipart(Self.profileForm(required: ["display_name"]), maxFileBytes: Int(clamping: settings.maxUploadBytes)),
                  responses: [200: "`{profile_id, display_name}`", 400: "Bad display_name", 401: "No or bad token",
                              413: "FILE_TOO_LARGE", 415: "INVALID_FILE_TYPE"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let form = context.form ?? MultipartForm()
                    let name = try Self.displayName(["display_name": form.field("display_name").map(JSONValue.string) ?? .null])
                    let sample = try Self.voiceSample(form)
                    let profile = ProfileRecord(profileID: MeetingIDs.make(now: now), owner: try Self.owner(context.caller),
                                                displayName: name, now: now)
                    if let sample { try await checkVoiceSample(sample) }
                    do {
                        try await store.store(MeetingKeys.profileOwnerPrefix(profile.owner) + profile.profileID, [])
                        try await store.store(MeetingKeys.profile(profile.profileID), JSONWriter.bytes(profile.json))
                    } catch { throw .store(error) }
                    var stored = profile
                    if let sample { stored = try await attachVoiceSample(profile.profileID, caller: context.caller, name: nil, sample) }
                    return .json(200, Self.profileAnswer(stored))
                }
            },
            Route("GET", "/v1/users/profiles", auth: Self.user, errors: .meetings, summary: "Your user profiles", tag: Self.tag,
                  responses: [200: "`{profiles: [...]}`", 401: "No or bad token"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let owner = try Self.owner(context.caller)
                    var profiles: [JSONValue] = []
                    do {
                        for index in try await store.allRecords(prefix: MeetingKeys.profileOwnerPrefix(owner), cap: 1000) {
                            let id = String(index.key.dropFirst(MeetingKeys.profileOwnerPrefix(owner).count))
                            if let bytes = try await store.value(MeetingKeys.profile(id)), let profile = ProfileRecord(bytes: bytes) {
                                profiles.append(profile.publicJSON)
                            }
                        }
                    } catch { throw .store(error) }
                    return .json(200, ["profiles": .array(profiles)])
                }
            },
            Route("PUT", "/v1/users/profiles/{profile_id}", auth: Self.user, errors: .meetings,
                  summary: "Rename a profile and/or store its voice sample (multipart)", tag: Self.tag,
                  body: .multipart(Self.profileForm(required: []), maxFileBytes: Int(clamping: settings.maxUploadBytes)),
                  responses: [200: "`{profile_id, display_name}`", 400: "Bad display_name or nothing to change",
                              401: "No or bad token", 404: "No such profile (or not yours)", 413: "FILE_TOO_LARGE",
                              415: "INVALID_FILE_TYPE"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let form = context.form ?? MultipartForm()
                    let id = context.params["profile_id"] ?? ""
                    let name = try form.field("display_name").map { text throws(RouteError) in
                        try Self.displayName(["display_name": .string(text)])
                    }
                    let profile: ProfileRecord
                    if let sample = try Self.voiceSample(form) {
                        profile = try await attachVoiceSample(id, caller: context.caller, name: name, sample)
                    } else if let name {
                        profile = try await updateProfile(id, caller: context.caller) { $0.displayName = name }
                    } else {
                        throw RouteError(400, "send display_name and/or a voice_sample file", code: "BAD_REQUEST",
                                         details: ["field": "display_name"])
                    }
                    return .json(200, Self.profileAnswer(profile))
                }
            },
            Route("POST", "/v1/speakers/link", auth: Self.user, errors: .meetings, summary: "Link a speaker to one of your profiles",
                  tag: Self.tag, body: .json(["type": "object", "required": ["speaker_id", "user_profile_id"],
                                              "properties": ["speaker_id": ["type": "string", "format": "uuid"],
                                                             "user_profile_id": ["type": "string", "format": "uuid"]]]),
                  responses: [200: "`{linked: true}`", 400: "Bad ids", 401: "No or bad token",
                              404: "No such profile or speaker (or not yours)"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in try await linkSpeaker(context) }
            },
            Route("GET", "/v1/speakers/{speaker_id}/mapping", auth: Self.user, errors: .meetings,
                  summary: "The profile a speaker is linked to", tag: Self.tag,
                  responses: [200: "`{user_profile_id, confidence}`", 401: "No or bad token",
                              404: "No mapping (or not yours)"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let id = (context.params["speaker_id"] ?? "").lowercased()
                    guard MeetingIDs.isUUID(id) else { throw Self.notFound("speaker") }
                    let bytes: [UInt8]?
                    do { bytes = try await store.value(MeetingKeys.speaker(id)) } catch { throw .store(error) }
                    guard let bytes, let speaker = SpeakerRecord(bytes: bytes),
                          speaker.owner == context.caller.user || Self.isAdmin(context.caller)
                    else { throw Self.notFound("speaker") }
                    return .json(200, ["speaker_id": .string(speaker.speakerID), "user_profile_id": .string(speaker.profileID),
                                       "confidence": .double(speaker.confidence)])
                }
            },
            Route("GET", "/v1/system/status", auth: Self.user, errors: .meetings, summary: "Pipeline health: queue and workers",
                  tag: Self.tag, responses: [200: "Health and queue counts", 401: "No or bad token"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in try await systemStatus() }
            },
            Route("GET", "/v1/system/config", auth: .jwt(roles: ["admin"]), errors: .meetings,
                  summary: "Current pipeline configuration (admins only; no secrets)", tag: Self.tag,
                  responses: [200: "The configuration", 401: "No or bad token", 403: "Not an admin"]) { [self] context in
                context.json(200, systemConfig)
            },
        ]
    }

    /// `POST /v1/files`: the recording is the multipart part `file`, already streamed to disk
    /// by the edge (over-size parts were refused while streaming and removed).
    func upload(_ context: RouteContext) async throws(RouteError) -> HTTPResponse {
        let owner = try Self.owner(context.caller)
        let form = context.form ?? MultipartForm()
        guard let file = form.file("file") else {
            throw RouteError(400, "the recording goes in a file part named 'file' (curl -F file=@meeting.wav)",
                             code: "BAD_REQUEST", details: ["field": "file"])
        }
        var metadata: JSONValue = [:]
        if let text = form.field("metadata") ?? context.request.queryValue("metadata"), !text.isEmpty {
            guard let parsed = try? JSONParser.parse(text), parsed.objectValue != nil else {
                throw RouteError(400, "metadata must be a JSON object", code: "BAD_REQUEST", details: ["field": "metadata"])
            }
            metadata = parsed
        }
        let meeting = try await ingest(StagedUpload(path: file.path, size: Int64(file.size), filename: file.filename),
                                       owner: owner, title: form.field("title") ?? context.request.queryValue("title"),
                                       metadata: metadata)
        return .json(201, ["file_id": .string(meeting.fileID), "meeting_id": .string(meeting.meetingID),
                           "status": .string(meeting.status.rawValue)])
    }

    static func profileForm(required: [String]) -> JSONValue {
        // OpenAPI 3.0 wants `required` absent rather than empty.
        .compact([("type", "object"), ("required", required.isEmpty ? nil : .array(required.map(JSONValue.string))),
                  ("properties", ["display_name": ["type": "string", "maxLength": 100],
                                  "voice_sample": ["type": "string", "format": "binary",
                                                   "description": "a short recording of the user's voice"]])])
    }

    static func voiceSample(_ form: MultipartForm) throws(RouteError) -> StagedUpload? {
        guard let file = form.file("voice_sample") else { return nil }
        return StagedUpload(path: file.path, size: Int64(file.size), filename: file.filename)
    }

    static func profileAnswer(_ profile: ProfileRecord) -> JSONValue {
        .compact([("profile_id", .string(profile.profileID)), ("display_name", .string(profile.displayName)),
                  ("voice_sample_size", profile.voiceSampleSize.map(JSONValue.int))])
    }

    /// Refuses a voice sample that is empty, too large or not audio/video, before anything is written.
    func checkVoiceSample(_ upload: StagedUpload) async throws(RouteError) {
        guard upload.size <= settings.maxUploadBytes else {
            throw RouteError(413, "voice sample exceeds the \(settings.maxUploadBytes)-byte limit", code: "FILE_TOO_LARGE",
                             details: ["max_bytes": .int(settings.maxUploadBytes)])
        }
        guard upload.size > 0, MediaType.detect(Self.readHead(upload.path, count: MediaType.sniffLength)) != nil else {
            throw RouteError(415, "the voice sample must be audio (wav, mp3, ogg, flac, m4a, …)", code: "INVALID_FILE_TYPE",
                             details: ["accepted": .array(MediaType.supported.map(JSONValue.string))])
        }
    }

    static func owner(_ caller: Caller) throws(RouteError) -> String {
        guard let user = caller.user, !user.isEmpty else { throw RouteError(401, "a user token is required", code: "UNAUTHORIZED") }
        return user
    }

    static func displayName(_ body: JSONValue) throws(RouteError) -> String {
        guard let raw = body["display_name"]?.stringValue else {
            throw RouteError(400, "display_name (string) is required", code: "BAD_REQUEST", details: ["field": "display_name"])
        }
        let name = raw.trimmingCharacters(in: " ")
        guard !name.isEmpty, name.count <= 100, !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw RouteError(400, "display_name must be 1-100 printable characters", code: "BAD_REQUEST", details: ["field": "display_name"])
        }
        return name
    }

    func meetingJSON(_ meeting: MeetingRecord) -> JSONValue {
        .compact([
            ("meeting_id", .string(meeting.meetingID)), ("file_id", .string(meeting.fileID)), ("title", .string(meeting.title)),
            ("filename", .string(meeting.filename)), ("content_type", .string(meeting.contentType)), ("size", .int(meeting.size)),
            ("status", .string(meeting.status.rawValue)), ("progress", .int(Int64(meeting.progress))),
            ("stage", meeting.stage.map(JSONValue.string)), ("error", meeting.error.map(JSONValue.string)),
            ("duration", meeting.duration.map(JSONValue.double)), ("format", meeting.format.map(JSONValue.string)),
            ("metadata", meeting.metadata), ("channel", .string(meeting.channel)),
            ("owner", .string(meeting.owner)),
            ("created_at", .string(ISOTime.format(meeting.createdAt))), ("updated_at", .string(ISOTime.format(meeting.updatedAt))),
        ])
    }

    func artifactList(_ meeting: MeetingRecord, caller: Caller) async throws(RouteError) -> [JSONValue] {
        let records: [Record]
        do { records = try await store.allRecords(prefix: MeetingKeys.artifactPrefix(meeting.meetingID), cap: 1000) } catch {
            throw .store(error)
        }
        let now = self.now
        return records.compactMap { ArtifactRecord(bytes: $0.value) }.map { artifact in
            let path = "/v1/meetings/\(meeting.meetingID)/artifacts/\(artifact.name)/download"
            let link = links.link(path: path, user: caller.user ?? "", now: now)
            return ["artifact_id": .string(artifact.name), "name": .string(artifact.name),
                    "content_type": .string(artifact.contentType), "size": .int(artifact.size),
                    "created_at": .string(ISOTime.format(artifact.createdAt)),
                    "download_url": .string(link.url), "expires_at": .string(ISOTime.format(Double(link.expires)))]
        }
    }

    func listMeetings(_ context: RouteContext) async throws(RouteError) -> HTTPResponse {
        func number(_ name: String, default value: Int, range: ClosedRange<Int>) throws(RouteError) -> Int {
            guard let text = context.request.queryValue(name) else { return value }
            guard let n = Int(text), range.contains(n) else {
                throw RouteError(400, "\(name) must be an integer in \(range.lowerBound)...\(range.upperBound)", code: "BAD_REQUEST",
                                 details: ["field": .string(name)])
            }
            return n
        }
        let page = try number("page", default: 1, range: 1...1_000_000)
        let limit = try number("limit", default: 20, range: 1...100)
        var status: ProcessingStatus?
        if let text = context.request.queryValue("status"), !text.isEmpty {
            guard let value = ProcessingStatus(rawValue: text) else {
                throw RouteError(400, "status must be one of pending, processing, completed, failed", code: "BAD_REQUEST",
                                 details: ["field": "status"])
            }
            status = value
        }
        var meetings: [MeetingRecord] = []
        do {
            if Self.isAdmin(context.caller) {
                meetings = try await store.allRecords(prefix: MeetingKeys.meetingPrefix, cap: 100_000).compactMap { MeetingRecord(bytes: $0.value) }
            } else {
                let owner = try Self.owner(context.caller)
                let prefix = MeetingKeys.ownerPrefix(owner)
                for index in try await store.allRecords(prefix: prefix, cap: 100_000) {
                    let id = String(index.key.dropFirst(prefix.count))
                    if let bytes = try await store.value(MeetingKeys.meeting(id)), let meeting = MeetingRecord(bytes: bytes),
                       meeting.owner == owner {
                        meetings.append(meeting)
                    }
                }
            }
        } catch { throw .store(error) }
        if let status { meetings = meetings.filter { $0.status == status } }
        // Ids are time-ordered (UUIDv7), so reversed key order is newest first.
        meetings.reverse()
        let total = meetings.count
        let start = min(total, (page - 1) * limit)
        let slice = meetings[start..<min(total, start + limit)]
        return .json(200, ["meetings": .array(slice.map(meetingJSON)), "page": .int(Int64(page)), "limit": .int(Int64(limit)),
                           "total": .int(Int64(total)), "pages": .int(Int64((total + limit - 1) / limit))])
    }

    func download(_ context: RouteContext) async throws(RouteError) -> HTTPResponse {
        let meetingID = (context.params["meeting_id"] ?? "").lowercased()
        let name = context.params["name"] ?? ""
        let path = "/v1/meetings/\(meetingID)/artifacts/\(name)/download"
        let user: String
        switch links.check(path: path, query: context.request.query, now: now) {
        case .invalid:
            throw RouteError(401, "download link is invalid: ask /v1/meetings/{meeting_id}/artifacts for a new one", code: "UNAUTHORIZED")
        case .expired:
            throw RouteError(403, "download link has expired: ask /v1/meetings/{meeting_id}/artifacts for a new one",
                             code: "UNAUTHORIZED", details: ["reason": "expired"])
        case .valid(let who):
            user = who
        }
        // Downloads count per user (seed 004: 100 per hour), whoever holds the link.
        var limitHeaders: [(String, String)] = []
        if !downloadLimits.isEmpty {
            let decision = await withCheckedContinuation { continuation in
                limiter.hit(key: "meetings-downloads|user:" + user, limits: downloadLimits, now: now) { continuation.resume(returning: $0) }
            }
            limitHeaders = [("x-ratelimit-limit", String(decision.limit)), ("x-ratelimit-remaining", String(decision.remaining)),
                            ("x-ratelimit-reset", String(decision.reset))]
            if !decision.allowed {
                var response = ErrorShape.meetings.rateLimited(retryAfter: decision.retryAfter)
                response.headers += limitHeaders + [("retry-after", String(decision.retryAfter))]
                return response
            }
        }
        let bytes: [UInt8]?
        do {
            guard try await store.value(MeetingKeys.meeting(meetingID)) != nil else { throw Self.notFound("artifact") }
            bytes = try await store.value(MeetingKeys.artifact(meetingID, name))
        } catch {
            throw .store(error)
        }
        guard let bytes, let artifact = ArtifactRecord(bytes: bytes), let size = await storage.size(key: artifact.storageKey) else {
            throw Self.notFound("artifact")
        }
        var headers = limitHeaders + [
            ("content-type", artifact.contentType), ("accept-ranges", "bytes"),
            ("content-disposition", "attachment; filename=\"\(artifact.name)\""), ("cache-control", "private, no-store"),
        ]
        let range = ByteRange.parse(context.request.header("range"), size: size)
        let start: Int64
        let end: Int64
        var status = 200
        switch range {
        case .unsatisfiable:
            var response = ErrorShape.meetings.response(416, "range not satisfiable", code: "BAD_REQUEST", details: ["size": .int(size)])
            response.headers += headers.filter { $0.0 != "content-type" } + [("content-range", "bytes */\(size)")]
            return response
        case .whole:
            start = 0
            end = size - 1
        case .part(let s, let e):
            start = s
            end = e
            status = 206
            headers.append(("content-range", "bytes \(s)-\(e)/\(size)"))
        }
        let body: [UInt8]
        do { body = size == 0 ? [] : try await storage.read(key: artifact.storageKey, offset: start, length: Int(end - start + 1)) } catch {
            throw RouteError(500, "could not read the artifact", code: "INTERNAL_ERROR")
        }
        return HTTPResponse(status: status, headers: headers, body: body)
    }

    func updateProfile(_ rawID: String, caller: Caller, _ change: @escaping @Sendable (inout ProfileRecord) -> Void) async throws(RouteError) -> ProfileRecord {
        let id = rawID.lowercased()
        guard MeetingIDs.isUUID(id) else { throw Self.notFound("profile") }
        let now = self.now
        let updated = try await store.update(MeetingKeys.profile(id)) { (bytes: [UInt8]) throws(RouteError) -> [UInt8]? in
            guard var profile = ProfileRecord(bytes: bytes), profile.owner == caller.user || Self.isAdmin(caller) else {
                throw Self.notFound("profile")
            }
            change(&profile)
            profile.updatedAt = now
            return JSONWriter.bytes(profile.json)
        }
        guard let updated, let profile = ProfileRecord(bytes: updated) else { throw Self.notFound("profile") }
        return profile
    }

    /// Stores a staged voice sample for a profile the caller owns (type from content, size
    /// bounded like uploads); the staged file is removed on any failure.
    func attachVoiceSample(_ rawID: String, caller: Caller, name: String?, _ upload: StagedUpload) async throws(RouteError) -> ProfileRecord {
        var moved = false
        defer { if !moved { unlink(upload.path) } }
        let id = rawID.lowercased()
        guard MeetingIDs.isUUID(id) else { throw Self.notFound("profile") }
        let existing: [UInt8]?
        do { existing = try await store.value(MeetingKeys.profile(id)) } catch { throw .store(error) }
        guard let existing, let current = ProfileRecord(bytes: existing), current.owner == caller.user || Self.isAdmin(caller) else {
            throw Self.notFound("profile")
        }
        try await checkVoiceSample(upload)
        let type = MediaType.detect(Self.readHead(upload.path, count: MediaType.sniffLength)) ?? "application/octet-stream"
        let key = "profiles/\(id)/voice-sample"
        let size: Int64
        do { size = try await storage.importFile(key: key, from: upload.path) } catch {
            throw RouteError(500, "could not store the voice sample", code: "INTERNAL_ERROR")
        }
        moved = true
        return try await updateProfile(id, caller: caller) { profile in
            if let name { profile.displayName = name }
            profile.voiceSampleKey = key
            profile.voiceSampleType = type
            profile.voiceSampleSize = size
        }
    }

    func linkSpeaker(_ context: RouteContext) async throws(RouteError) -> HTTPResponse {
        let body = try context.jsonObject()
        guard let speakerID = body["speaker_id"]?.stringValue?.lowercased(), MeetingIDs.isUUID(speakerID) else {
            throw RouteError(400, "speaker_id must be a UUID", code: "BAD_REQUEST", details: ["field": "speaker_id"])
        }
        guard let profileID = body["user_profile_id"]?.stringValue?.lowercased(), MeetingIDs.isUUID(profileID) else {
            throw RouteError(400, "user_profile_id must be a UUID", code: "BAD_REQUEST", details: ["field": "user_profile_id"])
        }
        let owner = try Self.owner(context.caller)
        do {
            guard let bytes = try await store.value(MeetingKeys.profile(profileID)), let profile = ProfileRecord(bytes: bytes),
                  profile.owner == owner || Self.isAdmin(context.caller)
            else { throw Self.notFound("profile") }
            let speakerKey = MeetingKeys.speaker(speakerID)
            let existing = try await store.value(speakerKey)
            if let existing, let speaker = SpeakerRecord(bytes: existing), speaker.owner != owner, !Self.isAdmin(context.caller) {
                throw Self.notFound("speaker")
            }
            // A manual link is certain: confidence 1.
            let record = SpeakerRecord(speakerID: speakerID, owner: SpeakerRecord(bytes: existing ?? [])?.owner ?? owner,
                                       profileID: profileID, confidence: 1, linkedAt: now)
            guard try await store.swap(speakerKey, expected: existing, new: JSONWriter.bytes(record.json)) else {
                throw RouteError(409, "the speaker was linked concurrently; try again", code: "CONFLICT")
            }
        } catch {
            throw .store(error)
        }
        return .json(200, ["linked": true])
    }

    func systemStatus() async throws(RouteError) -> HTTPResponse {
        var queued = 0
        var claimed = 0
        do {
            for record in try await store.allRecords(prefix: MeetingKeys.taskPrefix, cap: 100_000) {
                switch TaskRecord(bytes: record.value)?.state {
                case .queued?: queued += 1
                case .claimed?: claimed += 1
                default: break
                }
            }
        } catch { throw .store(error) }
        let workers = await withCheckedContinuation { continuation in
            node.presenceStats(channel: MeetingChannels.tasks) { continuation.resume(returning: (try? $0.get())?.clients ?? 0) }
        }
        let info = node.info()
        return .json(200, ["status": "healthy", "version": .string(info.version), "node": .string(info.name),
                           "uptime": .int(Int64(info.uptime)),
                           "queue": ["pending": .int(Int64(queued)), "processing": .int(Int64(claimed))],
                           "workers_online": .int(Int64(workers)), "storage": .string(storage.backendName)])
    }

    var systemConfig: JSONValue {
        var limits: [(String, JSONValue)] = []
        for limitClass in rateLimitClasses where limitClass.name.hasPrefix("meetings") {
            limits.append((limitClass.name, .array(limitClass.limits.map { .string($0.description) })))
        }
        return ["max_upload_bytes": .int(settings.maxUploadBytes),
                "accepted_types": .array(MediaType.supported.map(JSONValue.string)),
                "download_link_ttl_seconds": .int(Int64(settings.linkTTL)),
                "token_ttl_seconds": .int(Int64(settings.tokenTTL)),
                "task_lease_seconds": .int(Int64(settings.taskLease)),
                "task_max_attempts": .int(Int64(settings.maxAttempts)),
                "storage": .string(storage.backendName),
                "rate_limits": .object(limits),
                "telegram": ["login_widget": .bool(settings.telegramBotToken != nil),
                             "passport": .bool(settings.telegramPassportKeyPEM != nil),
                             "auth_max_age_seconds": .int(Int64(settings.telegramAuthMaxAge))],
                "task_channel": .string(MeetingChannels.tasks)]
    }
}
