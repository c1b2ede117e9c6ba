import Foundation
import Glibc
import XCTest
@testable import Channels
@testable import RESTCompat

/// The dashboard's static files: only files directly in their folder, of the listed types,
/// never anything a symlink or an encoded path reaches outside it.
final class DashboardFilesTests: XCTestCase {
    var root = ""
    var outside = ""

    override func setUp() {
        var template = Array((NSTemporaryDirectory() + "/dashboard-XXXXXX").utf8CString)
        let base = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        root = base + "/site"
        outside = base + "/secret.js"
        mkdir(root, 0o700)
        FileManager.default.createFile(atPath: root + "/index.html", contents: Data("<h1>board</h1>".utf8))
        FileManager.default.createFile(atPath: root + "/app.js", contents: Data("export {}".utf8))
        FileManager.default.createFile(atPath: outside, contents: Data("const key = 1".utf8))
        symlink(outside, root + "/escape.js")
        symlink(root + "/app.js", root + "/alias.js")
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: (root as NSString).deletingLastPathComponent)
    }

    func testNamesThatCouldLeaveTheFolderOrAreNotPageFilesAreRefused() {
        for bad in ["", ".", "..", ".env", ".hidden.js", "a/b.js", "a\\b.js", "%2e%2e%2fsecret.js", "..%2Fsecret.js",
                    "x.exe", "index", "style.css%00.exe", "app.js\u{7}"] {
            XCTAssertNil(DashboardFiles.safeName(bad), bad)
        }
        XCTAssertEqual(DashboardFiles.safeName("app.js"), "app.js")
        XCTAssertEqual(DashboardFiles.safeName("hub-client.js"), "hub-client.js")
        XCTAssertEqual(DashboardFiles.contentType("style.css"), "text/css; charset=utf-8")
        XCTAssertEqual(DashboardFiles.contentType("APP.JS"), "text/javascript; charset=utf-8")
    }

    func testFilesInTheFolderAreServedWithTheirTypeAndPolicy() {
        let page = DashboardFiles.read(root: root, name: "index.html")
        XCTAssertEqual(page.status, 200)
        XCTAssertEqual(page.contentType, "text/html; charset=utf-8")
        XCTAssertEqual(String(decoding: page.body, as: UTF8.self), "<h1>board</h1>")
        XCTAssertTrue(page.headers.contains { $0.0 == "content-security-policy" && $0.1.contains("frame-ancestors 'none'") })
        XCTAssertEqual(DashboardFiles.read(root: root, name: "alias.js").status, 200, "a symlink within the folder is fine")
    }

    func testSymlinksOutMissingFilesAndAMissingFolderAre404() {
        let escape = DashboardFiles.read(root: root, name: "escape.js")
        XCTAssertEqual(escape.status, 404)
        XCTAssertFalse(String(decoding: escape.body, as: UTF8.self).contains("key"))
        XCTAssertEqual(DashboardFiles.read(root: root, name: "nothing.js").status, 404)
        let noFolder = DashboardFiles.read(root: root + "/missing", name: "index.html")
        XCTAssertEqual(noFolder.status, 404)
        XCTAssertTrue(String(decoding: noFolder.body, as: UTF8.self).contains("--dashboard-dir"))
    }
}
