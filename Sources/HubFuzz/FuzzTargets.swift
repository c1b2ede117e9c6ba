import Glibc
import RESTCompat

/// A parser's fuzz entry point: runs one input and traps (`invariant`) when a property that
/// must hold for every input does not, so libFuzzer records it like a crash.
struct FuzzTarget: Sendable {
    var name: String
    var check: @Sendable ([UInt8]) -> Void
}

enum FuzzTargets {
    static let all: [FuzzTarget] = [
        FuzzTarget(name: "protocol", check: ProtocolFuzz.check),
        FuzzTarget(name: "protobuf", check: ProtobufFuzz.check),
        FuzzTarget(name: "fossil", check: FossilFuzz.check),
        FuzzTarget(name: "filter", check: TagFilterFuzz.check),
        FuzzTarget(name: "session", check: SessionFuzz.check),
        FuzzTarget(name: "multipart", check: MultipartFuzz.check),
        FuzzTarget(name: "router", check: RouterFuzz.check),
        FuzzTarget(name: "jwt", check: JWTFuzz.check),
        FuzzTarget(name: "telegram", check: TelegramFuzz.check),
        FuzzTarget(name: "paths", check: PathFuzz.check),
        FuzzTarget(name: "transports", check: TransportFuzz.check),
    ]

    static func named(_ name: String) -> FuzzTarget? { all.first { $0.name == name } }

    /// The target libFuzzer drives, from HUB_FUZZ_TARGET; unknown names stop at once.
    static let selected: FuzzTarget = {
        let name = getenv("HUB_FUZZ_TARGET").map { String(cString: $0) } ?? ""
        guard let target = named(name) else {
            report("HUB_FUZZ_TARGET must be one of: \(all.map(\.name).joined(separator: ", "))\n")
            exit(2)
        }
        return target
    }()
}

/// Stops the process with the broken property; libFuzzer saves the input that did it.
func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
               file: StaticString = #fileID, line: UInt = #line) {
    if !condition() {
        report("invariant broken: \(message())\n")
        fatalError("invariant broken: \(message())", file: file, line: line)
    }
}

/// A deterministic stream of numbers drawn from the input itself (split points, choices), so
/// a saved input replays exactly.
struct InputRandom {
    private var state: UInt64

    init(_ bytes: [UInt8]) {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        state = hash
    }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    mutating func below(_ bound: Int) -> Int { bound <= 0 ? 0 : Int(next() % UInt64(bound)) }
}

/// Replays saved inputs through a target without libFuzzer.
enum FuzzReplay {
    static func run(_ arguments: [String]) -> Int32 {
        guard arguments.count >= 3, let target = FuzzTargets.named(arguments[1]) else {
            report("usage: hub-fuzz <\(FuzzTargets.all.map(\.name).joined(separator: "|"))> <file|dir>...\n")
            return 2
        }
        var count = 0
        for path in arguments.dropFirst(2) {
            for file in FuzzIO.files(at: path) {
                guard let bytes = FileBytes.read(file) else {
                    report("cannot read \(file)\n")
                    return 1
                }
                target.check(bytes)
                count += 1
            }
        }
        print("\(target.name): \(count) inputs, every invariant held")
        return 0
    }
}
