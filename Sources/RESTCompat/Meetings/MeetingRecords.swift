import Channels
import Glibc

/// Where a file (and its meeting) is in the pipeline. `pending` until a worker claims it.
public enum ProcessingStatus: String, Sendable, CaseIterable {
    case pending, processing, completed, failed
}

/// One uploaded recording and the meeting made from it (seed 004 pairs them one to one:
/// `POST /v1/files` answers both ids). Stored as JSON under `MeetingKeys.meeting`.
struct MeetingRecord: Sendable {
    var meetingID: String
    var fileID: String
    var owner: String
    var title: String
    var filename: String
    var contentType: String
    var size: Int64
    var mediaKey: String
    var metadata: JSONValue
    var status: ProcessingStatus
    var progress: Int
    var stage: String?
    var error: String?
    var duration: Double?
    var format: String?
    var createdAt: Double
    var updatedAt: Double

    var json: JSONValue {
        .compact([
            ("meeting_id", .string(meetingID)), ("file_id", .string(fileID)), ("owner", .string(owner)),
            ("title", .string(title)), ("filename", .string(filename)), ("content_type", .string(contentType)),
            ("size", .int(size)), ("media_key", .string(mediaKey)), ("metadata", metadata),
            ("status", .string(status.rawValue)), ("progress", .int(Int64(progress))),
            ("stage", stage.map(JSONValue.string)), ("error", error.map(JSONValue.string)),
            ("duration", duration.map(JSONValue.double)), ("format", format.map(JSONValue.string)),
            ("created_at", .double(createdAt)), ("updated_at", .double(updatedAt)),
        ])
    }

    init(meetingID: String, fileID: String, owner: String, title: String, filename: String, contentType: String,
         size: Int64, mediaKey: String, metadata: JSONValue, now: Double) {
        self.meetingID = meetingID
        self.fileID = fileID
        self.owner = owner
        self.title = title
        self.filename = filename
        self.contentType = contentType
        self.size = size
        self.mediaKey = mediaKey
        self.metadata = metadata
        status = .pending
        progress = 0
        createdAt = now
        updatedAt = now
    }

    init?(bytes: [UInt8]) {
        guard let v = try? JSONParser.parse(bytes), let meetingID = v["meeting_id"]?.stringValue,
              let fileID = v["file_id"]?.stringValue, let owner = v["owner"]?.stringValue,
              let status = v["status"]?.stringValue.flatMap(ProcessingStatus.init(rawValue:))
        else { return nil }
        self.meetingID = meetingID
        self.fileID = fileID
        self.owner = owner
        title = v["title"]?.stringValue ?? ""
        filename = v["filename"]?.stringValue ?? ""
        contentType = v["content_type"]?.stringValue ?? "application/octet-stream"
        size = v["size"]?.intValue ?? 0
        mediaKey = v["media_key"]?.stringValue ?? ""
        metadata = v["metadata"] ?? [:]
        self.status = status
        progress = Int(v["progress"]?.intValue ?? 0)
        stage = v["stage"]?.stringValue
        error = v["error"]?.stringValue
        duration = v["duration"]?.doubleValue
        format = v["format"]?.stringValue
        createdAt = v["created_at"]?.doubleValue ?? 0
        updatedAt = v["updated_at"]?.doubleValue ?? 0
    }

    var bytes: [UInt8] { JSONWriter.bytes(json) }

    /// The channel its progress is published on: user-limited, so only the owner subscribes.
    var channel: String { MeetingChannels.meeting(meetingID, owner: owner) }
}

/// A processing task: which worker holds the file and until when.
struct TaskRecord: Sendable {
    enum State: String, Sendable { case queued, claimed, done }
    var fileID: String
    var meetingID: String
    var state: State
    var worker: String?
    var leaseUntil: Double?
    var attempts: Int
    var queuedAt: Double

    var json: JSONValue {
        .compact([
            ("file_id", .string(fileID)), ("meeting_id", .string(meetingID)), ("state", .string(state.rawValue)),
            ("worker", worker.map(JSONValue.string)), ("lease_until", leaseUntil.map(JSONValue.double)),
            ("attempts", .int(Int64(attempts))), ("queued_at", .double(queuedAt)),
        ])
    }

    var bytes: [UInt8] { JSONWriter.bytes(json) }

