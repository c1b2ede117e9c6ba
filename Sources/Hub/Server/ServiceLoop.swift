import CLibWebSockets
import Channels
import Glibc
import Logging
import RESTCompat
import Synchronization

/// Limits and handlers every service loop shares.
struct EdgeSettings: Sendable {
    var host: String
    var port: Int
    var maxMessageSize: Int
    var maxBodySize: Int
    var maxQueuedBytes: Int
    var maxQueuedMessages: Int
    var corsOrigins: String
    /// Seed 003's `/ws/{user_id}` chat endpoint; nil turns that WebSocket path off.
    var chat: ChatService? = nil
    var transport: TransportSettings
    /// `--log-format json`: the access log's fields as metadata, not only in the message.
    var structuredAccessLog = false
    /// `proxy_http_headers`: upgrade request headers a session forwards on each proxy call.
    var proxyHeaderNames: [String] = []
}

/// One libwebsockets context on its own thread. Several loops listen on the same port
/// (SO_REUSEPORT through `LWS_SERVER_OPTION_ALLOW_LISTEN_SHARE`) and the kernel spreads
/// connections across them: this lws build has one service thread per context.
///
/// Everything that touches a `wsi` runs on this loop's thread; other threads ask for a
/// writeable callback through `requestWrite`, which wakes the loop with `lws_cancel_service`.
final class ServiceLoop: @unchecked Sendable {
    let index: Int
    let node: Node
    let router: Router
    let settings: EdgeSettings
    let logger: Logger
    private(set) var context: OpaquePointer?
    /// The libev loop lws runs its descriptors on (epoll): this loop's thread drives it one
    /// iteration per turn.
    let eventLoop: OpaquePointer
    private var thread: pthread_t?
    private var threadID = pthread_t()

    /// Sessions whose writeable callback was asked for from another thread.
    private let pendingWrites = Mutex<[EdgeSession]>([])
    /// Sessions whose reading was paused (upload backpressure) and may go on.
    private let pendingResumes = Mutex<[EdgeSession]>([])
    /// Work other threads posted for this thread (RedisHost.post); closed when the loop ends.
    let posted = Mutex<(open: Bool, work: [@Sendable () -> Void])>((true, []))
    /// Redis engine sockets this loop carries (service thread only; RedisSocketCallback.swift).
    var redisSockets: [OpaquePointer: RedisSocket] = [:]
    /// Redis sockets that asked to write again from their own writeable callback: asked for
    /// at the end of the turn (service thread only).
    var redisRearm: [RedisSocket] = []
    /// The context is being destroyed: lws closes every wsi itself.
    private(set) var ending = false
    private let tickRequested = Atomic<Bool>(false)
    private let stopRequested = Atomic<Bool>(false)
    let running = Atomic<Bool>(true)

    /// Live WebSocket connections (service thread only).
    var connections: [ObjectIdentifier: WebSocketConnection] = [:]
    /// Live streamed HTTP responses (SSE, HTTP streaming; service thread only).
    var streams: [ObjectIdentifier: HTTPStream] = [:]
    /// Client address of every connection this loop accepted, until lws destroys it (service
    /// thread only): the connection limits count them.
    var admitted: [OpaquePointer: Admission] = [:]
    /// LWS_PRE headroom + one batch of frames (service thread only).
    let scratch: UnsafeMutablePointer<UInt8>
    let scratchCapacity = 64 * 1024
    let pre = Int(hub_lws_pre())
    var shutdownDeadline: Double?
    /// WebSocket connections with frames queued in this turn, written when the turn ends
    /// (service thread only): see `run`.
    private var dirty: [WebSocketConnection] = []
    /// The previous turn's `dirty`, swapped with it while it is written, so both keep their
    /// storage: copying the list out and emptying it made every turn allocate a new one and
    /// regrow it append by append.
    private var flushing: [WebSocketConnection] = []
    /// `saturated`'s twin, for the same reason (`readAgain`).
    private var rereading: [WebSocketConnection] = []
    /// Counts turns and their re-reads, so a connection can tell its first read of each (service thread only).
    private(set) var serviceCount = 0
    /// Connections whose read in this service call filled their receive chunk: more is waiting.
    var saturated: [WebSocketConnection] = []
    /// The frames of one write, reused from write to write (service thread only; `writeFrames`).
    var takenFrames: [WireFrame] = []

