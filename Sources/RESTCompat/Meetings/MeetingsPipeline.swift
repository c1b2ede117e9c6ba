import Channels
import Dispatch
import Glibc
import Logging
import Store
import Synchronization

/// Seed 004's settings (docs/configuration.md, "Meetings").
public struct MeetingsSettings: Sendable {
    public var maxUploadBytes: Int64 = 500 * 1024 * 1024
    /// Seconds a download link stays valid.
    public var linkTTL: Double = 3600
    /// Lifetime of the access tokens the hub issues after a Telegram check.
    public var tokenTTL: Double = 86_400
    /// Seconds a worker holds a claimed task without reporting before it is handed to another.
    public var taskLease: Double = 120
    /// Claims a task gets before its file is marked failed.
    public var maxAttempts = 3
    public var telegramBotToken: String?
    public var telegramPassportKeyPEM: String?
    /// Oldest `auth_date` accepted from the Login Widget, seconds.
    public var telegramAuthMaxAge: Double = 86_400
    /// Telegram user ids whose tokens carry the `admin` role.
    public var adminTelegramIDs: Set<Int64> = []
    /// The hub's JWT secret: tokens are issued with it and link keys derived from it.
    public var tokenSecret: String?

    public init() {}
}

/// The meetings pipeline of seed 004: records in the `RecordStore`, media and artifacts in
/// `ObjectStorage`, tasks and progress on channels. Holds no state of its own beyond settings.
public final class MeetingsPipeline: Sendable {
    let node: Node
    let store: any RecordStore
    let storage: any ObjectStorage
    let settings: MeetingsSettings
    let links: DownloadLinks
    let telegram: TelegramAuth
    let limiter: any RateLimiter
    let downloadLimits: [RateLimit]
    let rateLimitClasses: [RateLimitClass]
    let logger: Logger
    private let sweeper = SweepTimer()

    /// The `meetings` namespace: tasks and meeting progress keep an hour of history so a
    /// worker or dashboard that reconnects recovers what it missed.
    public static var channelOptions: ChannelOptions {
        var options = ChannelOptions()
        options.presence = true
        options.historySize = 200
        options.historyTTL = 3600
        options.allowUserLimitedChannels = true
        return options
    }

    public init(node: Node, store: any RecordStore, storage: any ObjectStorage, settings: MeetingsSettings,
                limiter: any RateLimiter, rateLimitClasses: [RateLimitClass], logger: Logger) {
        self.node = node
        self.store = store
        self.storage = storage
        self.settings = settings
        // Keys derive from the token secret so every node of a cluster agrees; without one
        // they are random per process (links then die with the process).
        let root = settings.tokenSecret.map { Array($0.utf8) } ?? Crypto.randomBytes(32)
        links = DownloadLinks(key: Crypto.hmacSHA256(Array("meetings-download-links".utf8), key: root), ttl: settings.linkTTL)
        telegram = TelegramAuth(botToken: settings.telegramBotToken, passportKeyPEM: settings.telegramPassportKeyPEM,
                                maxAge: settings.telegramAuthMaxAge,
                                nonceKey: Crypto.hmacSHA256(Array("meetings-passport-nonce".utf8), key: root))
        self.limiter = limiter
        self.rateLimitClasses = rateLimitClasses
        downloadLimits = rateLimitClasses.first { $0.name == "meetings-downloads" }?.limits ?? []
        self.logger = logger
    }

    public var routes: [Route] { userRoutes + authRoutes + workerRoutes + dashboardRoutes }


    var now: Double { node.clock.now() }

    /// Runs an async handler body and answers with its response or its error.
    func serve(_ context: RouteContext, _ body: @escaping @Sendable () async throws(RouteError) -> HTTPResponse) {
        Task {
            do {
                context.respond(try await body())
            } catch {
                context.fail(RouteError.store(error))
            }
        }
    }