    init(fileID: String, meetingID: String, now: Double) {
        self.fileID = fileID
        self.meetingID = meetingID
        state = .queued
        attempts = 0
        queuedAt = now
    }

    init?(bytes: [UInt8]) {
        guard let v = try? JSONParser.parse(bytes), let fileID = v["file_id"]?.stringValue,
              let meetingID = v["meeting_id"]?.stringValue,
              let state = v["state"]?.stringValue.flatMap(State.init(rawValue:))
        else { return nil }
        self.fileID = fileID
        self.meetingID = meetingID
        self.state = state
        worker = v["worker"]?.stringValue
        leaseUntil = v["lease_until"]?.doubleValue
        attempts = Int(v["attempts"]?.intValue ?? 0)
        queuedAt = v["queued_at"]?.doubleValue ?? 0
    }
}

/// A result a worker stored for a meeting (transcript, summary, …), named by the worker.
struct ArtifactRecord: Sendable {
    var name: String
    var meetingID: String
    var contentType: String
    var size: Int64
    var storageKey: String
    var createdAt: Double

    var json: JSONValue {
        ["name": .string(name), "meeting_id": .string(meetingID), "content_type": .string(contentType),
         "size": .int(size), "storage_key": .string(storageKey), "created_at": .double(createdAt)]
    }

    init(name: String, meetingID: String, contentType: String, size: Int64, storageKey: String, createdAt: Double) {
        self.name = name
        self.meetingID = meetingID
        self.contentType = contentType
        self.size = size
        self.storageKey = storageKey
        self.createdAt = createdAt
    }

    init?(bytes: [UInt8]) {
        guard let v = try? JSONParser.parse(bytes), let name = v["name"]?.stringValue,
              let meetingID = v["meeting_id"]?.stringValue, let key = v["storage_key"]?.stringValue
        else { return nil }
        self.name = name
        self.meetingID = meetingID
        contentType = v["content_type"]?.stringValue ?? "application/octet-stream"
        size = v["size"]?.intValue ?? 0
        storageKey = key
        createdAt = v["created_at"]?.doubleValue ?? 0
    }
}

/// A user's voice profile (display name and, optionally, a stored voice sample).
struct ProfileRecord: Sendable {
    var profileID: String
    var owner: String
    var displayName: String
    var voiceSampleKey: String?
    var voiceSampleType: String?
    var voiceSampleSize: Int64?
    var createdAt: Double
    var updatedAt: Double

    var json: JSONValue {
        .compact([
            ("profile_id", .string(profileID)), ("owner", .string(owner)), ("display_name", .string(displayName)),
            ("voice_sample_key", voiceSampleKey.map(JSONValue.string)),
            ("voice_sample_type", voiceSampleType.map(JSONValue.string)),
            ("voice_sample_size", voiceSampleSize.map(JSONValue.int)),
            ("created_at", .double(createdAt)), ("updated_at", .double(updatedAt)),
        ])
    }

    /// What the API shows: no owner-internal storage keys.
    var publicJSON: JSONValue {
        .compact([
            ("profile_id", .string(profileID)), ("display_name", .string(displayName)),
            ("has_voice_sample", .bool(voiceSampleKey != nil)),
            ("voice_sample_size", voiceSampleSize.map(JSONValue.int)),
            ("created_at", .string(ISOTime.format(createdAt))), ("updated_at", .string(ISOTime.format(updatedAt))),
        ])
    }

    init(profileID: String, owner: String, displayName: String, now: Double) {
        self.profileID = profileID
        self.owner = owner
        self.displayName = displayName
        createdAt = now
        updatedAt = now
    }

    init?(bytes: [UInt8]) {
        guard let v = try? JSONParser.parse(bytes), let id = v["profile_id"]?.stringValue,
              let owner = v["owner"]?.stringValue
        else { return nil }
        profileID = id
        self.owner = owner
        displayName = v["display_name"]?.stringValue ?? ""
        voiceSampleKey = v["voice_sample_key"]?.stringValue
        voiceSampleType = v["voice_sample_type"]?.stringValue
        voiceSampleSize = v["voice_sample_size"]?.intValue
        createdAt = v["created_at"]?.doubleValue ?? 0
        updatedAt = v["updated_at"]?.doubleValue ?? 0
    }
}

