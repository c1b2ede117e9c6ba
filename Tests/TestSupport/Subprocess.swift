import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Child processes for tests, on posix_spawn and waitpid.
///
/// Foundation's `Process.waitUntilExit()` on Linux waits for a SIGCHLD-driven dispatch
/// source; with several children in flight (and redis forking) it was seen to wait forever
/// on an exited child, hanging the whole suite. Here the test itself reaps its children,
/// and every wait has a deadline.
public final class Subprocess: @unchecked Sendable {
    public let pid: pid_t
    /// The read end of the child's stdout, when captured.
    public let output: FileHandle?
    private var status: Int32?

    /// Starts `tool` with `arguments`; stdout is captured when `captureOutput`, stderr
    /// discarded unless `inheritStderr`.
    public init(_ tool: String, _ arguments: [String], environment: [String: String]? = nil,
                captureOutput: Bool = true, inheritStderr: Bool = false) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var fds: [Int32] = [-1, -1]
        if captureOutput {
            guard pipe(&fds) == 0 else { throw SubprocessError("pipe: \(errno)") }
            posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
            posix_spawn_file_actions_addclose(&actions, fds[0])
            posix_spawn_file_actions_addclose(&actions, fds[1])
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        if !inheritStderr { posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)

        let argv = ([tool] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let env = (environment ?? ProcessInfo.processInfo.environment).map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { env.forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, tool, &actions, nil, argv, env)
        if captureOutput { close(fds[1]) }
        guard rc == 0 else {
            if captureOutput { close(fds[0]) }
            throw SubprocessError("posix_spawn \(tool): \(rc)")
        }
        pid = child
        output = captureOutput ? FileHandle(fileDescriptor: fds[0], closeOnDealloc: true) : nil
    }

    /// Waits up to `timeout` seconds for the child; kills it with SIGKILL after that.
    /// Returns the exit status (128+signal when killed by one).
    @discardableResult
    public func wait(timeout: TimeInterval = 30) -> Int32 {
        if let status { return status }
        let deadline = Date().addingTimeInterval(timeout)
        var raw: Int32 = 0
        while true {
            let r = waitpid(pid, &raw, WNOHANG)
            if r == pid { break }
            if r < 0 { raw = 0; break }
            if Date() > deadline { kill(pid, SIGKILL) }
            usleep(5_000)
        }
        let code: Int32 = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
        status = code
        return code
    }

    public func signal(_ signal: Int32) { if status == nil { kill(pid, signal) } }

    /// Runs `tool` to completion and returns its exit status and stdout.
    @discardableResult
    public static func run(_ tool: String, _ arguments: [String], timeout: TimeInterval = 30) throws -> (status: Int32, output: String) {
        let child = try Subprocess(tool, arguments)
        // Read to EOF before reaping: a child blocked on a full pipe would never exit.
        let data = child.output!.readDataToEndOfFile()
        let status = child.wait(timeout: timeout)
        return (status, String(decoding: data, as: UTF8.self))
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            var raw: Int32 = 0
            waitpid(pid, &raw, 0)
        }
    }
}

public struct SubprocessError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A real redis-server on a free port, for one test's lifetime; stopped and its directory
/// removed when released.
public final class RedisServer: @unchecked Sendable {
    public let port: Int
    public let dir: URL
    private var process: Subprocess?
    let extraArguments: [String]

    /// `extraArguments` go after the defaults (e.g. `--cluster-enabled yes`).
    public init(extraArguments: [String] = []) throws {
        self.extraArguments = extraArguments
        // A cluster node's bus listens on port + 10000.
        var port = Self.freePort()
        while !extraArguments.isEmpty && port > 55535 { port = Self.freePort() }
        self.port = port
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(port)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try start()
    }

    /// Starts (or restarts, after `stop()`) the server on the same port.
    public func start() throws {
        process = try Subprocess("/usr/bin/redis-server",
                                 ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir.path] + extraArguments,
                                 captureOutput: false)
        for _ in 0..<200 {
            if cli("PING") == "PONG" { return }
            usleep(25_000)
        }
        throw SubprocessError("redis-server did not start on port \(port)")
    }

    public func stop() {
        process?.signal(SIGKILL)
        process?.wait()
        process = nil
    }

    public var url: String { "redis://127.0.0.1:\(port)/0" }

    /// One redis-cli command; its trimmed output.
    @discardableResult
    public func cli(_ args: String...) -> String {
        let result = try? Subprocess.run("/usr/bin/redis-cli", ["-p", "\(port)"] + args, timeout: 10)
        return (result?.output ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: dir)
    }

    private static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// A real Redis Cluster of three primaries (no replicas) on free ports, for one test's lifetime.
public final class RedisClusterServers: @unchecked Sendable {
    public let servers: [RedisServer]

    public init() throws {
        servers = try (0..<3).map { _ in
            try RedisServer(extraArguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000"])
        }
        let created = try Subprocess.run("/usr/bin/redis-cli", ["--cluster", "create"] + servers.map { "127.0.0.1:\($0.port)" }
                                         + ["--cluster-replicas", "0", "--cluster-yes"], timeout: 60)
        guard created.status == 0 else { throw SubprocessError("redis-cli --cluster create: \(created.output)") }
        for _ in 0..<400 {
            if servers.allSatisfy({ $0.cli("CLUSTER", "INFO").contains("cluster_state:ok") }) { return }
            usleep(25_000)
        }
        throw SubprocessError("the cluster did not reach cluster_state:ok")
    }

    public var seeds: [String] { servers.map { "redis://127.0.0.1:\($0.port)/0" } }

    /// One `redis-cli -c` command (following the key's slot); its trimmed output.
    @discardableResult
    public func cli(_ args: String...) -> String {
        let result = try? Subprocess.run("/usr/bin/redis-cli", ["-c", "-p", "\(servers[0].port)"] + args, timeout: 10)
        return (result?.output ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
