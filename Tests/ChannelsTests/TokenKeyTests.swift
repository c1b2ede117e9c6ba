import Foundation
import Logging
import Synchronization
import XCTest
import TestSupport
@testable import Channels

/// Public-key tokens: PEM keys for RS*/ES*, and a JWKS picked by kid. Keys and signatures are
/// made by the openssl command line, never by the code under test.
final class TokenKeyTests: XCTestCase {
    /// A private key on disk, its public half as PEM and DER, and signing through openssl.
    struct KeyPair {
        let dir: URL
        let privatePath: String
        let publicPEM: String
        let publicDER: [UInt8]
        let kind: String

        init(_ kind: String, in dir: URL) throws {
            self.dir = dir
            self.kind = kind
            privatePath = dir.appendingPathComponent("\(kind).key").path
            let options: [String]
            switch kind {
            case "rsa": options = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]
            case "rsa1024": options = ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]
            case "p256": options = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
            case "p384": options = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]
            default: options = ["-algorithm", "ED25519"]
            }
            try Self.openssl(["genpkey"] + options + ["-out", privatePath])
            let pem = dir.appendingPathComponent("\(kind).pub").path, der = dir.appendingPathComponent("\(kind).der").path
            try Self.openssl(["pkey", "-in", privatePath, "-pubout", "-out", pem])
            try Self.openssl(["pkey", "-in", privatePath, "-pubout", "-outform", "DER", "-out", der])
            publicPEM = try String(contentsOfFile: pem, encoding: .utf8)
            publicDER = Array(try Data(contentsOf: URL(fileURLWithPath: der)))
        }

        static func openssl(_ args: [String]) throws {
            XCTAssertEqual(try Subprocess.run("/usr/bin/openssl", args).status, 0, "openssl \(args)")
        }

        /// The JWS signature bytes: PKCS#1 for RSA, raw r||s for ECDSA, Ed25519 as is.
        func signature(_ input: String, hash: String) throws -> [UInt8] {
            let inputPath = dir.appendingPathComponent("input").path, sigPath = dir.appendingPathComponent("sig").path
            try input.write(toFile: inputPath, atomically: true, encoding: .utf8)
            if kind == "ed25519" {
                try Self.openssl(["pkeyutl", "-sign", "-inkey", privatePath, "-rawin", "-in", inputPath, "-out", sigPath])
            } else {
                try Self.openssl(["dgst", "-\(hash)", "-sign", privatePath, "-out", sigPath, inputPath])
            }
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: sigPath)))
            guard kind == "p256" || kind == "p384" else { return bytes }
            return Self.rawECDSA(der: bytes, size: kind == "p256" ? 32 : 48)
        }

        /// SEQUENCE { INTEGER r, INTEGER s } to r||s, each left-padded to the coordinate size.
        static func rawECDSA(der: [UInt8], size: Int) -> [UInt8] {
            var index = der[1] & 0x80 != 0 ? 2 + Int(der[1] & 0x7F) : 2
            var out: [UInt8] = []
            for _ in 0..<2 {
                let length = Int(der[index + 1])
                let value = Array(der[(index + 2)..<(index + 2 + length)].drop { $0 == 0 })
                out += [UInt8](repeating: 0, count: size - value.count) + value
                index += 2 + length
            }
            return out
        }

        func token(alg: String, kid: String? = nil, claims: String = #"{"sub":"alice"}"#) throws -> String {
            let header = kid.map { #"{"alg":"\#(alg)","kid":"\#($0)"}"# } ?? #"{"alg":"\#(alg)"}"#
            let input = Base64URL.encode(Array(header.utf8)) + "." + Base64URL.encode(Array(claims.utf8))
            let hash = alg.hasSuffix("384") ? "sha384" : alg.hasSuffix("512") ? "sha512" : "sha256"
            return input + "." + Base64URL.encode(try signature(input, hash: hash))
        }

        /// This public key as a JWK (members from the DER SubjectPublicKeyInfo).
        func jwk(kid: String, alg: String? = nil) throws -> String {
            var members: [String]
            switch kind {
            case "p256", "p384":
                let size = kind == "p256" ? 32 : 48
                let point = publicDER.suffix(2 * size)
                members = [#""kty":"EC""#, #""crv":"\#(kind == "p256" ? "P-256" : "P-384")""#,
                           #""x":"\#(Base64URL.encode(Array(point.prefix(size))))""#, #""y":"\#(Base64URL.encode(Array(point.suffix(size))))""#]
            case "ed25519":
                members = [#""kty":"OKP""#, #""crv":"Ed25519""#, #""x":"\#(Base64URL.encode(Array(publicDER.suffix(32))))""#]
            default:
                let text = try Subprocess.run("/usr/bin/openssl", ["rsa", "-pubin", "-in", dir.appendingPathComponent("\(kind).pub").path, "-modulus", "-noout"]).output
                let hex = Array(text.trimmingCharacters(in: .whitespacesAndNewlines).dropFirst("Modulus=".count))
                let modulus = stride(from: 0, to: hex.count, by: 2).map { UInt8(String(hex[$0..<$0 + 2]), radix: 16)! }
                members = [#""kty":"RSA""#, #""n":"\#(Base64URL.encode(modulus))""#, #""e":"AQAB""#]
            }
            members.append(#""kid":"\#(kid)""#)
            if let alg { members.append(#""alg":"\#(alg)""#) }
            return "{" + members.joined(separator: ",") + "}"
        }
    }

    var dir: URL!
    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("token-keys-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }
    override func tearDown() { try? FileManager.default.removeItem(at: dir) }

    func refusal(_ verifier: TokenVerifier, _ token: String) -> TokenError? {
        do { _ = try verifier.verify(token, now: 0); return nil } catch { return error }
    }

    func testRSAPublicKeyChecksRS256RS384AndRS512() throws {
        let rsa = try KeyPair("rsa", in: dir)
        let verifier = TokenVerifier(hmacSecret: nil, rsaPublicKey: VerificationKey(pem: rsa.publicPEM))
        for alg in ["RS256", "RS384", "RS512"] {
            XCTAssertEqual(try verifier.verify(try rsa.token(alg: alg), now: 0)["sub"], "alice", alg)
        }
        // The header says RS384, the signature is over SHA-256: refused.
        var parts = try rsa.token(alg: "RS256").split(separator: ".").map(String.init)
        parts[0] = Base64URL.encode(Array(#"{"alg":"RS384"}"#.utf8))
        XCTAssertEqual(refusal(verifier, parts.joined(separator: ".")), .badSignature)
        XCTAssertEqual(refusal(verifier, try rsa.token(alg: "ES256")), .unsupportedAlgorithm("ES256"))
    }

    func testECDSAPublicKeysCheckTheirOwnCurveOnly() throws {
        let p256 = try KeyPair("p256", in: dir), p384 = try KeyPair("p384", in: dir)
        let es256 = TokenVerifier(hmacSecret: nil, ecdsaPublicKey: VerificationKey(pem: p256.publicPEM))
        let es384 = TokenVerifier(hmacSecret: nil, ecdsaPublicKey: VerificationKey(pem: p384.publicPEM))
        XCTAssertEqual(VerificationKey(pem: p256.publicPEM)?.kind, .ecP256)
        XCTAssertEqual(VerificationKey(pem: p384.publicPEM)?.kind, .ecP384)
        XCTAssertEqual(try es256.verify(try p256.token(alg: "ES256"), now: 0)["sub"], "alice")
        XCTAssertEqual(try es384.verify(try p384.token(alg: "ES384"), now: 0)["sub"], "alice")
        // ES384 against a P-256 key (and the reverse) is refused before any signature check.
        XCTAssertEqual(refusal(es256, try p384.token(alg: "ES384")), .unsupportedAlgorithm("ES384"))
        XCTAssertEqual(refusal(es384, try p256.token(alg: "ES256")), .unsupportedAlgorithm("ES256"))
        // HS256 keyed with the PEM text: no HMAC secret is configured, so nothing to confuse.
        XCTAssertEqual(refusal(es256, TokenSigner.hs256(claims: ["sub": "x"], secret: p256.publicPEM)), .unsupportedAlgorithm("HS256"))
    }

    func testECDSASignaturesMustBeRawAndOfTheCurvesLength() throws {
        let p256 = try KeyPair("p256", in: dir)
        let verifier = TokenVerifier(hmacSecret: nil, ecdsaPublicKey: VerificationKey(pem: p256.publicPEM))
        let token = try p256.token(alg: "ES256")
        let parts = token.split(separator: ".").map(String.init)
        let raw = Base64URL.decode(parts[2])!
        XCTAssertEqual(raw.count, 64)
        func with(_ signature: [UInt8]) -> String { parts[0] + "." + parts[1] + "." + Base64URL.encode(signature) }
        XCTAssertEqual(refusal(verifier, with(Array(raw.dropLast()))), .malformed("ES256 signature must be 64 bytes"))
        XCTAssertEqual(refusal(verifier, with(raw + [0])), .malformed("ES256 signature must be 64 bytes"))
        XCTAssertEqual(refusal(verifier, with([])), .malformed("ES256 signature must be 64 bytes"))
        // The DER form OpenSSL itself produces is not a JWS signature.
        XCTAssertEqual(refusal(verifier, with(DER.ecdsaSignature(raw: raw))), .malformed("ES256 signature must be 64 bytes"))
        XCTAssertEqual(refusal(verifier, with(Array(raw[32...] + raw[..<32]))), .badSignature)
        XCTAssertEqual(refusal(verifier, with([UInt8](repeating: 0, count: 64))), .badSignature)
        XCTAssertNoThrow(try verifier.verify(with(raw), now: 0))
    }

    func testDERIntegersArePositiveAndMinimal() {
        XCTAssertEqual(DER.integer([0x00, 0x00, 0x7F]), [0x02, 0x01, 0x7F])
        XCTAssertEqual(DER.integer([0x80]), [0x02, 0x02, 0x00, 0x80])
        XCTAssertEqual(DER.integer([0, 0]), [0x02, 0x01, 0x00])
        XCTAssertEqual(DER.length(200), [0x81, 200])
        XCTAssertEqual(DER.length(300), [0x82, 0x01, 0x2C])
    }

    /// A key set served from memory: `body` is what each fetch returns; `fetches` counts them.
    final class MemoryJWKS: Sendable {
        let body = Mutex<[UInt8]>([])
        let fetches = Atomic<Int>(0)
        let held = Mutex<[@Sendable () -> Void]>([])
        let holding = Atomic<Bool>(false)
        let clock = Mutex<Double>(1000)

        func keySet(_ limits: TokenKeySet.Limits = TokenKeySet.Limits()) -> TokenKeySet {
            TokenKeySet(limits: limits, logger: Logger(label: "test.jwks"), now: { self.clock.withLock { $0 } }) { completion in
                self.fetches.add(1, ordering: .relaxed)
                let body = self.body.withLock { $0 }
                if self.holding.load(ordering: .relaxed) {
                    self.held.withLock { $0.append { completion(.success(body)) } }
                } else {
                    completion(.success(body))
                }
            }
        }

        func serve(_ jwks: [String]) { body.withLock { $0 = Array(#"{"keys":[\#(jwks.joined(separator: ","))]}"#.utf8) } }
        func release() { for answer in held.withLock({ list in defer { list.removeAll() }; return list }) { answer() } }
    }

    func testJWKSKeysArePickedByKidAndMustFitTheAlgorithm() throws {
        let rsa = try KeyPair("rsa", in: dir), p256 = try KeyPair("p256", in: dir), p384 = try KeyPair("p384", in: dir)
        let ed = try KeyPair("ed25519", in: dir)
        let jwks = MemoryJWKS()
        jwks.serve([try rsa.jwk(kid: "r"), try rsa.jwk(kid: "r256", alg: "RS256"), try p256.jwk(kid: "e256"), try p384.jwk(kid: "e384", alg: "ES384"),
                    try ed.jwk(kid: "ed"), #"{"kty":"oct","kid":"h","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}"#])
        let keys = jwks.keySet()
        keys.refetch(because: "test")
        XCTAssertEqual(keys.keyIDs, ["e256", "e384", "ed", "r", "r256"])
        let verifier = TokenVerifier(hmacSecret: "the-hubs-own-secret", keySet: keys)
        for (alg, pair, kid) in [("RS256", rsa, "r"), ("RS384", rsa, "r"), ("RS512", rsa, "r"), ("RS256", rsa, "r256"),
                                 ("ES256", p256, "e256"), ("ES384", p384, "e384"), ("EdDSA", ed, "ed")] {
            XCTAssertEqual(try verifier.verify(try pair.token(alg: alg, kid: kid), now: 0)["sub"], "alice", "\(alg) \(kid)")
        }
        for (alg, pair, kid) in [("RS256", rsa, "e256"), ("ES384", p384, "e256"), ("ES256", p256, "e384"), ("EdDSA", ed, "r"),
                                 ("RS384", rsa, "r256"), ("ES256", p256, "ed")] {
            XCTAssertEqual(refusal(verifier, try pair.token(alg: alg, kid: kid)), .unsupportedAlgorithm(alg), "\(alg) on \(kid)")
        }
        // HMAC never by kid: not with the JWKS's oct key, not with the hub's own secret.
        let header = Base64URL.encode(Array(#"{"alg":"HS256","kid":"h"}"#.utf8)) + "." + Base64URL.encode(Array(#"{"sub":"a"}"#.utf8))
        for secret in ["secret-secret-secret", "the-hubs-own-secret"] {
            let signed = header + "." + Base64URL.encode(Crypto.hmac(Array(header.utf8), key: Array(secret.utf8), algorithm: "HS256"))
            XCTAssertEqual(refusal(verifier, signed), .unsupportedAlgorithm("HS256"))
        }
        // Without a kid the hub's own secret still works; an RS256 token without one has no key.
        XCTAssertNoThrow(try verifier.verify(TokenSigner.hs256(claims: ["sub": "a"], secret: "the-hubs-own-secret"), now: 0))
        XCTAssertEqual(refusal(verifier, try rsa.token(alg: "RS256")), .malformed("token header has no kid (JWKS keys are picked by kid)"))
        let none = Base64URL.encode(Array(#"{"alg":"none","kid":"r"}"#.utf8)) + "." + Base64URL.encode(Array(#"{"sub":"a"}"#.utf8)) + "."
        XCTAssertEqual(refusal(verifier, none), .unsupportedAlgorithm("none"))
        // Signed by another key under a known kid.
        let strangerDir = dir.appendingPathComponent("stranger")
        try FileManager.default.createDirectory(at: strangerDir, withIntermediateDirectories: true)
        XCTAssertEqual(refusal(verifier, try KeyPair("p256", in: strangerDir).token(alg: "ES256", kid: "e256")), .badSignature)
    }

    func testJWKSRefusesKeysItCannotTrust() throws {
        let small = try KeyPair("rsa1024", in: dir), p256 = try KeyPair("p256", in: dir)
        func refusal(_ jwk: String) -> String? {
            guard case .failure(let refusal) = JSONWebKey.parse(try! JSONParser.parse(Array(jwk.utf8))) else { return nil }
            return refusal.reason
        }
        XCTAssertEqual(refusal(#"{"kty":"oct","kid":"h","k":"c2VjcmV0"}"#), "HMAC keys (kty oct) are never taken from a JWKS")
        XCTAssertEqual(refusal(try small.jwk(kid: "s")), "RSA modulus must be 2048 to 8192 bits")
        XCTAssertEqual(refusal(try p256.jwk(kid: "e", alg: "ES384")), "alg ES384 does not fit a EC key of this kind")
        XCTAssertEqual(refusal(try p256.jwk(kid: "e", alg: "HS256")), "alg HS256 is not one the hub verifies with a public key")
        XCTAssertEqual(refusal(try p256.jwk(kid: "e").replacingOccurrences(of: #""kid":"e""#, with: #""kid":"e","use":"enc""#)), #"use is not "sig""#)
        XCTAssertEqual(refusal(try p256.jwk(kid: "e").replacingOccurrences(of: #","kid":"e""#, with: "")), "no kid (tokens pick JWKS keys by kid)")
        // A point off the curve does not load.
        let x = Base64URL.encode([UInt8](repeating: 1, count: 32))
        XCTAssertEqual(refusal(#"{"kty":"EC","crv":"P-256","kid":"bad","x":"\#(x)","y":"\#(x)"}"#), "the key material does not load (not a valid EC public key)")
        XCTAssertEqual(refusal(#"{"kty":"EC","crv":"P-521","kid":"c","x":"\#(x)","y":"\#(x)"}"#), "curve P-521 is not P-256 or P-384")
        XCTAssertEqual(refusal(#"{"kty":"OKP","crv":"Ed448","kid":"c","x":"\#(x)"}"#), "OKP curve must be Ed25519")
    }

    func testJWKSSizeAndKeyCountAreCapped() throws {
        let ed = try KeyPair("ed25519", in: dir)
        var limits = TokenKeySet.Limits()
        limits.maxKeys = 3
        limits.maxBodyBytes = 4096
        let jwks = (0..<5).map { try! ed.jwk(kid: "k\($0)") }
        guard case .success(let parsed) = TokenKeySet.parse(Array(#"{"keys":[\#(jwks.joined(separator: ","))]}"#.utf8), limits: limits) else {
            return XCTFail("the JWKS should parse")
        }
        XCTAssertEqual(parsed.keys.keys.sorted(), ["k0", "k1", "k2"])
        XCTAssertEqual(parsed.skipped.map(\.description), [#"JWKS key "k3" skipped: more than 3 keys"#, #"JWKS key "k4" skipped: more than 3 keys"#])
        let padded = Array(#"{"keys":[],"pad":"\#(String(repeating: "x", count: 5000))"}"#.utf8)
        guard case .failure(let failure) = TokenKeySet.parse(padded, limits: limits) else { return XCTFail("too large") }
        XCTAssertEqual(failure.description, "JWKS larger than 4096 bytes")
        guard case .failure = TokenKeySet.parse(Array(#"{"keys":"none"}"#.utf8)) else { return XCTFail("no keys array") }
    }

    func testAnUnknownKidRefetchesAtMostOncePerInterval() throws {
        let old = try KeyPair("p256", in: dir), new = try KeyPair("ed25519", in: dir)
        let jwks = MemoryJWKS()
        jwks.serve([try old.jwk(kid: "old")])
        var limits = TokenKeySet.Limits()
        limits.minRefetchInterval = 10
        let keys = jwks.keySet(limits)
        keys.refetch(because: "start")
        let verifier = TokenVerifier(hmacSecret: nil, keySet: keys)
        let token = try new.token(alg: "EdDSA", kid: "new")
        jwks.serve([try new.jwk(kid: "new")])
        // Within the interval: refused, and nothing fetched, however many times.
        for _ in 0..<20 { XCTAssertEqual(refusal(verifier, token), .unknownKey("new")) }
        XCTAssertEqual(jwks.fetches.load(ordering: .relaxed), 1)
        // After it, the waiting form holds the answer until the refetch ends, and every
        // caller that asked meanwhile shares that one fetch.
        jwks.clock.withLock { $0 += 10 }
        jwks.holding.store(true, ordering: .relaxed)
        let answers = Mutex<[Result<JSONValue, TokenError>]>([])
        for _ in 0..<3 { verifier.verify(token, now: { 0 }) { result in answers.withLock { $0.append(result) } } }
        XCTAssertEqual(answers.withLock { $0.count }, 0)
        XCTAssertEqual(jwks.fetches.load(ordering: .relaxed), 2)
        jwks.release()
        let results = answers.withLock { $0 }
        XCTAssertEqual(results.count, 3)
        for result in results { XCTAssertEqual(try result.get()["sub"], "alice") }
        // The old key went with the swap.
        XCTAssertEqual(refusal(verifier, try old.token(alg: "ES256", kid: "old")), .unknownKey("old"))
        // A refused refetch (inside the interval) answers the waiting form at once.
        let late = Mutex<Result<JSONValue, TokenError>?>(nil)
        verifier.verify(try old.token(alg: "ES256", kid: "old"), now: { 0 }) { result in late.withLock { $0 = result } }
        guard case .failure(let error)? = late.withLock({ $0 }) else { return XCTFail("answered at once, refused") }
        XCTAssertEqual(error, .unknownKey("old"))
        XCTAssertEqual(jwks.fetches.load(ordering: .relaxed), 2)
    }

    func testAFailedFetchKeepsTheKeysHeld() throws {
        let ed = try KeyPair("ed25519", in: dir)
        let jwks = MemoryJWKS()
        jwks.serve([try ed.jwk(kid: "ed")])
        var limits = TokenKeySet.Limits()
        limits.minRefetchInterval = 1
        let keys = jwks.keySet(limits)
        keys.refetch(because: "start")
        jwks.body.withLock { $0 = Array("<html>".utf8) }
        jwks.clock.withLock { $0 += 5 }
        keys.refetch(because: "test")
        XCTAssertEqual(jwks.fetches.load(ordering: .relaxed), 2)
        XCTAssertEqual(keys.keyIDs, ["ed"])
        XCTAssertNoThrow(try TokenVerifier(hmacSecret: nil, keySet: keys).verify(try ed.token(alg: "EdDSA", kid: "ed"), now: 0))
    }
}
