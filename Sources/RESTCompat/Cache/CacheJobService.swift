import Channels
import Dispatch
import Glibc
import Logging
import Store
import Synchronization

/// How the hub runs cache jobs; filled from flags, environment (the seed's variables) and config file.
public struct CacheSettings: Sendable {
    /// The mount point jobs read from; nil: job creation answers 503.
    public var root: String?
    public var pathPrefixes = CacheRoot.defaultPrefixes
    /// Whether this node reads files itself (otherwise only external workers do).
    public var worker = true
    /// Files read at once by the built-in worker.
    public var concurrency = 4
    /// Bytes of one read; each concurrent reader holds one buffer, never a whole file.
    public var readBufferSize = 1 << 20
    /// Bytes per second the built-in worker may read (0: as fast as the disk goes).
    public var maxReadRate: Double = 0
    /// Progress is published after this many files…
    public var progressFileThreshold = 10
    /// …or this many milliseconds, whichever comes first, and always after the last file.
    public var progressTimeThreshold: Double = 2000
    /// Seconds a claim holds without being renewed; a crashed node's job is taken over after it.
    public var leaseSeconds: Double = 15
    /// This node's worker identity, kept across restarts (in the data directory) so a restarted
    /// hub resumes its own jobs at once.
    public var workerID = RandomID.uuid()
    /// Seconds a finished (completed, failed, cancelled) job is kept after it ended, then
    /// deleted with its file list; 0 keeps every job forever.
    public var retention: Double = 7 * 86_400

    public init() {}
}

/// Cache jobs: creation (paths checked and expanded off the service threads), the store records,
/// claiming under compare-and-set so each job runs once across nodes, the built-in worker, and
/// the channels everything is published on.
public final class CacheJobService: @unchecked Sendable {
    let node: Node
    let store: any RecordStore
    let settings: CacheSettings
    let clock: any Clock
    let logger: Logger
    let root: CacheRoot?
    private let expansion = DispatchQueue(label: "hub.cache.expand")
    private let scheduler = DispatchQueue(label: "hub.cache.scheduler")
    private let runs = Mutex<[String: CacheJobRun]>([:])
    private let scanning = Atomic<Bool>(false)
    private let sweeping = Atomic<Bool>(false)
    /// When the last sweep for expired jobs started (read and written on `scheduler` only).
    private var lastSweep: Double = 0
    private let stopped = Atomic<Bool>(false)
    private var timer: DispatchSourceTimer?

    public init(node: Node, store: any RecordStore, settings: CacheSettings, clock: any Clock = SystemClock(),
                logger: Logger = Logger(label: "hub.cache")) {
        self.node = node
        self.store = store
        self.settings = settings
        self.clock = clock
        self.logger = logger
        root = settings.root.flatMap { CacheRoot(path: $0, prefixes: settings.pathPrefixes) }
        if let path = settings.root, root == nil {
            logger.warning("cache root \(path) is not a directory: cache job creation answers 503 until it exists and the hub restarts")
        }
    }

    /// Starts the scheduler: once a second it publishes throughput and, with the built-in worker
    /// on, looks for a job to claim (a new one, or one whose claim lapsed, or this worker's own
    /// from before a restart).
    public func start() {
        let timer = DispatchSource.makeTimerSource(queue: scheduler)
        timer.schedule(deadline: .now() + 0.1, repeating: 1)
        timer.setEventHandler { [weak self] in self?.tick() }
        self.timer = timer
        timer.resume()
    }

    /// Stops every run, storing where each got to so it resumes after a restart. Waits up to 3 s.
    public func shutdown() {
        stopped.store(true, ordering: .releasing)
        timer?.cancel()
        let active = runs.withLock { Array($0.values) }
        for run in active {
            run.requestStop(.shutdown)
            if run.external { run.finish() }
        }
        let deadline = clock.now() + 3
        while clock.now() < deadline && runs.withLock({ !$0.isEmpty }) { usleepSeconds(0.02) }
    }

