// Runs one scenario against one server: opens the connections, paces the publisher, counts
// deliveries and their latency, and writes one JSON line per measurement.
import Foundation
import Histogram

struct Target {
    var kind: ServerKind
    var label: String
    var host: String
    var port: UInt16
    /// The publisher's port: another node than the subscribers' in the cluster scenario.
    var publisherPort: UInt16
    var secret: String
    var serverPID: Int32?
    var output: String?
    var concurrency: Int
    var perSource: Int
    var payloadSize: Int
    /// A gateway record instead of `payloadSize` bytes of padding (what fossil deltas shrink).
    var gatewayPayload = false
    var connectTimeout: Double
    /// The hub's codec, transport and delta mode (other servers ignore it).
    var hubMode = HubMode()
}

/// Pacing and pass/fail rules of one stepped measurement.
struct StepPlan {
    var stepSeconds: Double
    var halfSeconds: Double
    var startDeliveries: Double
    var maxSteps: Int
    var p99LimitMs: Double
    var budgetSeconds: Double
    /// Deliveries/s of one more run at the end (another server's half rate), so two servers'
    /// latency can be compared at the same load.
    var compareDeliveries: Double? = nil
    /// Bisection steps between the best rate and the lowest that failed above it.
    var refineSteps = 3
}

struct StepResult {
    var rate: Double = 0           // publishes/s asked for
    var seconds: Double = 0
    var published = 0
    var expected = 0
    var delivered = 0
    var stale = 0
    var deliveriesPerSecond: Double = 0
    var p50: Double = 0, p99: Double = 0, p999: Double = 0, max: Double = 0, mean: Double = 0  // ms
    var serverCPU: Double?          // % of one core while publishing
    var generatorCPU: Double = 0
    var stealPercent: Double = 0    // hypervisor steal over both CPUs while publishing
    var lost = 0                    // subscribers that went away during the step
    var bytesPerDelivery: Double?   // bytes the subscribers read, per delivery
    var dataBytesPerDelivery: Double?  // bytes of the publication's data field, per delivery
    var ok = false
    var reason = ""

    var json: [String: Any] {
        var j: [String: Any] = [
            "rate": rate, "seconds": seconds, "published": published, "expected": expected,
            "delivered": delivered, "stale": stale, "deliveries_per_s": deliveriesPerSecond,
            "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": max, "mean_ms": mean,
            "generator_cpu": generatorCPU, "steal_pct": stealPercent, "lost": lost, "ok": ok, "reason": reason,
        ]
        if let serverCPU { j["server_cpu"] = serverCPU }
        if let bytesPerDelivery { j["bytes_per_delivery"] = bytesPerDelivery }
        if let dataBytesPerDelivery { j["data_bytes_per_delivery"] = dataBytesPerDelivery }
        return j
    }
}

final class Bench {
    let loop = EventLoop()
    private(set) var wire: Wire!
    private var wireRef: Unmanaged<Wire>!
    let target: Target
    private let baseNs = monotonicNs()
    private var payload: StampedPayload

    // Delivery accounting for the current window.
    private var histogram = Histogram<UInt64>(highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)  // µs
    private var windowStart: UInt64 = .max   // stamps before this belong to an earlier window
    private var delivered = 0
    private var stale = 0
    private var lastDelivery: UInt64 = 0
    private var stampHint = 0

    // Connections.
    private var subscribers: [Connection?] = []
    private var channelsOf: (Int) -> [String] = { _ in [] }
    private var publisher: Connection?
    private var publisherLost: String?
    private(set) var readyCount = 0
    private var inflight = 0
    private var failedCount = 0
    private var lostAfterReady = 0
    private var attempts: [Int] = []
    private var retry: [Int] = []
    private var failures: [String: Int] = [:]

    init(target: Target) {
        self.target = target
        payload = StampedPayload(size: target.payloadSize, gatewayState: target.gatewayPayload)
        wire = Wire.make(target.kind, host: self, secret: target.secret)
        wireRef = .passUnretained(wire)
        loop.delegate = self
    }

    func log(_ text: String) {
        FileHandle.standardError.write(Data("[hub-bench \(target.label)] \(text)\n".utf8))
    }

