import Channels
import Synchronization

/// Counters and latency histograms, rendered in the Prometheus text format at `/metrics`.
///
/// A small registry of our own rather than swift-metrics + swift-prometheus: the hub needs
/// a handful of series, and this keeps two dependencies out of every build.
public final class MetricsRegistry: Sendable {
    struct Series: Hashable {
        var name: String
        var labels: [String]
    }

    private struct State {
        var counters: [Series: Double] = [:]
        var histograms: [Series: Histogram] = [:]
        var help: [String: (String, String)] = [:]  // name → (type, help)
    }

    struct Histogram {
        static let bounds: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
        var buckets = [Int](repeating: 0, count: Histogram.bounds.count)
        var count = 0
        var sum = 0.0

        mutating func record(_ seconds: Double) {
            for (i, bound) in Histogram.bounds.enumerated() where seconds <= bound { buckets[i] += 1 }
            count += 1
            sum += seconds
        }
    }

    private let state = Mutex(State())
    /// Gauges read at scrape time (connections, subscriptions…).
    private let gauges = Mutex<[(String, String, String, @Sendable () -> Double)]>([])

    public init() {}

    public func describe(_ name: String, type: String, help: String) {
        state.withLock { $0.help[name] = (type, help) }
    }

    public func increment(_ name: String, labels: [(String, String)] = [], by amount: Double = 1) {
        let series = Series(name: name, labels: labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" })
        state.withLock { $0.counters[series, default: 0] += amount }
    }

    public func observe(_ name: String, labels: [(String, String)] = [], seconds: Double) {
        let series = Series(name: name, labels: labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" })
        state.withLock { state in
            state.histograms[series, default: Histogram()].record(seconds)
        }
    }

    /// A value read at scrape time; `type` is `gauge`, or `counter` for totals kept elsewhere.
    public func gauge(_ name: String, type: String = "gauge", help: String, read: @escaping @Sendable () -> Double) {
        gauges.withLock { $0.append((name, type, help, read)) }
    }

    /// Gauges with one series per label set, read at scrape time (e.g. workers per service).
    private let labeledGauges = Mutex<[(String, String, @Sendable () -> [([(String, String)], Double)])]>([])

    public func gauge(_ name: String, help: String, series: @escaping @Sendable () -> [([(String, String)], Double)]) {
        labeledGauges.withLock { $0.append((name, help, series)) }
    }

    static func escape(_ value: String) -> String {
        // Route labels and statuses never need escaping: skip the copy (it is per request).
        if !value.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == 0x0A }) { return value }
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    private static func number(_ value: Double) -> String {
        value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }

    /// The exposition text.
    public func render() -> String {
        var out = ""
        for (name, type, help, read) in gauges.withLock({ $0 }) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(Self.number(read()))\n"
        }
        for (name, help, series) in labeledGauges.withLock({ $0 }) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
            for (labels, value) in series() {
                out += "\(name){\(labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ","))} \(Self.number(value))\n"
            }
        }
        let snapshot = state.withLock { $0 }
        let names = Set(snapshot.counters.keys.map(\.name)).union(snapshot.histograms.keys.map(\.name)).union(snapshot.help.keys)
        for name in names.sorted() {
            if let (type, help) = snapshot.help[name] { out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n" }
            for (series, value) in snapshot.counters where series.name == name {
                out += series.labels.isEmpty ? "\(name) \(Self.number(value))\n" : "\(name){\(series.labels.joined(separator: ","))} \(Self.number(value))\n"
            }
            for (series, histogram) in snapshot.histograms where series.name == name {
                let base = series.labels
                for (i, bound) in Histogram.bounds.enumerated() {
                    out += "\(name)_bucket{\((base + ["le=\"\(bound)\""]).joined(separator: ","))} \(histogram.buckets[i])\n"
                }
                out += "\(name)_bucket{\((base + ["le=\"+Inf\""]).joined(separator: ","))} \(histogram.count)\n"
                let labels = base.isEmpty ? "" : "{\(base.joined(separator: ","))}"
                out += "\(name)_sum\(labels) \(histogram.sum)\n\(name)_count\(labels) \(histogram.count)\n"
            }
        }
        return out
    }
}