    init(index: Int, node: Node, router: Router, settings: EdgeSettings, logger: Logger) {
        self.index = index
        self.node = node
        self.router = router
        self.settings = settings
        self.logger = logger
        scratch = .allocate(capacity: Int(hub_lws_pre()) + scratchCapacity)
        eventLoop = hub_ev_loop_new()
    }

    deinit {
        scratch.deallocate()
        hub_ev_loop_destroy(eventLoop)
    }

    /// Creates the lws context (binding the port). Throws when the port cannot be bound.
    func start() throws {
        context = try LWSContext.create(loop: self)
        let box = Unmanaged.passRetained(self)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        var handle = pthread_t()
        let rc = pthread_create(&handle, &attributes, { raw in
            let loop = Unmanaged<ServiceLoop>.fromOpaque(raw!).takeRetainedValue()
            loop.run()
            return nil
        }, box.toOpaque())
        pthread_attr_destroy(&attributes)
        guard rc == 0 else {
            box.release()
            throw HubError.startup("could not start service thread \(index)")
        }
        thread = handle
    }

    /// The loop. One turn: wait for and serve what is ready; while a connection's read filled its
    /// receive chunk (a publisher sending faster than one chunk per turn), serve again without
    /// waiting, a bounded number of times; hand each channel's batch of the turn's publications
    /// to its subscribers (`Turn`); then write what the turn queued, straight to the sockets.
    /// Writing once per turn is what batches: every publication read in the turn leaves in one
    /// write per subscriber, and a subscriber costs no POLLOUT arm, poll and disarm.
    private func run() {
        threadID = pthread_self()
        Turn.adopt()
        while running.load(ordering: .acquiring) {
            serviceCount &+= 1
            hub_ev_run(eventLoop, ticked < ticking.count ? 1 : 0)
            readAgain()
            tickSome()
            Turn.end()  // the turn's batches into the subscribers' queues
            flushTurn()
            if !redisRearm.isEmpty {
                for socket in redisRearm where !socket.ended { lws_callback_on_writable(socket.wsi) }
                redisRearm.removeAll(keepingCapacity: true)
            }
        }
        ending = true
        lws_context_destroy(context)
        context = nil
        releaseRedisSockets()
    }

    /// The sessions of this second's housekeeping tick, and how many of them were ticked (service
    /// thread only). A tick of every session at once stalled the loop: with 10,000 connections,
    /// 10 ms once a second, and every publication that arrived meanwhile waited for it.
    private var ticking: [ClientSession] = []
    private var ticked = 0
    /// Sessions ticked per turn: about a millisecond of work.
    private let tickSlice = 1024

    /// Ticks the next slice of this second's sessions; while some are left, the next turn only
    /// looks for ready descriptors and does not wait for one.
    private func tickSome() {
        guard ticked < ticking.count else { return }
        let end = min(ticking.count, ticked + tickSlice)
        node.tick(sessions: ticking[ticked..<end])
        ticked = end
        if ticked == ticking.count {
            ticking.removeAll(keepingCapacity: true)
            ticked = 0
        }
    }

    /// 63 more chunks of 4 KiB: a turn reads up to 256 KiB from a busy publisher, as the kernel
    /// floor's one read per turn does. At 64 KiB (lws's own service buffer) a turn took ~330
    /// publications at most, so with 1,000 subscribers in groups of ten each publication still
    /// cost about one send per subscriber and the publisher's backlog grew in the kernel: 0.5x
    /// nats-server and the floor at their ~620 k deliveries/s. More per turn, more of a turn's
    /// publications share a subscriber's one write (the rest of a write over `scratchCapacity`
    /// goes through its writeable callback, as before).
    private let maxRereadsPerTurn = 63

    /// Serves again, without polling, the connections whose read filled their chunk, until they
    /// have no more or the turn's budget is spent. Only those sockets: a poll(2) of every
    /// connection per extra read cost O(connections) each time (with 10,000 connections it ate
    /// most of the core).
    private func readAgain() {
        var rereads = 0
        while !saturated.isEmpty && rereads < maxRereadsPerTurn {
            swap(&saturated, &rereading)
            defer { rereading.removeAll(keepingCapacity: true) }
            serviceCount &+= 1
            for connection in rereading where !connection.gone {
                guard let wsi = connection.wsi else { continue }
                var ready = pollfd(fd: lws_get_socket_fd(wsi), events: Int16(POLLIN), revents: Int16(POLLIN))
                if lws_service_fd(context, &ready) < 0 { return }
            }
            rereads += 1
        }
        saturated.removeAll(keepingCapacity: true)
    }

