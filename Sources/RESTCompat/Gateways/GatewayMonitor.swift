import Channels
import Dispatch
import Glibc
import Logging
import Store
import Synchronization

/// Polls every gateway's `GET /gateway/status` and keeps its record current: state, media
/// duration and transcript progress; removes the mapping when the gateway says it does not
/// exist (404) or stays unreachable for `monitorFailures` polls in a row.
///
/// With several nodes on one store, one node at a time holds the monitor lease (the record
/// `gateway-monitor:lease` = `<node uid>|<expiry, ms since epoch>`, taken and renewed with
/// compare-and-set), so each gateway is polled by one node, and another takes over within a
/// lease period when that node dies.
public final class GatewayMonitor: Sendable {
    static let leaseKey = "gateway-monitor:lease"

    struct State {
        var failures: [String: Int] = [:]
        var passRunning = false
        var passes = 0
    }

    let service: GatewayService
    let nodeID: String
    let state = Mutex(State())
    let queue = DispatchQueue(label: "hub.gateway-monitor")
    nonisolated(unsafe) var timer: DispatchSourceTimer?
    /// Finds records other tools wrote straight into the store (Redis: `redis-cli SET`), so they are
    /// listed; called on the first pass and every tenth after.
    let discover: (@Sendable (@escaping @Sendable () -> Void) -> Void)?

    public init(service: GatewayService, nodeID: String, discover: (@Sendable (@escaping @Sendable () -> Void) -> Void)? = nil) {
        self.service = service
        self.nodeID = nodeID
        self.discover = discover
    }

    var leaseSeconds: Double { max(3 * service.settings.monitorInterval, service.settings.monitorInterval + service.settings.totalTimeout + 1) }

    public func start() {
        let source = DispatchSource.makeTimerSource(queue: queue)
        let interval = service.settings.monitorInterval
        source.schedule(deadline: .now() + interval, repeating: interval, leeway: .milliseconds(50))
        source.setEventHandler { [self] in tick() }
        source.resume()
        timer = source  // set once at start, before any tick runs
    }

    public func stop() {
        timer?.cancel()
    }

    private func tick() {
        let begin = state.withLock { state -> Bool in
            guard !state.passRunning else { return false }
            state.passRunning = true
            state.passes += 1
            return true
        }
        guard begin else { return }
        let passes = state.withLock { $0.passes }
        let done: @Sendable () -> Void = { [self] in state.withLock { $0.passRunning = false } }
        acquireLease { [self] leader in
            guard leader else { done(); return }
            if let discover, passes % 10 == 1 {
                discover { [self] in pass(done: done) }
            } else {
                pass(done: done)
            }
        }
    }

    static func nowMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// Takes or renews the lease; calls back with whether this node polls this round.
    func acquireLease(completion: @escaping @Sendable (Bool) -> Void) {
        let store = service.store
        let mine = Array("\(nodeID)|\(Self.nowMillis() + Int64(leaseSeconds * 1000))".utf8)
        store.get(Self.leaseKey) { [nodeID] result in
            guard case .success(let current) = result else { completion(false); return }
            if let current {
                let fields = String(decoding: current, as: UTF8.self).split(separator: "|")
                let holder = fields.first.map(String.init) ?? ""
                let expiry = fields.count > 1 ? Int64(fields[1]) ?? 0 : 0
                guard holder == nodeID || expiry < Self.nowMillis() else { completion(false); return }
            }
            store.compareAndSet(Self.leaseKey, expected: current, new: mine) { result in
                completion((try? result.get()) ?? false)
            }
        }
    }

