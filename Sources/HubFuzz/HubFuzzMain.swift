import Glibc

// One binary, one entry point per parser, chosen by HUB_FUZZ_TARGET. scripts/fuzz.sh builds
// it with -sanitize=fuzzer and -DFUZZING, and then libFuzzer drives it; built normally it
// replays files through the same checks: `hub-fuzz <target> <file|dir>...` (a crash's repro).
// The C interfaces (libFuzzer's, directory listing, fd 2) and their pointers stay in this file.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    FuzzTargets.selected.check(bytes)
    return 0
}

#if FUZZING
/// libFuzzer's own driver (it ships `main` too, but SwiftPM links an executable's entry point
/// under its own name, so the driver is started from ours).
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt
#endif

@main
struct HubFuzzMain {
    static func main() {
        #if FUZZING
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzOneInput))
        #else
        exit(FuzzReplay.run(CommandLine.arguments))
        #endif
    }
}

enum FuzzIO {
    /// The files of a directory, sorted, or the path itself when it is not one.
    static func files(at path: String) -> [String] {
        guard let dir = opendir(path) else { return [path] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if !name.hasPrefix(".") { names.append(path + "/" + name) }
        }
        return names.sorted()
    }
}

/// A line on standard error (fd 2 directly: Glibc's `stderr` is a global Swift 6 cannot share).
func report(_ text: String) {
    var bytes = Array(text.utf8)
    if bytes.last != 0x0A { bytes.append(0x0A) }
    _ = bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
}
