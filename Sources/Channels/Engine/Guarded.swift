import Synchronization

/// A value behind its own lock, as a reference so that it can live in arrays (sharded
/// tables): `Mutex` itself cannot be copied into one.
public final class Guarded<Value>: @unchecked Sendable {
    private let mutex: Mutex<Value>

    public init(_ value: sending Value) { mutex = Mutex(value) }

    @inline(__always)
    public func withLock<Result>(_ body: (inout sending Value) throws -> sending Result) rethrows -> sending Result {
        try mutex.withLock(body)
    }
}
