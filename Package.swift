// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "hub",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "hub", targets: ["Hub"]),
        .executable(name: "hub-bench", targets: ["HubBench"]),
        .executable(name: "hub-fuzz", targets: ["HubFuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // The Protobuf flavour of the client protocol; the generated code is committed.
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.39.0"),
    ],
    targets: [
        // C libraries from Debian, found through pkg-config. Their headers also carry the
        // one-line inline shims for macros Swift cannot import.
        .systemLibrary(
            name: "CLibWebSockets",
            pkgConfig: "libwebsockets",
            providers: [.apt(["libwebsockets-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),
        .systemLibrary(
            name: "CSQLite",
            pkgConfig: "sqlite3",
            providers: [.apt(["libsqlite3-dev"])]
        ),
        // Durable records behind RESTCompat: the interface and its embedded (SQLite) implementation.
        .target(name: "Store", dependencies: ["CSQLite", .product(name: "Logging", package: "swift-log")]),
        // The channel engine: protocol, streams, presence, auth. No sockets, no lws.
        .target(
            name: "Channels",
            dependencies: [
                "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            exclude: ["Protocol/Protobuf/client.proto"]
        ),
        // The Redis implementations of the engine's broker and presence interfaces.
        .target(
            name: "RedisEngine",
            dependencies: [
                "Channels",
                "Store",
                "RESTCompat",
                "CHiredis",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // HTTP routes mapped onto channel operations (health, server API, seed systems).
        .target(
            name: "RESTCompat",
            dependencies: [
                "Channels",
                "Store",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The `hub` executable: libwebsockets at the edge, configuration, lifecycle.
        .executableTarget(
            name: "Hub",
            dependencies: [
                "Channels",
                "RESTCompat",
                "RedisEngine",
                "Store",
                "CLibWebSockets",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The load generator (bench/run.sh): raw epoll sockets, its own WebSocket client framing;
        // CEpoll is a header-only module for sys/epoll.h, which Swift's Glibc module leaves out.
        .systemLibrary(name: "CEpoll"),
        .executableTarget(
            name: "HubBench",
            dependencies: ["CEpoll", "COpenSSL", .product(name: "Histogram", package: "hdrhistogram-swift"),
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // libFuzzer entry points for the parsers, one binary chosen by HUB_FUZZ_TARGET
        // (scripts/fuzz.sh builds it with -sanitize=fuzzer; a plain build replays files).
        .executableTarget(name: "HubFuzz", dependencies: ["Channels", "RESTCompat", .product(name: "Logging", package: "swift-log")]),
        // Child processes (redis-server, openssl, a writer to kill -9) for the unit tests.
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "ChannelsTests", dependencies: ["Channels", "TestSupport", .product(name: "SwiftProtobuf", package: "swift-protobuf")]),
        .testTarget(name: "RESTCompatTests", dependencies: ["RESTCompat", "Channels", "RedisEngine", "TestSupport"]),
        .testTarget(name: "StoreTests", dependencies: ["Store", "RedisEngine", "Channels", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
