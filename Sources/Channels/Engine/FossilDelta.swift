/// Fossil's delta format (what Centrifugo's `delta: "fossil"` subscribers decode): a header with
/// the target's length, then copy (`cnt@offset,`) and insert (`cnt:bytes`) commands, then the
/// target's checksum. Integers are written in Fossil's base-64 digits.
///
/// `delta(from:to:)` runs once per publication on a delta channel; every delta subscriber
/// shares its result.
public enum FossilDelta {
    /// The window whose hash indexes the source.
    private static let window = 16
    /// Candidate blocks examined per target position (bounds the work on repetitive input).
    private static let maxCandidates = 250

    private static let digits: [UInt8] = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~".utf8)
    private static let digitValues: [Int8] = {
        var table = [Int8](repeating: -1, count: 128)
        for (value, digit) in digits.enumerated() { table[Int(digit)] = Int8(value) }
        return table
    }()

    public enum Failure: Error, Equatable { case malformed(String) }

    /// A delta that turns `source` into `target`.
    public static func delta(from source: [UInt8], to target: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(target.count / 4 + 32)
        putInt(target.count, &out)
        out.append(0x0A)
        guard source.count > window else {
            insert(target[...], &out)
            putInt(Int(checksum(target)), &out)
            out.append(0x3B)
            return out
        }
        // Index every whole window of the source by its hash; collisions chain backwards.
        let buckets = source.count / window
        var landmark = [Int](repeating: -1, count: buckets)
        var collide = [Int](repeating: -1, count: buckets)
        var block = 0
        while (block + 1) * window <= source.count {
            let h = Int(RollingHash(source, at: block * window).value % UInt32(buckets))
            collide[block] = landmark[h]
            landmark[h] = block
            block += 1
        }
        var base = 0
        while base + window < target.count {
            var hash = RollingHash(target, at: base)
            var i = 0
            var best: (count: Int, offset: Int, literal: Int)?
            while true {
                var candidate = landmark[Int(hash.value % UInt32(buckets))]
                var tried = 0
                while candidate >= 0, tried < maxCandidates {
                    tried += 1
                    let start = candidate * window
                    var forward = 0
                    while start + forward < source.count, base + i + forward < target.count,
                          source[start + forward] == target[base + i + forward] { forward += 1 }
                    var backward = 0
                    while backward < start, backward < i, source[start - backward - 1] == target[base + i - backward - 1] { backward += 1 }
                    let count = forward + backward
                    let offset = start - backward
                    let literal = i - backward
                    // A copy must be worth its command's bytes.
                    let cost = digitCount(literal) + digitCount(count) + digitCount(offset) + 3
                    if count >= cost, count > (best?.count ?? 0) { best = (count, offset, literal) }
                    candidate = collide[candidate]
                }
                if let best {
                    if best.literal > 0 {
                        insert(target[base..<(base + best.literal)], &out)
                        base += best.literal
                    }
                    putInt(best.count, &out)
                    out.append(0x40)  // @
                    putInt(best.offset, &out)
                    out.append(0x2C)  // ,
                    base += best.count
                    break
                }
                if base + i + window >= target.count {
                    insert(target[base...], &out)
                    base = target.count
                    break
                }
                hash.roll(out: target[base + i], in: target[base + i + window])
                i += 1
            }
        }
        if base < target.count { insert(target[base...], &out) }
        putInt(Int(checksum(target)), &out)
        out.append(0x3B)  // ;
        return out
    }

