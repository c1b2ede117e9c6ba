import Channels
import Synchronization

/// The worker protocol over the client connection (docs/channels.md, "Cache workers"): an
/// external worker subscribes to `cache:queue`, claims a job with the `cache.claim` RPC (a
/// compare-and-set on the job record, so one job runs once across nodes), fetches the file list
/// with `cache.files`, reports with `cache.report` and ends with `cache.finish`. Every call
/// carries the hub's server API key as `key`.
public struct CacheWorkerRPC: Sendable {
    let service: CacheJobService
    let serverAPIKey: String?

    public init(service: CacheJobService, serverAPIKey: String?) {
        self.service = service
        self.serverAPIKey = serverAPIKey.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Bytes reported with `read` events for files not yet finished, per run, so a file's
    /// final `bytes` is counted once whether or not the worker also sent partial reads.
    private final class PartialBytes: Sendable {
        let map = Mutex<[String: [Int: Int64]]>([:])
    }
    private let partial = PartialBytes()

    public func register(on node: Node) {
        node.registerRPC("cache.claim") { _, data, reply in guarded(data, reply) { () throws(ProtocolError) in try claim(data, reply) } }
        node.registerRPC("cache.files") { _, data, reply in guarded(data, reply) { () throws(ProtocolError) in try files(data, reply) } }
        node.registerRPC("cache.report") { _, data, reply in guarded(data, reply) { () throws(ProtocolError) in try report(data, reply) } }
        node.registerRPC("cache.finish") { _, data, reply in guarded(data, reply) { () throws(ProtocolError) in try finish(data, reply) } }
    }

    typealias Reply = @Sendable (Result<JSONValue, ProtocolError>) -> Void

    private func guarded(_ data: JSONValue, _ reply: @escaping Reply, _ body: () throws(ProtocolError) -> Void) {
        guard let expected = serverAPIKey, let key = data["key"]?.stringValue, ConstantTime.equal(key, expected) else {
            reply(.failure(.permissionDenied.with(message: "cache worker calls need the server API key as key")))
            return
        }
        do { try body() } catch { reply(.failure(error)) }
    }

    private func jobID(_ data: JSONValue) throws(ProtocolError) -> String {
        guard let id = TeamCacheAPI.jobID(data["jobId"]?.stringValue) else { throw ProtocolError.badRequest.with(message: "jobId must be a job UUID") }
        return id
    }

    /// The run this worker claimed, checked by its claim token.
    private func claimedRun(_ data: JSONValue) throws(ProtocolError) -> CacheJobRun {
        let id = try jobID(data)
        guard let run = service.run(id), run.external, let token = data["claim"]?.stringValue, ConstantTime.equal(token, run.claimToken) else {
            throw ProtocolError.notAvailable.with(message: "no claim on job \(id) here (released, cancelled or taken over)")
        }
        return run
    }

    private func claim(_ data: JSONValue, _ reply: @escaping Reply) throws(ProtocolError) {
        let answer: @Sendable (CacheJobRun) -> Void = { run in
            let job = run.job
            reply(.success([
                "jobId": .string(job.id), "claim": .string(run.claimToken), "totalFiles": .int(Int64(job.totalFiles)),
                "totalSizeBytes": .int(job.totalBytes), "chunks": .int(Int64(job.chunks)), "chunkSize": .int(Int64(CacheJob.chunkSize)),
                "resumeFrom": .int(Int64(run.resumeIndex)), "leaseSeconds": .double(service.settings.leaseSeconds),
            ]))
        }
        if data["jobId"] != nil {
            let id = try jobID(data)
            service.claim(id: id, external: true) { result in
                switch result {
                case .success(let run?): answer(run)
                case .success(nil): reply(.failure(.notAvailable.with(message: "job \(id) is not claimable")))
                case .failure: reply(.failure(.internal))
                }
            }
            return
        }
        service.store.list(prefix: CacheKeys.queuePrefix, after: nil, limit: 50) { result in
            guard case .success(let entries) = result else { reply(.failure(.internal)); return }
            let ids = entries.compactMap { CacheKeys.jobID(fromQueueKey: $0.key) }
            @Sendable func next(_ rest: ArraySlice<String>) {
                guard let id = rest.first else { reply(.failure(.notAvailable.with(message: "no job to claim"))); return }
                service.claim(id: id, external: true) { result in
                    if case .success(let run?) = result { answer(run) } else { next(rest.dropFirst()) }
                }
            }
            next(ids[...])
        }
    }

    private func files(_ data: JSONValue, _ reply: @escaping Reply) throws(ProtocolError) {
        let run = try claimedRun(data)
        guard let n = data["chunk"]?.intValue, n >= 0, n < run.job.chunks else {
            throw ProtocolError.badRequest.with(message: "chunk must be 0..<\(run.job.chunks)")
        }
        service.chunk(run.id, Int(n)) { result in
            switch result {
            case .success(let files):
                reply(.success(["chunk": .int(n), "from": .int(n * Int64(CacheJob.chunkSize)),
                                "files": .array(files.map { ["path": .string($0.path), "size": .int($0.size)] })]))
            case .failure:
                reply(.failure(.internal))
            }
        }
    }

    private func report(_ data: JSONValue, _ reply: @escaping Reply) throws(ProtocolError) {
        let run = try claimedRun(data)
        guard let events = data["events"]?.arrayValue, events.count <= 10_000 else {
            throw ProtocolError.badRequest.with(message: "events must be an array of at most 10000")
        }
        let total = run.job.totalFiles
        // Every event is checked before any is applied: a batch with one bad event changes nothing.
        for event in events {
            guard let index = event["index"]?.intValue, index >= 0, index < total else {
                throw ProtocolError.badRequest.with(message: "every event needs event and an index in 0..<\(total)")
            }
            guard let kind = event["event"]?.stringValue, ["started", "read", "completed", "failed"].contains(kind) else {
                throw ProtocolError.badRequest.with(message: "event must be started, read, completed or failed")
            }
        }
        for event in events {
            guard let kind = event["event"]?.stringValue, let i = event["index"]?.intValue.map(Int.init) else { continue }
            let file = CacheFile(path: event["path"]?.stringValue ?? "", size: event["size"]?.intValue ?? 0)
            let bytes = max(0, event["bytes"]?.intValue ?? 0)
            switch kind {
            case "started":
                run.fileStarted(index: i, file: file)
            case "read":
                partial.map.withLock { $0[run.id, default: [:]][i, default: 0] += bytes }
                run.bytesRead(Int(bytes))
            case "completed", "failed":
                let already = partial.map.withLock { $0[run.id]?.removeValue(forKey: i) ?? 0 }
                if bytes > already { run.bytesRead(Int(bytes - already)) }
                let error = kind == "failed" ? (event["error"]?.stringValue ?? "failed") : nil
                run.fileFinished(index: i, file: file, bytes: max(bytes, already), error: error)
            default:
                break  // checked above
            }
        }
        reply(.success(["status": .string(run.isStopping ? "stop" : "running")]))
    }

    private func finish(_ data: JSONValue, _ reply: @escaping Reply) throws(ProtocolError) {
        let run = try claimedRun(data)
        if !run.allFilesDone && !run.isStopping {
            // A worker that gives up early hands the job back for someone else to resume.
            run.requestStop(.abandoned)
        }
        partial.map.withLock { _ = $0.removeValue(forKey: run.id) }
        run.finish {
            let job = run.job
            reply(.success(["status": .string(job.status.rawValue)]))
        }
    }
}
