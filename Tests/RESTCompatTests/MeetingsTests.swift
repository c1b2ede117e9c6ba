import Dispatch
import Glibc
import Logging
import Synchronization
import XCTest
@testable import Channels
@testable import RESTCompat
import Foundation
import Store
import TestSupport

/// Seed 004's pieces that are pure functions (ranges, links, content sniffing, Telegram checks)
/// and the one property that needs many callers at once: a task is claimed by exactly one worker.
final class MeetingsTests: XCTestCase {
    func testRangeHeadersResolveAgainstTheObjectSize() {
        XCTAssertEqual(ByteRange.parse(nil, size: 100), .whole)
        XCTAssertEqual(ByteRange.parse("bytes=0-9", size: 100), .part(start: 0, end: 9))
        XCTAssertEqual(ByteRange.parse("bytes=90-", size: 100), .part(start: 90, end: 99))
        XCTAssertEqual(ByteRange.parse("bytes=90-500", size: 100), .part(start: 90, end: 99))
        XCTAssertEqual(ByteRange.parse("bytes=-10", size: 100), .part(start: 90, end: 99))
        XCTAssertEqual(ByteRange.parse("bytes=-500", size: 100), .part(start: 0, end: 99))
        XCTAssertEqual(ByteRange.parse("bytes=100-", size: 100), .unsatisfiable)
        XCTAssertEqual(ByteRange.parse("bytes=-0", size: 100), .unsatisfiable)
        XCTAssertEqual(ByteRange.parse("bytes=0-1,5-6", size: 100), .whole, "several ranges: answered whole")
        XCTAssertEqual(ByteRange.parse("bytes=9-3", size: 100), .whole, "malformed: ignored")
        XCTAssertEqual(ByteRange.parse("items=0-3", size: 100), .whole)
    }

    func testDownloadLinksExpireAndRefuseAnyChange() {
        let links = DownloadLinks(key: Array("k".utf8), ttl: 60)
        let path = "/v1/meetings/m/artifacts/t.txt/download"
        let link = links.link(path: path, user: "tg:7", now: 1000)
        let query = HTTPRequest.parseQuery(String(link.url.split(separator: "?")[1]))
        XCTAssertEqual(links.check(path: path, query: query, now: 1059), .valid(user: "tg:7"))
        XCTAssertEqual(links.check(path: path, query: query, now: 1060), .expired)
        XCTAssertEqual(links.check(path: path.replacingFirst("t.txt", "s.json"), query: query, now: 1001), .invalid)
        let otherUser = query.map { $0.0 == "user" ? ($0.0, "tg:8") : $0 }
        XCTAssertEqual(links.check(path: path, query: otherUser, now: 1001), .invalid)
        let longer = query.map { $0.0 == "expires" ? ($0.0, "99999") : $0 }
        XCTAssertEqual(links.check(path: path, query: longer, now: 1001), .invalid)
        XCTAssertEqual(DownloadLinks(key: Array("other".utf8), ttl: 60).check(path: path, query: query, now: 1001), .invalid)
    }

    func testMediaTypeComesFromTheFirstBytes() {
        func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
        XCTAssertEqual(MediaType.detect(bytes("RIFF\u{0}\u{0}\u{0}\u{0}WAVEfmt ")), "audio/wav")
        XCTAssertEqual(MediaType.detect(bytes("ID3\u{4}")), "audio/mpeg")
        XCTAssertEqual(MediaType.detect([0xFF, 0xFB, 0x90, 0x00]), "audio/mpeg")
        XCTAssertEqual(MediaType.detect([0xFF, 0xF1, 0x50, 0x80]), "audio/aac")
        XCTAssertEqual(MediaType.detect(bytes("OggS")), "audio/ogg")
        XCTAssertEqual(MediaType.detect(bytes("fLaC")), "audio/flac")
        XCTAssertEqual(MediaType.detect([0, 0, 0, 0x20] + bytes("ftypM4A ")), "audio/mp4")
        XCTAssertEqual(MediaType.detect([0, 0, 0, 0x20] + bytes("ftypisom")), "video/mp4")
        XCTAssertEqual(MediaType.detect([0x1A, 0x45, 0xDF, 0xA3]), "video/webm")
        XCTAssertNil(MediaType.detect(bytes("%PDF-1.7")))
        XCTAssertNil(MediaType.detect(bytes("RIFF\u{0}\u{0}\u{0}\u{0}WEBP")), "a RIFF that is not WAV/AVI")
        XCTAssertNil(MediaType.detect([]))
    }

    func testStorageKeysCannotLeaveTheRoot() {
        XCTAssertTrue(LocalFolderStorage.isSafe(key: "media/0192/0193"))
        XCTAssertTrue(LocalFolderStorage.isSafe(key: "artifacts/m/summary.json"))
        for bad in ["../etc/passwd", "media/../../x", "/abs", "media//x", "media/./x", "a/b c", "a/\u{0}", ""] {
            XCTAssertFalse(LocalFolderStorage.isSafe(key: bad), bad)
        }
    }