/// A speaker (as diarization names them) linked to a user profile.
struct SpeakerRecord: Sendable {
    var speakerID: String
    var owner: String
    var profileID: String
    var confidence: Double
    var linkedAt: Double

    var json: JSONValue {
        ["speaker_id": .string(speakerID), "owner": .string(owner), "user_profile_id": .string(profileID),
         "confidence": .double(confidence), "linked_at": .double(linkedAt)]
    }

    init(speakerID: String, owner: String, profileID: String, confidence: Double, linkedAt: Double) {
        self.speakerID = speakerID
        self.owner = owner
        self.profileID = profileID
        self.confidence = confidence
        self.linkedAt = linkedAt
    }

    init?(bytes: [UInt8]) {
        guard let v = try? JSONParser.parse(bytes), let id = v["speaker_id"]?.stringValue,
              let owner = v["owner"]?.stringValue, let profile = v["user_profile_id"]?.stringValue
        else { return nil }
        speakerID = id
        self.owner = owner
        profileID = profile
        confidence = v["confidence"]?.doubleValue ?? 1
        linkedAt = v["linked_at"]?.doubleValue ?? 0
    }
}

/// Record-store keys. Owner ids are hex-encoded inside keys so one user's prefix never
/// matches another's (`tg:1` vs `tg:12`).
enum MeetingKeys {
    static func meeting(_ id: String) -> String { "meetings:meeting:" + id }
    static func file(_ id: String) -> String { "meetings:file:" + id }
    static func task(_ fileID: String) -> String { "meetings:task:" + fileID }
    static let taskPrefix = "meetings:task:"
    static let meetingPrefix = "meetings:meeting:"
    static func ownerPrefix(_ owner: String) -> String { "meetings:owner:" + Crypto.hex(Array(owner.utf8)) + ":" }
    static func ownerIndex(_ owner: String, _ meetingID: String) -> String { ownerPrefix(owner) + meetingID }
    static func artifactPrefix(_ meetingID: String) -> String { "meetings:artifact:" + meetingID + ":" }
    static func artifact(_ meetingID: String, _ name: String) -> String { artifactPrefix(meetingID) + name }
    static func profile(_ id: String) -> String { "meetings:profile:" + id }
    static func profileOwnerPrefix(_ owner: String) -> String { "meetings:profile-owner:" + Crypto.hex(Array(owner.utf8)) + ":" }
    static func speaker(_ id: String) -> String { "meetings:speaker:" + id }
    static func nonceUsed(_ nonce: String) -> String { "meetings:passport-nonce:" + Crypto.hex(Crypto.sha256(Array(nonce.utf8))) }
}

/// Channel names of the pipeline (docs/channels.md).
public enum MeetingChannels {
    /// The user id workers connect as; the task channel admits only it.
    public static let workerUser = "meetings-worker"
    public static let tasks = "meetings:tasks#" + workerUser
    static func meeting(_ meetingID: String, owner: String) -> String { "meetings:" + meetingID + "#" + owner }
    /// Every change of every meeting of one owner, so a second tab sees uploads it did not make
    /// (meeting ids are UUIDs, so no meeting channel is named `user`).
    static func owner(_ owner: String) -> String { "meetings:user#" + owner }
}

enum MeetingIDs {
    /// A version 7 UUID: time-ordered, so store keys list meetings oldest first.
    static func make(now: Double) -> String {
        var bytes = Crypto.randomBytes(16)
        let millis = UInt64(max(0, now) * 1000)
        for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: millis >> UInt64(40 - 8 * i)) }
        bytes[6] = (bytes[6] & 0x0F) | 0x70
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        let hex = Crypto.hex(bytes)
        let h = Array(hex)
        return String(h[0..<8]) + "-" + String(h[8..<12]) + "-" + String(h[12..<16]) + "-" + String(h[16..<20]) + "-" + String(h[20..<32])
    }

    /// Accepts any RFC 4122 textual UUID (lower or upper case); ids are compared lower-cased.
    static func isUUID(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        for (i, b) in bytes.enumerated() {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                if b != UInt8(ascii: "-") { return false }
            } else if !((b >= 48 && b <= 57) || (b >= 97 && b <= 102) || (b >= 65 && b <= 70)) {
                return false
            }
        }
        return true
    }
}