    private func tick() {
        let active = runs.withLock { Array($0.values) }
        if !active.isEmpty {
            let now = clock.now()
            let rates = active.map { ($0.id, $0.throughput?.bytesPerSecond ?? 0) }
            let total = CacheJob.Throughput(bytesPerSecond: rates.reduce(0) { $0 + $1.1 }, at: now)
            publish(CacheChannels.throughput, [
                "node": .string(node.config.nodeName), "mbps": .double(total.mbps),
                "readable": .string(Readable.number(total.mbps) + " MB/s"), "timestamp": .string(ISOTime.string(now)),
                "jobs": .array(rates.map { ["jobId": .string($0.0), "mbps": .double(CacheJob.Throughput(bytesPerSecond: $0.1, at: now).mbps)] }),
            ])
        }
        scanForWork()
        sweepFinished()
    }

    /// Deletes finished jobs past their retention, so the store does not grow with every job
    /// ever run. Every node sweeps (deleting twice is harmless); a sweep pages through the job
    /// records and runs at most every minute (more often for short retentions).
    func sweepFinished() {
        guard settings.retention > 0, !stopped.load(ordering: .acquiring) else { return }
        let now = clock.now()
        guard now - lastSweep >= min(60, max(1, settings.retention / 4)) else { return }
        guard sweeping.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        lastSweep = now
        sweepPage(after: nil, now: now)
    }

    private func sweepPage(after: String?, now: Double) {
        let pageSize = 200
        store.list(prefix: CacheKeys.jobPrefix, after: after, limit: pageSize) { [self] result in
            guard case .success(let records) = result else {
                sweeping.store(false, ordering: .releasing)
                return
            }
            for record in records {
                guard let job = CacheJob(bytes: record.value), job.status.isFinal,
                      now - (job.completedAt ?? job.createdAt) > settings.retention else { continue }
                // The file list first, the record last: only readers use the list, and a
                // record whose list is gone is retried at the next sweep.
                for n in 0..<job.chunks { store.delete(CacheKeys.chunk(job.id, n)) { _ in } }
                store.delete(record.key) { _ in }
                logger.debug("cache: job \(job.id) expired (\(job.status.rawValue))")
            }
            if records.count == pageSize, let last = records.last, !stopped.load(ordering: .acquiring) {
                sweepPage(after: last.key, now: now)
            } else {
                sweeping.store(false, ordering: .releasing)
            }
        }
    }

    /// Looks for one job for the built-in worker when it is idle.
    func scanForWork() {
        guard settings.worker, root != nil, !stopped.load(ordering: .acquiring) else { return }
        guard runs.withLock({ !$0.values.contains { !$0.external } }) else { return }
        guard scanning.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        store.list(prefix: CacheKeys.queuePrefix, after: nil, limit: 50) { [self] result in
            guard case .success(let entries) = result else {
                scanning.store(false, ordering: .releasing)
                return
            }
            tryClaim(entries.compactMap { CacheKeys.jobID(fromQueueKey: $0.key) }[...])
        }
    }

    private func tryClaim(_ ids: ArraySlice<String>) {
        guard let id = ids.first, !stopped.load(ordering: .acquiring) else {
            scanning.store(false, ordering: .releasing)
            return
        }
        claim(id: id, external: false) { [self] result in
            if case .success(let run?) = result {
                scanning.store(false, ordering: .releasing)
                CacheReader(run: run, service: self).start()
            } else {
                tryClaim(ids.dropFirst())
            }
        }
    }

    /// Claims a job for this node if nobody holds it: pending, or running under a lapsed claim, or
    /// running under this worker's own identity from before a restart. Compare-and-set makes the
    /// claim atomic across nodes. Completes with nil when the job is not claimable.
    func claim(id: String, external: Bool, completion: @escaping @Sendable (Result<CacheJobRun?, StoreError>) -> Void) {
        store.get(CacheKeys.job(id)) { [self] result in
            guard case .success(let bytes) = result else {
                if case .failure(let error) = result { completion(.failure(error)) }
                return
            }
            guard let bytes, var job = CacheJob(bytes: bytes) else { completion(.success(nil)); return }
            let now = clock.now()
            if job.status.isFinal {
                store.delete(CacheKeys.queue(job)) { _ in }
                completion(.success(nil))
                return
            }
            let ownRestart = job.owner == settings.workerID && runs.withLock { $0[id] == nil }
            guard job.status == .pending || job.leaseUntil < now || ownRestart else { completion(.success(nil)); return }
            job.status = .running
            job.owner = settings.workerID
            job.leaseUntil = now + settings.leaseSeconds
            job.attempts += 1
            if job.startedAt == nil { job.startedAt = now }
            let claimed = job.bytes
            let claimedJob = job
            store.compareAndSet(CacheKeys.job(id), expected: bytes, new: claimed) { [self] result in
                switch result {
                case .success(true):
                    let job = claimedJob
                    let run = CacheJobRun(service: self, job: job, storedBytes: claimed, external: external)
                    let fresh = runs.withLock { map -> Bool in
                        guard map[id] == nil else { return false }
                        map[id] = run
                        return true
                    }
                    guard fresh else { completion(.success(nil)); return }
                    if job.attempts > 1 {
                        logger.notice("cache job \(id): resuming at file \(job.checkpoint.index) of \(job.totalFiles) (attempt \(job.attempts))")
                    }
                    run.start()
                    completion(.success(run))
                case .success(false):
                    completion(.success(nil))
                case .failure(let error):
                    completion(.failure(error))
                }
            }
        }
    }