    func testIDsAreTimeOrderedVersion7UUIDs() {
        let a = MeetingIDs.make(now: 1_800_000_000)
        let b = MeetingIDs.make(now: 1_800_000_001)
        XCTAssertTrue(MeetingIDs.isUUID(a))
        XCTAssertEqual(Array(a)[14], "7")
        XCTAssertLessThan(a, b)
        XCTAssertFalse(MeetingIDs.isUUID("not-a-uuid"))
        XCTAssertFalse(MeetingIDs.isUUID("0192aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeeg"))
    }

    func testTelegramLoginWidgetCheck() throws {
        let bot = "123:ABC"
        let auth = TelegramAuth(botToken: bot, passportKeyPEM: nil, maxAge: 86_400, nonceKey: [1, 2, 3])
        func signed(_ fields: [(String, String)], token: String = bot) -> [(String, String)] {
            let check = fields.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(separator: "\n")
            let hash = Crypto.hex(Crypto.hmacSHA256(Array(check.utf8), key: Crypto.sha256(Array(token.utf8))))
            return fields + [("hash", hash)]
        }
        let fields = [("id", "42"), ("first_name", "Ada"), ("auth_date", "1000000")]
        let identity = try auth.verifyLogin(signed(fields), now: 1_000_100)
        XCTAssertEqual(identity, TelegramIdentity(telegramID: 42, name: "Ada", method: "telegram-login"))
        var tampered = signed(fields)
        tampered[1].1 = "Eve"
        XCTAssertThrowsError(try auth.verifyLogin(tampered, now: 1_000_100))
        XCTAssertThrowsError(try auth.verifyLogin(signed(fields, token: "999:other"), now: 1_000_100))
        XCTAssertThrowsError(try auth.verifyLogin(signed(fields), now: 1_000_000 + 86_401), "auth_date too old")
        XCTAssertThrowsError(try auth.verifyLogin(fields, now: 1_000_100), "no hash")
    }

    func testPassportNoncesAreBoundToTheirUserAndExpire() throws {
        let auth = TelegramAuth(botToken: nil, passportKeyPEM: nil, maxAge: 1, nonceKey: Array("key".utf8))
        let issued = auth.nonce(for: 77, now: 1000)
        XCTAssertEqual(try auth.checkNonce(issued.nonce, now: 1001), 77)
        XCTAssertThrowsError(try auth.checkNonce(issued.nonce, now: 1000 + auth.nonceTTL))
        XCTAssertThrowsError(try auth.checkNonce(issued.nonce.replacingFirst("77.", "78."), now: 1001))
        let other = TelegramAuth(botToken: nil, passportKeyPEM: nil, maxAge: 1, nonceKey: Array("other".utf8))
        XCTAssertThrowsError(try other.checkNonce(issued.nonce, now: 1001))
    }

    /// Found by `hub-fuzz telegram` (Tests/fuzz/corpus/telegram/regress-nonce-*): the nonce
    /// string is what makes a Passport sign-in single-use, and `+77.…`, `077.…` and `77..…`
    /// parsed to the same id and expiry, so one captured nonce could sign in three more times.
    func testPassportNonceIsAcceptedOnlyExactlyAsIssued() throws {
        let auth = TelegramAuth(botToken: nil, passportKeyPEM: nil, maxAge: 1, nonceKey: Array("key".utf8))
        let issued = auth.nonce(for: 77, now: 1000)
        XCTAssertEqual(try auth.checkNonce(issued.nonce, now: 1001), 77)
        let parts = issued.nonce.split(separator: ".").map(String.init)
        for respelt in ["+" + issued.nonce, "0" + issued.nonce, "\(parts[0])..\(parts[1]).\(parts[2])",
                        "\(parts[0]).+\(parts[1]).\(parts[2])", "\(parts[0]).0\(parts[1]).\(parts[2])",
                        issued.nonce + ".", "." + issued.nonce, "\(parts[0]).\(parts[1]).\(parts[2].uppercased())"] {
            XCTAssertThrowsError(try auth.checkNonce(respelt, now: 1001), respelt)
        }
    }

