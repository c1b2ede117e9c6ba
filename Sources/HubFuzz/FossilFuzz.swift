import Channels

/// The fossil delta encoder and decoder (delta publications).
///
/// Properties: for a source and target cut from the input at an input-chosen point (and a
/// target made by editing the source, so copies are exercised), applying the delta to the
/// source gives the target back exactly; the decoder fed the raw input as a delta either
/// refuses it or yields bytes whose checksum and length the delta announced — never a trap.
enum FossilFuzz {
    static func check(_ input: [UInt8]) {
        var random = InputRandom(input)
        let cut = random.below(input.count + 1)
        let source = Array(input[..<cut])
        var targets = [Array(input[cut...])]
        // An edit of the source: the common case of a state channel (a few fields change).
        var edited = source
        for _ in 0..<random.below(4) where !edited.isEmpty {
            let at = random.below(edited.count)
            edited[at] = UInt8(truncatingIfNeeded: random.next())
        }
        if !edited.isEmpty, random.below(2) == 0 { edited.append(contentsOf: edited.prefix(random.below(edited.count))) }
        targets.append(edited)
        for target in targets {
            let delta = FossilDelta.delta(from: source, to: target)
            do {
                let rebuilt = try FossilDelta.apply(delta, to: source)
                invariant(rebuilt == target, "apply(delta(a, b), a) != b for \(source.count)/\(target.count) bytes")
            } catch {
                invariant(false, "own delta refused: \(error)")
            }
        }
        _ = try? FossilDelta.apply(input, to: source)
    }
}
