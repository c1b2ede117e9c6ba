import Channels
import Dispatch
import Synchronization

/// One claimed job on this node, whoever reads its files (the built-in worker or an external
/// worker reporting over RPC): live counters, the resume checkpoint, progress thresholds, per-file
/// events, throughput, and the periodic write of all that to the store under the claim.
final class CacheJobRun: @unchecked Sendable {
    enum Stop: Int {
        case none = 0, cancelled, shutdown, lost, abandoned
    }

    private struct Live {
        var job: CacheJob
        /// The record bytes last written under our claim: the compare-and-set's expectation.
        var storedBytes: [UInt8]
        /// Files finished beyond the checkpoint, by index, waiting for the ones before them.
        var finishedAhead: [Int: (ok: Bool, bytes: Int64)] = [:]
        var filesSincePublish = 0
        var bytesAtPublish: Int64 = -1
        var lastPublish: Double = 0
        var samples: [(at: Double, bytes: Int64)] = []
        var persisting = false
        var finished = false
        var lastReport: Double
        var firstFailure: String?
        var startedAt: Double
        var startBytes: Int64
    }

    let service: CacheJobService
    let id: String
    let claimToken = RandomID.make(length: 24)
    let external: Bool
    private let live: Mutex<Live>
    private let stopReason = Atomic<Int>(0)
    private var timer: DispatchSourceTimer?
    private let queue: DispatchQueue
    private var ticks = 0

    init(service: CacheJobService, job: CacheJob, storedBytes: [UInt8], external: Bool) {
        self.service = service
        id = job.id
        self.external = external
        var job = job
        // Resume from the checkpoint: files after it are read again, so nothing counts twice.
        job.completedFiles = job.checkpoint.completedFiles
        job.failedFiles = job.checkpoint.failedFiles
        job.completedBytes = job.checkpoint.completedBytes
        let now = service.clock.now()
        live = Mutex(Live(job: job, storedBytes: storedBytes, lastPublish: now, lastReport: now, startedAt: now, startBytes: job.completedBytes))
        queue = DispatchQueue(label: "hub.cache.run")
    }

    var job: CacheJob { live.withLock { $0.job } }
    var resumeIndex: Int { live.withLock { $0.job.checkpoint.index } }
    var stop: Stop { Stop(rawValue: stopReason.load(ordering: .acquiring)) ?? .none }
    var isStopping: Bool { stop != .none }

    func requestStop(_ reason: Stop) {
        _ = stopReason.compareExchange(expected: 0, desired: reason.rawValue, ordering: .acquiringAndReleasing)
    }

