import Glibc

/// One turn of a service loop, on the loop's thread. While a thread is inside a turn, a
/// publication into a channel whose subscribers all take batches is not handed to each of them
/// at once: it joins the channel's batch, a run of encoded frames, and every subscriber gets the
/// batch once when the turn ends. That makes a subscriber's cost per turn, not per publication:
/// one queue operation and one share of one buffer, however many publications the turn read.
///
/// Order within a channel is kept: anything else that reaches the channel's subscribers
/// (a join or leave, a publication some subscriber must not get whole, a subscriber arriving or
/// leaving) hands the batch out first. Threads that never `adopt` a turn (timers, worker
/// threads, tests) fan out immediately, as before.
public final class Turn {
    /// Channels with a batch started in this turn, and the node whose registry holds it.
    private var due: [(Node, String)] = []

    private static let key: pthread_key_t = {
        var key = pthread_key_t()
        pthread_key_create(&key, nil)
        return key
    }()

    /// Makes the calling thread a loop thread with turns (once, for the thread's lifetime).
    public static func adopt() {
        guard pthread_getspecific(key) == nil else { return }
        pthread_setspecific(key, Unmanaged.passRetained(Turn()).toOpaque())
    }

    /// The calling thread's turn, if it has adopted one.
    static var current: Turn? {
        guard let raw = pthread_getspecific(key) else { return nil }
        return Unmanaged<Turn>.fromOpaque(raw).takeUnretainedValue()
    }

    /// Ends the calling thread's turn: every batch it started is handed to its subscribers.
    public static func end() {
        guard let turn = current, !turn.due.isEmpty else { return }
        let due = turn.due
        turn.due.removeAll(keepingCapacity: true)
        for (node, channel) in due { node.handOutBatch(channel: channel) }
    }

    func schedule(_ node: Node, _ channel: String) { due.append((node, channel)) }

    /// Ends the calling thread's turn and leaves turns (tests, which share their thread).
    static func leave() {
        end()
        guard let raw = pthread_getspecific(key) else { return }
        pthread_setspecific(key, nil)
        Unmanaged<Turn>.fromOpaque(raw).release()
    }
}