    func publish(_ channel: String, _ data: JSONValue) async -> Bool {
        await withCheckedContinuation { continuation in
            node.publish(channel: channel, data: data) { [logger] outcome in
                if case .failure(let error) = outcome {
                    logger.warning("meetings publish failed", metadata: ["channel": "\(channel)", "error": "\(error)"])
                }
                continuation.resume(returning: (try? outcome.get()) != nil)
            }
        }
    }

    /// A change of one meeting, on its own channel and on its owner's; true when both took it.
    func publishMeeting(_ meeting: MeetingRecord, _ data: JSONValue) async -> Bool {
        let own = await publish(meeting.channel, data)
        let owners = await publish(MeetingChannels.owner(meeting.owner), data)
        return own && owners
    }

    static func notFound(_ what: String) -> RouteError { RouteError(404, "\(what) not found", code: "NOT_FOUND") }

    static func isAdmin(_ caller: Caller) -> Bool { caller.role == "admin" }

    /// The meeting when the caller may see it. Another user's meeting is "not found", so ids
    /// cannot be probed.
    func visibleMeeting(_ meetingID: String, caller: Caller) async throws(RouteError) -> MeetingRecord {
        guard MeetingIDs.isUUID(meetingID) else { throw Self.notFound("meeting") }
        let bytes: [UInt8]?
        do { bytes = try await store.value(MeetingKeys.meeting(meetingID.lowercased())) } catch { throw .store(error) }
        guard let bytes, let meeting = MeetingRecord(bytes: bytes),
              meeting.owner == caller.user || Self.isAdmin(caller)
        else { throw Self.notFound("meeting") }
        return meeting
    }

