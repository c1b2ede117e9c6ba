import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat

/// Each seed system's error body, exactly as its document shows it.
final class ErrorShapeTests: XCTestCase {
    func body(_ response: HTTPResponse) -> JSONValue { (try? JSONParser.parse(response.body)) ?? .null }

    func testTeamCacheSeed001() {
        let response = ErrorShape.teamCache.response(404, "Job not found")
        XCTAssertEqual(response.status, 404)
        XCTAssertEqual(response.contentType, "application/json")
        XCTAssertEqual(body(response), ["success": false, "error": "Job not found"])
        XCTAssertEqual(body(ErrorShape.teamCache.rateLimited(retryAfter: 30)), ["success": false, "error": "Too many requests, please try again later"])
    }

    func testFastAPISeeds000And003() {
        XCTAssertEqual(body(ErrorShape.fastAPI.response(403, "Admin token required")), ["detail": "Admin token required"])
        let limited = ErrorShape.fastAPI.rateLimited(retryAfter: 42)
        XCTAssertEqual(limited.status, 429)
        XCTAssertEqual(body(limited), ["detail": "Rate limit exceeded", "retry_after": 42])
    }

    func testMeetingsSeed004CodesByStatus() {
        let expected: [(Int, String)] = [
            (400, "BAD_REQUEST"), (401, "UNAUTHORIZED"), (403, "UNAUTHORIZED"), (404, "NOT_FOUND"), (413, "FILE_TOO_LARGE"),
            (415, "INVALID_FILE_TYPE"), (422, "BAD_REQUEST"), (429, "RATE_LIMITED"), (500, "INTERNAL_ERROR"), (503, "INTERNAL_ERROR"),
        ]
        for (status, code) in expected {
            XCTAssertEqual(body(ErrorShape.meetings.response(status, "m")), ["error": ["code": .string(code), "message": "m", "details": [:]]], "\(status)")
        }
        XCTAssertEqual(body(ErrorShape.meetings.response(400, "bad", code: "INVALID_FILE_TYPE", details: ["allowed": ["audio/wav"]])),
                       ["error": ["code": "INVALID_FILE_TYPE", "message": "bad", "details": ["allowed": ["audio/wav"]]]])
        XCTAssertEqual(body(ErrorShape.meetings.rateLimited(retryAfter: 7)),
                       ["error": ["code": "RATE_LIMITED", "message": "Rate limit exceeded", "details": ["retry_after": 7]]])
    }

    func testHubShapeUsesCentrifugoCodes() {
        XCTAssertEqual(body(ErrorShape.hub.response(401, "unauthorized")), ["error": ["code": 101, "message": "unauthorized"]])
        XCTAssertEqual(body(ErrorShape.hub.response(404, "not found")), ["error": ["code": 404, "message": "not found"]])
    }

    func testUploadErrorsInEachShape() {
        let tooLarge = MultipartError.bodyTooLarge(limit: 100).routeError
        XCTAssertEqual(body(ErrorShape.fastAPI.response(tooLarge.status, tooLarge.message, code: tooLarge.code)),
                       ["detail": "request body larger than 100 bytes"])
        XCTAssertEqual(body(ErrorShape.teamCache.response(tooLarge.status, tooLarge.message, code: tooLarge.code)),
                       ["success": false, "error": "request body larger than 100 bytes"])
        XCTAssertEqual(body(ErrorShape.meetings.response(tooLarge.status, tooLarge.message, code: tooLarge.code))["error"]?["code"], "FILE_TOO_LARGE")
        XCTAssertEqual(MultipartError.storage("disk full").routeError.message, "could not store the upload", "no paths or errno text to the client")
    }
}

/// The embedded limiter against the seeds' per-minute and per-hour limits.
final class MemoryRateLimiterTests: XCTestCase {
    let clock = ManualClock()

    func hit(_ limiter: MemoryRateLimiter, _ key: String, _ limits: [RateLimit]) -> RateDecision {
        let result = Mutex<RateDecision?>(nil)
        limiter.hit(key: key, limits: limits, now: clock.now()) { decision in result.withLock { $0 = decision } }
        return result.withLock { $0! }
    }

    func testMinuteAndHourLimitsBothHold() {
        clock.time.withLock { $0 = 1_800_000_000 }  // a whole hour: windows line up with the clock
        let limiter = MemoryRateLimiter()
        let limits = [RateLimit(2, per: 60), RateLimit(3, per: 3600)]
        XCTAssertEqual(hit(limiter, "u", limits), RateDecision(allowed: true, limit: 2, remaining: 1, reset: 1_800_000_060, retryAfter: 0))
        XCTAssertTrue(hit(limiter, "u", limits).allowed)
        let minute = hit(limiter, "u", limits)
        XCTAssertFalse(minute.allowed)
        XCTAssertEqual(minute.retryAfter, 60)
        clock.advance(60)
        let third = hit(limiter, "u", limits)
        XCTAssertTrue(third.allowed, "a new minute")
        XCTAssertEqual(third.limit, 3, "the hour is now the tightest")
        XCTAssertEqual(third.remaining, 0)
        clock.advance(60)
        let hour = hit(limiter, "u", limits)
        XCTAssertFalse(hour.allowed, "three in the hour already")
        XCTAssertEqual(hour.retryAfter, 3600 - 120)
        XCTAssertTrue(hit(limiter, "other", limits).allowed, "counted per client key")
    }

    func testRefusedRequestsDoNotUseTheAllowance() {
        clock.time.withLock { $0 = 1_800_000_000 }
        let limiter = MemoryRateLimiter()
        let limits = [RateLimit(1, per: 60), RateLimit(2, per: 3600)]
        XCTAssertTrue(hit(limiter, "k", limits).allowed)
        for _ in 0..<5 { XCTAssertFalse(hit(limiter, "k", limits).allowed) }
        clock.advance(60)
        XCTAssertTrue(hit(limiter, "k", limits).allowed, "the refused ones did not count against the hour")
    }
}
