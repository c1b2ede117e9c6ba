/// Bytes ready for the wire, shared by every subscriber that receives them. An array is a
/// reference-counted buffer, so handing one frame to a thousand queues copies nothing.
public struct WireFrame: Sendable {
    public let bytes: [UInt8]
    /// Protocol messages in `bytes`: more than one for a turn's batch of publications (see
    /// `Turn`), which queue limits count message by message.
    public let messages: Int
    public init(bytes: [UInt8], messages: Int = 1) {
        self.bytes = bytes
        self.messages = messages
    }
}

/// Turns a protocol message (one JSON document) into what the transport writes. The
/// WebSocket edge adds the frame header here, once per message rather than per subscriber.
public protocol FrameEncoder: Sendable {
    /// A text message (the JSON flavour).
    func frame(_ payload: [UInt8]) -> WireFrame
    /// A binary message (the Protobuf flavour).
    func binaryFrame(_ payload: [UInt8]) -> WireFrame
}

extension FrameEncoder {
    /// Transports that do not tell text from binary frame both alike.
    public func binaryFrame(_ payload: [UInt8]) -> WireFrame { frame(payload) }
}

/// One client connection as the engine sees it. Implemented by the transport at the edge;
/// safe to call from any thread.
public protocol ClientTransport: AnyObject, Sendable {
    /// Queues a frame for writing. Returns false when the connection's outbound queue is
    /// over its limit; the engine then disconnects the client as too slow.
    func enqueue(_ frame: WireFrame) -> Bool
    /// Sends a close with this code and reason once queued frames are written, then closes.
    func close(_ reason: DisconnectReason)
    /// Peer address, for logs.
    var remoteAddress: String { get }
    /// Whether frames may arrive several messages to a frame (a turn's batch, `Turn`): true for
    /// a transport that writes frame bytes as they are; false for one that unwraps each frame
    /// (a compressing WebSocket, seed 003's chat bridge).
    var takesBatches: Bool { get }
}

extension ClientTransport {
    public var takesBatches: Bool { false }
}