    func emit(_ record: [String: Any]) {
        var r = record
        r["server"] = target.label
        r["kind"] = target.kind.rawValue
        if target.kind == .hub { r["mode"] = target.hubMode.label }
        r["payload_bytes"] = payload.bytes.count
        guard let data = try? JSONSerialization.data(withJSONObject: r, options: [.sortedKeys]) else { return }
        let line = String(decoding: data, as: UTF8.self) + "\n"
        if let path = target.output {
            if !FileManager.default.fileExists(atPath: path) { _ = FileManager.default.createFile(atPath: path, contents: nil) }
            if let handle = FileHandle(forWritingAtPath: path) {
                handle.seekToEndOfFile()
                handle.write(Data(line.utf8))
                handle.closeFile()
            }
        }
        print(line, terminator: "")
    }

    // MARK: Events from the wire and the loop

    func ready(_ connection: Connection) {
        guard !connection.ready else { return }
        connection.ready = true
        if !connection.isPublisher {
            readyCount += 1
            inflight -= 1
        }
    }

    func failed(_ connection: Connection, _ why: String) {
        loop.close(connection, reason: why)
    }

    func delivered(_ connection: Connection, _ bytes: UnsafePointer<UInt8>, _ count: Int) {
        guard let stamp = StampedPayload.read(bytes, count, hint: &stampHint) else { return }
        guard stamp >= windowStart else { stale += 1; return }
        let now = loop.readTimeNs - baseNs
        histogram.record(now > stamp ? (now - stamp) / 1000 : 0)
        delivered += 1
        lastDelivery = now
    }

    func opened(_ connection: Connection) { wire.opened(connection) }

    /// Bytes of an HTTP response stream (the hub's uni_sse); returns how many were used.
    func streamed(_ connection: Connection, _ bytes: UnsafePointer<UInt8>, _ count: Int) -> Int {
        (wire as? HubWire)?.streamed(connection, bytes, count) ?? count
    }

    func message(_ connection: Connection, _ bytes: UnsafePointer<UInt8>, _ count: Int, opcode: UInt8) {
        wireRef.unsafelyUnwrapped._withUnsafeGuaranteedRef { $0.message(connection, bytes, count, opcode: opcode) }
    }

    func closed(_ connection: Connection, reason: String) {
        let key = String(reason.prefix(120))
        failures[key, default: 0] += 1
        if connection.isPublisher {
            publisherLost = reason
            publisher = nil
            log("publisher closed: \(reason)")
            return
        }
        if connection.index >= 0 && connection.index < subscribers.count { subscribers[connection.index] = nil }
        if connection.ready {
            lostAfterReady += 1
            readyCount -= 1
        } else {
            inflight -= 1
            if attempts[connection.index] < 3 { retry.append(connection.index) } else { failedCount += 1 }
        }
    }

    // MARK: Connections

    private func sourceAddress(_ index: Int) -> String {
        let sources = max(1, min(250 * 8, (subscribers.count + target.perSource - 1) / target.perSource))
        let j = index % sources
        return "127.0.\(j / 250).\(2 + j % 250)"
    }

    private func open(_ index: Int) {
        attempts[index] += 1
        let channels = channelsOf(index)
        let sse = target.kind == .hub && target.hubMode.transport == .sse
        let path = sse ? (wire as! HubWire).ssePath(user: "u\(index)", channels: channels) : wire.path(channels: channels)
        let result = loop.connect(index: index, host: target.host, port: target.port, source: sourceAddress(index),
                                  path: path, subprotocol: wire.subprotocol, httpStream: sse)
        switch result {
        case .success(let connection):
            connection.channels = channels
            connection.user = "u\(index)"
            subscribers[index] = connection
            inflight += 1
        case .failure(let error):
            failures[error.description, default: 0] += 1
            if attempts[index] < 3 { retry.append(index) } else { failedCount += 1 }
        }
    }

