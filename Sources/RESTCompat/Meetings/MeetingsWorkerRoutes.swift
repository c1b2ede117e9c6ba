import Channels
import Store

/// The worker side of the pipeline (docs/channels.md, "Meetings worker protocol"). Workers
/// are backends: they authenticate with the server API key, learn of tasks on
/// `meetings:tasks#meetings-worker` and claim each with a compare-and-set, so with any
/// number of workers and nodes a task runs once at a time.
extension MeetingsPipeline {
    static let workerTag = "meetings-worker"
    /// Largest media chunk one request returns; workers read media with Range requests.
    static let mediaChunk = 4 * 1024 * 1024

    var workerRoutes: [Route] {
        [
            Route("POST", "/v1/worker/token", auth: .serverAPIKey, errors: .meetings,
                  summary: "A connection token for a worker to subscribe to the task channel", tag: Self.workerTag,
                  responses: [200: "`{token, user, channel, expires_in}`", 401: "Bad API key"]) { [self] context in
                guard let secret = settings.tokenSecret else {
                    context.fail(RouteError(503, "this hub has no token secret", code: "INTERNAL_ERROR"))
                    return
                }
                let token = TokenSigner.hs256(claims: ["sub": .string(MeetingChannels.workerUser), "role": "worker",
                                                       "exp": .int(Int64(now + settings.tokenTTL))], secret: secret)
                context.json(200, ["token": .string(token), "user": .string(MeetingChannels.workerUser),
                                   "channel": .string(MeetingChannels.tasks), "expires_in": .int(Int64(settings.tokenTTL))])
            },
            Route("GET", "/v1/worker/tasks", auth: .serverAPIKey, errors: .meetings,
                  summary: "Tasks waiting for a worker (for workers that start after tasks were published)", tag: Self.workerTag,
                  responses: [200: "`{tasks: [...]}`", 401: "Bad API key"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    var tasks: [JSONValue] = []
                    do {
                        for record in try await store.allRecords(prefix: MeetingKeys.taskPrefix, cap: 10_000) {
                            guard let task = TaskRecord(bytes: record.value), task.state == .queued,
                                  let bytes = try await store.value(MeetingKeys.meeting(task.meetingID)),
                                  let meeting = MeetingRecord(bytes: bytes)
                            else { continue }
                            tasks.append(taskEvent(meeting))
                        }
                    } catch { throw .store(error) }
                    return .json(200, ["tasks": .array(tasks)])
                }
            },
            Route("POST", "/v1/worker/tasks/{file_id}/claim", auth: .serverAPIKey, errors: .meetings,
                  summary: "Claim a task (compare-and-set: one worker wins)", tag: Self.workerTag,
                  body: .json(["type": "object", "required": ["worker"], "properties": ["worker": ["type": "string"]]]),
                  responses: [200: "The task, with `media_url`", 404: "No such task", 409: "Claimed by another worker"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in try await claim(context) }
            },
            Route("GET", "/v1/worker/tasks/{file_id}/media", auth: .serverAPIKey, errors: .meetings,
                  summary: "The uploaded media, in Range-requested chunks of at most 4 MiB", tag: Self.workerTag,
                  responses: [200: "Whole media (small files)", 206: "A chunk", 400: "Range required", 404: "No such task",
                              416: "Range not satisfiable"], produces: "application/octet-stream") { [self] context in
                serve(context) { [self] () throws(RouteError) in try await media(context) }
            },
            Route("POST", "/v1/worker/tasks/{file_id}/progress", auth: .serverAPIKey, errors: .meetings,
                  summary: "Report progress (0-100) and stage; renews the claim", tag: Self.workerTag,
                  body: .json(["type": "object", "required": ["worker", "progress"],
                               "properties": ["worker": ["type": "string"], "progress": ["type": "integer"], "stage": ["type": "string"]]]),
                  responses: [200: "Recorded and published", 404: "No such task", 409: "Not your claim"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let body = try context.jsonObject()
                    guard let progress = body["progress"]?.intValue, (0...100).contains(progress) else {
                        throw RouteError(400, "progress must be an integer 0-100", code: "BAD_REQUEST")
                    }
                    let stage = body["stage"]?.stringValue.map { String($0.prefix(100)) }
                    let meeting = try await advance(context, body: body) { meeting in
                        meeting.status = .processing
                        // Progress never goes backwards on a dashboard; 100 is kept for `complete`.
                        meeting.progress = max(meeting.progress, min(99, Int(progress)))
                        meeting.stage = stage
                    }
                    return .json(200, ["status": .string(meeting.status.rawValue), "progress": .int(Int64(meeting.progress))])
                }
            },
            Route("PUT", "/v1/worker/tasks/{file_id}/artifacts/{name}", auth: .serverAPIKey, errors: .meetings,
                  summary: "Store an artifact (raw body, its Content-Type kept)", tag: Self.workerTag,
                  responses: [200: "Stored", 400: "Bad name", 404: "No such task", 409: "Not your claim"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in try await putArtifact(context) }
            },
            Route("POST", "/v1/worker/tasks/{file_id}/complete", auth: .serverAPIKey, errors: .meetings,
                  summary: "Finish a task: the file is completed", tag: Self.workerTag,
                  body: .json(["type": "object", "required": ["worker"],
                               "properties": ["worker": ["type": "string"], "duration": ["type": "number"], "format": ["type": "string"]]]),
                  responses: [200: "Completed", 404: "No such task", 409: "Not your claim"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let body = try context.jsonObject()
                    let meeting = try await advance(context, body: body, finishing: true) { meeting in
                        meeting.status = .completed
                        meeting.progress = 100
                        meeting.stage = "done"
                        meeting.error = nil
                        if let duration = body["duration"]?.doubleValue, duration.isFinite, duration >= 0 { meeting.duration = duration }
                        if let format = body["format"]?.stringValue { meeting.format = String(format.prefix(100)) }
                    }
                    return .json(200, ["status": .string(meeting.status.rawValue), "progress": .int(Int64(meeting.progress))])
                }
            },
            Route("POST", "/v1/worker/tasks/{file_id}/fail", auth: .serverAPIKey, errors: .meetings,
                  summary: "Give up on a task: the file is failed with the reason", tag: Self.workerTag,
                  body: .json(["type": "object", "required": ["worker", "reason"],
                               "properties": ["worker": ["type": "string"], "reason": ["type": "string"]]]),
                  responses: [200: "Failed", 404: "No such task", 409: "Not your claim"]) { [self] context in
                serve(context) { [self] () throws(RouteError) in
                    let body = try context.jsonObject()
                    guard let reason = body["reason"]?.stringValue, !reason.isEmpty else {
                        throw RouteError(400, "reason is required", code: "BAD_REQUEST")
                    }
                    let meeting = try await advance(context, body: body, finishing: true) { meeting in
                        meeting.status = .failed
                        meeting.stage = nil
                        meeting.error = String(reason.prefix(1000))
                    }
                    return .json(200, ["status": .string(meeting.status.rawValue), "error": .string(meeting.error ?? "")])
                }
            },
        ]
    }