    func run(_ id: String) -> CacheJobRun? { runs.withLock { $0[id] } }

    func runEnded(_ run: CacheJobRun) {
        runs.withLock { map in if map[run.id] === run { map.removeValue(forKey: run.id) } }
        if !run.external { scheduler.async { [self] in scanForWork() } }
    }

    // MARK: channels

    func publish(_ channel: String, _ data: JSONValue, then: (@Sendable () -> Void)? = nil) {
        node.publish(channel: channel, data: data) { [logger] result in
            if case .failure(let error) = result { logger.warning("cache: publish to \(channel) failed: \(error)") }
            then?()
        }
    }

    func publishJobEvent(_ event: String, _ job: CacheJob) {
        publish(CacheChannels.jobs, CacheChannels.jobPayload(job, event: event, now: clock.now()))
    }

    // MARK: the REST operations

    /// Checks and expands the paths on the expansion queue (never on a service thread), stores the
    /// file list and the job, and queues it.
    func create(files: [String], directories: [String], recursive: Bool,
                completion: @escaping @Sendable (Result<CacheJob, RouteError>) -> Void) {
        guard let root else {
            completion(.failure(RouteError(503, "Cache root is not configured or missing (set CACHE_ROOT or --cache-root)")))
            return
        }
        expansion.async { [self] in
            let list: [CacheFile]
            do {
                list = try root.expand(files: files, directories: directories, recursive: recursive)
            } catch {
                completion(.failure(error as? RouteError ?? RouteError(400, "\(error)")))
                return
            }
            guard !list.isEmpty else {
                completion(.failure(RouteError(400, "No files found for the given paths")))
                return
            }
            let job = CacheJob(id: RandomID.uuid(), totalFiles: list.count, totalBytes: list.reduce(0) { $0 + $1.size }, createdAt: clock.now())
            storeNewJob(job, files: list, completion: completion)
        }
    }

    private func storeNewJob(_ job: CacheJob, files: [CacheFile], completion: @escaping @Sendable (Result<CacheJob, RouteError>) -> Void) {
        let failed = RouteError(500, "Failed to create cache job")
        let remaining = Atomic<Int>(job.chunks)
        let anyFailure = Atomic<Bool>(false)
        for n in 0..<job.chunks {
            let slice = files[(n * CacheJob.chunkSize)..<min(files.count, (n + 1) * CacheJob.chunkSize)]
            let encoded = JSONWriter.bytes(.array(slice.map { [.string($0.path), .int($0.size)] }))
            store.put(CacheKeys.chunk(job.id, n), value: encoded) { [self] result in
                if case .failure = result { anyFailure.store(true, ordering: .releasing) }
                guard remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 else { return }
                guard !anyFailure.load(ordering: .acquiring) else {
                    for n in 0..<job.chunks { store.delete(CacheKeys.chunk(job.id, n)) { _ in } }
                    completion(.failure(failed))
                    return
                }
                store.put(CacheKeys.job(job.id), value: job.bytes) { [self] result in
                    guard case .success = result else { completion(.failure(failed)); return }
                    // `created` is published (and through Redis, accepted) before the job is
                    // queued: no node can claim it, and publish `started`, before `created` is
                    // in the channel.
                    publish(CacheChannels.jobs, CacheChannels.jobPayload(job, event: "created", now: clock.now())) { [self] in
                        store.put(CacheKeys.queue(job), value: Array(job.id.utf8)) { [self] _ in
                            // The job record is durable; a lost queue entry would only delay it, but the
                            // scheduler also finds it: it is there in every case but a failing disk.
                            completion(.success(job))
                            publish(CacheChannels.queue, CacheChannels.queuePayload(job, event: "queued"))
                            scheduler.async { [self] in scanForWork() }
                        }
                    }
                }
            }
        }
    }