    func meetingID(forFile fileID: String) async throws(RouteError) -> String {
        guard MeetingIDs.isUUID(fileID) else { throw Self.notFound("file") }
        let bytes: [UInt8]?
        do { bytes = try await store.value(MeetingKeys.file(fileID.lowercased())) } catch { throw .store(error) }
        guard let bytes else { throw Self.notFound("file") }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// What the meeting's channel and `/v1/files/{id}/status` say about progress.
    func progressEvent(_ meeting: MeetingRecord, type: String = "progress") -> JSONValue {
        .compact([
            ("type", .string(type)), ("meeting_id", .string(meeting.meetingID)), ("file_id", .string(meeting.fileID)),
            ("status", .string(meeting.status.rawValue)), ("progress", .int(Int64(meeting.progress))),
            ("stage", meeting.stage.map(JSONValue.string)), ("error", meeting.error.map(JSONValue.string)),
        ])
    }

    // MARK: Uploads

    /// A file part already streamed to disk by the edge (`MultipartForm`).
    public struct StagedUpload: Sendable {
        public var path: String
        public var size: Int64
        public var filename: String
        public init(path: String, size: Int64, filename: String) {
            self.path = path
            self.size = size
            self.filename = filename
        }
    }

    /// Turns a staged upload into a meeting: checks its type from its bytes, moves it into
    /// storage, writes the records and queues its task. On any failure the staged file is
    /// removed and nothing is recorded.
    func ingest(_ upload: StagedUpload, owner: String, title: String?, metadata: JSONValue) async throws(RouteError) -> MeetingRecord {
        var moved = false
        defer { if !moved { unlink(upload.path) } }
        guard upload.size > 0 else { throw RouteError(400, "the file is empty", code: "INVALID_FILE_TYPE") }
        guard upload.size <= settings.maxUploadBytes else {
            throw RouteError(413, "file exceeds the \(settings.maxUploadBytes)-byte limit", code: "FILE_TOO_LARGE",
                             details: ["max_bytes": .int(settings.maxUploadBytes)])
        }
        let head = Self.readHead(upload.path, count: MediaType.sniffLength)
        guard let contentType = MediaType.detect(head) else {
            throw RouteError(415, "unsupported file format: send audio or video (wav, mp3, ogg, flac, m4a, mp4, webm, …)",
                             code: "INVALID_FILE_TYPE", details: ["accepted": .array(MediaType.supported.map(JSONValue.string))])
        }
        let now = self.now
        let meetingID = MeetingIDs.make(now: now)
        let fileID = MeetingIDs.make(now: now)
        let mediaKey = "media/\(meetingID)/\(fileID)"
        let size: Int64
        do { size = try await storage.importFile(key: mediaKey, from: upload.path) } catch {
            throw RouteError(500, "could not store the upload", code: "INTERNAL_ERROR", details: ["reason": .string(error.message)])
        }
        moved = true
        let filename = Self.cleanFilename(upload.filename)
        let meeting = MeetingRecord(meetingID: meetingID, fileID: fileID, owner: owner,
                                    title: title.flatMap { $0.isEmpty ? nil : String($0.prefix(200)) } ?? filename,
                                    filename: filename, contentType: contentType, size: size, mediaKey: mediaKey,
                                    metadata: metadata, now: now)
        let task = TaskRecord(fileID: fileID, meetingID: meetingID, now: now)
        do {
            // Index entries first, the meeting last: a crash in between leaves only indexes the
            // sweeper ignores, never a meeting without its task.
            try await store.store(MeetingKeys.file(fileID), Array(meetingID.utf8))
            try await store.store(MeetingKeys.ownerIndex(owner, meetingID), [])
            try await store.store(MeetingKeys.task(fileID), task.bytes)
            try await store.store(MeetingKeys.meeting(meetingID), meeting.bytes)
        } catch {
            await storage.deleteAll(prefix: "media/\(meetingID)/")
            throw .store(error)
        }
        _ = await publish(MeetingChannels.tasks, taskEvent(meeting))
        _ = await publishMeeting(meeting, progressEvent(meeting, type: "status"))
        return meeting
    }

    func taskEvent(_ meeting: MeetingRecord) -> JSONValue {
        ["type": "task", "file_id": .string(meeting.fileID), "meeting_id": .string(meeting.meetingID),
         "filename": .string(meeting.filename), "content_type": .string(meeting.contentType), "size": .int(meeting.size)]
    }

    static func readHead(_ path: String, count: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, count) }
        return n > 0 ? Array(bytes.prefix(n)) : []
    }

    /// The client's file name without any directory part or control characters.
    static func cleanFilename(_ name: String) -> String {
        let base = name.split(whereSeparator: { $0 == "/" || $0 == "\\" }).last.map(String.init) ?? ""
        let cleaned = String(String.UnicodeScalarView(base.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F && $0 != "\"" }))
        // `.` and `..` name directories, not a recording: anyone reusing the name as a path
        // would climb out of where they meant to write.
        return cleaned.isEmpty || cleaned == "." || cleaned == ".." ? "recording" : String(cleaned.prefix(255))
    }

    // MARK: Deletion

    /// Deletes a meeting with everything hanging off it: artifacts (records and objects), the
    /// stored media, its task and indexes. The meeting record goes first so it vanishes at once.
    func deleteMeeting(_ meeting: MeetingRecord) async throws(RouteError) {
        do {
            try await store.remove(MeetingKeys.meeting(meeting.meetingID))
            for record in try await store.allRecords(prefix: MeetingKeys.artifactPrefix(meeting.meetingID), cap: 10_000) {
                try await store.remove(record.key)
            }
            try await store.remove(MeetingKeys.task(meeting.fileID))
            try await store.remove(MeetingKeys.file(meeting.fileID))
            try await store.remove(MeetingKeys.ownerIndex(meeting.owner, meeting.meetingID))
        } catch {
            throw .store(error)
        }
        await storage.deleteAll(prefix: "artifacts/\(meeting.meetingID)/")
        await storage.deleteAll(prefix: "media/\(meeting.meetingID)/")
        _ = await publishMeeting(meeting, ["type": "deleted", "meeting_id": .string(meeting.meetingID)])
    }

    // MARK: Housekeeping

    /// Starts the periodic sweep: tasks whose worker went quiet go back to the queue (or fail
    /// after `maxAttempts`), queued tasks nobody claimed are announced again, used passport
    /// nonces past their expiry are forgotten.
    public func start(interval: Double = 5) {
        sweeper.start(interval: interval) { [self] in
            Task { await self.sweep() }
        }
    }

    public func stop() { sweeper.stop() }

    func sweep() async {
        let now = self.now
        let tasks: [Record]
        do { tasks = try await store.allRecords(prefix: MeetingKeys.taskPrefix, cap: 10_000) } catch { return }
        for record in tasks {
            guard let task = TaskRecord(bytes: record.value) else { continue }
            switch task.state {
            case .done:
                continue
            case .queued where now - task.queuedAt >= 15:
                await reannounce(record, task, now: now)
            case .claimed where (task.leaseUntil ?? 0) < now:
                await reclaim(record, task, now: now)
            default:
                continue
            }
        }
        if let used = try? await store.allRecords(prefix: "meetings:passport-nonce:", cap: 10_000) {
            for record in used where (Double(String(decoding: record.value, as: UTF8.self)) ?? 0) < now {
                _ = try? await store.swap(record.key, expected: record.value, new: nil)
            }
        }
    }

    private func reannounce(_ record: Record, _ task: TaskRecord, now: Double) async {
        guard let bytes = try? await store.value(MeetingKeys.meeting(task.meetingID)), let meeting = MeetingRecord(bytes: bytes) else {
            _ = try? await store.swap(record.key, expected: record.value, new: nil)  // its meeting is gone
            return
        }
        var next = task
        next.queuedAt = now
        guard (try? await store.swap(record.key, expected: record.value, new: next.bytes)) == true else { return }
        _ = await publish(MeetingChannels.tasks, taskEvent(meeting))
    }

    private func reclaim(_ record: Record, _ task: TaskRecord, now: Double) async {
        var next = task
        next.worker = nil
        next.leaseUntil = nil
        next.queuedAt = now
        let exhausted = task.attempts >= settings.maxAttempts
        next.state = .queued
        guard (try? await store.swap(record.key, expected: record.value, new: exhausted ? nil : next.bytes)) == true else { return }
        logger.notice("meetings task lease expired", metadata: ["file_id": "\(task.fileID)", "worker": "\(task.worker ?? "")",
                                                                "attempts": "\(task.attempts)", "requeued": "\(!exhausted)"])
        let reason = "worker \(task.worker ?? "?") stopped reporting; " + (exhausted ? "giving up after \(task.attempts) attempts" : "queued again")
        let updated = try? await store.update(MeetingKeys.meeting(task.meetingID)) { (bytes: [UInt8]) throws(RouteError) -> [UInt8]? in
            guard var meeting = MeetingRecord(bytes: bytes) else { return nil }
            meeting.status = exhausted ? .failed : .pending
            meeting.stage = exhausted ? nil : "requeued"
            meeting.error = exhausted ? reason : nil
            meeting.updatedAt = now
            return meeting.bytes
        }
        guard let updated = updated ?? nil, let meeting = MeetingRecord(bytes: updated) else { return }
        _ = await publishMeeting(meeting, progressEvent(meeting, type: "status"))
        if !exhausted { _ = await publish(MeetingChannels.tasks, taskEvent(meeting)) }
    }
}

/// A repeating timer on its own queue.
final class SweepTimer: Sendable {
    private let source = Mutex<DispatchSourceTimer?>(nil)

    func start(interval: Double, _ tick: @escaping @Sendable () -> Void) {
        source.withLock { slot in
            guard slot == nil else { return }
            let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "hub.meetings.sweep"))
            timer.schedule(deadline: .now() + interval, repeating: interval)
            timer.setEventHandler(handler: tick)
            timer.resume()
            slot = timer
        }
    }

    func stop() {
        source.withLock { slot in
            slot?.cancel()
            slot = nil
        }
    }
}
