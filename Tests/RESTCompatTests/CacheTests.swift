import Channels
import XCTest
@testable import RESTCompat

final class CacheTests: XCTestCase {
    func testClientPathsFromEveryOSMapIntoTheRoot() throws {
        let root = try XCTUnwrap(CacheRoot(path: "/tmp"))
        for path in ["00_Media/video.mp4", "./00_Media//video.mp4", "/Volumes/dmpfs/tc-east-1/00_Media/video.mp4",
                     "C:\\dmpfs\\tc-east-1\\00_Media\\video.mp4", "d:/fs/space/00_Media/video.mp4",
                     "/mnt/lucidlink/tc-east-1/00_Media/video.mp4", root.path + "/00_Media/video.mp4"] {
            XCTAssertEqual(try root.relative(path), "00_Media/video.mp4", path)
        }
        XCTAssertEqual(try root.relative("/Volumes/dmpfs/tc-east-1"), "")
    }

    func testEscapesAndForeignPathsAreRefusedNamingThePath() throws {
        let root = try XCTUnwrap(CacheRoot(path: "/tmp", prefixes: ["/Volumes/dmpfs/tc-east-1"]))
        let cases = [
            "../etc/passwd": "Path escapes the cache root: ../etc/passwd",
            "a/../../b": "Path escapes the cache root: a/../../b",
            "/Volumes/dmpfs/tc-east-1/../x": "Path escapes the cache root: /Volumes/dmpfs/tc-east-1/../x",
            "/Volumes/other/space/x": "Path is outside the cache root: /Volumes/other/space/x",
            "C:\\dmpfs\\tc-east-1\\x": "Path is outside the cache root: C:\\dmpfs\\tc-east-1\\x",
            "/etc/passwd": "Path is outside the cache root: /etc/passwd",
            "": "Invalid path: ",
        ]
        for (path, message) in cases {
            XCTAssertThrowsError(try root.relative(path), path) { error in
                XCTAssertEqual((error as? RouteError)?.message, message)
                XCTAssertEqual((error as? RouteError)?.status, 400)
            }
        }
    }

    func testSizesAndTimesPrintAsTheSeedShowsThem() {
        XCTAssertEqual(Readable.bytes(1_013_645_672), "966.69 MB")
        XCTAssertEqual(Readable.bytes(85_899_345_920), "80 GB")
        XCTAssertEqual(Readable.bytes(0), "0 Bytes")
        XCTAssertEqual(Readable.bytes(1536), "1.5 KB")
        XCTAssertEqual(ISOTime.string(1_755_916_697.048), "2025-08-23T02:38:17.048Z")
        XCTAssertEqual(TeamCacheAPI.jobID("6BB4629B-1487-477c-96fe-b762d82a099b"), "6bb4629b-1487-477c-96fe-b762d82a099b")
        XCTAssertNil(TeamCacheAPI.jobID("6bb4629b-1487-477c-96fe-b762d82a099"))
        XCTAssertNil(TeamCacheAPI.jobID("6bb4629bx1487-477c-96fe-b762d82a099b"))
    }

    func testProgressAveragesFilesAndSize() {
        var job = CacheJob(id: "j", totalFiles: 20, totalBytes: 85_899_345_920, createdAt: 0)
        job.completedFiles = 15
        job.completedBytes = 64_424_509_440
        let progress = job.progress
        XCTAssertEqual(progress["files"]?["percentage"], 75)
        XCTAssertEqual(progress["size"]?["completedReadable"], "60 GB")
        XCTAssertEqual(progress["percentage"], 75)
        job.throughput = CacheJob.Throughput(bytesPerSecond: 125.5 * 1_048_576, at: 100)
        XCTAssertEqual(job.detail(now: 105)["throughput"]?["readable"], "125.5 MB/s")
        XCTAssertEqual(job.detail(now: 110.5)["throughput"], .null)
    }
}