    /// Writes what this turn queued for each connection. One whose socket lws still holds unsent
    /// bytes of (`lws_partial_buffered`), or that compresses, is left to its writeable callback,
    /// as are the rest of a batch over the write budget and a close frame.
    private func flushTurn() {
        guard !dirty.isEmpty else { return }
        swap(&dirty, &flushing)
        defer { flushing.removeAll(keepingCapacity: true) }
        for connection in flushing where !connection.gone {
            guard let wsi = connection.wsi else { continue }
            if connection.compressed || lws_partial_buffered(wsi) != 0 {
                lws_callback_on_writable(wsi)
            } else if writeFrames(connection, wsi: wsi, loop: self, direct: true) < 0 {
                // Only a failed write ends here: the writeable callback closes the connection.
                connection.writeFailed = true
                lws_callback_on_writable(wsi)
            }
        }
    }

    /// Asks for a session's frames to go out: a WebSocket connection's at the end of this turn,
    /// anything else (an HTTP answer, a stream) through its writeable callback.
    private func wantsWrite(_ session: EdgeSession) {
        guard !session.gone, let wsi = session.wsi else { return }
        if session.writesAtTurnEnd {
            dirty.append(unsafeDowncast(session, to: WebSocketConnection.self))
        } else {
            lws_callback_on_writable(wsi)
        }
    }

    func join() {
        if let thread { pthread_join(thread, nil) }
    }

    var onLoopThread: Bool { pthread_equal(pthread_self(), threadID) != 0 }

    func requestWrite(_ session: EdgeSession) {
        if onLoopThread {
            wantsWrite(session)
            return
        }
        let wasEmpty = pendingWrites.withLock { list -> Bool in
            list.append(session)
            return list.count == 1
        }
        if wasEmpty, let context { lws_cancel_service(context) }
    }

    /// Lets a session paused with `lws_rx_flow_control` read again; from any thread.
    func requestResume(_ session: EdgeSession) {
        pendingResumes.withLock { $0.append(session) }
        if let context { lws_cancel_service(context) }
    }

    func requestTick() {
        tickRequested.store(true, ordering: .releasing)
        if let context { lws_cancel_service(context) }
    }

    func requestStop() {
        stopRequested.store(true, ordering: .releasing)
        if let context { lws_cancel_service(context) }
    }

    /// Called on the service thread when another thread woke it.
    func serviceWakeup() {
        runPosted()
        let sessions = pendingWrites.withLock { list -> [EdgeSession] in
            let taken = list
            list.removeAll(keepingCapacity: true)
            return taken
        }
        for session in sessions { wantsWrite(session) }
        let resumed = pendingResumes.withLock { list -> [EdgeSession] in
            let taken = list
            list.removeAll()
            return taken
        }
        for session in resumed where !session.gone {
            if let wsi = session.wsi { lws_rx_flow_control(wsi, 1) }
        }
        if tickRequested.exchange(false, ordering: .acquiringAndReleasing) {
            // This second's housekeeping, a slice per turn (`tickSome`).
            ticking = connections.values.compactMap(\.session) + streams.values.compactMap(\.body.session)
            ticked = 0
            if let deadline = shutdownDeadline, node.clock.now() > deadline || (connections.isEmpty && streams.isEmpty) {
                running.store(false, ordering: .releasing)
            }
        }
        if stopRequested.exchange(false, ordering: .acquiringAndReleasing) {
            // Going away: every client gets a close frame after what is already queued.
            shutdownDeadline = node.clock.now() + 3
            for connection in connections.values {
                connection.close(DisconnectReason(code: 1001, reason: "going away"))
                if let wsi = connection.wsi { lws_callback_on_writable(wsi) }
            }
            for stream in streams.values {
                // A stream has no close frame: its session says why in a disconnect push.
                if let session = stream.body.session { session.disconnect(.shutdown) } else { stream.close(.shutdown) }
            }
            if connections.isEmpty && streams.isEmpty { running.store(false, ordering: .releasing) }
        }
    }
}

enum HubError: Error, CustomStringConvertible {
    case startup(String)
    case config(String)

    var description: String {
        switch self {
        case .startup(let message), .config(let message): return message
        }
    }
}
