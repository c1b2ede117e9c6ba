import Foundation
import Logging
import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat
@testable import RedisEngine
import TestSupport

/// Two limiters on their own Redis connections are two hub nodes: together they must hold
/// the documented limit, never more.
final class RedisRateLimiterTests: XCTestCase {
    /// Two brokers (two nodes) on `redis`, connected.
    private func connectedBrokers(_ redis: RedisServer) -> [RedisBroker] {
        let address = RedisShard.Address(url: redis.url)!
        let brokers = (0..<2).map { _ in RedisBroker(addresses: [address], logger: Logger(label: "t")) }
        for broker in brokers { broker.start() }
        for broker in brokers { for _ in 0..<100 where !broker.shards[0].isConnected { usleep(20_000) } }
        return brokers
    }

    func testTwoNodesShareOneCount() throws {
        let redis = try RedisServer()
        let brokers = connectedBrokers(redis)
        defer { for broker in brokers { broker.stop() } }
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

    /// Seed 003's minute and hour limits, counted by two nodes at once: the minute caps the
    /// first burst, the hour the burst after the minute turned.
    func testMinuteAndHourLimitsAcrossNodes() throws {
        let redis = try RedisServer()
        let brokers = connectedBrokers(redis)
        defer { for broker in brokers { broker.stop() } }
        let limiters = brokers.map { RedisRateLimiter(broker: $0, logger: Logger(label: "t")) }
        let limits = [RateLimit(3, per: 60), RateLimit(4, per: 3600)]
        let hourStart = (Date().timeIntervalSince1970 / 3600).rounded(.down) * 3600
        func burst(at now: Double) -> Int {
            let allowed = Atomic<Int>(0)
            let group = DispatchGroup()
            for i in 0..<20 {
                group.enter()
                limiters[i % 2].hit(key: "june-llm|user:u1", limits: limits, now: now) { decision in
                    if decision.allowed { allowed.add(1, ordering: .relaxed) }
                    group.leave()
                }
            }
            XCTAssertEqual(group.wait(timeout: .now() + 10), .success)
            return allowed.load(ordering: .relaxed)
        }
        XCTAssertEqual(burst(at: hourStart + 1), 3, "the minute limit")
        XCTAssertEqual(burst(at: hourStart + 61), 1, "the hour limit: 4 in all")
    }
}