    static func workerName(_ body: JSONValue) throws(RouteError) -> String {
        guard let worker = body["worker"]?.stringValue, !worker.isEmpty, worker.utf8.count <= 100 else {
            throw RouteError(400, "worker (1-100 characters) is required", code: "BAD_REQUEST")
        }
        return worker
    }

    func claim(_ context: RouteContext) async throws(RouteError) -> HTTPResponse {
        let body = try context.jsonObject()
        let worker = try Self.workerName(body)
        let fileID = (context.params["file_id"] ?? "").lowercased()
        guard MeetingIDs.isUUID(fileID) else { throw Self.notFound("task") }
        let now = self.now
        let lease = settings.taskLease
        let claimed = try await store.update(MeetingKeys.task(fileID)) { (bytes: [UInt8]) throws(RouteError) -> [UInt8]? in
            guard var task = TaskRecord(bytes: bytes) else { throw Self.notFound("task") }
            switch task.state {
            case .done:
                throw Self.notFound("task")
            case .claimed where task.worker != worker && (task.leaseUntil ?? 0) >= now:
                throw RouteError(409, "task claimed by another worker", code: "CONFLICT", details: ["worker": .string(task.worker ?? "")])
            default:
                // A new holder is a new attempt; the same worker claiming again is not.
                if task.state == .queued || task.worker != worker { task.attempts += 1 }
                task.state = .claimed
                task.worker = worker
                task.leaseUntil = now + lease
                return task.bytes
            }
        }
        guard let claimed, let task = TaskRecord(bytes: claimed) else { throw Self.notFound("task") }
        let updated = try await store.update(MeetingKeys.meeting(task.meetingID)) { (bytes: [UInt8]) throws(RouteError) -> [UInt8]? in
            guard var meeting = MeetingRecord(bytes: bytes) else { return nil }
            meeting.status = .processing
            meeting.stage = "claimed"
            meeting.error = nil
            meeting.updatedAt = now
            return meeting.bytes
        }
        guard let updated, let meeting = MeetingRecord(bytes: updated) else {
            _ = try? await store.remove(MeetingKeys.task(fileID))
            throw Self.notFound("task")
        }
        _ = await publishMeeting(meeting, progressEvent(meeting, type: "status"))
        var event = taskEvent(meeting)
        if case .object(var members) = event {
            members += [("media_url", .string("/v1/worker/tasks/\(fileID)/media")), ("lease_seconds", .int(Int64(lease))),
                        ("attempt", .int(Int64(task.attempts))), ("metadata", meeting.metadata)]
            event = .object(members)
        }
        return .json(200, event)
    }