    /// One round over every gateway; `done` runs when every poll has been dealt with.
    func pass(done: @escaping @Sendable () -> Void) {
        service.allRecords { [self] result in
            guard case .success(let all) = result else { done(); return }
            let known = Set(all.map(\.0))
            state.withLock { state in state.failures = state.failures.filter { known.contains($0.key) } }
            guard !all.isEmpty else { done(); return }
            let remaining = Atomic<Int>(all.count)
            let finished: @Sendable () -> Void = {
                if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done() }
            }
            for (id, record) in all {
                if service.inFlight.withLock({ $0.contains(id) }) { finished(); continue }
                poll(id: id, record: record, finished: finished)
            }
        }
    }

    func poll(id: String, record: GatewayRecord, finished: @escaping @Sendable () -> Void) {
        let path = "/gateway/status?gw_id=" + GatewayService.percentEncode(id)
        service.call(id: id, ip: record.ip, method: "GET", path: path, body: []) { [self] outcome in
            switch outcome {
            case .success(let response) where response.status == 404:
                remove(id: id, record: record, reason: "gateway reports it does not exist", finished: finished)
            case .success(let response) where (200..<300).contains(response.status):
                state.withLock { _ = $0.failures.removeValue(forKey: id) }
                apply(id: id, record: record, status: (try? JSONParser.parse(response.body)) ?? [:], finished: finished)
            default:
                let failures = state.withLock { state -> Int in
                    state.failures[id, default: 0] += 1
                    return state.failures[id]!
                }
                if failures >= service.settings.monitorFailures {
                    remove(id: id, record: record, reason: "gateway unreachable for \(failures) polls", finished: finished)
                } else {
                    finished()
                }
            }
        }
    }

    /// Copies what the gateway reports into its record; publishes only when something changed.
    func apply(id: String, record listed: GatewayRecord, status: JSONValue, finished: @escaping @Sendable () -> Void) {
        let reported = status["processing_state"]?.stringValue ?? status["state"]?.stringValue ?? ""
        // A value that cannot be a record field ('|' would split the seven fields and lose the
        // record) is ignored: the record keeps its last good value.
        let field = { (value: String?) in value.flatMap { GatewayRecord.problem(with: $0, field: "status") == nil ? $0 : nil } }
        let duration = field(status["recording_time"]?.stringValue ?? status["media_duration"]?.stringValue)
        let progress = field(status["transcript_progress"]?.stringValue)
        // A start claimed by another node may not have reached its gateway yet: a `working`
        // record younger than this is not taken back on an `idle` report.
        let grace = Int(service.settings.totalTimeout + service.settings.monitorInterval) + 1
        service.update(id: id) { record in
            var next = record
            switch reported {
            case "working", "recording", "streaming", "busy":
                next.state = "working"
                if let duration { next.mediaDuration = duration }
                if let progress { next.transcriptProgress = progress }
            case "finalising", "finalizing", "stopping":
                next.state = "stopped"
            case "idle", "stopped", "ready":
                if record.state == "working" {
                    let started = GatewayRecord.epochSeconds(record.startTime) ?? 0
                    if Int(time(nil)) - started < grace { return nil }
                }
                // Finished (or never started): free again, as after registration.
                next.state = "started"
                next.room = nil
                next.mediaDuration = "0"
                next.transcriptProgress = "0"
            default:
                return nil
            }
            return next
        } completion: { [self] result in
            var current = listed
            if case .success(let (before, after)?) = result {
                if let room = before.room, after.room != room { service.releaseRoom(room, id: id) }
                service.publish("update", id: id, record: after, rooms: before.room.map { [$0] } ?? [])
                current = after
            }
            // A working record another tool wrote has no room index yet: add it (only if absent).
            if current.state == "working", let room = current.room {
                service.store.compareAndSet(GatewayRecord.roomKey(room), expected: nil, new: Array(id.utf8)) { _ in finished() }
            } else {
                finished()
            }
        }
    }

    func remove(id: String, record: GatewayRecord, reason: String, finished: @escaping @Sendable () -> Void) {
        service.store.compareAndSet(GatewayRecord.key(id), expected: record.bytes, new: nil) { [self] result in
            state.withLock { _ = $0.failures.removeValue(forKey: id) }
            if case .success(true) = result {
                service.logger.notice("gateway \(id) removed: \(reason)")
                if let room = record.room { service.releaseRoom(room, id: id) }
                service.publishRemoval("removed", id: id, last: record, reason: reason)
            }
            finished()
        }
    }
}
