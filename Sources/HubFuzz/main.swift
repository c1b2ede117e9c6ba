import Glibc

// One binary, one entry point per parser, chosen by HUB_FUZZ_TARGET (scripts/fuzz.sh builds
// it with -sanitize=fuzzer and -DFUZZING, when libFuzzer supplies `main`). Built normally it
// replays files through the same checks: `hub-fuzz <target> <file|dir>...` (a crash's repro).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    FuzzTargets.selected.check(bytes)
    return 0
}

#if !FUZZING
exit(FuzzReplay.run(CommandLine.arguments))
#endif
