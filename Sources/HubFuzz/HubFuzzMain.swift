import Glibc

// One binary, one entry point per parser, chosen by HUB_FUZZ_TARGET. scripts/fuzz.sh builds
// it with -sanitize=fuzzer and -DFUZZING, and then libFuzzer drives it; built normally it
// replays files through the same checks: `hub-fuzz <target> <file|dir>...` (a crash's repro).

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