    /// Applies a worker's change to the meeting, provided the worker holds the task's claim;
    /// renews the lease (or finishes the task) and publishes the new state.
    func advance(_ context: RouteContext, body: JSONValue, finishing: Bool = false,
                 _ change: @escaping @Sendable (inout MeetingRecord) -> Void) async throws(RouteError) -> MeetingRecord {
        let worker = try Self.workerName(body)
        let task = try await holdClaim(context.params["file_id"] ?? "", worker: worker, finishing: finishing)
        let now = self.now
        let updated = try await store.update(MeetingKeys.meeting(task.meetingID)) { (bytes: [UInt8]) throws(RouteError) -> [UInt8]? in
            guard var meeting = MeetingRecord(bytes: bytes) else { return nil }
            change(&meeting)
            meeting.updatedAt = now
            return meeting.bytes
        }
        guard let updated, let meeting = MeetingRecord(bytes: updated) else { throw Self.notFound("task") }
        _ = await publishMeeting(meeting, progressEvent(meeting, type: finishing ? "status" : "progress"))
        return meeting
    }

    /// Checks `worker` holds the claim on the file's task and renews it, or, when finishing,
    /// removes the task (a finished task leaves only its meeting behind, so the sweep and the
    /// queue listing never grow with history).
    func holdClaim(_ rawFileID: String, worker: String, finishing: Bool) async throws(RouteError) -> TaskRecord {
        let fileID = rawFileID.lowercased()
        guard MeetingIDs.isUUID(fileID) else { throw Self.notFound("task") }
        let key = MeetingKeys.task(fileID)
        for _ in 0..<16 {
            let current: [UInt8]?
            do { current = try await store.value(key) } catch { throw .store(error) }
            guard let current, var task = TaskRecord(bytes: current) else { throw Self.notFound("task") }
            guard task.state == .claimed, task.worker == worker else {
                throw RouteError(409, "this worker does not hold the task's claim", code: "CONFLICT")
            }
            if finishing {
                task.state = .done
                task.leaseUntil = nil
            } else {
                task.leaseUntil = now + settings.taskLease
            }
            let swapped: Bool
            do { swapped = try await store.swap(key, expected: current, new: finishing ? nil : task.bytes) } catch { throw .store(error) }
            if swapped { return task }
        }
        throw RouteError(503, "task \(fileID) is changing too fast; try again", code: "INTERNAL_ERROR")
    }

