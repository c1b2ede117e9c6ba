import Dispatch
import Store
import Synchronization

/// The built-in cache worker for one job: `concurrency` readers take the next file in list order
/// and read it whole through their own fixed buffer, so memory stays at concurrency × buffer
/// whatever the file sizes. Each buffer is a chance to notice a cancel.
final class CacheReader: @unchecked Sendable {
    private struct Shared {
        var next: Int
        var chunks: [Int: [CacheFile]] = [:]
        var readersLeft: Int
        var rateStart: Double = 0
        var rateBytes: Double = 0
        var listError: String?
    }

    let run: CacheJobRun
    let service: CacheJobService
    private let shared: Mutex<Shared>
    private let total: Int

    init(run: CacheJobRun, service: CacheJobService) {
        self.run = run
        self.service = service
        total = run.job.totalFiles
        shared = Mutex(Shared(next: run.resumeIndex, readersLeft: max(1, service.settings.concurrency)))
    }

    func start() {
        let readers = max(1, service.settings.concurrency)
        shared.withLock { $0.rateStart = service.clock.now() }
        for n in 0..<readers {
            DispatchQueue(label: "hub.cache.read.\(n)").async { [self] in
                var buffer = [UInt8](repeating: 0, count: max(4096, service.settings.readBufferSize))
                while !run.isStopping, let (index, file) = nextFile() {
                    read(index: index, file: file, buffer: &buffer)
                }
                let last = shared.withLock { s -> Bool in
                    s.readersLeft -= 1
                    return s.readersLeft == 0
                }
                if last { finish() }
            }
        }
    }

    private func finish() {
        if let problem = shared.withLock({ $0.listError }), !run.isStopping {
            // The list itself could not be read: leave the job to be resumed rather than claim it done.
            service.logger.error("cache job \(run.id): \(problem); releasing it to be retried")
            run.requestStop(.abandoned)
        }
        run.finish()
    }

    /// The next file in list order, loading its chunk of the list from the store when needed.
    private func nextFile() -> (Int, CacheFile)? {
        let index = shared.withLock { s -> Int? in
            guard s.next < total, s.listError == nil else { return nil }
            s.next += 1
            return s.next - 1
        }
        guard let index else { return nil }
        let n = index / CacheJob.chunkSize
        if let files = shared.withLock({ $0.chunks[n] }) { return (index, files[index % CacheJob.chunkSize]) }
        // Blocking here is fine: this is a reader thread, never a service thread.
        let loaded = Mutex<Result<[CacheFile], StoreError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        service.chunk(run.id, n) { result in
            loaded.withLock { $0 = result }
            done.signal()
        }
        done.wait()
        switch loaded.withLock({ $0 })! {
        case .success(let files) where files.count > index % CacheJob.chunkSize:
            shared.withLock { s in
                s.chunks[n] = files
                // Keep the chunk in use and its neighbour: the readers are never further apart.
                for key in s.chunks.keys where key < n - 1 { s.chunks.removeValue(forKey: key) }
            }
            return (index, files[index % CacheJob.chunkSize])
        case .success:
            shared.withLock { $0.listError = "file list chunk \(n) is shorter than the job says" }
            return nil
        case .failure(let error):
            shared.withLock { $0.listError = error.message }
            return nil
        }
    }

    private func read(index: Int, file: CacheFile, buffer: inout [UInt8]) {
        run.fileStarted(index: index, file: file)
        guard let root = service.root else { return }
        // Checked again at read time: the tree may have changed since the job was made.
        guard let real = CacheFileSystem.realPath(root.path + "/" + file.path) else {
            run.fileFinished(index: index, file: file, bytes: 0, error: "No such file or directory")
            return
        }
        guard root.contains(real) else {
            run.fileFinished(index: index, file: file, bytes: 0, error: "Path escapes the cache root")
            return
        }
        guard CacheFileSystem.entry(real, follow: false)?.kind == .file else {
            run.fileFinished(index: index, file: file, bytes: 0, error: "Not a regular file")
            return
        }
        var opened: CacheFileSystem.OpenFile
        switch CacheFileSystem.OpenFile.open(real) {
        case .success(let f): opened = f
        case .failure(let error):
            run.fileFinished(index: index, file: file, bytes: 0, error: error.message)
            return
        }
        var bytes: Int64 = 0
        while !run.isStopping {
            throttle()
            switch opened.read(into: &buffer) {
            case .success(0):
                run.fileFinished(index: index, file: file, bytes: bytes, error: nil)
                _ = consume opened
                return
            case .success(let n):
                bytes += Int64(n)
                run.bytesRead(n)
                if service.settings.maxReadRate > 0 { shared.withLock { $0.rateBytes += Double(n) } }
            case .failure(let error):
                run.fileFinished(index: index, file: file, bytes: bytes, error: error.message)
                _ = consume opened
                return
            }
        }
        _ = consume opened
    }

    /// Holds the worker to `maxReadRate` over the job, in short sleeps so a cancel still lands quickly.
    private func throttle() {
        let rate = service.settings.maxReadRate
        guard rate > 0 else { return }
        while !run.isStopping {
            let wait = shared.withLock { s in s.rateStart + s.rateBytes / rate - service.clock.now() }
            if wait <= 0 { return }
            usleepSeconds(min(wait, 0.1))
        }
    }
}
