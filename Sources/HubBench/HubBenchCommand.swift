import ArgumentParser
import Foundation

@main
struct HubBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hub-bench",
        abstract: "Load generator for the hub and its peers (nats, mosquitto, fastapi, lws mirror) over WebSocket.",
        discussion: """
            One thread, one epoll set, raw non-blocking sockets. Latency is publish-to-deliver, from a
            monotonic stamp inside each payload. Results go to stdout (and --out) as JSON lines.
            """,
        subcommands: [FanOut.self, ManyChannels.self, IdleConnections.self, Starts.self, Proxies.self, FloorServerCommand.self,
                      ProxyBackendCommand.self]
    )
}

struct CommonOptions: ParsableArguments {
    @Option(help: "hub, nats, mosquitto, fastapi or lws.") var server: String
    @Option(help: "Name in the results (default: --server).") var label: String?
    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option(help: "Port the publisher connects to (default --port): another node of the same cluster.") var publisherPort: Int?
    @Option(help: "HMAC secret for hub tokens.") var secret = "s"
    @Option(help: "Server PID, for its CPU time and resident memory.") var serverPid: Int32?
    @Option(help: "Append JSON lines to this file.") var out: String?
    @Option(help: "Connections being opened at once.") var concurrency = 200
    @Option(help: "Connections per source address (127.0.0.2, .3, …).") var perSource = 100
    @Option(help: "Payload bytes per publication.") var payloadSize = 128
    @Option(help: "padding (--payload-size bytes) or gateway (a seed-000 gateway record whose counters move).")
    var payload = "padding"
    @Option(help: "The hub's codec: json or protobuf (subprotocol centrifuge-protobuf).") var codec = "json"
    @Option(help: "The hub subscribers' transport: websocket or sse (uni_sse, subscribed by the token's channels claim).")
    var transport = "websocket"
    @Flag(help: "Hub subscribers ask for fossil deltas (the channel's namespace must allow them).") var delta = false
    @Option(help: "Seconds allowed for opening all connections.") var connectTimeout = 180.0

    func target() throws -> Target {
        guard let kind = ServerKind(rawValue: server) else { throw ValidationError("unknown --server \(server)") }
        guard let codec = HubMode.Codec(rawValue: codec) else { throw ValidationError("unknown --codec \(codec)") }
        guard let transport = HubMode.Transport(rawValue: transport) else { throw ValidationError("unknown --transport \(transport)") }
        guard payload == "padding" || payload == "gateway" else { throw ValidationError("unknown --payload \(payload)") }
        if transport == .sse && (codec != .json || delta) {
            throw ValidationError("--transport sse carries JSON without deltas (uni_sse has no codec choice)")
        }
        return Target(kind: kind, label: label ?? server, host: host, port: UInt16(port),
                      publisherPort: UInt16(publisherPort ?? port), secret: secret,
                      serverPID: serverPid, output: out, concurrency: concurrency, perSource: perSource,
                      payloadSize: payloadSize, gatewayPayload: payload == "gateway", connectTimeout: connectTimeout,
                      hubMode: HubMode(codec: codec, transport: transport, delta: delta))
    }
}

struct StepOptions: ParsableArguments {
    @Option(help: "Seconds per rate step.") var stepSeconds = 2.0
    @Option(help: "Seconds of the run at half the best rate.") var halfSeconds = 3.0
    @Option(help: "Deliveries/s of the first step (doubled each step).") var startDeliveries = 20_000.0
    @Option var maxSteps = 12
    @Option(help: "A step fails when p99 exceeds this.") var p99LimitMs = 50.0
    @Option(help: "Stop stepping after this many seconds.") var budgetSeconds = 90.0
    @Option(help: "Then run once more at this many deliveries/s (another server's half rate), for --half-seconds.")
    var compareDeliveries: Double?
    @Option(help: "Bisection steps between the best rate and the lowest failed one above it.") var refineSteps = 3

    var plan: StepPlan {
        StepPlan(stepSeconds: stepSeconds, halfSeconds: halfSeconds, startDeliveries: startDeliveries,
                 maxSteps: maxSteps, p99LimitMs: p99LimitMs, budgetSeconds: budgetSeconds,
                 compareDeliveries: compareDeliveries, refineSteps: refineSteps)
    }
}

