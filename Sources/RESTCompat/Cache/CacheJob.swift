import Channels
import Glibc

/// A cache job as stored (`cache/job/<id>` in the record store) and as the seed's API shows it.
///
/// The file list lives beside it in chunks (`cache/files/<id>/<n>`), so progress writes stay
/// small however many files the job has.
public struct CacheJob: Sendable, Equatable {
    public enum Status: String, Sendable {
        case pending, running, completed, failed, cancelled
        public var isFinal: Bool { self == .completed || self == .failed || self == .cancelled }
    }

    /// Progress up to a file index below which every file is done: where a resumed job restarts
    /// without counting anything twice.
    public struct Checkpoint: Sendable, Equatable {
        public var index = 0
        public var completedFiles = 0
        public var failedFiles = 0
        public var completedBytes: Int64 = 0
    }

    public struct Throughput: Sendable, Equatable {
        public var bytesPerSecond: Double
        /// Unix seconds of the measurement.
        public var at: Double

        public var mbps: Double { (bytesPerSecond / 1_048_576 * 10).rounded() / 10 }
        public var json: JSONValue {
            ["mbps": .double(mbps), "readable": .string(Readable.number(mbps) + " MB/s"), "timestamp": .string(ISOTime.string(at))]
        }
    }

    public var id: String
    public var status: Status
    public var totalFiles: Int
    public var totalBytes: Int64
    public var chunks: Int
    public var completedFiles = 0
    public var failedFiles = 0
    public var completedBytes: Int64 = 0
    public var checkpoint = Checkpoint()
    /// The worker holding the job while it runs, and until when (Unix seconds) its claim holds.
    public var owner: String?
    public var leaseUntil: Double = 0
    public var attempts = 0
    public var throughput: Throughput?
    public var createdAt: Double
    public var startedAt: Double?
    public var completedAt: Double?
    public var error: String?

    /// The seed shows throughput only while it is fresh.
    public static let throughputFreshness: Double = 10

    public static let chunkSize = 2_000

    // MARK: store encoding

    var stored: JSONValue {
        .compact([
            ("id", .string(id)), ("status", .string(status.rawValue)), ("totalFiles", .int(Int64(totalFiles))),
            ("totalBytes", .int(totalBytes)), ("chunks", .int(Int64(chunks))),
            ("completedFiles", .int(Int64(completedFiles))), ("failedFiles", .int(Int64(failedFiles))),
            ("completedBytes", .int(completedBytes)),
            ("checkpoint", [
                "index": .int(Int64(checkpoint.index)), "completedFiles": .int(Int64(checkpoint.completedFiles)),
                "failedFiles": .int(Int64(checkpoint.failedFiles)), "completedBytes": .int(checkpoint.completedBytes),
            ]),
            ("owner", owner.map { .string($0) }), ("leaseUntil", .double(leaseUntil)), ("attempts", .int(Int64(attempts))),
            ("throughput", throughput.map { ["bytesPerSecond": .double($0.bytesPerSecond), "at": .double($0.at)] }),
            ("createdAt", .double(createdAt)), ("startedAt", startedAt.map { .double($0) }),
            ("completedAt", completedAt.map { .double($0) }), ("error", error.map { .string($0) }),
        ])
    }

    var bytes: [UInt8] { JSONWriter.bytes(stored) }

    init(id: String, totalFiles: Int, totalBytes: Int64, createdAt: Double) {
        self.id = id
        status = .pending
        self.totalFiles = totalFiles
        self.totalBytes = totalBytes
        chunks = (totalFiles + Self.chunkSize - 1) / Self.chunkSize
        self.createdAt = createdAt
    }

