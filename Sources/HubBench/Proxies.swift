// `hub-bench proxies`: what the backend proxies cost, against the hub deciding alone, on one hub
// in one run. Connects: `--concurrency` threads each open a WebSocket, send `connect` and wait for
// its reply, then reset the connection — with an HS256 token (the hub checks it) or without one
// (the hub asks the connect proxy, `hub-bench proxy-backend`); connections per second and the
// connect's latency from the TCP connect to the reply. Subscribes: one connected client
// subscribes and unsubscribes in turn — with a subscription token, or in a namespace with
// `proxy_subscribe` — and the subscribe reply's latency is timed. The modes alternate per round so
// that drift on a shared machine hits both.
import ArgumentParser
import Foundation
import Glibc

struct Proxies: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxies",
        abstract: "Scenario 8: connect-proxy throughput and subscribe-proxy latency against direct JWT, same hub, same run.")
    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option(help: "HMAC secret for hub tokens.") var secret = "s"
    @Option(help: "Connections per connect measurement.") var connections = 2000
    @Option(help: "Threads connecting at once.") var concurrency = 16
    @Option(help: "Timed subscribes per subscribe measurement.") var subscribes = 1000
    @Option(help: "Rounds; each measures both modes of both phases.") var rounds = 2
    @Option(help: "Namespace whose channels are subscribed with a subscription token.") var directNamespace = "direct"
    @Option(help: "Namespace with proxy_subscribe.") var proxiedNamespace = "proxied"
    @Option(help: "Server PID, for its CPU time.") var serverPid: Int32?
    @Option(help: "Backend PID, for its CPU time (to show it is not the bottleneck).") var backendPid: Int32?
    @Option(help: "Name in the results.") var label = "hub"
    @Option(help: "Append JSON lines to this file.") var out: String?

    enum Mode: String, CaseIterable { case jwt, proxy }

    func run() throws {
        var connectRates: [Mode: [Double]] = [:], serverCPUPerConnect: [Mode: [Double]] = [:]
        var connectLatency: [Mode: [Double]] = [:], subscribeLatency: [Mode: [Double]] = [:]
        for round in 1...rounds {
            for mode in Mode.allCases {
                let record = try measureConnects(mode: mode, round: round)
                connectRates[mode, default: []].append(record["connects_per_s"] as? Double ?? 0)
                connectLatency[mode, default: []] += record["latencies"] as? [Double] ?? []
                if let cpu = record["server_cpu_us_per_connect"] as? Double { serverCPUPerConnect[mode, default: []].append(cpu) }
            }
            for mode in Mode.allCases {
                subscribeLatency[mode, default: []] += try measureSubscribes(mode: mode, round: round)
            }
        }
        func median(_ values: [Double]) -> Double { Starts.percentile(values, 0.5) }
        let jwtRate = median(connectRates[.jwt] ?? []), proxyRate = median(connectRates[.proxy] ?? [])
        var summary: [String: Any] = [
            "scenario": "proxies", "phase": "summary", "server": label, "rounds": rounds,
            "connections": connections, "concurrency": concurrency, "subscribes": subscribes,
            "connects_per_s_jwt": jwtRate, "connects_per_s_proxy": proxyRate,
            "connect_rate_ratio": jwtRate > 0 ? proxyRate / jwtRate : 0,
        ]
        for mode in Mode.allCases {
            let connects = connectLatency[mode] ?? [], subs = subscribeLatency[mode] ?? []
            summary["connect_p50_ms_\(mode.rawValue)"] = Starts.percentile(connects, 0.5)
            summary["connect_p99_ms_\(mode.rawValue)"] = Starts.percentile(connects, 0.99)
            summary["subscribe_p50_ms_\(mode.rawValue)"] = Starts.percentile(subs, 0.5)
            summary["subscribe_p99_ms_\(mode.rawValue)"] = Starts.percentile(subs, 0.99)
            if let cpu = serverCPUPerConnect[mode] { summary["server_cpu_us_per_connect_\(mode.rawValue)"] = median(cpu) }
        }
        for quantile in ["p50", "p99"] {
            let proxied = summary["subscribe_\(quantile)_ms_proxy"] as? Double ?? 0, direct = summary["subscribe_\(quantile)_ms_jwt"] as? Double ?? 0
            summary["subscribe_added_\(quantile)_ms"] = proxied - direct
        }
        try emit(summary)
    }

    /// `connections` connects from `concurrency` threads; each connection is reset once answered.
    private func measureConnects(mode: Mode, round: Int) throws -> [String: Any] {
        let (host, port, total) = (host, UInt16(port), connections)
        let next = Counter(), results = Results()
        let token = JWT.hs256(subject: "bench", secret: Array(secret.utf8))
        let command = mode == .jwt ? #"{"id":1,"connect":{"token":"\#(token)","name":"hub-bench"}}"# : #"{"id":1,"connect":{"name":"hub-bench"}}"#
        let cpu0 = serverPid.flatMap { CPUTime.of(pid: $0) }, backend0 = backendPid.flatMap { CPUTime.of(pid: $0) }
        let began = monotonicNs()
        let done = DispatchGroup()
        for _ in 0..<max(1, concurrency) {
            done.enter()
            Thread {
                defer { done.leave() }
                while next.take() < total {
                    let t0 = monotonicNs()
                    do {
                        let socket = try BlockingWebSocket(host: host, port: port)
                        try socket.send(command)
                        let reply = String(decoding: try socket.receive(), as: UTF8.self)
                        guard reply.contains(#""connect":{"#), !reply.contains(#""error""#) else {
                            results.fail("refused: " + String(reply.prefix(120)))
                            continue
                        }
                        results.add(Double(monotonicNs() - t0) / 1e6)
                    } catch {
                        results.fail("\(error)")
                    }
                }
            }.start()
        }
        done.wait()
        let seconds = Double(monotonicNs() - began) / 1e9
        let (latencies, failures) = results.snapshot()
        var record: [String: Any] = [
            "scenario": "proxies", "phase": "connect", "mode": mode.rawValue, "round": round, "server": label,
            "connections": total, "ok": latencies.count, "seconds": seconds,
            "connects_per_s": Double(latencies.count) / seconds,
            "p50_ms": Starts.percentile(latencies, 0.5), "p99_ms": Starts.percentile(latencies, 0.99),
        ]
        if let cpu0, let cpu1 = serverPid.flatMap({ CPUTime.of(pid: $0) }), !latencies.isEmpty {
            record["server_cpu_s"] = cpu1 - cpu0
            record["server_cpu_us_per_connect"] = (cpu1 - cpu0) * 1e6 / Double(latencies.count)
        }
        if let backend0, let backend1 = backendPid.flatMap({ CPUTime.of(pid: $0) }) { record["backend_cpu_s"] = backend1 - backend0 }
        if !failures.isEmpty { record["failures"] = failures }
        try emit(record)
        guard !latencies.isEmpty else { throw BenchError("no \(mode.rawValue) connect succeeded: \(failures)") }
        record["latencies"] = latencies
        return record
    }

    /// One client subscribes and unsubscribes `subscribes` times; only the subscribe is timed.
    private func measureSubscribes(mode: Mode, round: Int) throws -> [Double] {
        let socket = try BlockingWebSocket(host: host, port: UInt16(port))
        let key = Array(secret.utf8)
        try socket.send(#"{"id":1,"connect":{"token":"\#(JWT.hs256(subject: "bench", secret: key))"}}"#)
        _ = try socket.receive()
        let channel = (mode == .jwt ? directNamespace : proxiedNamespace) + ":room"
        // Made before timing: a client holds its subscription token before it subscribes.
        let subscribe = mode == .jwt
            ? #"{"id":ID,"subscribe":{"channel":"\#(channel)","token":"\#(JWT.hs256(subject: "bench", channel: channel, secret: key))"}}"#
            : #"{"id":ID,"subscribe":{"channel":"\#(channel)"}}"#
        var latencies: [Double] = [], failures: [String: Int] = [:]
        var id = 1
        for _ in 0..<subscribes {
            id += 1
            let t0 = monotonicNs()
            try socket.send(subscribe.replacingOccurrences(of: "ID", with: String(id)))
            let reply = try replyText(socket, id: id)
            if reply.contains(#""subscribe":{"#) && !reply.contains(#""error""#) {
                latencies.append(Double(monotonicNs() - t0) / 1e6)
            } else {
                failures[String(reply.prefix(120)), default: 0] += 1
            }
            id += 1
            try socket.send(#"{"id":\#(id),"unsubscribe":{"channel":"\#(channel)"}}"#)
            _ = try replyText(socket, id: id)
        }
        var record: [String: Any] = [
            "scenario": "proxies", "phase": "subscribe", "mode": mode.rawValue, "round": round, "server": label,
            "subscribes": subscribes, "ok": latencies.count,
            "p50_ms": Starts.percentile(latencies, 0.5), "p99_ms": Starts.percentile(latencies, 0.99),
            "mean_ms": latencies.isEmpty ? 0 : latencies.reduce(0, +) / Double(latencies.count),
        ]
        if !failures.isEmpty { record["failures"] = failures }
        try emit(record)
        guard !latencies.isEmpty else { throw BenchError("no \(mode.rawValue) subscribe succeeded: \(failures)") }
        return latencies
    }

    /// The reply with this id (pings and pushes in between are skipped).
    private func replyText(_ socket: BlockingWebSocket, id: Int) throws -> String {
        while true {
            let text = String(decoding: try socket.receive(), as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.contains(#""id":\#(id),"#) || $0.contains(#""id":\#(id)}"#) }) {
                return String(line)
            }
        }
    }

    private func emit(_ record: [String: Any]) throws {
        let line = String(decoding: try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]), as: UTF8.self) + "\n"
        print(line, terminator: "")
        guard let out else { return }
        if !FileManager.default.fileExists(atPath: out) { _ = FileManager.default.createFile(atPath: out, contents: nil) }
        guard let handle = FileHandle(forWritingAtPath: out) else { throw BenchError("cannot write \(out)") }
        handle.seekToEndOfFile()
        handle.write(Data(line.utf8))
        handle.closeFile()
    }
}

/// Hands out connection numbers to the connecting threads.
private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func take() -> Int { lock.lock(); defer { value += 1; lock.unlock() }; return value }
}

/// Latencies and failure reasons from every thread.
private final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var latencies: [Double] = []
    private var failures: [String: Int] = [:]
    func add(_ ms: Double) { lock.lock(); latencies.append(ms); lock.unlock() }
    func fail(_ why: String) { lock.lock(); failures[why, default: 0] += 1; lock.unlock() }
    func snapshot() -> ([Double], [String: Int]) { lock.lock(); defer { lock.unlock() }; return (latencies, failures) }
}
