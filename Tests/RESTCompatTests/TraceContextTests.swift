import XCTest
@testable import RESTCompat

/// W3C Trace Context parsing: what the hub accepts as a caller's span, and what it refuses
/// (the request then starts a trace of its own), and OTLP endpoint URLs.
final class TraceContextTests: XCTestCase {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    let span = "00f067aa0ba902b7"

    func testAValidTraceparentRoundTrips() throws {
        let context = try XCTUnwrap(SpanContext(traceparent: "00-\(trace)-\(span)-01"))
        XCTAssertEqual(context.traceID, trace)
        XCTAssertEqual(context.spanIDHex, span)
        XCTAssertTrue(context.sampled)
        XCTAssertEqual(context.traceparent, "00-\(trace)-\(span)-01")
        XCTAssertFalse(try XCTUnwrap(SpanContext(traceparent: "00-\(trace)-\(span)-00")).sampled)
    }

    func testMalformedOrForbiddenValuesAreRefused() {
        for bad in [
            "", "garbage", "00-\(trace)-\(span)", "00-\(trace.uppercased())-\(span)-01",  // upper-case hex is invalid
            "00-\(String(repeating: "0", count: 32))-\(span)-01", "00-\(trace)-0000000000000000-01",  // all-zero ids
            "ff-\(trace)-\(span)-01",  // version ff is forbidden
            "00-\(trace)-\(span)-01-extra",  // version 00 has exactly four fields
            "00-\(trace)x\(span)-01", "0g-\(trace)-\(span)-01",
        ] {
            XCTAssertNil(SpanContext(traceparent: bad), bad)
        }
    }

    func testALaterVersionIsReadByItsVersion00Prefix() {
        XCTAssertEqual(SpanContext(traceparent: "01-\(trace)-\(span)-01-future")?.spanIDHex, span)
        XCTAssertNil(SpanContext(traceparent: "01-\(trace)-\(span)-01future"))
    }

    func testTracestateIsKeptOnlyWhenItCannotBreakAHeader() {
        let parent = "00-\(trace)-\(span)-01"
        XCTAssertEqual(SpanContext(traceparent: parent, tracestate: "vendor=abc,other=1")?.state, "vendor=abc,other=1")
        XCTAssertNil(SpanContext(traceparent: parent, tracestate: "a=1\r\nx-injected: yes")?.state)
        XCTAssertNil(SpanContext(traceparent: parent, tracestate: String(repeating: "a", count: 513))?.state)
    }

    func testEndpointURLs() throws {
        XCTAssertEqual(try OTLPEndpoint(url: "http://127.0.0.1:4318").path, "/v1/traces")
        XCTAssertEqual(try OTLPEndpoint(url: "http://localhost:4318/otlp/").path, "/otlp/v1/traces")
        XCTAssertEqual(try OTLPEndpoint(url: "http://[::1]:4318").address.description, "[::1]:4318")
        XCTAssertEqual(try OTLPEndpoint(url: "http://10.0.0.5").address.port, 80)
        for bad in ["https://127.0.0.1:4318", "collector:4318", "http://collector:4318", "http://127.0.0.1:4318/a b", "http://127.0.0.1:4318/?q=1"] {
            XCTAssertThrowsError(try OTLPEndpoint(url: bad), bad)
        }
    }
}