    func media(_ context: RouteContext) async throws(RouteError) -> HTTPResponse {
        let fileID = (context.params["file_id"] ?? "").lowercased()
        let meetingID = try await meetingID(forFile: fileID)
        let bytes: [UInt8]?
        do { bytes = try await store.value(MeetingKeys.meeting(meetingID)) } catch { throw .store(error) }
        guard let bytes, let meeting = MeetingRecord(bytes: bytes), let size = await storage.size(key: meeting.mediaKey) else {
            throw Self.notFound("task")
        }
        var headers: [(String, String)] = [("content-type", meeting.contentType), ("accept-ranges", "bytes")]
        let start: Int64
        let end: Int64
        var status = 200
        switch ByteRange.parse(context.request.header("range"), size: size) {
        case .unsatisfiable:
            var response = ErrorShape.meetings.response(416, "range not satisfiable", code: "BAD_REQUEST", details: ["size": .int(size)])
            response.headers.append(("content-range", "bytes */\(size)"))
            return response
        case .whole:
            guard size <= Int64(Self.mediaChunk) else {
                throw RouteError(400, "media is \(size) bytes: read it with Range requests of at most \(Self.mediaChunk) bytes",
                                 code: "BAD_REQUEST", details: ["size": .int(size), "max_chunk": .int(Int64(Self.mediaChunk))])
            }
            start = 0
            end = size - 1
        case .part(let s, let e):
            start = s
            end = min(e, s + Int64(Self.mediaChunk) - 1)
            status = 206
            headers.append(("content-range", "bytes \(start)-\(end)/\(size)"))
        }
        do {
            let body = size == 0 ? [] : try await storage.read(key: meeting.mediaKey, offset: start, length: Int(end - start + 1))
            return HTTPResponse(status: status, headers: headers, body: body)
        } catch {
            throw RouteError(500, "could not read the media", code: "INTERNAL_ERROR")
        }
    }

    static func isArtifactName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...64).contains(bytes.count), bytes[0] != UInt8(ascii: ".") else { return false }
        return bytes.allSatisfy { b in
            (b >= 48 && b <= 57) || (b >= 65 && b <= 90) || (b >= 97 && b <= 122)
                || b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b == UInt8(ascii: ".")
        }
    }

    func putArtifact(_ context: RouteContext) async throws(RouteError) -> HTTPResponse {
        let name = context.params["name"] ?? ""
        guard Self.isArtifactName(name) else {
            throw RouteError(400, "artifact name must be 1-64 of A-Z a-z 0-9 . _ - (not starting with .)", code: "BAD_REQUEST")
        }
        guard let worker = context.request.queryValue("worker") ?? context.request.header("x-worker") else {
            throw RouteError(400, "name the worker (?worker= or X-Worker)", code: "BAD_REQUEST")
        }
        let task = try await holdClaim(context.params["file_id"] ?? "", worker: worker, finishing: false)
        let contentType = context.request.header("content-type").flatMap { $0.isEmpty ? nil : String($0.prefix(100)) }
            ?? "application/octet-stream"
        let key = "artifacts/\(task.meetingID)/\(name)"
        do { try await storage.write(key: key, bytes: context.request.body) } catch {
            throw RouteError(500, "could not store the artifact", code: "INTERNAL_ERROR", details: ["reason": .string(error.message)])
        }
        let artifact = ArtifactRecord(name: name, meetingID: task.meetingID, contentType: contentType,
                                      size: Int64(context.request.body.count), storageKey: key, createdAt: now)
        do {
            try await store.store(MeetingKeys.artifact(task.meetingID, name), JSONWriter.bytes(artifact.json))
            // The meeting may have been deleted while the artifact was written: undo then.
            guard let bytes = try await store.value(MeetingKeys.meeting(task.meetingID)), let meeting = MeetingRecord(bytes: bytes) else {
                try await store.remove(MeetingKeys.artifact(task.meetingID, name))
                await storage.deleteAll(prefix: "artifacts/\(task.meetingID)/")
                throw Self.notFound("task")
            }
            _ = await publishMeeting(meeting, ["type": "artifact", "meeting_id": .string(meeting.meetingID),
                                                "file_id": .string(meeting.fileID), "name": .string(name),
                                                "content_type": .string(contentType), "size": .int(artifact.size)])
        } catch {
            throw .store(error)
        }
        return .json(200, ["name": .string(name), "size": .int(artifact.size), "content_type": .string(contentType)])
    }
}