    /// Applies a delta made by `delta(from:to:)` (or by Fossil itself) to `source`.
    public static func apply(_ delta: [UInt8], to source: [UInt8]) throws(Failure) -> [UInt8] {
        var position = 0
        let limit = try readInt(delta, &position)
        guard position < delta.count, delta[position] == 0x0A else { throw .malformed("size not terminated by a newline") }
        position += 1
        var out: [UInt8] = []
        out.reserveCapacity(min(limit, 1 << 24))
        while position < delta.count {
            let count = try readInt(delta, &position)
            guard position < delta.count else { throw .malformed("command without an operator") }
            let op = delta[position]
            position += 1
            switch op {
            case 0x40:  // @
                let offset = try readInt(delta, &position)
                guard position < delta.count, delta[position] == 0x2C else { throw .malformed("copy not terminated by a comma") }
                position += 1
                guard out.count + count <= limit else { throw .malformed("copy past the announced size") }
                guard offset <= source.count, count <= source.count - offset else { throw .malformed("copy past the end of the source") }
                out.append(contentsOf: source[offset..<(offset + count)])
            case 0x3A:  // :
                guard out.count + count <= limit else { throw .malformed("insert past the announced size") }
                guard count <= delta.count - position else { throw .malformed("insert past the end of the delta") }
                out.append(contentsOf: delta[position..<(position + count)])
                position += count
            case 0x3B:  // ;
                guard UInt32(truncatingIfNeeded: count) == checksum(out) else { throw .malformed("bad checksum") }
                guard out.count == limit else { throw .malformed("size differs from the announced one") }
                return out
            default:
                throw .malformed("unknown operator")
            }
        }
        throw .malformed("unterminated delta")
    }

    /// Fossil's checksum: the sum of the bytes read as big-endian 32-bit words, the last one
    /// padded with zeros.
    static func checksum(_ bytes: [UInt8]) -> UInt32 {
        var sum: UInt32 = 0
        var index = 0
        while index + 4 <= bytes.count {
            sum &+= UInt32(bytes[index]) << 24 | UInt32(bytes[index + 1]) << 16 | UInt32(bytes[index + 2]) << 8 | UInt32(bytes[index + 3])
            index += 4
        }
        var shift: UInt32 = 24
        while index < bytes.count {
            sum &+= UInt32(bytes[index]) << shift
            shift -= 8
            index += 1
        }
        return sum
    }

    private static func insert(_ bytes: ArraySlice<UInt8>, _ out: inout [UInt8]) {
        putInt(bytes.count, &out)
        out.append(0x3A)  // :
        out.append(contentsOf: bytes)
    }

    private static func putInt(_ value: Int, _ out: inout [UInt8]) {
        if value == 0 {
            out.append(digits[0])
            return
        }
        var scratch: [UInt8] = []
        var v = value
        while v > 0 {
            scratch.append(digits[v & 0x3F])
            v >>= 6
        }
        out.append(contentsOf: scratch.reversed())
    }

    private static func digitCount(_ value: Int) -> Int {
        var count = 1
        var v = value >> 6
        while v > 0 {
            count += 1
            v >>= 6
        }
        return count
    }

    private static func readInt(_ bytes: [UInt8], _ position: inout Int) throws(Failure) -> Int {
        var value = 0
        var any = false
        while position < bytes.count, bytes[position] < 128 {
            let digit = digitValues[Int(bytes[position])]
            if digit < 0 { break }
            // Fossil's integers are 32-bit; longer ones are not from an encoder.
            guard value < 1 << 26 else { throw .malformed("integer too large") }
            value = value << 6 | Int(digit)
            position += 1
            any = true
        }
        guard any else { throw .malformed("integer expected") }
        return value
    }

    /// Adler-style rolling hash over a window of bytes.
    private struct RollingHash {
        var a: UInt32 = 0
        var b: UInt32 = 0

        init(_ bytes: [UInt8], at start: Int) {
            for i in 0..<FossilDelta.window {
                a &+= UInt32(bytes[start + i])
                b &+= UInt32(FossilDelta.window - i) &* UInt32(bytes[start + i])
            }
        }

        mutating func roll(out old: UInt8, in new: UInt8) {
            a = a &- UInt32(old) &+ UInt32(new)
            b = b &- UInt32(FossilDelta.window) &* UInt32(old) &+ a
        }

        var value: UInt32 { (a & 0xFFFF) | (b & 0xFFFF) << 16 }
    }
}