    /// Opens `count` subscribers (or only the missing ones, on a second call) and waits until
    /// each is logged in and subscribed. Returns the seconds it took.
    @discardableResult
    func establish(count: Int, channels: @escaping (Int) -> [String]) -> Double {
        if subscribers.count != count {
            subscribers = Array(repeating: nil, count: count)
            attempts = Array(repeating: 0, count: count)
            readyCount = 0
        }
        channelsOf = channels
        failedCount = 0
        retry = []
        var missing = Array((0..<count).filter { subscribers[$0] == nil }.reversed())
        for i in missing { attempts[i] = 0 }
        let start = monotonicNs()
        let deadline = start + UInt64(target.connectTimeout * 1e9)
        var lastReport = start
        while readyCount + failedCount < count {
            while inflight < target.concurrency, let next = retry.popLast() ?? missing.popLast() {
                open(next)
            }
            loop.poll(timeoutMs: 5)
            let now = monotonicNs()
            if now > deadline {
                log("connect timeout: \(readyCount) ready, \(inflight) pending, \(failedCount) failed")
                break
            }
            if now - lastReport > 5_000_000_000 {
                lastReport = now
                log("connecting: \(readyCount)/\(count) ready, \(inflight) pending, \(failedCount) failed")
            }
        }
        let seconds = Double(monotonicNs() - start) / 1e9
        if failedCount > 0 || readyCount < count {
            log("\(readyCount)/\(count) ready after \(String(format: "%.1f", seconds)) s; failures: \(topFailures())")
        }
        return seconds
    }

    func topFailures() -> String {
        failures.sorted { $0.value > $1.value }.prefix(4).map { "\($0.value)× \($0.key)" }.joined(separator: "; ")
    }

    func connectPublisher() throws {
        let result = loop.connect(index: -1, host: target.host, port: target.publisherPort, source: nil,
                                  path: wire.path(channels: []), subprotocol: wire.subprotocol)
        guard case .success(let connection) = result else { throw BenchError("publisher: \(result)") }
        connection.isPublisher = true
        connection.user = "bench-publisher"
        publisher = connection
        let deadline = monotonicNs() + 10_000_000_000
        while !connection.ready {
            loop.poll(timeoutMs: 5)
            if let lost = publisherLost { throw BenchError("publisher: \(lost)") }
            if monotonicNs() > deadline { throw BenchError("publisher not ready after 10 s") }
        }
    }

    /// Keeps answering the sockets for a while (pings, late deliveries).
    func idle(seconds: Double) {
        let end = monotonicNs() + UInt64(seconds * 1e9)
        while monotonicNs() < end { loop.poll(timeoutMs: 5) }
    }

    /// Waits until deliveries stop arriving (a backlog from an overloaded step drains).
    func settle(quietSeconds: Double = 0.5, maxSeconds: Double = 10) {
        let start = monotonicNs()
        var lastSeen = start
        var seen = delivered + stale
        while true {
            loop.poll(timeoutMs: 5)
            let now = monotonicNs()
            if delivered + stale != seen { seen = delivered + stale; lastSeen = now }
            if now - lastSeen > UInt64(quietSeconds * 1e9) || now - start > UInt64(maxSeconds * 1e9) { break }
        }
    }

    // MARK: Publishing