struct FanOut: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fanout", abstract: "Scenario 1: one channel, N subscribers.")
    @OptionGroup var common: CommonOptions
    @OptionGroup var steps: StepOptions
    @Option var subscribers = 1000

    func run() throws {
        let bench = Bench(target: try common.target())
        let channel = bench.wire.fanOutChannel
        let connectSeconds = bench.establish(count: subscribers) { _ in [channel] }
        try bench.connectPublisher()
        bench.log("ready: \(bench.readyCount) subscribers in \(String(format: "%.2f", connectSeconds)) s")
        let base: [String: Any] = ["subscribers": subscribers, "ready": bench.readyCount, "connect_s": connectSeconds]
        bench.stepUp(scenario: "fanout", base: base, plan: steps.plan, channels: [Array(channel.utf8)], pick: { _ in 0 },
                     fanout: { [bench.readyCount] }, perPublish: Double(subscribers),
                     refill: { bench.establish(count: subscribers) { _ in [channel] } })
    }
}

struct ManyChannels: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "channels", abstract: "Scenario 2: each connection in a personal channel and a group channel; publish into groups.")
    @OptionGroup var common: CommonOptions
    @OptionGroup var steps: StepOptions
    @Option var connections = 10_000
    @Option var groupSize = 10

    func run() throws {
        let bench = Bench(target: try common.target())
        guard bench.wire.hasChannels else {
            bench.emit(["scenario": "channels", "phase": "summary", "connections": connections,
                        "error": "not applicable: the server has no per-user or group channels"])
            return
        }
        let wire = bench.wire!
        let groups = (connections + groupSize - 1) / groupSize
        let groupSize = self.groupSize
        let channelsOf: (Int) -> [String] = { [wire.personalChannel($0), wire.groupChannel($0 / groupSize)] }
        let connectSeconds = bench.establish(count: connections, channels: channelsOf)
        try bench.connectPublisher()
        bench.log("ready: \(bench.readyCount) connections in \(String(format: "%.2f", connectSeconds)) s")
        let names = (0..<groups).map { Array(wire.groupChannel($0).utf8) }
        let connections = self.connections
        let base: [String: Any] = ["connections": connections, "group_size": groupSize, "ready": bench.readyCount,
                                   "connect_s": connectSeconds]
        bench.stepUp(scenario: "channels", base: base, plan: steps.plan, channels: names, pick: { $0 % groups },
                     fanout: { (0..<groups).map { g in min(groupSize, connections - g * groupSize) } },
                     perPublish: Double(groupSize),
                     refill: { bench.establish(count: connections, channels: channelsOf) })
    }
}

struct IdleConnections: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connections", abstract: "Scenario 3: N idle connections (each subscribed to its personal channel).")
    @OptionGroup var common: CommonOptions
    @Option var connections = 20_000
    @Option(help: "Seconds to wait before and after, for memory to settle.") var settleSeconds = 2.0

    func run() throws {
        let target = try common.target()
        let bench = Bench(target: target)
        let wire = bench.wire!
        let rssBefore = target.serverPID.flatMap { CPUTime.residentKiB(pid: $0) }
        let cpu0 = target.serverPID.flatMap { CPUTime.of(pid: $0) }
        let seconds = bench.establish(count: connections) { wire.hasChannels ? [wire.personalChannel($0)] : [] }
        let cpu1 = target.serverPID.flatMap { CPUTime.of(pid: $0) }
        bench.idle(seconds: settleSeconds)
        let rssAfter = target.serverPID.flatMap { CPUTime.residentKiB(pid: $0) }
        var record: [String: Any] = [
            "scenario": "connections", "phase": "summary", "connections": connections, "ready": bench.readyCount,
            "connect_s": seconds, "connects_per_s": Double(bench.readyCount) / seconds,
        ]
        if let rssBefore, let rssAfter {
            record["rss_before_kib"] = rssBefore
            record["rss_after_kib"] = rssAfter
            record["kib_per_connection"] = Double(rssAfter - rssBefore) / Double(max(1, bench.readyCount))
        }
        if let cpu0, let cpu1 { record["server_cpu_s"] = cpu1 - cpu0 }
        if bench.readyCount < connections { record["failures"] = bench.topFailures() }
        bench.emit(record)
    }
}