    func testPassportDataDecryptsAndChecksItsHash() throws {
        // Encrypted here with the same construction as Telegram, through openssl's CLI.
        let plain = Array(#"{"nonce":"n"}"#.utf8)
        let padLength = 32 + (16 - (plain.count + 32) % 16) % 16
        let padded = [UInt8(padLength)] + [UInt8](repeating: 7, count: padLength - 1) + plain
        let hash = Crypto.sha256(padded)
        let secret = Crypto.randomBytes(32)
        let digest = Crypto.sha512(secret + hash)
        let encrypted = try openssl(["enc", "-aes-256-cbc", "-nopad", "-K", Crypto.hex(Array(digest[0..<32])),
                                     "-iv", Crypto.hex(Array(digest[32..<48]))], input: padded)
        XCTAssertEqual(try TelegramAuth.decryptPassportData(encrypted, secret: secret, hash: hash), plain)
        var flipped = encrypted
        flipped[0] ^= 1
        XCTAssertThrowsError(try TelegramAuth.decryptPassportData(flipped, secret: secret, hash: hash))
        XCTAssertThrowsError(try TelegramAuth.decryptPassportData(encrypted, secret: Crypto.randomBytes(32), hash: hash))
    }

    func testManyWorkersClaimingOneTaskOnlyOneWins() throws {
        let dir = "/tmp/meetings-test-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        XCTAssertEqual(mkdir(dir, 0o755), 0)
        defer { LocalFolderStorage.emptyFolder(dir); rmdir(dir) }
        let store = try SQLiteRecordStore(path: dir + "/hub.db")
        defer { store.close() }
        var engine = EngineConfig()
        engine.namespaces.namespaces["meetings"] = MeetingsPipeline.channelOptions
        let node = Node(config: engine, broker: MemoryBroker(), presence: MemoryPresenceStore(), encoder: PlainEncoder())
        let settings = MeetingsSettings()
        let pipeline = MeetingsPipeline(node: node, store: store, storage: try LocalFolderStorage(root: dir + "/meetings"),
                                        settings: settings, limiter: MemoryRateLimiter(), rateLimitClasses: [],
                                        logger: Logger(label: "test"))
        let router = Router(routes: pipeline.routes, credentials: Credentials(serverAPIKey: "key", tokens: TokenVerifier(hmacSecret: "s")),
                            uploads: UploadSettings(directory: dir, limits: MultipartLimits(maxBodyBytes: 1 << 20, maxFileBytes: 1 << 20)))
        let token = TokenSigner.hs256(claims: ["sub": "alice", "exp": .int(Int64(node.clock.now() + 600))], secret: "s")
        let wav = Array("RIFF\u{0}\u{0}\u{0}\u{0}WAVEfmt ".utf8) + [UInt8](repeating: 0, count: 64)
        let form = Array("--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"m.wav\"\r\n\r\n".utf8) + wav
            + Array("\r\n--b--\r\n".utf8)
        let created = Self.call(router, HTTPRequest(method: "POST", path: "/v1/files",
                                                    headers: ["authorization": "Bearer " + token,
                                                              "content-type": "multipart/form-data; boundary=b"], body: form))
        XCTAssertEqual(created.status, 201, String(decoding: created.body, as: UTF8.self))
        let fileID = try XCTUnwrap((try JSONParser.parse(created.body))["file_id"]?.stringValue)

        let statuses = Mutex<[Int]>([])
        DispatchQueue.concurrentPerform(iterations: 16) { i in
            let response = MeetingsTests.call(router, HTTPRequest(method: "POST", path: "/v1/worker/tasks/\(fileID)/claim",
                                                    headers: ["x-api-key": "key"], body: Array(#"{"worker":"w\#(i)"}"#.utf8)))
            statuses.withLock { $0.append(response.status) }
        }
        let all = statuses.withLock { $0 }
        XCTAssertEqual(all.filter { $0 == 200 }.count, 1, "\(all)")
        XCTAssertEqual(all.filter { $0 == 409 }.count, 15, "\(all)")
    }

    private static func call(_ router: Router, _ request: HTTPRequest) -> HTTPResponse {
        let result = Mutex<HTTPResponse?>(nil)
        let done = DispatchSemaphore(value: 0)
        router.handle(request) { response in
            result.withLock { $0 = response }
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        return result.withLock { $0 ?? HTTPResponse(status: 0) }
    }

    private func openssl(_ args: [String], input: [UInt8]) throws -> [UInt8] {
        let dir = "/tmp/meetings-openssl-\(getpid())-\(Int.random(in: 0..<1_000_000))"
        mkdir(dir, 0o700)
        defer { unlink(dir + "/in"); unlink(dir + "/out"); rmdir(dir) }
        let fd = open(dir + "/in", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = input.withUnsafeBytes { write(fd, $0.baseAddress, input.count) }
        close(fd)
        let result = try Subprocess.run("/usr/bin/openssl", args + ["-in", dir + "/in", "-out", dir + "/out"], timeout: 10)
        XCTAssertEqual(result.status, 0, result.output)
        guard let file = fopen(dir + "/out", "rb") else { throw StoreError("no openssl output") }
        defer { fclose(file) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buffer, 1, buffer.count, file)
            out += buffer[0..<n]
            if n < buffer.count { break }
        }
        return out
    }
}

extension String {
    func replacingFirst(_ target: String, _ replacement: String) -> String {
        guard let range = range(of: target) else { return self }
        return replacingCharacters(in: range, with: replacement)
    }
}