    /// Publishes at `rate` per second for `seconds`; channel of the k-th publish is
    /// `channels[pick(k)]`, reaching `fanout[pick(k)]` subscribers.
    func runStep(rate: Double, seconds: Double, channels: [[UInt8]], pick: (Int) -> Int, fanout: [Int],
                 p99LimitMs: Double) -> StepResult {
        var result = StepResult()
        result.rate = rate
        guard let publisher else { result.reason = "no publisher"; return result }
        histogram.reset()
        delivered = 0
        stale = 0
        lostAfterReady = 0
        let start = monotonicNs()
        windowStart = start - baseNs
        lastDelivery = windowStart
        let serverCPU0 = target.serverPID.flatMap { CPUTime.of(pid: $0) }
        let selfCPU0 = CPUTime.ofSelf()
        let steal0 = CPUTime.stealTicks()
        let bytes0 = loop.subscriberBytesRead
        let hubWire = wire as? HubWire
        let data0 = hubWire?.dataBytesReceived ?? 0
        let interval = 1e9 / rate
        let total = max(1, Int(rate * seconds))
        let end = start + UInt64(seconds * 1e9)
        var sent = 0
        var expected = 0
        var out: [UInt8] = []
        out.reserveCapacity(1 << 20)
        var backlogged = false
        while sent < total {
            let now = monotonicNs()
            let due = min(total, Int(Double(now - start) / interval) + 1)
            if due > sent {
                if publisher.phase == .closed { break }
                out.removeAll(keepingCapacity: true)
                payload.stamp(now - baseNs)
                for k in sent..<due {
                    let slot = pick(k)
                    expected += fanout[slot]
                    wire.appendPublish(to: &out, connection: publisher, channel: channels[slot], payload: payload.bytes)
                }
                loop.sendRaw(publisher, out)
                sent = due
                if publisher.pendingOutboundBytes > 64 << 20 { backlogged = true; break }
            }
            if now >= end { break }
            loop.poll(timeoutMs: 1)
        }
        let publishEnd = monotonicNs()
        let wall = Double(publishEnd - start) / 1e9
        if let pid = target.serverPID, let c0 = serverCPU0, let c1 = CPUTime.of(pid: pid) {
            result.serverCPU = (c1 - c0) / wall * 100
        }
        result.generatorCPU = (CPUTime.ofSelf() - selfCPU0) / wall * 100
        let steal1 = CPUTime.stealTicks()
        if steal1.total > steal0.total { result.stealPercent = (steal1.steal - steal0.steal) / (steal1.total - steal0.total) * 100 }
        // Let what was published arrive: until all of it is in, or nothing came for a second.
        var lastCount = delivered
        var lastProgress = publishEnd
        let drainLimit = publishEnd + 5_000_000_000
        while delivered < expected {
            loop.poll(timeoutMs: 5)
            let now = monotonicNs()
            if delivered != lastCount { lastCount = delivered; lastProgress = now }
            if now - lastProgress > 1_000_000_000 || now > drainLimit { break }
        }
        let finish = max(lastDelivery + baseNs, publishEnd)
        result.seconds = wall
        result.published = sent
        result.expected = expected
        result.delivered = delivered
        result.stale = stale
        result.lost = lostAfterReady
        result.deliveriesPerSecond = Double(delivered) / (Double(finish - start) / 1e9)
        if delivered > 0 {
            result.bytesPerDelivery = Double(loop.subscriberBytesRead - bytes0) / Double(delivered)
            // Without deltas every delivery carries the payload as published.
            if let hubWire {
                result.dataBytesPerDelivery = hubWire.mode.delta
                    ? Double(hubWire.dataBytesReceived - data0) / Double(delivered) : Double(payload.bytes.count)
            }
        }
        if histogram.totalCount > 0 {
            result.p50 = Double(histogram.valueAtPercentile(50)) / 1000
            result.p99 = Double(histogram.valueAtPercentile(99)) / 1000
            result.p999 = Double(histogram.valueAtPercentile(99.9)) / 1000
            result.max = Double(histogram.max) / 1000
            result.mean = histogram.mean / 1000
        }
        var reasons: [String] = []
        if backlogged { reasons.append("publisher backlogged") }
        if publisherLost != nil { reasons.append("publisher lost") }
        if Double(sent) < 0.95 * Double(total) { reasons.append("published \(sent) of \(total)") }
        if Double(delivered) < 0.99 * Double(expected) { reasons.append("delivered \(delivered) of \(expected)") }
        if result.p99 > p99LimitMs { reasons.append("p99 \(String(format: "%.1f", result.p99)) ms > \(p99LimitMs) ms") }
        if lostAfterReady > 0 { reasons.append("\(lostAfterReady) subscribers lost (\(topFailures()))") }
        result.ok = reasons.isEmpty
        result.reason = reasons.joined(separator: "; ")
        log(String(format: "rate %.0f/s: %d published, %d/%d delivered, %.0f deliveries/s, %.0f B each, p50 %.2f p99 %.2f p99.9 %.2f ms, server %.0f%% gen %.0f%% steal %.0f%% %@",
                   rate, sent, delivered, expected, result.deliveriesPerSecond, result.bytesPerDelivery ?? 0, result.p50, result.p99, result.p999,
                   result.serverCPU ?? -1, result.generatorCPU, result.stealPercent, result.ok ? "ok" : "FAIL: " + result.reason))
        return result
    }

