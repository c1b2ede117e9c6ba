import CLibWebSockets

// The per-connection slot lws keeps for the hub: one retained `EdgeSession` reference, taken
// when a session starts and released when lws reports its connection closed or its protocol
// dropped. The loop of a connection comes from its context's user pointer.


func loopFor(_ wsi: OpaquePointer?) -> ServiceLoop? {
    guard let wsi, let context = lws_get_context(wsi), let raw = lws_context_user(context) else { return nil }
    return Unmanaged<ServiceLoop>.fromOpaque(raw).takeUnretainedValue()
}

func sessionIn(_ user: UnsafeMutableRawPointer?) -> EdgeSession? {
    guard let user else { return nil }
    let slot = user.assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    guard let raw = slot.pointee else { return nil }
    return Unmanaged<EdgeSession>.fromOpaque(raw).takeUnretainedValue()
}

func keepSession(_ session: EdgeSession, in user: UnsafeMutableRawPointer?) {
    guard let user else { return }
    releaseSession(user)
    user.assumingMemoryBound(to: UnsafeMutableRawPointer?.self).pointee = Unmanaged.passRetained(session).toOpaque()
}

func releaseSession(_ user: UnsafeMutableRawPointer?) {
    guard let user else { return }
    let slot = user.assumingMemoryBound(to: UnsafeMutableRawPointer?.self)
    if let raw = slot.pointee {
        let session = Unmanaged<EdgeSession>.fromOpaque(raw)
        session.takeUnretainedValue().gone = true
        // An upload cut off mid-body leaves no temp files behind.
        (session.takeUnretainedValue() as? HTTPExchange)?.intake?.abandon()
        session.release()
        slot.pointee = nil
    }
}