    /// Starts the heartbeat: throughput samples and timed progress every 250 ms, a store write
    /// (which renews the claim and notices a cancel made on another node) every second.
    func start() {
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + 0.25, repeating: 0.25)
        timer.setEventHandler { [weak self] in self?.tick() }
        self.timer = timer
        timer.resume()
        let job = self.job
        service.publishJobEvent("started", job)
        publishProgress(force: true)
    }

    private func tick() {
        ticks += 1
        let now = service.clock.now()
        let abandoned = live.withLock { l -> Bool in
            l.samples.append((now, l.job.completedBytes))
            if l.samples.count > 13 { l.samples.removeFirst(l.samples.count - 13) }  // a 3-second window
            l.job.throughput = rate(l.samples, now: now).map { CacheJob.Throughput(bytesPerSecond: $0, at: now) }
            return external && now - l.lastReport > service.settings.leaseSeconds
        }
        if abandoned {
            // An external worker that went quiet never calls cache.finish: hand the job back
            // here, or this node's heartbeat would renew its claim forever.
            requestStop(.abandoned)
            finish()
            return
        }
        publishProgress(force: false)
        if ticks % 4 == 0 { persist(final: false) }
    }

    private func rate(_ samples: [(at: Double, bytes: Int64)], now: Double) -> Double? {
        guard let first = samples.first, let last = samples.last, last.at - first.at >= 0.2 else { return nil }
        return Double(last.bytes - first.bytes) / (last.at - first.at)
    }

    var throughput: CacheJob.Throughput? { live.withLock { $0.job.throughput } }

    // MARK: what the reader reports

    func fileStarted(index: Int, file: CacheFile) {
        live.withLock { $0.lastReport = service.clock.now() }
        service.publish(CacheChannels.files(id), ["event": "started", "jobId": .string(id), "index": .int(Int64(index)),
                                                  "path": .string(file.path), "size": .int(file.size)])
    }

    func bytesRead(_ count: Int) {
        live.withLock {
            $0.job.completedBytes += Int64(count)
            $0.lastReport = service.clock.now()
        }
    }

    /// A file is done: `error` nil when every byte was read. `bytes` is what was read of it.
    func fileFinished(index: Int, file: CacheFile, bytes: Int64, error: String?) {
        let now = service.clock.now()
        // The progress payload is taken under the same lock as the count, so a file-threshold
        // publication shows exactly the count that triggered it.
        let progressPayload = live.withLock { l -> JSONValue? in
            l.lastReport = now
            if error == nil { l.job.completedFiles += 1 } else {
                l.job.failedFiles += 1
                if l.firstFailure == nil { l.firstFailure = "\(file.path): \(error!)" }
            }
            l.finishedAhead[index] = (error == nil, bytes)
            while let done = l.finishedAhead.removeValue(forKey: l.job.checkpoint.index) {
                l.job.checkpoint.index += 1
                if done.ok { l.job.checkpoint.completedFiles += 1 } else { l.job.checkpoint.failedFiles += 1 }
                l.job.checkpoint.completedBytes += done.bytes
            }
            l.filesSincePublish += 1
            let allDone = l.job.completedFiles + l.job.failedFiles >= l.job.totalFiles
            let due = allDone || l.filesSincePublish >= service.settings.progressFileThreshold
                || (now - l.lastPublish) * 1000 >= service.settings.progressTimeThreshold
            guard due else { return Optional<JSONValue>.none }  // not `nil`: JSONValue takes nil literals as JSON null
            return Self.takeProgress(&l, now: now)
        }
        var event: JSONValue = ["event": .string(error == nil ? "completed" : "failed"), "jobId": .string(id),
                                "index": .int(Int64(index)), "path": .string(file.path), "bytes": .int(bytes)]
        if let error, case .object(var members) = event {
            members.append(("error", .string(error)))
            event = .object(members)
        }
        service.publish(CacheChannels.files(id), event)
        if let progressPayload { service.publish(CacheChannels.progress(id), progressPayload) }
    }

    private static func takeProgress(_ l: inout Live, now: Double) -> JSONValue {
        l.filesSincePublish = 0
        l.lastPublish = now
        l.bytesAtPublish = l.job.completedBytes
        return CacheChannels.progressPayload(l.job, now: now)
    }

    /// Publishes progress when forced (a threshold was met) or when the time threshold has passed
    /// with bytes moving (a large file shows size progress before it completes).
    private func publishProgress(force: Bool) {
        let now = service.clock.now()
        let payload = live.withLock { l -> JSONValue? in
            let timeDue = (now - l.lastPublish) * 1000 >= service.settings.progressTimeThreshold && l.job.completedBytes != l.bytesAtPublish
            guard force || timeDue else { return nil }
            return Self.takeProgress(&l, now: now)
        }
        if let payload { service.publish(CacheChannels.progress(id), payload) }
    }

    var allFilesDone: Bool { live.withLock { $0.job.completedFiles + $0.job.failedFiles >= $0.job.totalFiles } }

    // MARK: the store

    /// Writes the live state under the claim. A refused write means someone else changed the
    /// record: a cancel (stop now) or a takeover (stop, the job is no longer ours).
    func persist(final: Bool, completion: (@Sendable () -> Void)? = nil) {
        let now = service.clock.now()
        enum Step { case skip, retry, write([UInt8], [UInt8], CacheJob) }
        let step = live.withLock { l -> Step in
            if l.persisting { return final ? .retry : .skip }
            l.persisting = true
            var record = l.job
            if final {
                switch stop {
                case .none:
                    record.status = record.failedFiles == 0 ? .completed : .failed
                    if record.throughput == nil, now - l.startedAt > 0 {
                        // Too short for the sliding window: report the job's average instead.
                        record.throughput = CacheJob.Throughput(bytesPerSecond: Double(record.completedBytes - l.startBytes) / (now - l.startedAt), at: now)
                    }
                    record.completedAt = now
                    record.owner = nil
                    record.leaseUntil = 0
                    if record.failedFiles > 0 {
                        record.error = "\(record.failedFiles) of \(record.totalFiles) files could not be read; first: \(l.firstFailure ?? "unknown")"
                    }
                case .shutdown, .abandoned:
                    // Still ours to resume (same worker id after a restart) or anyone's once the claim lapses.
                    record.leaseUntil = now
                case .cancelled, .lost:
                    break
                }
            } else {
                record.leaseUntil = now + service.settings.leaseSeconds
            }
            return .write(l.storedBytes, record.bytes, record)
        }
        let expected: [UInt8], new: [UInt8], record: CacheJob
        switch step {
        case .skip:
            completion?()
            return
        case .retry:
            // The final write must not race the periodic one: both expect the same bytes.
            queue.asyncAfter(deadline: .now() + 0.02) { self.persist(final: final, completion: completion) }
            return
        case .write(let e, let n, let r):
            (expected, new, record) = (e, n, r)
        }
        service.store.compareAndSet(CacheKeys.job(id), expected: expected, new: new) { [self] result in
            switch result {
            case .success(true):
                live.withLock {
                    $0.storedBytes = new
                    $0.persisting = false
                    if final { $0.job = record }
                }
                completion?()
            case .success(false):
                live.withLock { $0.persisting = false }
                service.store.get(CacheKeys.job(id)) { [self] current in
                    let stored = (try? current.get()).flatMap { $0 }.flatMap(CacheJob.init(bytes:))
                    if stored?.status == .cancelled {
                        requestStop(.cancelled)
                        if final, let stored, let bytes = try? current.get() {
                            // Keep the counters the reader reached, under the canceller's status.
                            var merged = record
                            merged.status = .cancelled
                            merged.completedAt = stored.completedAt
                            merged.owner = nil
                            merged.leaseUntil = 0
                            merged.error = stored.error
                            live.withLock { $0.job = merged }
                            service.store.compareAndSet(CacheKeys.job(id), expected: bytes, new: merged.bytes) { _ in completion?() }
                            return
                        }
                    } else if stored?.owner != service.settings.workerID {
                        requestStop(.lost)
                    } else if let bytes = try? current.get() {
                        // Still ours: take the stored bytes as the new expectation and write again.
                        live.withLock { $0.storedBytes = bytes }
                        if final { persist(final: true, completion: completion); return }
                    }
                    completion?()
                }
            case .failure(let error):
                live.withLock { $0.persisting = false }
                service.logger.warning("cache job \(id): progress not stored: \(error)")
                completion?()
            }
        }
    }

    /// Ends the run: final store write, final progress, the jobs-list event, the queue entry
    /// removed when the job is over.
    func finish(completion: (@Sendable () -> Void)? = nil) {
        let first = live.withLock { l -> Bool in
            if l.finished { return false }
            l.finished = true
            return true
        }
        guard first else { completion?(); return }
        timer?.cancel()
        persist(final: true) { [self] in
            let job = self.job
            publishProgress(force: true)
            if job.status.isFinal {
                service.store.delete(CacheKeys.queue(job)) { _ in }
                if job.status != .cancelled { service.publishJobEvent("finished", job) }
            } else {
                service.publish(CacheChannels.queue, CacheChannels.queuePayload(job, event: "available"))
            }
            service.runEnded(self)
            completion?()
        }
    }
}