    /// Steps the publish rate up (doubling) until a step fails, refines once, then measures
    /// latency at half the best sustained delivery rate.
    func stepUp(scenario: String, base: [String: Any], plan: StepPlan, channels: [[UInt8]], pick: @escaping (Int) -> Int,
                fanout: () -> [Int], perPublish: Double, refill: () -> Void) {
        let began = monotonicNs()
        func elapsed() -> Double { Double(monotonicNs() - began) / 1e9 }
        func record(_ phase: String, _ r: StepResult) {
            var j = base.merging(r.json) { $1 }
            j["scenario"] = scenario
            j["p99_limit_ms"] = plan.p99LimitMs
            j["phase"] = phase
            emit(j)
        }
        var rate = max(1, plan.startDeliveries / perPublish)
        var best: StepResult?
        var failedAny = false
        var downs = 0
        var retries = 0
        /// The lowest rate above `best` that failed (what the refinement bisects towards).
        var lowestFailure: Double?
        for _ in 0..<plan.maxSteps {
            let r = runStep(rate: rate, seconds: plan.stepSeconds, channels: channels, pick: pick, fanout: fanout(),
                            p99LimitMs: plan.p99LimitMs)
            record("step", r)
            if r.ok {
                if best == nil || r.deliveriesPerSecond > best!.deliveriesPerSecond { best = r }
                // A retry that passed where the first try failed: that rate is not a failure.
                if let failure = lowestFailure, failure <= r.rate { lowestFailure = nil }
                rate *= 2
                retries = 0
            } else {
                failedAny = true
                if best == nil || r.rate > best!.rate { lowestFailure = min(lowestFailure ?? .infinity, r.rate) }
                settle()
                refill()
                if best == nil && downs < 3 && rate > 1 {
                    downs += 1
                    rate = max(1, rate / 4)
                    continue
                }
                // p99 near the limit flips from step to step, and more so while the hypervisor
                // steals CPU: a step that kept up with the deliveries but missed on latency is
                // tried again at the same rate (twice when steal was 5 % or more).
                let keptUp = Double(r.delivered) >= 0.99 * Double(r.expected) && r.lost == 0
                if keptUp && retries < (r.stealPercent >= 5 ? 2 : 1) {
                    retries += 1
                    continue
                }
                break
            }
            if elapsed() > plan.budgetSeconds { log("time budget reached"); break }
        }
        // Doubling leaves the ceiling somewhere in [best, 2 × best): bisect that interval
        // geometrically (1.41×, then 1.19× or 1.68×, …) so the figure is not quantised to a
        // power of two, which made two runs of the same code differ by up to 2×.
        if var low = best?.rate, var high = lowestFailure {
            var steps = 0
            while steps < plan.refineSteps, high / low > 1.1, elapsed() < plan.budgetSeconds {
                steps += 1
                let mid = (low * high).squareRoot()
                let r = runStep(rate: mid, seconds: plan.stepSeconds, channels: channels, pick: pick, fanout: fanout(),
                                p99LimitMs: plan.p99LimitMs)
                record("step", r)
                if r.ok {
                    low = mid
                    if r.deliveriesPerSecond > best!.deliveriesPerSecond { best = r }
                } else {
                    high = mid
                    settle()
                    refill()
                }
            }
        }
        var summary = base
        summary["scenario"] = scenario
        summary["phase"] = "summary"
        summary["p99_limit_ms"] = plan.p99LimitMs
        if let b = best {
            settle()
            refill()
            let halfRate = max(1, b.deliveriesPerSecond / 2 / perPublish)
            let half = runStep(rate: halfRate, seconds: plan.halfSeconds, channels: channels, pick: pick, fanout: fanout(),
                               p99LimitMs: plan.p99LimitMs)
            record("half", half)
            summary["max_deliveries_per_s"] = b.deliveriesPerSecond
            summary["max_rate"] = b.rate
            summary["max_server_cpu"] = b.serverCPU ?? NSNull()
            summary["max_generator_cpu"] = b.generatorCPU
            summary["max_steal_pct"] = b.stealPercent
            summary["max_p99_ms"] = b.p99
            summary["half"] = half.json
            summary["hit_ceiling"] = !failedAny ? "no step failed (generator or step limit)" : ""
        } else {
            summary["error"] = "no step sustained"
        }
        if let deliveries = plan.compareDeliveries {
            settle()
            refill()
            let r = runStep(rate: max(1, deliveries / perPublish), seconds: plan.halfSeconds, channels: channels, pick: pick,
                            fanout: fanout(), p99LimitMs: plan.p99LimitMs)
            record("compare", r)
            summary["compare"] = r.json
        }
        summary["seconds"] = elapsed()
        emit(summary)
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
