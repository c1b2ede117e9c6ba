import Foundation
import Logging
import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat
@testable import RedisEngine

/// Two limiters on their own Redis connections are two hub nodes: together they must hold
/// the documented limit, never more.
final class RedisRateLimiterTests: XCTestCase {
    func testTwoNodesShareOneCount() throws {
        let port = try startRedis()
        defer { _ = shell("/usr/bin/redis-cli", ["-p", "\(port)", "shutdown", "nosave"]) }
        let address = RedisShard.Address(url: "redis://127.0.0.1:\(port)/0")!
        let brokers = (0..<2).map { _ in RedisBroker(addresses: [address], logger: Logger(label: "t")) }
        for broker in brokers { broker.start() }
        defer { for broker in brokers { broker.stop() } }
        for broker in brokers { for _ in 0..<100 where !broker.shards[0].isConnected { usleep(20_000) } }
        let limiters = brokers.map { RedisRateLimiter(broker: $0, logger: Logger(label: "t")) }
        let allowed = Atomic<Int>(0)
        let group = DispatchGroup()
        let now = Date().timeIntervalSince1970
        for i in 0..<40 {
            group.enter()
            limiters[i % 2].hit(key: "teamcache|key:abc", limits: [RateLimit(10, per: 60)], now: now) { decision in
                if decision.allowed { allowed.add(1, ordering: .relaxed) }
                group.leave()
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(allowed.load(ordering: .relaxed), 10, "exactly the limit across both nodes")
    }

    private func startRedis() throws -> Int {
        let port = Int.random(in: 20_000...40_000)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/redis-server")
        process.arguments = ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "yes"]
        try process.run()
        process.waitUntilExit()
        for _ in 0..<100 {
            if shell("/usr/bin/redis-cli", ["-p", "\(port)", "ping"]).contains("PONG") { return port }
            usleep(50_000)
        }
        throw XCTSkip("redis-server did not start")
    }

    private func shell(_ tool: String, _ args: [String]) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = args
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try? process.run()
        process.waitUntilExit()
        return String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }
}