    init?(bytes: [UInt8]) {
        guard let json = try? JSONParser.parse(bytes), let id = json["id"]?.stringValue,
              let status = json["status"]?.stringValue.flatMap(Status.init(rawValue:)) else { return nil }
        func int(_ v: JSONValue?) -> Int { Int(v?.intValue ?? 0) }
        self.id = id
        self.status = status
        totalFiles = int(json["totalFiles"])
        totalBytes = json["totalBytes"]?.intValue ?? 0
        chunks = int(json["chunks"])
        completedFiles = int(json["completedFiles"])
        failedFiles = int(json["failedFiles"])
        completedBytes = json["completedBytes"]?.intValue ?? 0
        if let c = json["checkpoint"] {
            checkpoint = Checkpoint(index: int(c["index"]), completedFiles: int(c["completedFiles"]), failedFiles: int(c["failedFiles"]),
                                    completedBytes: c["completedBytes"]?.intValue ?? 0)
        }
        owner = json["owner"]?.stringValue
        leaseUntil = json["leaseUntil"]?.doubleValue ?? 0
        attempts = int(json["attempts"])
        if let t = json["throughput"], let rate = t["bytesPerSecond"]?.doubleValue, let at = t["at"]?.doubleValue {
            throughput = Throughput(bytesPerSecond: rate, at: at)
        }
        createdAt = json["createdAt"]?.doubleValue ?? 0
        startedAt = json["startedAt"]?.doubleValue
        completedAt = json["completedAt"]?.doubleValue
        error = json["error"]?.stringValue
    }

    // MARK: the seed's views

    static func percentage(_ part: Int64, of whole: Int64) -> Int64 {
        whole <= 0 ? 0 : min(100, (part * 100 + whole / 2) / whole)
    }

    /// `progress` of `GET /api/v1/cache/jobs/{id}`; files count as done when completed or failed.
    public var progress: JSONValue {
        let done = Int64(completedFiles + failedFiles)
        let filesPercentage = Self.percentage(done, of: Int64(totalFiles))
        let shownBytes = min(completedBytes, totalBytes)
        // A job of empty files has no bytes to go by: its size progress follows its file progress.
        let sizePercentage = totalBytes == 0 ? filesPercentage : Self.percentage(shownBytes, of: totalBytes)
        return [
            "files": [
                "completed": .int(Int64(completedFiles)), "failed": .int(Int64(failedFiles)),
                "total": .int(Int64(totalFiles)), "percentage": .int(filesPercentage),
            ],
            "size": [
                "completedBytes": .int(shownBytes), "totalBytes": .int(totalBytes),
                "completedReadable": .string(Readable.bytes(shownBytes)), "totalReadable": .string(Readable.bytes(totalBytes)),
                "percentage": .int(sizePercentage),
            ],
            "percentage": .int((filesPercentage + sizePercentage + 1) / 2),
        ]
    }

    func freshThroughput(now: Double) -> JSONValue {
        guard let throughput, now - throughput.at < Self.throughputFreshness else { return .null }
        return throughput.json
    }

    /// `job` of `GET /api/v1/cache/jobs/{id}`.
    public func detail(now: Double) -> JSONValue {
        [
            "id": .string(id), "status": .string(status.rawValue), "totalFiles": .int(Int64(totalFiles)),
            "progress": progress, "throughput": freshThroughput(now: now),
            "createdAt": .string(ISOTime.string(createdAt)),
            "startedAt": startedAt.map { .string(ISOTime.string($0)) } ?? .null,
            "completedAt": completedAt.map { .string(ISOTime.string($0)) } ?? .null,
            "error": error.map { .string($0) } ?? .null,
        ]
    }

    /// One entry of `GET /api/v1/cache/jobs`.
    public var summary: JSONValue {
        let shownBytes = min(completedBytes, totalBytes)
        return [
            "id": .string(id), "status": .string(status.rawValue), "totalFiles": .int(Int64(totalFiles)),
            "totalSizeBytes": .int(totalBytes), "totalSizeReadable": .string(Readable.bytes(totalBytes)),
            "completedFiles": .int(Int64(completedFiles)), "completedSizeBytes": .int(shownBytes),
            "completedSizeReadable": .string(Readable.bytes(shownBytes)),
            "createdAt": .string(ISOTime.string(createdAt)),
            "completedAt": completedAt.map { .string(ISOTime.string($0)) } ?? .null,
        ]
    }
}

/// Sizes and rates the way the seed prints them: `966.69 MB`, `60 GB`, `125.5 MB/s`.
public enum Readable {
    /// Binary units, at most two decimals, trailing zeros dropped (as JavaScript's
    /// `parseFloat(x.toFixed(2))` prints them).
    public static func bytes(_ count: Int64) -> String {
        if count <= 0 { return "0 Bytes" }
        let units = ["Bytes", "KB", "MB", "GB", "TB", "PB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return number((value * 100).rounded() / 100) + " " + units[unit]
    }

    /// A number as JavaScript prints it: no `.0` on whole numbers.
    public static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        let text = String(value)
        return text
    }
}

