import Channels
import Store
import Synchronization

/// Which of seed 003's services have workers, and since when.
///
/// Every node looks at the presence of each `service:<name>` channel once a second. A service
/// is up while at least one worker is subscribed. The shared record `june:service:<name>` =
/// `{"up": bool, "since": seconds}` changes by compare-and-set, so when a service goes up or down
/// exactly one node wins the change and publishes `service_up` / `service_down` on
/// `admin:services`, and every node reports the same uptime.
public final class ServiceMonitor: Sendable {
    public static let monitored = ["stt", "tts", "llm", "agent"]

    public struct State: Sendable, Equatable {
        public var up: Bool
        public var since: Double
        public var workers: Int
    }

    let node: Node
    let store: any RecordStore
    let events: AdminEvents
    private let states = Mutex<[String: State]>([:])
    private let checking = Atomic<Bool>(false)

    public init(node: Node, store: any RecordStore, events: AdminEvents) {
        self.node = node
        self.store = store
        self.events = events
    }

    /// The last state seen for each service.
    public var snapshot: [String: State] { states.withLock { $0 } }

    /// Looks at every service once; a check still running is not doubled.
    public func check() {
        guard checking.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return }
        check(Self.monitored[...])
    }

    private func check(_ remaining: ArraySlice<String>) {
        guard let service = remaining.first else {
            checking.store(false, ordering: .releasing)
            return
        }
        node.presence(channel: ServiceDesk.channel(service)) { [self] present in
            guard case .success(let workers) = present else { check(remaining.dropFirst()); return }
            observe(service, workers: workers.count) { [self] in check(remaining.dropFirst()) }
        }
    }

    private func observe(_ service: String, workers: Int, then next: @escaping @Sendable () -> Void) {
        let key = "june:service:" + service
        store.get(key) { [self] read in
            guard case .success(let bytes) = read else { next(); return }
            let stored = bytes.flatMap { try? JSONParser.parse($0) }
            let wasUp = stored?["up"]?.boolValue ?? false
            let since = stored?["since"]?.doubleValue ?? node.clock.now()
            let up = workers > 0
            if bytes != nil, wasUp == up {
                states.withLock { $0[service] = State(up: up, since: since, workers: workers) }
                next()
                return
            }
            let now = node.clock.now()
            let record = JSONWriter.bytes(["up": .bool(up), "since": .double(now)])
            store.compareAndSet(key, expected: bytes, new: record) { [self] swapped in
                if case .success(true) = swapped {
                    states.withLock { $0[service] = State(up: up, since: now, workers: workers) }
                    // A first record for a service nobody serves is not news.
                    if bytes != nil || up {
                        events.publish(AdminEvents.services, event: up ? "service_up" : "service_down", [
                            ("service", .string(service)), ("workers", .int(Int64(workers))),
                        ])
                    }
                }
                next()
            }
        }
    }
}
