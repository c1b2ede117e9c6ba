import XCTest
import TestSupport
@testable import Channels

final class JWTTests: XCTestCase {
    let verifier = TokenVerifier(hmacSecret: "s3cret")

    func testAcceptsValidHS256AndReturnsClaims() throws {
        let token = TokenSigner.hs256(claims: ["sub": "alice", "exp": 2_000, "channels": ["a"]], secret: "s3cret")
        let claims = try verifier.verify(token, now: 1_000)
        XCTAssertEqual(claims["sub"], "alice")
        XCTAssertEqual(claims["channels"], ["a"])
    }

    func testRefusesExpiredNotYetValidAndBadSignatures() {
        let expired = TokenSigner.hs256(claims: ["sub": "a", "exp": 999], secret: "s3cret")
        XCTAssertThrowsError(try verifier.verify(expired, now: 1_000)) { XCTAssertEqual($0 as? TokenError, .expired) }
        let early = TokenSigner.hs256(claims: ["sub": "a", "nbf": 2_000], secret: "s3cret")
        XCTAssertThrowsError(try verifier.verify(early, now: 1_000)) { XCTAssertEqual($0 as? TokenError, .notYetValid) }
        let forged = TokenSigner.hs256(claims: ["sub": "a"], secret: "other")
        XCTAssertThrowsError(try verifier.verify(forged, now: 1_000)) { XCTAssertEqual($0 as? TokenError, .badSignature) }
        var tampered = TokenSigner.hs256(claims: ["sub": "a"], secret: "s3cret").split(separator: ".").map(String.init)
        tampered[1] = Base64URL.encode(Array(#"{"sub":"admin"}"#.utf8))
        XCTAssertThrowsError(try verifier.verify(tampered.joined(separator: "."), now: 0))
    }

    func testRefusesAlgNoneAndUnknownAlgorithms() {
        let header = Base64URL.encode(Array(#"{"alg":"none","typ":"JWT"}"#.utf8))
        let payload = Base64URL.encode(Array(#"{"sub":"a"}"#.utf8))
        XCTAssertThrowsError(try verifier.verify("\(header).\(payload).", now: 0)) {
            XCTAssertEqual($0 as? TokenError, .unsupportedAlgorithm("none"))
        }
        let es = Base64URL.encode(Array(#"{"alg":"ES256"}"#.utf8))
        XCTAssertThrowsError(try verifier.verify("\(es).\(payload).AAAA", now: 0))
        // RS256 without a configured public key is refused, not checked against the HMAC secret.
        let rs = Base64URL.encode(Array(#"{"alg":"RS256"}"#.utf8))
        XCTAssertThrowsError(try verifier.verify("\(rs).\(payload).AAAA", now: 0)) {
            XCTAssertEqual($0 as? TokenError, .unsupportedAlgorithm("RS256"))
        }
        XCTAssertThrowsError(try verifier.verify("not-a-token", now: 0))
    }

    func testAudienceAndIssuerWhenConfigured() throws {
        var strict = TokenVerifier(hmacSecret: "k", audience: "hub", issuer: "auth")
        strict.leeway = 0
        let good = TokenSigner.hs256(claims: ["sub": "a", "aud": ["x", "hub"], "iss": "auth"], secret: "k")
        XCTAssertNoThrow(try strict.verify(good, now: 0))
        let wrongAud = TokenSigner.hs256(claims: ["sub": "a", "aud": "x", "iss": "auth"], secret: "k")
        XCTAssertThrowsError(try strict.verify(wrongAud, now: 0)) { XCTAssertEqual($0 as? TokenError, .wrongAudience) }
        let wrongIss = TokenSigner.hs256(claims: ["sub": "a", "aud": "hub", "iss": "evil"], secret: "k")
        XCTAssertThrowsError(try strict.verify(wrongIss, now: 0)) { XCTAssertEqual($0 as? TokenError, .wrongIssuer) }
    }

    func testRS256WithPublicKey() throws {
        // Key pair made by the test with the openssl command line.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("jwt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let key = dir.appendingPathComponent("key.pem").path, pub = dir.appendingPathComponent("pub.pem").path
        try run("/usr/bin/openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key])
        try run("/usr/bin/openssl", ["pkey", "-in", key, "-pubout", "-out", pub])
        let header = Base64URL.encode(Array(#"{"alg":"RS256","typ":"JWT"}"#.utf8))
        let payload = Base64URL.encode(Array(#"{"sub":"rsa-user"}"#.utf8))
        let input = dir.appendingPathComponent("input").path
        try "\(header).\(payload)".write(toFile: input, atomically: true, encoding: .utf8)
        let sigPath = dir.appendingPathComponent("sig").path
        try run("/usr/bin/openssl", ["dgst", "-sha256", "-sign", key, "-out", sigPath, input])
        let signature = Base64URL.encode(Array(try Data(contentsOf: URL(fileURLWithPath: sigPath))))
        let verifier = TokenVerifier(hmacSecret: "hmac", rsaPublicKeyPEM: try String(contentsOfFile: pub, encoding: .utf8))
        XCTAssertEqual(try verifier.verify("\(header).\(payload).\(signature)", now: 0)["sub"], "rsa-user")
        // Algorithm confusion: an HS256 token signed with the public key text must fail.
        let confused = TokenSigner.hs256(claims: ["sub": "x"], secret: try String(contentsOfFile: pub, encoding: .utf8))
        XCTAssertThrowsError(try verifier.verify(confused, now: 0))
    }

    private func run(_ tool: String, _ args: [String]) throws {
        XCTAssertEqual(try Subprocess.run(tool, args).status, 0, "\(tool) \(args)")
    }

    func testConstantTimeEquality() {
        XCTAssertTrue(ConstantTime.equal("abc", "abc"))
        XCTAssertFalse(ConstantTime.equal("abc", "abd"))
        XCTAssertFalse(ConstantTime.equal("abc", "abcd"))
        XCTAssertTrue(ConstantTime.equal("", ""))
    }
}
