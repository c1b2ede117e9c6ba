import Dispatch
import Synchronization

/// A multipart body on its way in from the edge, for a route declared `.multipart`.
///
/// The edge appends bytes on its service thread as they arrive; parsing and disk writes run
/// on a queue of this upload's own, so the service thread never waits on the disk. When more
/// than `highWater` bytes wait for that queue, `append` tells the edge to stop reading the
/// socket, and `resume` is called (from the queue) once they drained to `lowWater`: memory
/// per upload stays bounded however fast the client sends and however slow the disk is.
public final class MultipartIntake: Sendable {
    public static let highWater = 256 * 1024
    public static let lowWater = 64 * 1024

    private struct State {
        var received = 0
        var pending = 0
        var paused = false
        var finished = false
        var failure: MultipartError?
    }

    private let state = Mutex(State())
    private let queue = DispatchQueue(label: "hub.upload")
    /// Nil when the caller failed the route's auth: the body is counted and dropped, never
    /// parsed or written, and the router then refuses the request.
    private let receiver: ConfinedReceiver?
    private let limits: MultipartLimits
    private let resume: @Sendable () -> Void

    /// `refusal`: already refused (a rate-limited caller); the edge answers before reading.
    init(contentType: String, declaredLength: Int?, settings: UploadSettings, limits: MultipartLimits, store: Bool,
         refusal: MultipartError? = nil, resume: @escaping @Sendable () -> Void) {
        self.limits = limits
        self.resume = resume
        receiver = store && refusal == nil ? ConfinedReceiver(MultipartReceiver(contentType: contentType, settings: settings, limits: limits)) : nil
        if let refusal {
            state.withLock { $0.failure = refusal }
        } else if let declaredLength, declaredLength > limits.maxBodyBytes {
            state.withLock { $0.failure = .bodyTooLarge(limit: limits.maxBodyBytes) }
        }
    }

    /// Refused before any byte was read (the declared length is over the limit): the edge
    /// answers at once instead of reading the body.
    public var refusedUpFront: Bool {
        state.withLock { $0.received == 0 && $0.failure != nil }
    }

    /// Bytes waiting for the upload queue (for tests and the memory bound).
    public var pendingBytes: Int { state.withLock { $0.pending } }

    /// Takes the next bytes of the body. Returns true when the edge should stop reading
    /// until `resume` is called.
    public func append(_ bytes: UnsafeRawBufferPointer) -> Bool {
        let (keep, failedNow) = state.withLock { s -> (Bool, Bool) in
            if s.finished || s.failure != nil { return (false, false) }
            s.received += bytes.count
            if s.received > limits.maxBodyBytes {
                s.failure = .bodyTooLarge(limit: limits.maxBodyBytes)
                return (false, true)
            }
            if receiver == nil { return (false, false) }
            s.pending += bytes.count
            return (true, false)
        }
        if failedNow, let receiver { queue.async { receiver.value.abandon() } }
        guard keep, let receiver else { return false }
        let chunk = Array(bytes)
        queue.async { [self] in
            var failure: MultipartError?
            do throws(MultipartError) { try receiver.value.feed(chunk) } catch { failure = error }
            let wake = state.withLock { s -> Bool in
                s.pending -= chunk.count
                if let failure, s.failure == nil { s.failure = failure }
                guard s.paused, s.pending <= Self.lowWater else { return false }
                s.paused = false
                return true
            }
            if wake { resume() }
        }
        return state.withLock { s in
            guard s.pending > Self.highWater, !s.paused else { return false }
            s.paused = true
            return true
        }
    }

    /// The body is complete: `done` gets the upload (or nil when it was dropped unread) on
    /// the upload queue, after every appended byte was processed.
    public func finish(_ done: @escaping @Sendable (MultipartUpload?) -> Void) {
        state.withLock { $0.finished = true }
        queue.async { [self] in
            if let failure = state.withLock({ $0.failure }) {
                receiver?.value.abandon()
                done(.failed(failure))
                return
            }
            guard let receiver else { return done(nil) }
            do throws(MultipartError) {
                done(.received(try receiver.value.finish()))
            } catch {
                done(.failed(error))
            }
        }
    }

    /// The connection went away before the body was complete: delete what was written.
    public func abandon() {
        let wasOpen = state.withLock { s -> Bool in
            if s.finished { return false }
            s.finished = true
            return true
        }
        if wasOpen, let receiver { queue.async { receiver.value.abandon() } }
    }
}

/// A receiver used only on its intake's serial queue.
private final class ConfinedReceiver: @unchecked Sendable {
    let value: MultipartReceiver
    init(_ value: MultipartReceiver) { self.value = value }
}

/// What the edge streamed for a multipart route: the form, or why it was refused.
public enum MultipartUpload: Sendable {
    case received(MultipartForm)
    case failed(MultipartError)

    public var form: MultipartForm? {
        if case .received(let form) = self { return form }
        return nil
    }
}
