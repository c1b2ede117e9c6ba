import Channels

/// The channels cache jobs publish on (docs/channels.md lists them with their payloads).
public enum CacheChannels {
    /// Jobs list: `created`, `started`, `finished`, `cancelled`.
    public static let jobs = "cache:jobs"
    /// Job queue for workers: `queued` when a job is created, `available` when a claim was released.
    public static let queue = "cache:queue"
    /// Read rate of every node's built-in worker, about once a second while a job runs.
    public static let throughput = "cache:throughput"
    public static func progress(_ jobId: String) -> String { "cache:progress:" + jobId }
    public static func files(_ jobId: String) -> String { "cache:files:" + jobId }

    /// The `cache` namespace unless the config file defines one: authenticated clients may
    /// subscribe (dashboards), only the hub publishes, a short history lets a watcher that
    /// reconnects catch up.
    public static var defaultOptions: ChannelOptions {
        var options = ChannelOptions()
        options.historySize = 100
        options.historyTTL = 600
        options.allowSubscribeForClient = true
        // Progress documents repeat but for their counters: subscribers may take fossil deltas.
        options.allowedDeltaTypes = ["fossil"]
        return options
    }

    static func progressPayload(_ job: CacheJob, now: Double) -> JSONValue {
        [
            "jobId": .string(job.id), "status": .string(job.status.rawValue), "progress": job.progress,
            "throughput": job.freshThroughput(now: now), "timestamp": .string(ISOTime.string(now)),
        ]
    }

    static func jobPayload(_ job: CacheJob, event: String, now: Double) -> JSONValue {
        [
            "event": .string(event), "jobId": .string(job.id), "status": .string(job.status.rawValue),
            "totalFiles": .int(Int64(job.totalFiles)), "totalSizeBytes": .int(job.totalBytes),
            "completedFiles": .int(Int64(job.completedFiles)), "failedFiles": .int(Int64(job.failedFiles)),
            "error": job.error.map { .string($0) } ?? .null, "timestamp": .string(ISOTime.string(now)),
        ]
    }

    static func queuePayload(_ job: CacheJob, event: String) -> JSONValue {
        ["event": .string(event), "jobId": .string(job.id), "totalFiles": .int(Int64(job.totalFiles)),
         "totalSizeBytes": .int(job.totalBytes), "chunks": .int(Int64(job.chunks))]
    }
}

/// Where cache jobs live in the record store.
enum CacheKeys {
    static let jobPrefix = "cache/job/"
    static let queuePrefix = "cache/queue/"
    static func job(_ id: String) -> String { jobPrefix + id }
    static func chunk(_ id: String, _ n: Int) -> String {
        let digits = String(n)
        return "cache/files/\(id)/" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
    }
    /// Unfinished jobs, oldest first (the key starts with the creation time in milliseconds).
    static func queue(_ job: CacheJob) -> String {
        let millis = String(Int64((job.createdAt * 1000).rounded(.down)))
        return queuePrefix + String(repeating: "0", count: max(0, 15 - millis.count)) + millis + "-" + job.id
    }
    static func jobID(fromQueueKey key: String) -> String? {
        guard let dash = key.firstIndex(of: "-") else { return nil }
        return String(key[key.index(after: dash)...])
    }
}