    /// The job, with this node's live counters when it is running here.
    func job(_ id: String, completion: @escaping @Sendable (Result<CacheJob?, StoreError>) -> Void) {
        if let run = run(id) { completion(.success(run.job)); return }
        store.get(CacheKeys.job(id)) { result in completion(result.map { $0.flatMap(CacheJob.init(bytes:)) }) }
    }

    /// Every job, newest first.
    func list(completion: @escaping @Sendable (Result<[CacheJob], StoreError>) -> Void) {
        let collected = Mutex<[CacheJob]>([])
        @Sendable func page(after: String?) {
            store.list(prefix: CacheKeys.jobPrefix, after: after, limit: 500) { [self] result in
                switch result {
                case .failure(let error):
                    completion(.failure(error))
                case .success(let records):
                    let jobs = records.compactMap { record in run(String(record.key.dropFirst(CacheKeys.jobPrefix.count)))?.job ?? CacheJob(bytes: record.value) }
                    collected.withLock { $0 += jobs }
                    if records.count == 500, let last = records.last {
                        page(after: last.key)
                    } else {
                        completion(.success(collected.withLock { $0 }.sorted { $0.createdAt > $1.createdAt }))
                    }
                }
            }
        }
        page(after: nil)
    }

    /// Cancels a pending or running job: the record says `cancelled` (so every node's reader
    /// stops at its next store write), and a reader on this node stops at its next buffer.
    func cancel(_ id: String, attempt: Int = 0, completion: @escaping @Sendable (Result<Void, RouteError>) -> Void) {
        store.get(CacheKeys.job(id)) { [self] result in
            guard case .success(let bytes) = result else { completion(.failure(RouteError(500, "Failed to cancel job"))); return }
            guard let bytes, var job = CacheJob(bytes: bytes) else { completion(.failure(RouteError(404, "Job not found"))); return }
            guard !job.status.isFinal else {
                completion(.failure(RouteError(400, "Job cannot be cancelled: it is already \(job.status.rawValue)")))
                return
            }
            job.status = .cancelled
            job.completedAt = clock.now()
            job.owner = nil
            job.leaseUntil = 0
            let cancelled = job
            store.compareAndSet(CacheKeys.job(id), expected: bytes, new: job.bytes) { [self] result in
                switch result {
                case .success(true):
                    run(id)?.requestStop(.cancelled)
                    store.delete(CacheKeys.queue(cancelled)) { _ in }
                    publishJobEvent("cancelled", cancelled)
                    completion(.success(()))
                case .success(false) where attempt < 20:
                    cancel(id, attempt: attempt + 1, completion: completion)  // a progress write came between
                default:
                    completion(.failure(RouteError(500, "Failed to cancel job")))
                }
            }
        }
    }

    /// The files of one chunk of a job's list.
    func chunk(_ id: String, _ n: Int, completion: @escaping @Sendable (Result<[CacheFile], StoreError>) -> Void) {
        store.get(CacheKeys.chunk(id, n)) { result in
            completion(result.flatMap { bytes in
                guard let bytes, let entries = (try? JSONParser.parse(bytes))?.arrayValue else { return .failure(StoreError("file list chunk \(n) of job \(id) is missing")) }
                return .success(entries.compactMap { entry in
                    guard let path = entry.arrayValue?.first?.stringValue, let size = entry.arrayValue?.last?.intValue else { return nil }
                    return CacheFile(path: path, size: size)
                })
            })
        }
    }

    /// Store health for `GET /api/v1/health`.
    func probeStore(completion: @escaping @Sendable (Bool) -> Void) {
        store.get("cache/health") { result in
            if case .success = result { completion(true) } else { completion(false) }
        }
    }
}

func usleepSeconds(_ seconds: Double) {
    guard seconds > 0 else { return }
    var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
    var left = timespec()
    while nanosleep(&ts, &left) != 0 && errno == EINTR { ts = left }
}
